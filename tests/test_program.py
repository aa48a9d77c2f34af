"""The estimators' check of a model/guide pair, and discrete latents summed out exactly: a
Gaussian mixture whose log p(x) is known in closed form (tests/closed_form.py)."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from closed_form import GaussianMixture, LinearGaussian
from pyro_vae.ais import ais_log_likelihood
from pyro_vae.bdmc import bdmc
from pyro_vae.errors import ModelError, UserError
from pyro_vae.estimators import bound_curve, elbo, log_likelihood
from pyro_vae.inference_gap import inference_gap
from pyro_vae.program import check_program


@pytest.fixture
def gm():
    return GaussianMixture()


def test_the_program_is_sorted_into_its_kinds_of_site(gm):
    x = gm.data(3)
    p = check_program(gm.model, gm.gaussian_guide, x)
    assert (p.sampled, p.model_enumerated, p.guide_enumerated, p.observed) == (
        ["z"], ["y"], [], ["x"])
    p = check_program(gm.model, gm.mixture_guide, x)
    assert (p.sampled, p.model_enumerated, p.guide_enumerated) == (["z"], [], ["y"])
    p = check_program(gm.model, lambda x: gm.mixture_guide(x, None), x)
    assert (p.sampled, p.discrete_sampled, p.enumerated) == (["y", "z"], ["y"], [])


def test_an_enumerated_model_site_is_summed_out_exactly(gm):
    # The error this guards against: y drawn from p(y) with no proposal term, log 10 = 2.3
    # nats too low on average. Summed out, IWAE converges to the exact value.
    x = gm.data(8)
    est = log_likelihood(gm.model, gm.gaussian_guide, x, 5000, khat=False)
    exact = gm.exact_log_px(x)
    assert abs((est.per_image - exact).mean().item()) < 0.05
    assert (est.per_image - exact).abs().max().item() < 0.15
    # and the bounds are ordered: ELBO <= IWAE_5 <= IWAE_500 <= log p(x) (on average)
    curve = bound_curve(gm.model, gm.gaussian_guide, x, ks=(1, 5, 500))
    means = [curve[k].mean for k in (1, 5, 500)]
    assert means[0] < means[1] < means[2] < exact.mean().item() + 0.02


@pytest.mark.parametrize("enumerate", ["parallel", None])
def test_the_exact_posterior_gives_log_px_for_every_k(gm, enumerate):
    # q(y|x) q(z|x,y) = p(y, z | x): every weight is p(x), whether y is summed out of a
    # mixture q(z|x) or importance-sampled
    x = gm.data(5)
    guide = lambda x: gm.mixture_guide(x, enumerate)  # noqa: E731
    for k in (1, 7):
        est = log_likelihood(gm.model, guide, x, k, khat=False)
        torch.testing.assert_close(est.per_image, gm.exact_log_px(x), atol=1e-9, rtol=0)
    torch.testing.assert_close(elbo(gm.model, guide, x, 3).per_image, gm.exact_log_px(x),
                               atol=1e-9, rtol=0)


@pytest.mark.parametrize("guide_name", ["gaussian", "mixture"])
def test_ais_sums_out_the_discrete_site(gm, guide_name):
    x = gm.data(4)
    guide = gm.gaussian_guide if guide_name == "gaussian" else (
        lambda x: gm.mixture_guide(x, error=0.3))
    est = ais_log_likelihood(gm.model, guide, x, num_steps=500, num_chains=8, num_leapfrog=3)
    assert abs((est.per_image - gm.exact_log_px(x)).mean().item()) < 0.05


def test_bdmc_bounds_hold_around_the_exact_value(gm):
    # a short schedule from a poor start, so that the sandwich is wide enough to see
    pyro.set_rng_seed(3)
    r = bdmc(gm.model, lambda x: gm.mixture_guide(x, error=0.5), torch.zeros(30, gm.dim,
             dtype=torch.float64), num_steps=5, num_chains=4, num_leapfrog=3)
    exact = gm.exact_log_px(r.x)
    assert r.lower.mean() < exact.mean() < r.upper.mean()
    assert r.gap.mean() > 0.05


def _gaussian(x, dim=2):
    return dist.Normal(torch.zeros(x.shape[0], dim, dtype=x.dtype), 1.0).to_event(1)


def _refused(match, *calls):
    for call in calls:
        with pytest.raises(ModelError, match=match):
            call()


def test_a_discrete_site_no_one_sums_out_is_refused_by_every_estimator(gm):
    x = gm.data(3)
    m, g = gm.unmarked_model, gm.gaussian_guide
    _refused("latent site 'y' is not in the guide",
             lambda: log_likelihood(m, g, x, 10), lambda: elbo(m, g, x),
             lambda: ais_log_likelihood(m, g, x, num_steps=3),
             lambda: bdmc(m, g, x, num_steps=3), lambda: inference_gap(m, g, x))


def test_a_continuous_site_missing_from_the_guide_is_refused():
    lg = LinearGaussian()

    def guide(x):
        pass

    _refused("latent site 'z' is not in the guide",
             lambda: log_likelihood(lg.model, guide, lg.data(3), 10),
             lambda: ais_log_likelihood(lg.model, guide, lg.data(3), num_steps=3))


def test_guides_that_do_not_fit_the_model_are_refused():
    lg = LinearGaussian()
    x = lg.data(3)

    def extra(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(lg.posterior_mean(x),
                                                     covariance_matrix=lg.Sigma))
            pyro.sample("w", _gaussian(x))

    def wide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", _gaussian(x, 3))

    def observed(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(lg.posterior_mean(x),
                                                     covariance_matrix=lg.Sigma))
            pyro.sample("x", dist.Normal(x, 1.0).to_event(1))

    _refused("the guide samples 'w'", lambda: log_likelihood(lg.model, extra, x, 2))
    _refused("event shape", lambda: log_likelihood(lg.model, wide, x, 2))
    _refused("observed in the model", lambda: log_likelihood(lg.model, observed, x, 2))


def test_enumeration_the_estimators_cannot_do_is_refused(gm):
    x = gm.data(3)

    def inner(x):  # an enumerated site per pixel: not one image's discrete latent
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", _gaussian(x))
            with pyro.plate("pixels", x.shape[1]):
                pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
                pyro.sample("x", dist.Normal(z[..., :1], 1.0), obs=x)

    def inner_guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", _gaussian(x))

    def sequential(x):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=gm.logits),
                            infer={"enumerate": "sequential"})
            pyro.sample("x", dist.Normal(gm.mu[y, :1], 1.0).to_event(1), obs=x[:, :1])

    _refused("in plate 'pixels' inside the data plate",
             lambda: log_likelihood(inner, inner_guide, x, 2, max_plate_nesting=2))
    _refused("sequential", lambda: log_likelihood(sequential, lambda x: None, x, 2))
    # the gap split has no Gaussian family for a discrete latent; AIS cannot move a sampled one
    _refused("inference_gap cannot be used on a model with the discrete latent site 'y'",
             lambda: inference_gap(gm.model, gm.gaussian_guide, x))
    _refused("cannot move the discrete site 'y'", lambda: ais_log_likelihood(
        gm.model, lambda x: gm.mixture_guide(x, None), x, num_steps=3))


def test_sites_outside_the_data_plate_and_too_many_plates_are_user_errors():
    lg = LinearGaussian()

    def nested(x):
        with pyro.plate("data", x.shape[0]):
            with pyro.plate("inner", 1, dim=-2):
                pyro.sample("z", _gaussian(x))

    with pytest.raises(UserError, match="max_plate_nesting is 1; pass max_plate_nesting=2"):
        log_likelihood(nested, nested, lg.data(3), 2)


def test_markov_enumeration_and_undeclared_batch_dims_are_refused(gm):
    x = gm.data(3)

    def chain(x):  # pyro.markov reuses enumeration dims: summing each out alone would be wrong
        with pyro.plate("data", x.shape[0]):
            y = 0
            for t in pyro.markov(range(3)):
                y = pyro.sample(f"y{t}", dist.Categorical(logits=gm.logits),
                                infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(gm.mu[y], 1.0).to_event(1), obs=x[:, :2])

    def stray(x):  # a batch dim no plate declares: not one image's log-density
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(2, 1, 1, dtype=x.dtype), 1.0))

    _refused("is under pyro.markov", lambda: log_likelihood(chain, lambda x: None, x, 2))
    _refused("has batch shape", lambda: log_likelihood(stray, stray, x, 2))
