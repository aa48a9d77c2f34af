"""Every figure function returns a Figure (drawn into a given panel where it draws one), and
importing the module leaves the matplotlib backend to the caller."""

import subprocess
import sys

import pytest
import torch
from matplotlib.figure import Figure

from pyro_vae import plots
from pyro_vae.ais import AISEstimate
from pyro_vae.bdmc import BDMCResult
from pyro_vae.estimators import Estimate
from pyro_vae.inference_gap import InferenceGap

from conftest import ROOT, tiny_images


def _estimate(mean):
    per_image = torch.full((4,), mean) + torch.arange(4.0) * 0.1
    return Estimate(per_image=per_image, elbo=per_image - 1, ess=torch.ones(4),
                    khat=torch.tensor([0.1, 0.5, 0.8, 1.2]), num_samples=5)


def _calls():
    """name -> (one-panel?, a call taking **extra keyword arguments)."""
    history = [{"epoch": e, "train_loss": 10.0 - e, "test_loss": 11.0 - e} for e in (1, 2, 3)]
    x = tiny_images(6)
    curve = {1: _estimate(-3.0), 5: _estimate(-2.5), 50: _estimate(-2.2)}
    ais = {t: AISEstimate(per_image=torch.full((4,), -2.1 + 0.01 * t), num_samples=3,
                          ess=torch.ones(4), betas=torch.linspace(0, 1, t + 1),
                          image_step_sizes=torch.full((t - 1, 4), 0.1),
                          image_acceptance=torch.full((t - 1, 4), 0.6),
                          evaluations=30 * t) for t in (3, 10)}
    bdmc = {t: BDMCResult(lower=torch.full((4,), -2.0 - 1 / t), upper=torch.full((4,), -2.0 + 1 / t),
                          x=x[:4], num_steps=t, num_chains=3, ess_forward=torch.ones(4),
                          ess_reverse=torch.ones(4), acceptance_forward=torch.full((t - 1,), 0.6),
                          acceptance_reverse=torch.full((t - 1,), 0.6)) for t in (3, 10)}
    gap = InferenceGap(log_px=torch.tensor([-2.0, -3.0, -1.0]),
                       elbo_amortized=torch.tensor([-3.0, -3.5, -2.0]),
                       elbo_optimal=torch.tensor([-2.5, -3.2, -0.9]), steps=100)
    return {
        "plot_comparison": (True, lambda **k: plots.plot_comparison(
            [{"a": "svi", "b": "flow", "estimator": "ais",
              "difference": {"mean": 0.4, "stderr_paired": 0.05, "stderr_unpaired": 0.8}}], **k)),
        "plot_sandwich": (False, lambda **k: plots.plot_sandwich(curve, ais, bdmc)),
        "plot_inference_gaps": (True, lambda **k: plots.plot_inference_gaps(gap, **k)),
        "plot_curves": (True, lambda **k: plots.plot_curves(history, **k)),
        "plot_image_grid": (True, lambda **k: plots.plot_image_grid(x, "grid", nrow=3, **k)),
        "plot_latents": (True, lambda **k: plots.plot_latents(torch.randn(6, 3),
                                                              torch.arange(6) % 3, **k)),
        "plot_bound_curve": (True, lambda **k: plots.plot_bound_curve(curve, exact=-2.0, **k)),
        "plot_khat": (True, lambda **k: plots.plot_khat(curve[5].khat, **k)),
        "plot_kl_per_dimension": (True, lambda **k: plots.plot_kl_per_dimension(
            torch.tensor([0.5, 0.0, 2.0]), torch.tensor([0.2, 0.0, 1.0]), **k)),
        "plot_image_rows": (False, lambda **k: plots.plot_image_rows([x, x], ["a", "b"], "t")),
        "plot_psnr": (False, lambda **k: plots.plot_psnr(
            {"gaussian": {"noisy input": [(0.1, 20.0), (0.5, 9.0)], "AE": [(0.1, 21.0),
                                                                          (0.5, 12.0)]}})),
    }


def test_every_plot_function_is_exercised():
    assert set(_calls()) == set(plots.__all__)


@pytest.mark.parametrize("name", sorted(_calls()))
def test_plots_return_a_figure_and_draw_into_a_given_panel(name, tmp_path):
    one_panel, call = _calls()[name]
    fig = call()
    assert isinstance(fig, Figure) and fig.axes
    fig.savefig(tmp_path / "f.png")  # saving needs no pyplot and no backend choice
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    if one_panel:
        host = Figure()
        ax = host.subplots(1, 2)[1]
        assert call(ax=ax) is host
        assert ax.has_data() or ax.images or ax.collections


def test_importing_plots_leaves_the_backend_to_the_caller():
    program = ("import matplotlib; matplotlib.use('svg'); import pyro_vae.plots; "
               "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    proc = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
