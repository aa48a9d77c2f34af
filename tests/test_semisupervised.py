"""M2, the semi-supervised VAE (Kingma et al. 2014): its enumerated objective, its marginal
log-likelihood through the estimators, and train_svi.py --model m2 with its bad inputs."""

import json

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO

from pyro_vae.ais import ais_log_likelihood
from pyro_vae.build import build_m2
from pyro_vae.data import choose_labelled, semi_supervised
from pyro_vae.estimators import elbo, log_likelihood
from pyro_vae.program import check_program

from test_reliability import TINY_SVI, assert_refused, call, digits, save_npz
from test_reliability_round2 import npz  # noqa: F401  (a fixture)


@pytest.fixture
def m2():
    pyro.set_rng_seed(0)
    return build_m2((1, 4, 4), latent_dim=2, hidden_dim=8, num_classes=3)


def _binary(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(n, 1, 4, 4, generator=g), generator=g)


def test_the_enumerated_elbo_equals_its_sampled_counterpart_in_expectation(m2):
    # U(x) = sum_y q(y|x) L(x, y) + H[q(y|x)], y summed out, against y drawn from q(y|x) by
    # Trace_ELBO with many particles: equal in expectation
    x = _binary(3)

    def sampled_guide(x, y=None, kl_scale=1.0):  # M2's guide with y drawn, not summed out
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", m2.classify(x))
            pyro.sample("z", m2.style_posterior(x, y))

    many = dict(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        enumerated = torch.tensor([TraceEnum_ELBO(**many).loss(m2.model, m2.guide, x)
                                   for _ in range(3)])
        sampled = torch.tensor([Trace_ELBO(**many).loss(m2.model, sampled_guide, x)
                                for _ in range(3)])
    stderr = (enumerated.var() / 3 + sampled.var() / 3).sqrt()
    assert abs(enumerated.mean() - sampled.mean()) < max(4 * stderr, 2e-3), (enumerated, sampled)
    # and the one-particle loss M2 trains on is that estimate's unbiased single draw: its
    # particles spread around the same mean
    assert (enumerated.mean() - sampled.mean()).abs() < 0.01


def test_m2_is_checked_as_a_guide_enumerated_model_and_its_bounds_are_ordered(m2):
    x = _binary(4)
    program = check_program(m2.model, m2.guide, x)
    assert program.guide_enumerated == ["y"] and program.sampled == ["z"]
    with torch.no_grad():
        u = -TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, x) / 4
    est = log_likelihood(m2.model, m2.guide, x, 2000, khat=False)
    # the mixture q(z|x) of the estimators is a tighter proposal than U(x)'s; and IWAE beats both
    assert u <= elbo(m2.model, m2.guide, x, 2000).mean + 0.05 <= est.mean + 0.1
    ais = ais_log_likelihood(m2.model, m2.guide, x, num_steps=200, num_chains=8,
                             num_leapfrog=3)
    assert abs(ais.mean - est.mean) < 0.1  # a 2-d style: both close to log p(x)


def test_the_labelled_set_is_balanced_and_repeated_to_half_of_the_rows():
    y = torch.arange(100) % 10
    chosen = choose_labelled(y, 20, 10, seed=3)
    assert sorted(y[chosen].tolist()) == sorted(list(range(10)) * 2)
    assert not torch.equal(chosen, choose_labelled(y, 20, 10, seed=4))  # chosen by the seed
    fields = semi_supervised(torch.arange(100.0)[:, None], y, chosen)
    labelled = fields["y"] >= 0
    assert int(labelled.sum()) == 20 * (80 // 20 - 1 + 1) and int((~labelled).sum()) == 80
    assert (fields["y"][labelled] == fields["x"][labelled, 0].long() % 10).all()  # aligned


def test_train_svi_trains_m2_and_evaluate_reports_what_applies(capsys, tmp_path,
                                                               npz):
    out = tmp_path / "run"
    assert call("train_svi", *TINY_SVI, "--epochs", "2", "--dataset", npz,
                "--model", "m2", "--labels", "20", "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["test_accuracy"] <= 1 and 0 <= summary["baseline_accuracy"] <= 1
    assert summary["labels"] == 20 and summary["test_loglik_num_images"] == 10
    metrics = json.loads((out / "metrics.json").read_text())
    assert [("test_accuracy" in row) for row in metrics] == [True, True]
    for name in ("accuracy.png", "class_styles.png", "prior_samples.png"):
        assert (out / name).stat().st_size > 0
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["num_classes"]) == ("m2", 10)
    capsys.readouterr()
    assert call("evaluate", out, "--no-download", "--samples", "10", "--curve", "1,10",
                "--ais-images", "2", "--ais-steps", "3", "--ais-chains", "2", "--leapfrog", "2",
                "--bdmc-images", "2", "--gap-images", "2", "--out", tmp_path / "eval") == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert "test_accuracy" in result and len(result["ais"]["per_image"]) == 2
    assert result["bdmc"]["3"]["num_images"] == 2 and "inference_gap" not in result
    assert "no inference-gap split: the model has the discrete latent 'y'" in printed
    assert call("train_svi", "--resume", out, "--epochs", "3", "--quiet") == 0  # resumes


@pytest.mark.parametrize("args,message", [
    (["--labels", "20"], "--labels is for the semi-supervised --model m2"),
    (["--model", "m2", "--labels", "15"], "--labels 15 must be a multiple of the 10 classes"),
    (["--model", "m2", "--labels", "70"], "at most the 60 labelled training images"),
    (["--model", "m2", "--labels", "-10"], "--labels must be a positive integer"),
    (["--model", "m2", "--labels", "0"], "--labels must be a positive integer"),
    (["--model", "m2", "--prior", "vamp"], "--model m2 takes --prior normal only"),
    (["--model", "m2", "--elbo", "iwae"], "--model m2 takes --elbo trace only"),
    (["--model", "m3"], "unknown --model 'm3'; choose one of: vae, m2"),
])
def test_m2_bad_inputs_are_one_line_before_any_training(capsys, tmp_path, npz, args,
                                                        message):
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", npz, "--out",
                                         tmp_path / "run", *args], message, tmp_path)


def test_m2_refuses_data_without_labels_or_too_few_of_a_class(capsys, tmp_path):
    bare = save_npz(tmp_path / "bare.npz", x_train=digits(60), x_test=digits(20, seed=1))
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", bare, "--model", "m2",
                                         "--out", tmp_path / "run"], "has no labels", tmp_path)
    few = save_npz(tmp_path / "few.npz", x_train=digits(60), x_test=digits(20, seed=1),
                   y_train=np.r_[np.zeros(51, int), np.arange(1, 10)], y_test=np.arange(20) % 10)
    no_test = save_npz(tmp_path / "no_test.npz", x_train=digits(60), x_test=digits(20, seed=1),
                       y_train=np.arange(60) % 10)
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", no_test, "--model", "m2",
                                         "--labels", "20", "--out", tmp_path / "run"],
                   "has no test labels (y_test)", tmp_path)
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", few, "--model", "m2",
                                         "--labels", "20", "--out", tmp_path / "run"],
                   "class 1 has 1 labelled training images, fewer than the 2", tmp_path)
