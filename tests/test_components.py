"""Generic tests over every registered prior, likelihood and posterior, on both architectures."""

import math

import pytest
import torch
import torch.nn.functional as F

from pyro_vae.build import build_vae
from pyro_vae.encoders import ENCODERS
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.nets import NETS
from pyro_vae.priors import PRIORS

from conftest import tiny_images

LATENT, HIDDEN, SHAPE = 3, 16, (1, 28, 28)


@pytest.fixture(params=list(NETS))
def arch(request):
    return request.param


@pytest.mark.parametrize("name", list(PRIORS))
def test_prior_shapes_and_gradients(name):
    prior = PRIORS[name](LATENT)
    d = prior()
    assert d.event_shape == (LATENT,)
    z = d.rsample((7, 5))  # (particles, batch, latent)
    assert z.shape == (7, 5, LATENT)
    assert d.log_prob(z).shape == (7, 5)
    assert torch.isfinite(d.log_prob(z)).all()


def test_standard_normal_prior_log_prob_matches_closed_form():
    z = torch.randn(4, LATENT)
    expected = -0.5 * (z**2).sum(-1) - 0.5 * LATENT * math.log(2 * math.pi)
    torch.testing.assert_close(PRIORS["normal"](LATENT)().log_prob(z), expected)


@pytest.mark.parametrize("posterior", list(ENCODERS))
def test_posterior_shapes_and_rsample_gradients(arch, posterior):
    vae = build_vae(SHAPE, arch=arch, latent_dim=LATENT, hidden_dim=HIDDEN, posterior=posterior)
    x = tiny_images(5)
    q = vae.encoder(x)
    assert q.batch_shape == (5,) and q.event_shape == (LATENT,)
    z = q.rsample((4,))
    assert z.shape == (4, 5, LATENT)
    assert q.log_prob(z).shape == (4, 5)
    q.log_prob(z).sum().backward()
    grads = [p.grad for p in vae.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_likelihood_shapes_with_particle_dims(arch, likelihood):
    vae = build_vae(SHAPE, arch=arch, latent_dim=LATENT, hidden_dim=HIDDEN, likelihood=likelihood)
    z = torch.randn(4, 5, LATENT, requires_grad=True)  # (particles, batch, latent)
    p = vae.likelihood(z)
    assert p.batch_shape == (4, 5) and p.event_shape == SHAPE
    x = tiny_images(5)
    lp = p.log_prob(x)  # data broadcast against particles
    assert lp.shape == (4, 5) and torch.isfinite(lp).all()
    lp.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    # the particle dims are independent: the same z gives the same distribution
    single = vae.likelihood(z[1, 2]).log_prob(x[2])
    torch.testing.assert_close(single, lp[1, 2])


def test_bernoulli_log_prob_matches_cross_entropy(arch):
    vae = build_vae(SHAPE, arch=arch, latent_dim=LATENT, hidden_dim=HIDDEN)
    z = torch.randn(6, LATENT)
    x = tiny_images(6)
    logits = vae.likelihood.decoder(z)
    expected = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(vae.likelihood(z).log_prob(x), expected)
    torch.testing.assert_close(vae.likelihood(z).mean, torch.sigmoid(logits))


def test_bernoulli_refuses_grey_levels():
    from pyro_vae.data import DataError

    lik = LIKELIHOODS["bernoulli"]
    lik.check_data(tiny_images(4, binary=True))
    with pytest.raises(DataError, match="bernoulli.*--binarize dynamic"):
        lik.check_data(tiny_images(4, binary=False), "training set")


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
    vae = build_vae(SHAPE, latent_dim=LATENT, hidden_dim=HIDDEN)

    class ShiftedPrior(torch.nn.Module):
        def forward(self):
            import pyro.distributions as dist

            return dist.Normal(torch.full((LATENT,), 5.0), 1.0).to_event(1)

    vae.prior = ShiftedPrior()
    assert vae.generate(3).shape == (3, *SHAPE)
    import pyro.poutine as poutine

    x = tiny_images(2)
    tr = poutine.trace(vae.model).get_trace(x)
    assert torch.allclose(tr.nodes["z"]["fn"].mean, torch.tensor(5.0))
