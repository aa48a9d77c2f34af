import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO

from pyro_vae.build import build_vae
from pyro_vae.objectives import IWAE
from pyro_vae.train import make_elbo

from conftest import tiny_images


def small_vae(**kw):
    pyro.set_rng_seed(0)
    return build_vae((1, 28, 28), latent_dim=4, hidden_dim=32, **kw)


def test_iwae_equals_pyro_renyi_alpha0_value_and_gradients():
    vae, x = small_vae(), tiny_images(6)
    pyro.set_rng_seed(1)
    ours = IWAE(num_particles=5).differentiable_loss(vae.model, vae.guide, x)
    ours.backward()
    ours_grads = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad()

    # Pyro's RenyiELBO(alpha=0) needs param sites for its gradients: register the module.
    def model(x):
        pyro.module("vae", vae)
        vae.model(x)

    def guide(x):
        pyro.module("vae", vae)
        vae.guide(x)

    renyi = RenyiELBO(alpha=0.0, num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(1)
    theirs = renyi.loss_and_grads(model, guide, x)
    torch.testing.assert_close(ours.item(), theirs, rtol=1e-5, atol=1e-3)
    for a, p in zip(ours_grads, vae.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-5)


def test_iwae_with_one_particle_is_the_elbo_in_expectation():
    vae, x = small_vae(), tiny_images(4)
    iwae, trace = make_elbo("iwae", num_particles=1), Trace_ELBO(max_plate_nesting=1)
    with torch.no_grad():
        a = torch.tensor([iwae.differentiable_loss(vae.model, vae.guide, x).item()
                          for _ in range(400)])
        b = torch.tensor([trace.loss(vae.model, vae.guide, x) for _ in range(400)])
    se = (a.var() / 400 + b.var() / 400).sqrt()
    assert abs(a.mean() - b.mean()) < 4 * se
    # and a larger K gives a smaller loss (a tighter bound) on average
    iwae50 = make_elbo("iwae", num_particles=50)
    with torch.no_grad():
        c = torch.tensor([iwae50.differentiable_loss(vae.model, vae.guide, x).item()
                          for _ in range(50)])
    assert c.mean() < a.mean() - 4 * se


@pytest.mark.parametrize("elbo", ["trace", "meanfield", "iwae"])
def test_beta_scales_exactly_the_kl_part(elbo):
    """loss(beta) = reconstruction + beta * KL term, for the same random draws: so
    loss(2) - loss(1) == loss(1) - loss(1/2) * 2. For IWAE the scale enters every log weight."""
    vae, x = small_vae(), tiny_images(5)
    loss = make_elbo(elbo, num_particles=3 if elbo == "iwae" else 1)

    def at(beta):
        pyro.set_rng_seed(7)
        with torch.no_grad():
            return loss.differentiable_loss(vae.model, vae.guide, x, kl_scale=beta).item()

    l0, l1, l2 = at(0.5), at(1.0), at(2.0)
    if elbo == "iwae":  # logsumexp is not linear in beta; check against a hand computation
        pyro.set_rng_seed(7)
        with pyro.plate("particles", 3, dim=-2):
            g = poutine.trace(vae.guide).get_trace(x)
            m = poutine.trace(poutine.replay(vae.model, trace=g)).get_trace(x)
        kl = (g.nodes["z"]["fn"].log_prob(g.nodes["z"]["value"])
              - m.nodes["z"]["fn"].log_prob(g.nodes["z"]["value"]))
        rec = m.nodes["x"]["fn"].log_prob(x)
        w = rec - 2.0 * kl  # (3, 5)
        expected = -(torch.logsumexp(w, 0) - torch.log(torch.tensor(3.0))).sum()
        torch.testing.assert_close(l2, expected.item(), rtol=1e-5, atol=1e-3)
    else:
        torch.testing.assert_close(l2 - l1, 2 * (l1 - l0), rtol=1e-4, atol=1e-3)
        assert l1 != l0


def test_kl_schedule_warms_up_linearly():
    from pyro_vae.train import kl_schedule

    s = kl_schedule(beta=2.0, warmup_epochs=4)
    assert [s(e) for e in (1, 2, 4, 10)] == [0.5, 1.0, 2.0, 2.0]
    assert kl_schedule(0.5)(1) == 0.5


def test_beta_is_an_argument_not_state_and_one_adds_no_messenger(monkeypatch):
    """An interrupted fit cannot leave beta != 1 behind: the VAE holds no KL weight, and a caller
    that does not pass one (every estimator) traces the true model."""
    import pyro_vae.vae as vae_module

    vae, x = small_vae(), tiny_images(4)
    assert not hasattr(vae, "kl_scale")
    for beta in (0.5, 2.0):
        g = poutine.trace(vae.guide).get_trace(x, kl_scale=beta)
        m = poutine.trace(poutine.replay(vae.model, trace=g)).get_trace(x, kl_scale=beta)
        assert g.nodes["z"]["scale"] == m.nodes["z"]["scale"] == beta
        assert m.nodes["x"]["scale"] == 1.0  # the reconstruction term is never scaled

    def no_scale_messenger(*args, **kwargs):
        raise AssertionError("beta = 1 must not build a scale messenger")

    monkeypatch.setattr(vae_module.poutine, "scale", no_scale_messenger)
    g = poutine.trace(vae.guide).get_trace(x)
    m = poutine.trace(poutine.replay(vae.model, trace=g)).get_trace(x, kl_scale=1.0)
    assert g.nodes["z"]["scale"] == m.nodes["z"]["scale"] == 1.0
