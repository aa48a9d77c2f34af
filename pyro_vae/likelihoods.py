"""Likelihoods p(x|z): modules whose ``forward(z)`` returns a distribution over whole images.

``forward(z)`` with ``z`` of shape ``(*batch, latent_dim)`` returns a distribution with
``batch_shape == batch`` and ``event_shape == (C, H, W)``. Each likelihood also says which data it
accepts (:meth:`check_data`), so that data outside its support is refused before training starts.
"""

import torch
from torch import nn

import pyro.distributions as dist

from .data import DataError

__all__ = ["LIKELIHOODS", "BernoulliLikelihood"]


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(f(z)_i)), ``f`` the decoder net giving logits.

    Accepts binary data only: binarize grey levels (``--binarize dynamic`` or ``static``).
    """

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder
        self.event_dim = len(decoder.image_shape)

    def forward(self, z):
        # validate_args=False: the support is checked once, on the whole dataset, by check_data.
        logits = self.decoder(z)  # (*batch, C, H, W)
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(self.event_dim)

    @staticmethod
    def check_data(x, name="data"):
        """Raise :class:`DataError` unless every value of ``x`` is 0 or 1."""
        if not bool(((x == 0) | (x == 1)).all()):
            raise DataError(
                f"the bernoulli likelihood needs binary pixels but the {name} has grey levels; "
                "use --binarize dynamic or static, or a likelihood for grey levels"
            )


# name -> class taking (decoder net,)
LIKELIHOODS = {"bernoulli": BernoulliLikelihood}
