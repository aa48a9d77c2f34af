"""One fixture table of every prior, likelihood and posterior, with generic tests over each entry,
and each log_prob checked against an independent computation (closed forms, scipy, autograd
Jacobians for the flows)."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scipy.stats as st
import torch
import torch.nn.functional as F
from torch.distributions import kl_divergence

from pyro_vae.build import build_vae
from pyro_vae.data import DataError
from pyro_vae.encoders import ENCODERS
from pyro_vae.likelihoods import LIKELIHOODS, _PixelBernoulli
from pyro_vae.nets import NETS
from pyro_vae.priors import PRIORS

from conftest import tiny_images

LATENT, HIDDEN, SHAPE = 3, 16, (1, 28, 28)


def vae_with(**names):
    pyro.set_rng_seed(0)
    return build_vae(SHAPE, latent_dim=LATENT, hidden_dim=HIDDEN, **names)


def grey_images(n, seed=0):
    """Pixels strictly inside (0, 1): in the support of every likelihood."""
    return tiny_images(n, binary=False, seed=seed).clamp(0.01, 0.99)


# ------------------------------------------------------------------------------------ priors


@pytest.mark.parametrize("name", list(PRIORS))
def test_prior_shapes_support_and_gradients(name):
    vae = vae_with(prior=name)
    p = vae.prior()
    assert p.event_shape == (LATENT,)
    z = p.sample((7, 5)).clone()  # (particles, batch, latent); clone: no flow cache hit
    assert z.shape == (7, 5, LATENT) and torch.isfinite(z).all()
    lp = p.log_prob(z)
    assert lp.shape == (7, 5) and torch.isfinite(lp).all()
    params = list(vae.prior.parameters())
    if params:  # learnable priors get gradients through log_prob
        p.log_prob(z).sum().backward()
        assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in params)
    # under a plate (as in the model) the prior broadcasts to the batch
    assert p.expand([4]).log_prob(z[0, :4]).shape == (4,)


def _jacobian_log_prob(base, inverse, z):
    """log p(z) = log base(f^{-1}(z)) + log |det d f^{-1} / dz|, by autograd, one z at a time."""
    out = []
    for zi in z:
        jac = torch.autograd.functional.jacobian(inverse, zi)
        out.append(base.log_prob(inverse(zi)) + torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def test_prior_log_probs_match_independent_computations():
    z = torch.randn(6, LATENT)
    # standard normal: closed form
    expected = -0.5 * (z**2).sum(-1) - 0.5 * LATENT * math.log(2 * math.pi)
    torch.testing.assert_close(vae_with(prior="normal").prior().log_prob(z), expected)
    # learned normal: scipy
    prior = vae_with(prior="learned-normal").prior
    with torch.no_grad():
        prior.loc.copy_(torch.tensor([0.5, -1.0, 2.0]))
        prior.raw_scale.copy_(torch.tensor([0.1, 1.0, -0.5]))
    scale = F.softplus(prior.raw_scale.detach())
    ref = st.norm(prior.loc.detach().numpy(), scale.numpy()).logpdf(z.numpy()).sum(-1)
    np.testing.assert_allclose(prior().log_prob(z).detach().numpy(), ref, rtol=1e-5)
    # mixture: logsumexp over components of weight x scipy density
    prior = vae_with(prior="mixture").prior
    w = torch.log_softmax(prior.logits.detach(), 0).numpy()
    locs, scales = prior.locs.detach().numpy(), F.softplus(prior.raw_scales.detach()).numpy()
    comp = np.stack([st.norm(locs[k], scales[k]).logpdf(z.numpy()).sum(-1) + w[k]
                     for k in range(len(w))])
    np.testing.assert_allclose(prior().log_prob(z).detach().numpy(),
                               np.logaddexp.reduce(comp, 0), rtol=1e-5)
    # vamp: the average of the encoder's posteriors at the pseudo-inputs
    vae = vae_with(prior="vamp")
    q = vae.encoder(torch.sigmoid(vae.prior.raw_inputs))
    k = q.batch_shape[0]
    ref = torch.logsumexp(q.log_prob(z.unsqueeze(1)), 1) - math.log(k)
    torch.testing.assert_close(vae.prior().log_prob(z), ref)
    # flow: change of variables with an autograd Jacobian
    vae = vae_with(prior="flow")
    p = vae.prior()
    inverse = lambda zi: _compose_inverse(p, zi)  # noqa: E731
    base = dist.Normal(torch.zeros(LATENT), 1.0).to_event(1)
    torch.testing.assert_close(p.log_prob(z), _jacobian_log_prob(base, inverse, z),
                               rtol=1e-4, atol=1e-4)


def _compose_inverse(transformed, z):
    for t in reversed(transformed.transforms):
        z = t.inv(z)
    return z


def test_vamp_prior_uses_the_encoder():
    vae = vae_with(prior="vamp")
    assert vae.prior.encoder is vae.encoder
    assert sum(p.numel() for p in vae.parameters()) == len(
        torch.nn.utils.parameters_to_vector(vae.parameters()))


# -------------------------------------------------------------------------------- posteriors


@pytest.fixture(params=list(NETS))
def arch(request):
    return request.param


@pytest.mark.parametrize("posterior", list(ENCODERS))
def test_posterior_shapes_and_rsample_gradients(arch, posterior):
    vae = build_vae(SHAPE, arch=arch, latent_dim=LATENT, hidden_dim=HIDDEN, posterior=posterior)
    x = tiny_images(5)
    q = vae.encoder(x)
    assert q.batch_shape == (5,) and q.event_shape == (LATENT,)
    z = q.rsample((4,))
    assert z.shape == (4, 5, LATENT)
    lp = q.log_prob(z)
    assert lp.shape == (4, 5) and torch.isfinite(lp).all()
    (lp.sum() + z.sum()).backward()
    grads = [p.grad for p in vae.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert vae.encode(x).shape == (5, LATENT)


def test_posterior_log_probs_match_independent_computations():
    x = tiny_images(4)
    z = torch.randn(4, LATENT)
    # diagonal: scipy
    enc = vae_with(posterior="diagonal").encoder
    loc, raw = enc.net(x).detach().chunk(2, -1)
    scale = F.softplus(raw) + enc.min_scale
    ref = st.norm(loc.numpy(), scale.numpy()).logpdf(z.numpy()).sum(-1)
    np.testing.assert_allclose(enc(x).log_prob(z).detach().numpy(), ref, rtol=1e-5)
    # full covariance: scipy's multivariate normal with covariance L L^T
    enc = vae_with(posterior="full").encoder
    q = enc(x)
    cov = (q.scale_tril @ q.scale_tril.transpose(-1, -2)).detach().double().numpy()
    assert np.allclose(np.triu(q.scale_tril.detach().numpy(), 1), 0)  # lower-triangular
    assert (q.scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    ref = [st.multivariate_normal(q.loc[i].detach().double().numpy(), cov[i]).logpdf(
        z[i].double().numpy()) for i in range(4)]
    np.testing.assert_allclose(q.log_prob(z).detach().numpy(), ref, rtol=1e-4)
    # flow: change of variables through the sampling map, with an autograd Jacobian
    vae = vae_with(posterior="flow")
    for flow in vae.encoder.flows:  # move the flows away from the identity they start near
        for p in flow.parameters():
            p.data.normal_(0, 0.3)
    q = vae.encoder(x[:1])
    base = q.base_dist
    eps = base.sample()[0]

    def forward(e):
        for t in q.transforms:
            e = t(e)
        return e

    y = forward(eps)
    jac = torch.autograd.functional.jacobian(forward, eps)
    expected = base.log_prob(eps.unsqueeze(0))[0] - torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(q.log_prob(y.unsqueeze(0))[0], expected, rtol=1e-4, atol=1e-4)


def test_meanfield_kl_matches_monte_carlo():
    """TraceMeanField_ELBO's closed-form KL(q || p) for the diagonal posterior against the priors
    that have one, checked against a Monte-Carlo average of log q - log p."""
    for prior in ("normal", "learned-normal"):
        vae = vae_with(prior=prior)
        if prior == "learned-normal":
            with torch.no_grad():
                vae.prior.loc.fill_(0.3)
        q, p = vae.encoder(tiny_images(3)), vae.prior()
        exact = kl_divergence(q, p.expand(q.batch_shape))
        z = q.sample((200000,))
        mc = (q.log_prob(z) - p.log_prob(z)).mean(0)
        torch.testing.assert_close(exact.detach(), mc.detach(), rtol=0.02, atol=0.02)


# ------------------------------------------------------------------------------- likelihoods


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_likelihood_shapes_with_particle_dims(arch, likelihood):
    vae = build_vae(SHAPE, arch=arch, latent_dim=LATENT, hidden_dim=HIDDEN, likelihood=likelihood)
    z = torch.randn(4, 5, LATENT, requires_grad=True)  # (particles, batch, latent)
    p = vae.likelihood(z)
    assert p.batch_shape == (4, 5) and p.event_shape == SHAPE
    x = tiny_images(5) if likelihood == "bernoulli" else grey_images(5)
    vae.likelihood.check_data(x)
    lp = p.log_prob(x)  # data broadcast against particles
    assert lp.shape == (4, 5) and torch.isfinite(lp).all()
    lp.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # the particle dims are independent: the same z gives the same distribution
    torch.testing.assert_close(vae.likelihood(z[1, 2]).log_prob(x[2]), lp[1, 2])
    # means lie in the data's range for the bounded likelihoods
    if likelihood in ("bernoulli", "continuous-bernoulli", "beta"):
        m = p.mean
        assert ((m >= 0) & (m <= 1)).all()


def test_likelihood_log_probs_match_independent_computations():
    z = torch.randn(3, LATENT)
    xb, xg = tiny_images(3), grey_images(3)
    sum_pixels = lambda a: a.reshape(3, -1).sum(-1)  # noqa: E731

    vae = vae_with(likelihood="bernoulli")
    logits = vae.likelihood.decoder(z).detach()
    ref = -F.binary_cross_entropy_with_logits(logits, xb, reduction="none")
    torch.testing.assert_close(vae.likelihood(z).log_prob(xb).detach(), sum_pixels(ref))

    vae = vae_with(likelihood="continuous-bernoulli")
    lam = torch.sigmoid(vae.likelihood.decoder(z).detach()).double()
    log_c = torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))  # normalizing constant
    ref = log_c + xg.double() * lam.log() + (1 - xg.double()) * (1 - lam).log()
    torch.testing.assert_close(vae.likelihood(z).log_prob(xg).detach().double(), sum_pixels(ref),
                               rtol=1e-4, atol=1e-3)

    for name, scipy_dist in (("gaussian", st.norm), ("gaussian-pixel", st.norm),
                             ("gaussian-image", st.norm), ("laplace", st.laplace)):
        vae = vae_with(likelihood=name)
        loc = vae.likelihood.decoder(z).detach().numpy()
        scale = vae.likelihood.scale.detach().numpy()
        ref = scipy_dist(loc, scale).logpdf(xg.numpy()).reshape(3, -1).sum(-1)
        np.testing.assert_allclose(vae.likelihood(z).log_prob(xg).detach().numpy(), ref,
                                   rtol=1e-4)

    vae = vae_with(likelihood="beta")
    m = torch.sigmoid(vae.likelihood.decoder(z).detach()).clamp(1e-4, 1 - 1e-4).numpy()
    k = (F.softplus(vae.likelihood.raw_concentration.detach()) + 1e-2).item()
    ref = st.beta(m * k, (1 - m) * k).logpdf(xg.numpy()).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(vae.likelihood(z).log_prob(xg).detach().numpy(), ref, rtol=1e-4)


def test_fused_bernoulli_matches_torch_in_value_gradient_and_behaviour():
    # The Bernoulli likelihood fuses its log-prob over pixels; torch's Independent(Bernoulli)
    # is the independent computation, with particle dims broadcast against the data.
    logits = torch.randn(4, 5, *SHAPE, requires_grad=True)  # (particles, batch, C, H, W)
    x = tiny_images(5)
    fused = _PixelBernoulli(dist.Bernoulli(logits=logits, validate_args=False), len(SHAPE))
    assert type(vae_with(likelihood="bernoulli").likelihood(torch.zeros(2, LATENT))) is type(fused)
    ref = dist.Bernoulli(logits=logits).to_event(len(SHAPE))
    lp, lp_ref = fused.log_prob(x), ref.log_prob(x)
    assert lp.shape == (4, 5)
    torch.testing.assert_close(lp, lp_ref)
    g, = torch.autograd.grad(lp.square().sum(), logits)  # a non-uniform weight per image
    g_ref, = torch.autograd.grad(lp_ref.square().sum(), logits)
    torch.testing.assert_close(g, g_ref)
    torch.testing.assert_close(fused.mean, ref.mean)
    assert fused.sample((2,)).shape == (2, 4, 5, *SHAPE)
    # Pyro's plates expand distributions: the expanded one keeps the fused log-prob
    wide = fused.expand((3, 4, 5))
    assert type(wide) is type(fused) and wide.log_prob(x).shape == (3, 4, 5)


@pytest.mark.parametrize("likelihood,bad,message", [
    ("bernoulli", "grey", "bernoulli likelihood needs binary pixels.*--binarize dynamic"),
    ("continuous-bernoulli", "above_one", "continuous-bernoulli likelihood needs pixels in"),
    ("gaussian", "nan", "gaussian likelihood needs finite pixel values"),
    ("beta", "binary", "beta likelihood needs pixels strictly inside"),
])
def test_likelihoods_refuse_data_outside_their_support(likelihood, bad, message):
    x = {"grey": grey_images(4), "above_one": grey_images(4) * 2,
         "nan": grey_images(4).index_fill(0, torch.tensor([1]), float("nan")),
         "binary": tiny_images(4)}[bad]
    with pytest.raises(DataError, match=message):
        vae_with(likelihood=likelihood).likelihood.check_data(x, "training set")


# ---------------------------------------------------------------------------------- nets, VAE


def test_nets_restore_leading_batch_dims(arch):
    enc_cls, dec_cls = NETS[arch]
    enc, dec = enc_cls(SHAPE, HIDDEN, 6), dec_cls(LATENT, HIDDEN, SHAPE)
    x = torch.rand(2, 3, *SHAPE)
    assert enc(x).shape == (2, 3, 6)
    torch.testing.assert_close(enc(x)[1, 2], enc(x[1, 2:3])[0])
    assert dec(torch.randn(2, 3, LATENT)).shape == (2, 3, *SHAPE)


def test_conv_nets_reject_sides_not_multiple_of_4():
    with pytest.raises(ValueError, match="multiples of 4"):
        NETS["conv"][0]((1, 30, 30), HIDDEN, 4)


def test_swapping_a_component_is_one_assignment():
    from pyro_vae.priors import MixturePrior

    vae = vae_with()
    vae.prior = MixturePrior(LATENT, num_components=4)
    import pyro.poutine as poutine

    tr = poutine.trace(vae.model).get_trace(tiny_images(2))
    assert isinstance(tr.nodes["z"]["fn"], dist.MixtureSameFamily) or isinstance(
        getattr(tr.nodes["z"]["fn"], "base_dist", None), dist.MixtureSameFamily)
    assert vae.generate(3).shape == (3, *SHAPE)
    assert any(p is vae.prior.logits for p in vae.parameters())  # trained with the rest
