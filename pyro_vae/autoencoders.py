"""Deterministic and denoising autoencoders on the VAE's own encoder/decoder networks.

The autoencoder is ``z = e(x)``, ``x_hat = sigmoid(d(z))`` with the nets of :mod:`pyro_vae.nets`
(the encoder net's output is the code itself, ``out_dim = latent_dim``; the VAE's has
``2 * latent_dim`` for a location and a scale). It minimizes a reconstruction loss per image,
summed over pixels, that matches the VAE's likelihood:

- ``"bce"``: sum_i -[x_i log x_hat_i + (1 - x_i) log(1 - x_hat_i)], the negative log-likelihood
  of a Bernoulli decoder with logits d(z), in nats: the VAE's reconstruction term at one z;
- ``"mse"``: sum_i (x_i - x_hat_i)^2, for grey levels (a Gaussian decoder up to scale and constant).

The denoising autoencoder (Vincent et al., 2008) is the same network trained to map a corrupted
image back to the clean one, loss(x | e(noise(x))), with noise drawn fresh for every batch.
"""

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LOSSES", "Autoencoder", "DenoisingAutoencoder", "fit_code_distribution"]

LOSSES = ("bce", "mse")


class Autoencoder(nn.Module):
    """A deterministic autoencoder.

    :param encoder_net: images ``(*batch, C, H, W)`` -> codes ``(*batch, latent_dim)``.
    :param decoder_net: codes -> logits ``(*batch, C, H, W)``; the reconstruction is their sigmoid.
    :param loss: ``"bce"`` (binary pixels) or ``"mse"`` (grey levels).
    """

    noise = None  # a DAE's corruption; None: the input is the target

    def __init__(self, encoder_net, decoder_net, loss="bce"):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
        self.encoder_net = encoder_net
        self.decoder_net = decoder_net
        self.loss_name = loss

    @property
    def latent_dim(self):
        return self.decoder_net.net[0].in_features  # the decoder's first Linear takes z

    def forward(self, x):
        """Decoder logits of the reconstruction of ``x``: ``d(e(x))``, shape of ``x``."""
        return self.decoder_net(self.encoder_net(x))

    def reconstruction_loss(self, x_input, x_target):
        """Per-image loss ``(N,)`` of reconstructing ``x_target`` from ``x_input``, summed over
        pixels (nats for ``"bce"``, squared error for ``"mse"``)."""
        logits = self(x_input)
        if self.loss_name == "bce":
            per_pixel = F.binary_cross_entropy_with_logits(logits, x_target, reduction="none")
        else:
            per_pixel = (torch.sigmoid(logits) - x_target) ** 2
        return per_pixel.flatten(1).sum(-1)

    def training_loss(self, x, generator=None):
        """The objective summed over the batch: clean reconstruction for the AE; for the DAE,
        reconstruction of ``x`` from ``noise(x)`` with noise drawn from ``generator``."""
        x_input = x if self.noise is None else self.noise(x, generator)
        return self.reconstruction_loss(x_input, x).sum()

    # Views used by plots and reports, matching the VAE's.

    @torch.no_grad()
    def encode(self, x):
        """The code e(x), shape ``(N, latent_dim)``."""
        return self.encoder_net(x)

    @torch.no_grad()
    def decode(self, z):
        """The reconstruction sigmoid(d(z)) in [0, 1], shape ``(N, C, H, W)``."""
        return torch.sigmoid(self.decoder_net(z))

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decode(self.encode(x))


class DenoisingAutoencoder(Autoencoder):
    """An :class:`Autoencoder` trained on corrupted inputs.

    :param noise: a corruption ``noise(x, generator) -> x_noisy`` from :mod:`pyro_vae.noise`.
    """

    def __init__(self, encoder_net, decoder_net, noise, loss="bce"):
        super().__init__(encoder_net, decoder_net, loss)
        if noise is None:
            raise ValueError("a denoising autoencoder needs a noise model")
        self.noise = noise


def fit_code_distribution(codes, jitter=1e-4):
    """The Gaussian N(mean, Cov) fitted (maximum likelihood) to codes ``(N, latent_dim)``:
    the simplest "prior" an autoencoder can be given after training, to draw new codes from.
    ``jitter`` is added to the covariance's diagonal so that it stays positive definite."""
    mean = codes.mean(0)
    centred = codes - mean
    cov = centred.T @ centred / codes.shape[0]
    cov = cov + jitter * torch.eye(codes.shape[1], dtype=codes.dtype, device=codes.device)
    return dist.MultivariateNormal(mean, covariance_matrix=cov)
