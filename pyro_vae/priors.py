"""Priors p(z): modules whose ``forward()`` returns a distribution over ``(latent_dim,)`` events.

A prior takes no input; under the model's ``pyro.plate("data", N)`` (and any particle plate
outside it) Pyro broadcasts its batch shape ``()`` to the plates' shape. Learnable priors hold
their parameters as ordinary ``nn.Parameter`` objects, trained with the rest of the VAE.

Every class has ``build(latent_dim, encoder=..., image_shape=...)``, through which
:func:`pyro_vae.build.build_vae` constructs any prior without asking which one it is.
"""

import torch
import torch.nn.functional as F
from torch import nn

import pyro.distributions as dist
import pyro.distributions.transforms as T

from .errors import ConfigError

__all__ = [
    "PRIORS",
    "FlowPrior",
    "LearnedNormalPrior",
    "MixturePrior",
    "StandardNormalPrior",
    "VampPrior",
]


class _Prior(nn.Module):
    @classmethod
    def build(cls, latent_dim, **context):
        """Construct from the VAE's context (``encoder``, ``image_shape``); most ignore it."""
        return cls(latent_dim)


class StandardNormalPrior(_Prior):
    """p(z) = N(z; 0, I)."""

    def __init__(self, latent_dim):
        super().__init__()
        self.latent_dim = latent_dim
        # Buffers so that .to(device) moves them and state_dict records the latent size.
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self):
        return dist.Normal(self.loc, self.scale).to_event(1)


class LearnedNormalPrior(_Prior):
    """p(z) = N(z; m, diag(s^2)) with learnable m and s = softplus(r); starts at N(0, I)."""

    def __init__(self, latent_dim):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), 0.5413))  # softplus^-1(1)

    def forward(self):
        return dist.Normal(self.loc, F.softplus(self.raw_scale)).to_event(1)


class MixturePrior(_Prior):
    """p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)), with learnable logits of pi, means and scales.

    Means start spread out (N(0, I) draws), scales at 1, weights uniform.
    """

    def __init__(self, latent_dim, num_components=10):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, latent_dim))
        self.raw_scales = nn.Parameter(torch.full((num_components, latent_dim), 0.5413))

    def forward(self):
        components = dist.Normal(self.locs, F.softplus(self.raw_scales)).to_event(1)  # batch (K,)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class VampPrior(_Prior):
    """VampPrior (Tomczak & Welling, 2018): p(z) = (1/K) sum_k q(z | u_k), the encoder's own
    posteriors at K learnable pseudo-inputs u_k = sigmoid(a_k) (images in [0, 1]).

    The prior shares the encoder with the guide: swapping ``vae.encoder`` afterwards leaves this
    prior on the old one.
    """

    def __init__(self, encoder, image_shape, num_components=50):
        super().__init__()
        self.encoder = encoder
        # pseudo-inputs start as faint noise images around grey level ~0.1 (MNIST's mean)
        self.raw_inputs = nn.Parameter(torch.randn(num_components, *image_shape) * 0.1 - 2.0)

    @classmethod
    def build(cls, latent_dim, encoder, image_shape, **context):
        return cls(encoder, image_shape)

    def forward(self):
        components = self.encoder(torch.sigmoid(self.raw_inputs))  # batch (K,), event (D,)
        mixing = dist.Categorical(logits=torch.zeros(components.batch_shape,
                                                     device=self.raw_inputs.device))
        return dist.MixtureSameFamily(mixing, components)


class FlowPrior(_Prior):
    """p(z): N(0, I) pushed through ``num_flows`` affine coupling layers, each followed by a
    reversal of the coordinates, so that every coordinate is transformed:
    ``log p(z) = log N(f^{-1}(z); 0, I) + log |det J_{f^{-1}}(z)|``.

    Affine coupling is cheap in both directions: scoring z (the model) and sampling (generation).
    """

    def __init__(self, latent_dim, num_flows=4, hidden_dim=64):
        super().__init__()
        if latent_dim < 2:
            raise ConfigError("the flow prior needs --latent-dim >= 2 (coupling splits z in two)")
        self.flows = nn.ModuleList(
            T.affine_coupling(latent_dim, hidden_dims=[hidden_dim, hidden_dim])
            for _ in range(num_flows)
        )
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def forward(self):
        transforms = []
        for flow in self.flows:
            transforms += [flow, T.Permute(self.reverse)]
        base = dist.Normal(self.loc, torch.ones_like(self.loc)).to_event(1)
        return dist.TransformedDistribution(base, transforms)


#: name -> class; ``cls.build(latent_dim, encoder=..., image_shape=...)`` constructs it.
PRIORS = {
    "normal": StandardNormalPrior,
    "learned-normal": LearnedNormalPrior,
    "mixture": MixturePrior,
    "vamp": VampPrior,
    "flow": FlowPrior,
}
