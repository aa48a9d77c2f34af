"""The inference-gap split against a linear-Gaussian model, where every term is known exactly."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from closed_form import LinearGaussian
from pyro_vae.inference_gap import fit_local_guide, inference_gap


@pytest.fixture(scope="module")
def lg():
    # a strongly correlated posterior, so that the best diagonal Gaussian is visibly short of it
    return LinearGaussian(latent=3, dim=4, noise=0.5, seed=2)


def test_local_fit_finds_the_best_diagonal_gaussian(lg):
    x = lg.data(20)
    local, steps = fit_local_guide(lg.model, lg.poor_guide, x)  # the defaults
    # the closed form: the posterior mean, and variances 1 / diag(posterior precision)
    # (the ELBO is flat near its optimum: an Adam iterate lands within a quarter of q*'s scale
    # of its mean, costing (1/4)^2 / 2 = 0.03 nats, and within 25% of its scale)
    best_scale = lg.precision.diagonal().rsqrt().expand(20, -1)
    assert ((local.loc.detach() - lg.posterior_mean(x)).abs() / best_scale).max() < 0.25
    torch.testing.assert_close(local.raw.detach().exp(), best_scale, atol=0, rtol=0.25)
    assert 0 < steps < 20000


def test_gaps_add_up_and_match_the_closed_form(lg):
    x = lg.data(20)
    exact = lg.exact_log_px(x)
    gap = inference_gap(lg.model, lg.poor_guide, x, log_px=exact, elbo_samples=4000,
                        fit_options=dict(patience=4))
    best = lg.best_diagonal_elbo(x)
    # ELBO[q*] = log p(x) - KL(q* || posterior), found to Monte-Carlo precision
    assert abs((gap.elbo_optimal - best).mean()) < 0.02
    torch.testing.assert_close(gap.approximation_gap, exact - gap.elbo_optimal)
    assert (lg.precision.diagonal().log().sum() - torch.logdet(lg.precision)) / 2 > 0.1
    # the poor guide's own ELBO is lower still: a positive amortization gap on every image
    assert (gap.amortization_gap > 0).all()
    torch.testing.assert_close(gap.approximation_gap + gap.amortization_gap,
                               gap.log_px - gap.elbo_amortized)
    s = gap.summary()
    assert s["num_images"] == 20 and s["approximation_gap"] > 0.1


def test_an_exact_guide_has_no_gaps_left_but_the_familys(lg):
    # the exact (full-covariance) posterior as the guide: ELBO[q] = log p(x) > ELBO[q*], so the
    # "amortization gap" is negative by exactly the diagonal family's KL
    x = lg.data(5)
    exact = lg.exact_log_px(x)
    gap = inference_gap(lg.model, lg.exact_guide, x, num_steps=50, num_chains=4, elbo_samples=2000,
                        fit_options=dict(patience=4))
    torch.testing.assert_close(gap.log_px, exact, atol=1e-8, rtol=0)
    torch.testing.assert_close(gap.elbo_amortized, exact, atol=1e-8, rtol=0)
    kl = (lg.precision.diagonal().log().sum() - torch.logdet(lg.precision)) / 2
    assert abs(gap.amortization_gap.mean() + kl) < 0.03


def test_a_full_covariance_family_closes_the_approximation_gap(lg):
    # the posterior is Gaussian, so the full-covariance family holds it: ELBO[q*] = log p(x)
    x = lg.data(10)
    exact = lg.exact_log_px(x)
    gap = inference_gap(lg.model, lg.poor_guide, x, family="full", log_px=exact,
                        elbo_samples=4000, fit_options=dict(patience=4))
    assert gap.family == "full" and gap.summary()["family"] == "full"
    assert abs(gap.approximation_gap.mean()) < 0.02
    diagonal_kl = (lg.precision.diagonal().log().sum() - torch.logdet(lg.precision)) / 2
    assert gap.amortization_gap.mean() > diagonal_kl  # the poor guide is further off than that
    with pytest.raises(ValueError, match="unknown family 'flow'"):
        fit_local_guide(lg.model, lg.poor_guide, x, family="flow")
