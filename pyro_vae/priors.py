"""Priors p(z): modules whose ``forward()`` returns a distribution over ``(latent_dim,)`` events.

A prior takes no input; under the model's ``pyro.plate("data", N)`` (and any particle plate
outside it) Pyro broadcasts its batch shape ``()`` to the plates' shape.
"""

import torch
from torch import nn

import pyro.distributions as dist

__all__ = ["PRIORS", "StandardNormalPrior"]


class StandardNormalPrior(nn.Module):
    """p(z) = N(z; 0, I), with ``event_shape == (latent_dim,)``."""

    def __init__(self, latent_dim):
        super().__init__()
        self.latent_dim = latent_dim
        # Buffers so that .to(device) moves them and state_dict records the latent size.
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self):
        return dist.Normal(self.loc, self.scale).to_event(1)


# name -> class taking (latent_dim, **kwargs)
PRIORS = {"normal": StandardNormalPrior}
