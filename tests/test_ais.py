"""AIS and BDMC against models whose log p(x) is known exactly (tests/closed_form.py)."""


import pyro
import pytest
import torch

from closed_form import GammaPoisson, LinearGaussian
import pyro.distributions as dist

from pyro_vae.ais import ais_log_likelihood, linear_schedule, sigmoid_schedule
from pyro_vae import annealing
from pyro_vae.annealing import AnnealingTarget, annealed_batches, hmc_step
from pyro_vae.bdmc import bdmc, simulate
from pyro_vae.estimators import log_likelihood


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian(latent=4, dim=6)


def test_schedules_run_from_zero_to_one():
    for betas in (sigmoid_schedule(100), linear_schedule(100)):
        assert betas.shape == (101,) and betas[0] == 0 and betas[-1] == 1
        assert bool((betas[1:] > betas[:-1]).all())
    s = sigmoid_schedule(100)
    # denser near both ends than in the middle
    assert s[1] - s[0] < s[51] - s[50] > s[-1] - s[-2]
    torch.testing.assert_close(sigmoid_schedule(1), torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_one_step_is_importance_sampling_on_the_same_draws(lg):
    x = lg.data(10)
    pyro.set_rng_seed(5)
    is_ = log_likelihood(lg.model, lg.poor_guide, x, num_samples=8, khat=False)
    pyro.set_rng_seed(5)
    ais = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=1, num_chains=8)
    torch.testing.assert_close(ais.per_image, is_.per_image, rtol=0, atol=1e-10)
    torch.testing.assert_close(ais.ess, is_.ess, rtol=1e-9, atol=1e-9)


def test_exact_guide_gives_exact_log_px_at_any_schedule(lg):
    # pi_0 is the posterior: every intermediate density is the posterior, every weight p(x)
    x = lg.data(5)
    est = ais_log_likelihood(lg.model, lg.exact_guide, x, num_steps=20, num_chains=4,
                             num_leapfrog=3)
    torch.testing.assert_close(est.per_image, lg.exact_log_px(x), rtol=0, atol=1e-8)


@pytest.mark.parametrize("start", ["guide", "prior"])
def test_ais_recovers_exact_log_px_with_a_poor_guide(lg, start):
    # 500 steps x 16 chains with frozen, pilot-tuned step sizes: no bias beyond Monte Carlo noise
    x = lg.data(60)
    exact = lg.exact_log_px(x)
    est = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=500, num_chains=16,
                             num_leapfrog=5, start=start)
    err = est.per_image - exact
    assert abs(err.mean().item()) < 0.05, err.mean()
    # far tighter than importance sampling with the same number of proposals
    is_err = log_likelihood(lg.model, lg.poor_guide, x, num_samples=16, khat=False).per_image - exact
    assert is_err.mean() < -0.1 and err.mean().abs() < is_err.mean().abs() / 3
    # diagnostics: one step size and acceptance rate per HMC transition, rates near the target
    assert est.betas.shape == (501,) and est.step_size.shape == (499,)
    assert est.acceptance.shape == (499,)
    assert 0.5 < est.acceptance.mean() < 0.95
    assert est.summary()["num_steps"] == 500


def test_ais_on_a_positive_latent_in_unconstrained_space():
    gp = GammaPoisson()
    x = gp.data(60)
    exact = gp.exact_log_px(x)
    is_err = (log_likelihood(gp.model, gp.guide, x, num_samples=16, khat=False).per_image
              - exact).mean()
    est = ais_log_likelihood(gp.model, gp.guide, x, num_steps=200, num_chains=16,
                             num_leapfrog=5)
    assert torch.isfinite(est.per_image).all()
    assert abs((est.per_image - exact).mean()) < 0.03
    assert is_err < -0.15  # the guide alone is visibly off, so AIS did the work


def test_bdmc_sandwiches_exact_log_px(lg):

    x = lg.data(50)  # only the shape matters: BDMC simulates its own data
    res = bdmc(lg.model, lg.poor_guide, x, num_steps=300, num_chains=8, num_leapfrog=5)
    assert res.x.shape == x.shape and not torch.equal(res.x, x)
    exact = lg.exact_log_px(res.x)
    assert res.lower.mean() <= exact.mean() + 0.02
    assert exact.mean() <= res.upper.mean() + 0.02
    # E[gap] >= 0; converged, the mean gap over 50 images is 0 up to its standard error
    se = res.gap.std() / res.gap.numel() ** 0.5
    assert -3 * se < res.gap.mean() < 0.3
    # with too few steps the sandwich is loose, and both sides still hold
    pyro.set_rng_seed(1)
    short = bdmc(lg.model, lg.poor_guide, x, num_steps=3, num_chains=8, num_leapfrog=5)
    exact = lg.exact_log_px(short.x)
    assert short.lower.mean() < exact.mean() < short.upper.mean()
    assert short.gap.mean() > 5 * res.gap.mean()


def test_simulate_samples_the_observed_site(lg):
    x = lg.data(4)
    x_sim, z = simulate(lg.model, x)
    assert x_sim.shape == x.shape and set(z) == {"z"} and z["z"].shape == (4, lg.latent)


def test_estimating_chains_use_the_frozen_pilot_schedule(lg, monkeypatch):
    # the step sizes every HMC transition of the forward and the reverse pass is given are
    # exactly the pilot's, whatever the estimating chains accept: their transitions do not
    # depend on their own past
    x = lg.data(6)
    _, chunk = next(annealed_batches(lg.model, lg.poor_guide, x, num_steps=12, num_chains=4,
                            num_leapfrog=2, tune_chains=3, schedule="sigmoid", start="guide",
                            step_size=None, batch_size=None, progress=False, data_plate="data",
                            max_plate_nesting=1, kwargs={}, passes=2, desc=""))
    pilot = chunk.step_sizes.clone()
    assert pilot.shape == (11, 6) and not bool((pilot == pilot[0]).all())  # tuned per stage
    given = []

    def spy(target, state, beta, step_size, num_leapfrog):
        given.append(step_size.clone())
        return hmc_step(target, state, beta, step_size, num_leapfrog)

    monkeypatch.setattr(annealing, "hmc_step", spy)
    chunk.forward()  # transitions 1 .. T-1
    torch.testing.assert_close(torch.stack(given), pilot, rtol=0, atol=0)
    given.clear()
    chunk.reverse({"z": lg.posterior_mean(x)})  # transitions T-1 .. 1
    torch.testing.assert_close(torch.stack(given[::-1]), pilot, rtol=0, atol=0)
    # with a fixed step size there is no pilot, and that size is used at every transition
    fixed = ais_log_likelihood(lg.model, lg.poor_guide, x, num_steps=30, num_chains=4,
                               step_size=0.2)
    assert fixed.step_size.eq(0.2).all()


def test_hmc_leaves_the_intermediate_density_invariant(lg):
    # f_beta = (1 - beta) log q + beta log p(x, z) is Gaussian here: start 4000 chains at exact
    # draws of it, take HMC steps, and its mean and covariance must stay
    x = lg.data(1)
    beta = 0.4
    q_loc, q_scale = 0.8 * lg.posterior_mean(x)[0], 1.5 * lg.Sigma.diagonal().sqrt()
    prec = (1 - beta) * torch.diag(q_scale**-2) + beta * lg.precision
    cov = torch.linalg.inv(prec)
    mean = cov @ ((1 - beta) * q_loc / q_scale**2 + beta * lg.precision @ lg.posterior_mean(x)[0])
    target = AnnealingTarget(lg.model, lg.poor_guide, x, 4000, "guide", {}, "data", 1)
    u = dist.MultivariateNormal(mean, cov).sample((4000,)).unsqueeze(1)  # (C, 1, D)
    state = (u,) + target.evaluate(u)
    accepted = 0.0
    step = 0.5 * cov.diagonal().sqrt().min().reshape(1)  # (N,) = (1,)
    for _ in range(10):
        state, accept = hmc_step(target, state, beta, step, 3)
        accepted += accept.float().mean().item() / 10
    v = state[0][:, 0]
    assert 0.2 < accepted < 0.99  # it moved
    torch.testing.assert_close(v.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(v.T), cov, atol=0.05, rtol=0.1)


def test_a_schedule_given_as_a_sequence_sets_the_number_of_steps(lg):
    x = lg.data(3)
    est = ais_log_likelihood(lg.model, lg.poor_guide, x, schedule=[0.0, 0.3, 0.6, 1.0],
                             num_chains=2, num_leapfrog=2, step_size=0.1)
    assert est.summary()["num_steps"] == 3 and est.step_size.shape == (2,)
    assert est.evaluations == 2 * 2 * 2  # chains x transitions x leapfrog, no pilot


def test_bad_arguments_are_refused(lg):
    x = lg.data(3)
    for kw, match in ((dict(num_steps=0), "num_steps"), (dict(num_chains=0), "num_chains"),
                      (dict(schedule="cosine"), "schedule"), (dict(start="q"), "unknown start"),
                      (dict(schedule=[0.0, 0.7, 0.5, 1.0]), "non-decreasing"),
                      (dict(step_size=-1.0), "step_size")):
        with pytest.raises(ValueError, match=match):
            ais_log_likelihood(lg.model, lg.poor_guide, x, **kw)
