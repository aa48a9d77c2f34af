"""The inference-gap split against models where every term is known exactly (linear-Gaussian, Gamma-Poisson)."""

import pytest
import torch

from closed_form import GammaPoisson, LinearGaussian
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
    torch.testing.assert_close(local.scale.detach(), best_scale, atol=0, rtol=0.25)
    assert 0 < steps < 10000  # stopped by the patience rule, not by max_steps


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
    diagonal_kl = (lg.precision.diagonal().log().sum() - torch.logdet(lg.precision)) / 2
    assert abs(gap.approximation_gap.mean()) < min(0.04, diagonal_kl / 3)
    assert gap.amortization_gap.mean() > diagonal_kl  # the poor guide is further off than that
    with pytest.raises(ValueError, match="unknown family 'flow'"):
        fit_local_guide(lg.model, lg.poor_guide, x, family="flow")


def test_the_fit_is_scale_free_on_a_tight_posterior():
    # posterior standard deviations near 0.005: far below Adam's step, were it not whitened
    tight = LinearGaussian(latent=4, dim=30, noise=0.02, seed=3)
    x = tight.data(5)
    for family, best in (("diagonal", tight.best_diagonal_elbo(x)), ("full", tight.exact_log_px(x))):
        gap = inference_gap(tight.model, tight.poor_guide, x, family=family,
                            log_px=tight.exact_log_px(x), elbo_samples=2000)
        assert abs((gap.elbo_optimal - best).mean()) < 0.05, (family, gap.elbo_optimal - best)


def test_the_local_fit_on_a_positive_latent():
    gp = GammaPoisson()
    x = gp.data(10)
    local, _ = fit_local_guide(gp.model, gp.guide, x)
    # the exact posterior is Gamma(a + sum x, b + D): in log space nearly Gaussian, so the best
    # Gaussian in u = log(rate) has an ELBO within a few hundredths of log p(x)
    est = inference_gap(gp.model, gp.guide, x, log_px=gp.exact_log_px(x), elbo_samples=4000)
    assert 0 <= est.approximation_gap.mean() < 0.03
    assert est.amortization_gap.mean() > 0.1  # the guide was off, the local fit repaired it
    assert local.loc.shape == (10, 1)
