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
from torch import nn

from .protocol import CodeViews, mean_of

__all__ = ["VAE", "mean_of"]


def _scaled(kl_scale):
    # No messenger at all at beta = 1: the common case pays nothing for the option.
    return poutine.scale(scale=kl_scale) if kl_scale != 1.0 else nullcontext()


class VAE(CodeViews, nn.Module):
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

    # The views of pyro_vae.protocol.CodeViews: the code is z.

    def code_posterior(self, x, num_samples=100):
        return self.encoder(x)

    def code_prior(self):
        return self.prior()

    def code_likelihood(self, z):
        return self.likelihood(z)
