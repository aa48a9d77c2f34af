"""A VAE with two stochastic layers as a Pyro program (Burda et al., 2016, the two-layer
architecture of Table 1).

.. math::

    p(x, z_1, z_2) = p(z_2)\\, p(z_1 \\mid z_2)\\, p(x \\mid z_1), \\qquad
    q(z_1, z_2 \\mid x) = q(z_1 \\mid x)\\, q(z_2 \\mid z_1),

    \\mathrm{ELBO}(x) = \\mathbb{E}_q\\big[\\log p(x \\mid z_1) + \\log p(z_1 \\mid z_2)
    + \\log p(z_2) - \\log q(z_1 \\mid x) - \\log q(z_2 \\mid z_1)\\big] \\le \\log p(x).

The model draws top-down (z2 -> z1 -> x), the guide bottom-up (x -> z1 -> z2). Every piece is a
module that returns a distribution, as in :class:`~pyro_vae.vae.VAE`: ``prior()`` is p(z2),
``transition(z2)`` is p(z1 | z2), ``likelihood(z1)`` is p(x | z1), ``encoder(x)`` is q(z1 | x)
and ``upper_encoder(z1)`` is q(z2 | z1). The estimators of log p(x) (IWAE, AIS, BDMC) need
nothing beyond ``model`` and ``guide``: they sum over whatever latent sites the traces hold.
"""

import pyro
import torch
from torch import nn

from .protocol import CodeViews, mean_of
from .vae import _scaled

__all__ = ["TwoLayerVAE"]


class TwoLayerVAE(CodeViews, nn.Module):
    """A VAE with sample sites ``"z2"``, ``"z1"`` (latent) and ``"x"`` (observed) inside
    ``plate("data")``.

    :param encoder: ``encoder(x)`` -> q(z1 | x), batch ``(N,)``, event ``(z1_dim,)``.
    :param upper_encoder: ``upper_encoder(z1)`` -> q(z2 | z1), event ``(latent_dim,)``.
    :param transition: ``transition(z2)`` -> p(z1 | z2), event ``(z1_dim,)``.
    :param likelihood: ``likelihood(z1)`` -> p(x | z1), event the image shape.
    :param prior: ``prior()`` -> p(z2), event ``(latent_dim,)``.
    """

    max_plate_nesting = 1  # only plate("data")

    def __init__(self, encoder, upper_encoder, transition, likelihood, prior):
        super().__init__()
        self.encoder = encoder
        self.upper_encoder = upper_encoder
        self.transition = transition
        self.likelihood = likelihood
        self.prior = prior

    def model(self, x, kl_scale=1.0):
        """p(z2) p(z1|z2) p(x|z1); ``kl_scale`` (beta) scales log p at both latent sites."""
        with pyro.plate("data", x.shape[0]):
            with _scaled(kl_scale):
                z2 = pyro.sample("z2", self.prior())
                z1 = pyro.sample("z1", self.transition(z2))
            pyro.sample("x", self.likelihood(z1), obs=x)

    def guide(self, x, kl_scale=1.0):
        """q(z1|x) q(z2|z1); ``kl_scale`` scales log q at both sites (1 is the true ELBO)."""
        with pyro.plate("data", x.shape[0]):
            with _scaled(kl_scale):
                z1 = pyro.sample("z1", self.encoder(x))
                pyro.sample("z2", self.upper_encoder(z1))

    # The views of pyro_vae.protocol.CodeViews. The "code" of an image is the top latent z2,
    # the one whose prior is simple; means are taken layer by layer.

    def code_posterior(self, x, num_samples=100):
        """q(z2 | z1 = E_q[z1 | x]): the top code, layer by layer (a mean without closed form,
        e.g. a flow's, averages ``num_samples`` draws)."""
        return self.upper_encoder(mean_of(self.encoder(x), num_samples))

    def code_prior(self):
        return self.prior()

    def code_likelihood(self, z2):
        """p(x | z1 = E_p[z1 | z2]): the mean path down from z2."""
        return self.likelihood(self.transition(z2).mean)

    @torch.no_grad()
    def reconstruct(self, x, num_samples=100):
        """E_p[x | z1 = E_q[z1 | x]]: the bottom layer reconstructs, as in a one-layer VAE."""
        return self.likelihood(mean_of(self.encoder(x), num_samples)).mean

    @torch.no_grad()
    def generate(self, num_samples):
        """Likelihood means at ancestral draws z2 ~ p(z2), z1 ~ p(z1 | z2)."""
        z2 = self.prior().sample((num_samples,))
        return self.likelihood(self.transition(z2).sample()).mean
