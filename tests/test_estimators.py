"""Per-image estimators against a linear-Gaussian model, whose log p(x) is known exactly.

z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D)  =>  x ~ N(b, W W^T + s^2 I_D), and the posterior is
q*(z | x) = N(mu, Sigma), Sigma = (I + W^T W / s^2)^{-1}, mu = Sigma W^T (x - b) / s^2.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.estimators import elbo, log_likelihood, log_weights, pareto_khat

D, LATENT, S = 5, 2, 0.7


class LinearGaussian:
    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(D, LATENT, generator=g, dtype=torch.float64)
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        eye = torch.eye(LATENT, dtype=torch.float64)
        self.Sigma = torch.linalg.inv(eye + self.W.T @ self.W / S**2)

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + S**2 * torch.eye(D, dtype=torch.float64)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def posterior_mean(self, x):
        return (x - self.b) @ self.W @ self.Sigma.T / S**2  # (N, LATENT)

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(LATENT, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, S).to_event(1), obs=x)

    def exact_guide(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(self.posterior_mean(x),
                                                     covariance_matrix=self.Sigma))

    def poor_guide(self, x):
        # right mean direction, shrunk; too wide, diagonal: an imperfect but safe proposal
        scale = 1.5 * self.Sigma.diagonal().sqrt()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.8 * self.posterior_mean(x), scale).to_event(1))

    def data(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, LATENT, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + S * torch.randn(n, D, generator=g, dtype=torch.float64)


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian()


@pytest.mark.parametrize("k", [1, 7, 100])
def test_exact_posterior_gives_exact_log_px_for_every_k(lg, k):
    x = lg.data(20)
    est = log_likelihood(lg.model, lg.exact_guide, x, num_samples=k, khat=False)
    torch.testing.assert_close(est.per_image, lg.exact_log_px(x), rtol=0, atol=1e-9)
    torch.testing.assert_close(est.elbo, lg.exact_log_px(x), rtol=0, atol=1e-9)
    # every weight equal: the effective sample size is K
    torch.testing.assert_close(est.ess, torch.full((20,), float(k), dtype=est.ess.dtype))


def test_log_weights_are_per_image(lg):
    x = lg.data(6)
    pyro.set_rng_seed(3)
    w_all = log_weights(lg.model, lg.poor_guide, x, 4)
    assert w_all.shape == (4, 6)
    # weights of one image do not depend on which other images are in the batch
    pyro.set_rng_seed(3)
    z = pyro.sample("z_probe", dist.Normal(0.8 * lg.posterior_mean(x), 1.5 * lg.Sigma.diagonal().sqrt()).to_event(1).expand([4, 6]))
    log_q = dist.Normal(0.8 * lg.posterior_mean(x), 1.5 * lg.Sigma.diagonal().sqrt()).to_event(1).log_prob(z)
    log_p = dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1).log_prob(z) + dist.Normal(
        z @ lg.W.T + lg.b, S).to_event(1).log_prob(x)
    torch.testing.assert_close(w_all, log_p - log_q)


def test_poor_guide_bounds_are_ordered_and_converge(lg):
    x = lg.data(200)
    exact = lg.exact_log_px(x).mean().item()
    pyro.set_rng_seed(0)
    e = elbo(lg.model, lg.poor_guide, x, num_samples=20).mean
    i5 = log_likelihood(lg.model, lg.poor_guide, x, num_samples=5, khat=False).mean
    i50 = log_likelihood(lg.model, lg.poor_guide, x, num_samples=50, khat=False).mean
    i5000 = log_likelihood(lg.model, lg.poor_guide, x, num_samples=5000, khat=False).mean
    assert e < i5 < i50 <= exact + 1e-3
    assert exact - e > 0.1  # the guide is poor enough for the ordering to mean something
    assert abs(i5000 - exact) < 0.05


def test_chunking_and_batching_do_not_change_results(lg):
    x = lg.data(12)
    pyro.set_rng_seed(5)
    whole = log_likelihood(lg.model, lg.poor_guide, x, num_samples=64, khat=False)
    # chunks of samples: the same random stream when images are in one batch
    pyro.set_rng_seed(5)
    chunked = log_likelihood(lg.model, lg.poor_guide, x, num_samples=64, chunk_size=64,
                             khat=False)
    torch.testing.assert_close(whole.per_image, chunked.per_image)
    # streaming logsumexp over chunks == one logsumexp over all the weights
    pyro.set_rng_seed(6)
    w = torch.cat([log_weights(lg.model, lg.poor_guide, x, 16) for _ in range(4)])
    pyro.set_rng_seed(6)
    streamed = log_likelihood(lg.model, lg.poor_guide, x, num_samples=64, chunk_size=16,
                              khat=False)
    torch.testing.assert_close(streamed.per_image, torch.logsumexp(w, 0) - math.log(64))
    torch.testing.assert_close(streamed.elbo, w.mean(0))
    ess = torch.exp(2 * torch.logsumexp(w, 0) - torch.logsumexp(2 * w, 0))
    torch.testing.assert_close(streamed.ess, ess)
    # image batches: statistically the same answer (different draws), exact for the exact guide
    a = log_likelihood(lg.model, lg.exact_guide, x, num_samples=8, batch_size=5, khat=False)
    b = log_likelihood(lg.model, lg.exact_guide, x, num_samples=8, batch_size=12, khat=False)
    torch.testing.assert_close(a.per_image, b.per_image)


def test_khat_flags_heavy_tailed_weights():
    g = torch.Generator().manual_seed(0)
    light = torch.randn(3, 2000, generator=g) * 0.1  # near-uniform weights
    heavy = torch.distributions.Pareto(1.0, 1.0 / 1.5).sample((3, 2000)).log()  # tail index 1.5
    k_light, k_heavy = pareto_khat(light), pareto_khat(heavy)
    assert k_light.shape == (3,)
    assert (k_light < 0.5).all()
    assert (k_heavy > 1.0).all()


def test_sites_outside_the_data_plate_are_refused(lg):
    def model(x):
        pyro.sample("w", dist.Normal(0.0, 1.0))  # a global latent: no per-image log p(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(torch.zeros(D, dtype=x.dtype), 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'w' is outside plate 'data'"):
        log_likelihood(model, guide, lg.data(3), num_samples=2)


def test_num_samples_must_be_positive(lg):
    with pytest.raises(ValueError, match="positive"):
        log_likelihood(lg.model, lg.exact_guide, lg.data(2), num_samples=0)


@pytest.mark.parametrize("k", [21, 26, 100, 1000, 5000])
def test_khat_equals_arviz_psis_on_the_full_weights(k):
    import warnings

    from arviz import psislw

    g = torch.Generator().manual_seed(k)
    lw = torch.cat([torch.randn(2, k, generator=g) * 0.1, torch.randn(2, k, generator=g) * 3,
                    torch.distributions.Pareto(1.0, 1 / 1.5).sample((2, k)).log()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, expected = psislw(lw.double().numpy())
    torch.testing.assert_close(pareto_khat(lw), torch.as_tensor(expected, dtype=torch.float32))


@pytest.mark.parametrize("k", [1, 2, 5, 20])
def test_khat_is_nan_where_undefined_and_the_summary_stays_json(lg, k):
    """Too few weights for a Pareto tail (K < 21): NaN, not ArviZ's IndexError (K = 1) or inf;
    summary() gives null there, and json.dumps(allow_nan=False) accepts it."""
    import json

    assert torch.isnan(pareto_khat(torch.randn(3, k))).all()
    est = log_likelihood(lg.model, lg.poor_guide, lg.data(1), num_samples=k)
    assert torch.isnan(est.khat).all() and not est.unreliable.any()
    summary = est.summary()
    assert summary["khat_max"] is None and summary["frac_unreliable"] is None
    assert summary["stderr"] is None  # one image: no spread over images
    json.dumps(summary, allow_nan=False)


def test_streaming_khat_equals_khat_of_all_weights_and_keeps_only_the_tail(lg, monkeypatch):
    """The estimator's streaming top-(M + 1) gives the k-hat of all K weights, chunk by chunk,
    and never holds more than M + 1 + one chunk of weights per image."""
    import pyro_vae.estimators as est_mod

    x, k, chunk = lg.data(7), 3000, 64
    pyro.set_rng_seed(11)
    w = torch.cat([log_weights(lg.model, lg.poor_guide, x, min(chunk, k - s))
                   for s in range(0, k, chunk)])
    sizes = []
    real_cat = torch.cat

    def watching_cat(tensors, *args, **kwargs):
        out = real_cat(tensors, *args, **kwargs)
        sizes.append(out.shape[0])
        return out

    monkeypatch.setattr(est_mod.torch, "cat", watching_cat)
    pyro.set_rng_seed(11)
    est = log_likelihood(lg.model, lg.poor_guide, x, num_samples=k, chunk_size=chunk)
    monkeypatch.undo()
    torch.testing.assert_close(est.khat, pareto_khat(w.T))
    m = est_mod.psis_tail_size(k)
    assert m == 165 and max(sizes) <= m + 1 + chunk
