"""Batched application, class pairs, and interpolations in the latent space of any model."""

import torch

from pyro_vae.build import build_autoencoder, build_vae
from pyro_vae.latents import batched, class_pairs, interpolate

from conftest import tiny_images


def test_batched_equals_one_pass():
    x = tiny_images(7)
    ae = build_autoencoder((1, 28, 28), latent_dim=3, hidden_dim=16)
    torch.testing.assert_close(batched(ae.encode, x, batch_size=3), ae.encode(x))
    assert batched(ae.encode, x, batch_size=3).shape == (7, 3)


def test_class_pairs_are_the_first_images_of_consecutive_classes():
    y = torch.tensor([3, 1, 0, 1, 2, 5, 4, 0])
    assert class_pairs(y) == [(2, 1), (4, 0), (6, 5)]  # (0, 1), (2, 3), (4, 5)
    assert class_pairs(y, num_pairs=1) == [(2, 1)]


def test_interpolation_runs_from_one_reconstruction_to_the_other_for_every_model():
    x = tiny_images(2)
    for model in (build_autoencoder((1, 28, 28), latent_dim=3, hidden_dim=16),
                  build_vae((1, 28, 28), latent_dim=3, hidden_dim=16)):
        path = interpolate(model, x[0], x[1], steps=5)
        assert path.shape == (5, 1, 28, 28)
        torch.testing.assert_close(path[0], model.reconstruct(x[:1])[0])
        torch.testing.assert_close(path[-1], model.reconstruct(x[1:])[0])
        z = model.encode(x)  # the middle image decodes the midpoint of the two codes
        torch.testing.assert_close(path[2], model.decode(z.mean(0, keepdim=True))[0])
