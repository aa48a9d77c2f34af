"""Deterministic and denoising autoencoders on the VAE's own encoder net and likelihood head.

The autoencoder is ``z = e(x)`` with an encoder net of :mod:`pyro_vae.nets` whose output is the
code itself (``out_dim = latent_dim``; the VAE's has ``2 * latent_dim``, a location and a scale),
and a likelihood of :mod:`pyro_vae.likelihoods`, the very module that is the VAE's p(x|z), decoder
net inside. Its reconstruction loss is the negative log-likelihood of x at the single code e(x),

.. math:: \\ell(x) = -\\log p(x \\mid z = e(x)),

the VAE's reconstruction term at one z with no KL term, so the two are trained on the same
likelihood by construction; its reconstruction is the likelihood's mean E[x | z = e(x)]. For
the Bernoulli likelihood the loss is the cross-entropy summed over pixels (in nats); for the
Gaussian of fixed sigma it is the squared error, scaled and shifted:
sum_i (x_i - mu_i)^2 / (2 sigma^2) + D log(sigma sqrt(2 pi)) for D pixels.

The denoising autoencoder (Vincent et al., 2008) is the same network trained to map a corrupted
image back to the clean one, -log p(x | z = e(noise(x))), with noise drawn fresh for every batch.
"""

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["Autoencoder", "DenoisingAutoencoder", "fit_code_distribution"]


class Autoencoder(nn.Module):
    """A deterministic autoencoder.

    :param encoder_net: images ``(*batch, C, H, W)`` -> codes ``(*batch, latent_dim)``.
    :param likelihood: ``likelihood(z)`` -> p(x|z), a distribution over whole images (one of
        :data:`~pyro_vae.likelihoods.LIKELIHOODS`, its decoder net inside).
    """

    noise = None  # a DAE's corruption; None: the input is the target

    def __init__(self, encoder_net, likelihood):
        super().__init__()
        self.encoder_net = encoder_net
        self.likelihood = likelihood

    @property
    def latent_dim(self):
        return self.likelihood.decoder.net[0].in_features  # the decoder's first Linear takes z

    def forward(self, x):
        """p(x' | z = e(x)): the likelihood at the code of ``x``, batch shape ``(N,)``."""
        return self.likelihood(self.encoder_net(x))

    def reconstruction_loss(self, x_input, x_target):
        """Per-image loss ``(N,)``: -log p(x_target | z = e(x_input)), in nats."""
        return -self(x_input).log_prob(x_target)

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
        """The likelihood's mean E[x | z], shape ``(*z.shape[:-1], C, H, W)``."""
        return self.likelihood(z).mean

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decode(self.encode(x))


class DenoisingAutoencoder(Autoencoder):
    """An :class:`Autoencoder` trained on corrupted inputs.

    :param noise: a corruption ``noise(x, generator) -> x_noisy`` from :mod:`pyro_vae.noise`.
    """

    def __init__(self, encoder_net, likelihood, noise):
        super().__init__(encoder_net, likelihood)
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
