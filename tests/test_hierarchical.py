"""The two-stochastic-layer VAE: the estimators of log p(x), written for any model and guide,
work on it unchanged, against the exact log p(x) of a Gaussian chain z2 -> z1 -> x; and
build_vae makes the IWAE paper's architecture, saved and reloaded like a one-layer VAE."""

import pyro
import pyro.poutine as poutine
import pytest
import torch

from pyro_vae.ais import ais_log_likelihood
from pyro_vae.build import build_vae, vae_from_checkpoint
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import bound_curve, log_likelihood
from pyro_vae.hierarchical import TwoLayerVAE
from pyro_vae.train import fit, make_elbo

from closed_form import GaussianChain
from conftest import tiny_images


def _chain_vae(chain, guide_error):
    return TwoLayerVAE(chain.encoder(guide_error), chain.upper_encoder(guide_error),
                       chain.transition, chain.likelihood, chain.prior)


def test_with_the_exact_posterior_every_estimate_is_exact():
    # q(z1|x) q(z2|z1) = p(z1, z2 | x): every importance weight equals p(x), at any K
    chain = GaussianChain()
    vae, x = _chain_vae(chain, 0.0), chain.data(20)
    for k in (1, 7):
        est = log_likelihood(vae.model, vae.guide, x, num_samples=k, khat=False)
        torch.testing.assert_close(est.per_image.double(), chain.exact_log_px(x), rtol=0,
                                   atol=1e-6)


def test_with_a_poor_guide_the_bounds_are_ordered_and_ais_closes_the_gap():
    chain = GaussianChain()
    vae, x = _chain_vae(chain, 0.5), chain.data(30)
    exact = chain.exact_log_px(x).mean().item()
    curve = bound_curve(vae.model, vae.guide, x, ks=(1, 10, 1000))
    means = [curve[k].mean for k in (1, 10, 1000)]
    assert means[0] < means[1] < means[2] < exact + 0.02
    assert exact - means[0] > 0.5  # the guide is poor enough for the test to mean something
    pyro.set_rng_seed(0)
    ais = ais_log_likelihood(vae.model, vae.guide, x, num_steps=300, num_chains=16,
                             num_leapfrog=5)
    assert abs(ais.per_image.mean().item() - exact) < 0.03


def test_build_vae_makes_the_iwae_papers_two_layer_architecture():
    # Burda et al. (2016), Table 1: 784-(200-200)-100-(100-100)-50, tanh
    vae = build_vae((1, 28, 28), latent_dim=50, hidden_dim=200, depth=2, activation="tanh",
                    stochastic_layers=2)
    shapes = lambda module: [tuple(m.weight.shape[::-1]) for m in module.modules()  # noqa: E731
                             if isinstance(m, torch.nn.Linear)]
    assert shapes(vae.encoder) == [(784, 200), (200, 200), (200, 2 * 100)]
    assert shapes(vae.upper_encoder) == [(100, 100), (100, 100), (100, 2 * 50)]
    assert shapes(vae.transition) == [(50, 100), (100, 100), (100, 2 * 100)]
    assert shapes(vae.likelihood) == [(100, 200), (200, 200), (200, 784)]
    assert all(isinstance(m, torch.nn.Tanh) for m in vae.encoder.net.net[1::2])


def test_sites_shapes_and_the_kl_weight_on_both_latent_layers():
    vae = build_vae((1, 28, 28), latent_dim=3, hidden_dim=16, stochastic_layers=2)
    x = tiny_images(5)
    guide = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
    assert [n for n in guide.nodes if n in ("z1", "z2")] == ["z1", "z2"]  # bottom-up
    assert [n for n in model.nodes if n in ("z1", "z2", "x")] == ["z2", "z1", "x"]  # top-down
    assert guide.nodes["z1"]["value"].shape == (5, 6) and guide.nodes["z2"]["value"].shape == (5, 3)
    # beta multiplies log p and log q of both latent sites, and nothing else
    scaled_guide = poutine.trace(poutine.replay(vae.guide, trace=guide)).get_trace(x, 0.25)
    scaled = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x, 0.25)
    for trace, ref in ((scaled, model), (scaled_guide, guide)):
        for name in ("z1", "z2"):
            torch.testing.assert_close(trace.nodes[name]["fn"].log_prob(
                trace.nodes[name]["value"]) * trace.nodes[name]["scale"],
                0.25 * ref.nodes[name]["fn"].log_prob(ref.nodes[name]["value"]))
    assert scaled.nodes["x"]["scale"] == 1.0
    assert vae.encode(x).shape == (5, 3) and vae.decode(torch.zeros(2, 3)).shape == (2, 1, 28, 28)
    assert vae.reconstruct(x).shape == (5, 1, 28, 28) and vae.generate(4).shape == (4, 1, 28, 28)


def test_a_trained_two_layer_vae_reloads_strictly_from_its_config():
    options = dict(latent_dim=3, hidden_dim=16, depth=2, activation="silu", stochastic_layers=2)
    vae = build_vae((1, 28, 28), **options)
    x = tiny_images(64)
    rows = fit(vae, make_elbo("trace"), torch.optim.Adam(vae.parameters(), lr=1e-2), x, x[:8],
               epochs=3, batch_size=16, binarize="none", generator=torch.Generator(),
               progress=False)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    state = {"model": vae.state_dict(), "config": {"model": "vae", **options}}
    again = vae_from_checkpoint(state, (1, 28, 28))
    assert isinstance(again, TwoLayerVAE)
    for a, b in zip(again.state_dict().values(), vae.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(Exception, match="do not fit"):
        vae_from_checkpoint({**state, "config": {"model": "vae", **options,
                                                 "stochastic_layers": 1}}, (1, 28, 28))


def test_a_config_from_before_the_options_builds_the_old_one_layer_relu_vae():
    old = build_vae((1, 28, 28), latent_dim=4, hidden_dim=16)
    state = {"model": old.state_dict(), "config": {"model": "vae", "latent_dim": 4,
                                                   "hidden_dim": 16}}
    vae = vae_from_checkpoint(state, (1, 28, 28))
    assert type(vae).__name__ == "VAE"
    assert [type(m).__name__ for m in vae.encoder.net.net] == ["Linear", "ReLU", "Linear"]


def test_the_vamp_prior_and_three_layers_are_refused():
    with pytest.raises(ConfigError, match="VampPrior"):
        build_vae((1, 28, 28), latent_dim=3, hidden_dim=16, prior="vamp", stochastic_layers=2)
    with pytest.raises(ConfigError, match="1 or 2"):
        build_vae((1, 28, 28), latent_dim=3, hidden_dim=16, stochastic_layers=3)


def test_the_views_work_under_a_flow_posterior_without_a_closed_form_mean():
    vae = build_vae((1, 28, 28), latent_dim=3, hidden_dim=16, posterior="flow",
                    stochastic_layers=2)
    x = tiny_images(4)
    assert vae.encode(x).shape == (4, 3) and vae.reconstruct(x).shape == (4, 1, 28, 28)
    with pytest.raises(ConfigError, match="depth must be a positive"):
        build_vae((1, 28, 28), latent_dim=3, hidden_dim=16, depth=0, stochastic_layers=2)
