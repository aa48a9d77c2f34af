import torch
from torch.distributions import kl_divergence

from pyro_vae.build import build_vae
from pyro_vae.diagnostics import active_units, kl_per_dimension

from conftest import tiny_images


def test_kl_per_dimension_sums_to_the_full_kl():
    vae = build_vae((1, 28, 28), latent_dim=6, hidden_dim=32)
    x = tiny_images(40)
    kl = kl_per_dimension(vae, x, batch_size=15)
    assert kl.shape == (6,) and (kl >= 0).all()
    full = kl_divergence(vae.encoder(x), vae.prior().expand([40])).mean()
    torch.testing.assert_close(kl.sum(), full)


def test_active_units_is_the_variance_of_posterior_means():
    vae = build_vae((1, 28, 28), latent_dim=6, hidden_dim=32)
    with torch.no_grad():  # make dimension 0 ignore the input: an inactive unit
        head = vae.encoder.net.net[-1]
        head.weight[0].zero_()
    x = tiny_images(40)
    activity, count = active_units(vae, x, batch_size=7)
    means = vae.encoder(x).mean.detach()
    torch.testing.assert_close(activity, means.var(0))
    assert activity[0] == 0 and count == int((activity > 0.01).sum())
