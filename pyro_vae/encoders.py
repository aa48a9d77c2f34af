"""Posteriors q(z|x): modules whose ``forward(x)`` returns a distribution over ``(latent_dim,)``.

For images ``(N, C, H, W)`` the distribution has ``batch_shape == (N,)``.
"""

import torch.nn.functional as F
from torch import nn

import pyro.distributions as dist

__all__ = ["ENCODERS", "DiagonalNormalEncoder"]


class DiagonalNormalEncoder(nn.Module):
    """q(z|x) = N(z; mu(x), diag(sigma(x)^2)), sigma = softplus(s(x)) + ``min_scale``.

    ``net`` maps ``(*batch, C, H, W)`` to ``(*batch, 2 * latent_dim)``: the first half is mu, the
    second half s. The floor keeps log q finite when the net drives s to -inf.
    """

    def __init__(self, net, latent_dim, min_scale=1e-3):
        super().__init__()
        self.net = net
        self.latent_dim = latent_dim
        self.min_scale = min_scale

    @staticmethod
    def out_dim(latent_dim):
        """Width of the encoder net's output that this head needs."""
        return 2 * latent_dim

    def forward(self, x):
        loc, raw_scale = self.net(x).chunk(2, dim=-1)  # 2 x (*batch, latent_dim)
        return dist.Normal(loc, F.softplus(raw_scale) + self.min_scale).to_event(1)


# name -> class taking (net, latent_dim, **kwargs); ``cls.out_dim(latent_dim)`` sizes the net.
ENCODERS = {"diagonal": DiagonalNormalEncoder}
