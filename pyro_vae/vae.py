"""The variational autoencoder as a Pyro program: a ``model`` and a ``guide`` over one plate.

.. math::

    p(x, z) = p(z)\\, p(x \\mid z), \\qquad q(z \\mid x) \\text{ the encoder},

    \\mathrm{ELBO}(x) = \\mathbb{E}_{q(z|x)}[\\log p(x \\mid z)] - \\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z))
    \\le \\log p(x).

The VAE never asks what kind of prior, likelihood or encoder it holds: each is a module whose
forward returns a distribution, so swapping one is one assignment (``vae.prior = MyPrior(16)``).

The KL weight beta of the beta-VAE is an argument of ``model`` and ``guide`` (as Pyro's dmm
example passes ``annealing_factor``), never state on the module: whoever does not pass it, every
estimator of log p(x) included, gets the true model.
"""

from contextlib import nullcontext

import pyro
import pyro.poutine as poutine
import torch
from torch import nn

__all__ = ["VAE", "mean_of"]


def mean_of(d, num_samples=100):
    """The mean of the distribution ``d``, or the average of ``num_samples`` draws where it has
    no closed form (e.g. a flow)."""
    try:
        return d.mean
    except NotImplementedError:
        return d.sample((num_samples,)).mean(0)


def _scaled(kl_scale):
    # No messenger at all at beta = 1: the common case pays nothing for the option.
    return poutine.scale(scale=kl_scale) if kl_scale != 1.0 else nullcontext()


class VAE(nn.Module):
    """A VAE with sample sites ``"z"`` (latent) and ``"x"`` (observed) inside ``plate("data")``.

    :param encoder: ``encoder(x)`` -> q(z|x), batch shape ``(N,)``, event shape ``(latent_dim,)``.
    :param likelihood: ``likelihood(z)`` -> p(x|z), event shape the image shape.
    :param prior: ``prior()`` -> p(z), event shape ``(latent_dim,)``.
    """

    max_plate_nesting = 1  # only plate("data"); estimators put particle plates to its left

    def __init__(self, encoder, likelihood, prior):
        super().__init__()
        self.encoder = encoder
        self.likelihood = likelihood
        self.prior = prior

    def model(self, x, kl_scale=1.0):
        """p(z) p(x|z); ``kl_scale`` (beta) scales log p(z) at site ``"z"``."""
        with pyro.plate("data", x.shape[0]):
            with _scaled(kl_scale):
                z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(z), obs=x)

    def guide(self, x, kl_scale=1.0):
        """q(z|x); ``kl_scale`` (beta) scales log q(z|x) at site ``"z"``, so that
        ELBO_beta = E_q[log p(x|z)] - beta KL(q || p). 1 is the true ELBO."""
        with pyro.plate("data", x.shape[0]):
            with _scaled(kl_scale):
                pyro.sample("z", self.encoder(x))

    # Convenience views used by plots and reports; no Pyro machinery needed.

    @torch.no_grad()
    def encode(self, x, num_samples=100):
        """The posterior mean E_q[z | x], shape ``(N, latent_dim)``; a Monte-Carlo average of
        ``num_samples`` draws where q has no closed-form mean (e.g. a flow)."""
        return mean_of(self.encoder(x), num_samples)

    @torch.no_grad()
    def decode(self, z):
        """The likelihood's mean E_p[x | z], shape ``(*z.shape[:-1], *image_shape)``."""
        return self.likelihood(z).mean

    @torch.no_grad()
    def reconstruct(self, x):
        """The likelihood's mean at the posterior mean: E_p[x | z = E_q[z | x]]."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def generate(self, num_samples):
        """Likelihood means at prior draws z ~ p(z): ``(num_samples, *image_shape)``."""
        return self.decode(self.prior().sample((num_samples,)))
