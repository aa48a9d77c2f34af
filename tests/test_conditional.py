"""The conditional VAE: the masked likelihood, log p(x_miss | x_obs) against a closed form, and
train_svi.py --model cvae with evaluate.py and its bad inputs."""

import json

import pyro.distributions as dist
import pytest
import torch

from pyro_vae.ais import ais_log_likelihood
from pyro_vae.conditional import ConditionalVAE, MaskedPixels, quadrant_mask
from pyro_vae.estimators import log_likelihood

from test_reliability import TINY_SVI, assert_refused, call
from test_reliability_round2 import npz  # noqa: F401  (a fixture)


def test_quadrants_are_observed_in_order():
    m = quadrant_mask((1, 4, 6), 1)
    assert m.sum() == 6 and m[0, :2, :3].all()
    m3 = quadrant_mask((1, 4, 6), 3)
    assert m3.sum() == 18 and not m3[0, 2:, 3:].any()  # the bottom-right is the one hidden


def test_masked_pixels_score_the_kept_pixels_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1, 4, 4, generator=g)
    x = torch.bernoulli(torch.rand(5, 1, 4, 4, generator=g), generator=g)
    keep = ~quadrant_mask((1, 4, 4), 2)
    d = MaskedPixels(dist.Bernoulli(logits=logits).to_event(3), keep, x)
    by_hand = torch.stack([dist.Bernoulli(logits=logits[i][keep]).log_prob(x[i][keep]).sum()
                           for i in range(5)])
    torch.testing.assert_close(d.log_prob(x), by_hand)
    draw = d.sample()
    assert torch.equal(draw[:, ~keep], x[:, ~keep])  # the observed part is kept


class LinearConditional:
    """z | x_o ~ N(a x_o, I_2), every pixel of a 2x2 image x | z ~ N(W z, s^2); the top-left
    pixel is x_o. Then x_m | x_o ~ N(W_m a x_o, W_m W_m^T + s^2 I_3), W_m the rows of the three
    missing pixels."""

    def __init__(self, a=1.5, s=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.a, self.s = a, s
        self.W = torch.randn(4, 2, generator=g, dtype=torch.float64)
        self.observed = quadrant_mask((1, 2, 2), 1)

    def prior_net(self, x_obs):
        loc = self.a * x_obs[..., 0, 0, 0]  # (N,)
        return dist.Normal(loc[..., None].expand(loc.shape + (2,)), 1.0).to_event(1)

    def likelihood(self, z):
        return dist.Normal((z @ self.W.T).unflatten(-1, (1, 2, 2)), self.s).to_event(3)

    def encoder(self, x):  # a guide of the right family, off centre and too wide
        return dist.Normal(torch.zeros(x.shape[0], 2, dtype=x.dtype) + 0.3, 1.3).to_event(1)

    def exact(self, x):
        missing = ~self.observed.flatten()
        wm = self.W[missing]
        mean = (self.a * x[:, 0, 0, 0])[:, None] * wm.sum(-1)  # W_m (a x_o 1)
        cov = wm @ wm.T + self.s**2 * torch.eye(3, dtype=torch.float64)
        return dist.MultivariateNormal(mean, covariance_matrix=cov).log_prob(
            x.flatten(1)[:, missing])

    def data(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        x_o = torch.randn(n, generator=g, dtype=torch.float64)
        z = self.a * x_o[:, None] + torch.randn(n, 2, generator=g, dtype=torch.float64)
        x = (z @ self.W.T + self.s * torch.randn(n, 4, generator=g, dtype=torch.float64))
        x[:, 0] = x_o
        return x.unflatten(-1, (1, 2, 2))


def test_the_estimators_give_the_conditional_log_likelihood():
    lc = LinearConditional()
    cvae = ConditionalVAE(lc.prior_net, lc.encoder, lc.likelihood, lc.observed)
    x = lc.data(6)
    exact = lc.exact(x)
    est = log_likelihood(cvae.model, cvae.guide, x, 5000, khat=False)
    assert abs((est.per_image - exact).mean()) < 0.05
    # AIS from a poor start: log of an unbiased estimate, so a little low on average
    ais = ais_log_likelihood(cvae.model, cvae.guide, x, num_steps=300, num_chains=32,
                             num_leapfrog=3)
    assert -0.15 < (ais.per_image - exact).mean() < 0.05


def test_train_svi_trains_the_cvae_and_its_network(capsys, tmp_path, npz):
    out = tmp_path / "run"
    assert call("train_svi", *TINY_SVI, "--dataset", npz, "--model", "cvae",
                "--observed-quadrants", "2", "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conditional"] == "log p(x_miss | x_obs)"
    assert summary["observed_quadrants"] == 2 and len(summary["baseline_loglik_per_image"]) == 10
    assert (out / "completions.png").stat().st_size > 0 and not (out / "prior_samples.png").exists()
    capsys.readouterr()
    assert call("evaluate", out, "--no-download", "--samples", "10", "--curve", "1,10",
                "--ais-images", "3", "--ais-steps", "3", "--ais-chains", "2", "--leapfrog", "2",
                "--bdmc-images", "2", "--gap-images", "2", "--out", tmp_path / "eval") == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["quantity"] == "log p(x_miss | x_obs)" and "completion_net_mean" in result["ais"]
    assert "log p(x_miss | x_obs): CVAE by AIS" in printed


@pytest.mark.parametrize("args,message", [
    (["--model", "cvae", "--observed-quadrants", "4"], "--observed-quadrants must be 1, 2 or 3"),
    (["--model", "cvae", "--observed-quadrants", "0"], "(0 would hide everything, 4 nothing)"),
    (["--observed-quadrants", "2"], "--observed-quadrants is for the conditional --model cvae"),
    (["--model", "cvae", "--posterior", "flow"], "--model cvae takes --posterior diagonal"),
])
def test_cvae_bad_inputs_are_one_line(capsys, tmp_path, npz, args, message):
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", npz, "--out", tmp_path / "r",
                                         *args], message, tmp_path)
