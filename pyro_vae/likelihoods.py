"""Likelihoods p(x|z): modules whose ``forward(z)`` returns a distribution over whole images.

``forward(z)`` with ``z`` of shape ``(*batch, latent_dim)`` returns a distribution with
``batch_shape == batch`` and ``event_shape == (C, H, W)``, pixels independent given z. Each
likelihood says which data it accepts (:meth:`check_data`), so that data outside its support is
refused before training starts, with a message that names the likelihood and what to do.
"""

import torch
import torch.nn.functional as F
from torch import nn

import pyro.distributions as dist

from .errors import DataError

__all__ = [
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "BetaLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "LaplaceLikelihood",
]

_SOFTPLUS_INV_01 = -2.2522  # softplus^-1(0.1): learned scales start at 0.1


class _Likelihood(nn.Module):
    """Holds the decoder net; subclasses turn its output into a distribution over pixels."""

    name = None
    accepts = ""  # the data this likelihood accepts, in words, for error messages

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder
        self.event_dim = len(decoder.image_shape)

    @classmethod
    def in_support(cls, x):
        raise NotImplementedError

    @classmethod
    def check_data(cls, x, name="data"):
        """Raise :class:`DataError` unless every value of ``x`` is in this likelihood's support."""
        if not bool(cls.in_support(x).all()):
            raise DataError(f"the {cls.name} likelihood needs {cls.accepts}, which the {name} "
                            f"is not; {cls.remedy}")


class _PixelBernoulli(dist.Independent):
    """``Bernoulli(logits).to_event(n)`` with the log-prob fused over the pixels:

    .. math:: \\log p(x \\mid z) = -\\sum_i \\mathrm{BCE}(\\ell_i, x_i),
              \\quad \\mathrm{BCE}(\\ell, x) = \\log(1 + e^{\\ell}) - x \\ell.

    torch's ``Bernoulli.log_prob`` negates every pixel's cross-entropy before ``Independent``
    sums them; negating the per-image sum instead saves one pass (forward and backward) over the
    largest tensor of a training step, about 2% of an MLP VAE's SVI step. Everything else (mean,
    sample, support, expand, KL) is ``Independent``'s.
    """

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits, value = torch.broadcast_tensors(self.base_dist.logits, value)
        bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return -bce.flatten(-self.reinterpreted_batch_ndims).sum(-1)  # (*batch,)


class BernoulliLikelihood(_Likelihood):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(f(z)_i)): binary pixels, the decoder gives logits."""

    name, accepts = "bernoulli", "binary pixels (0 or 1)"
    remedy = "use --binarize dynamic or static, or a likelihood for grey levels"

    def forward(self, z):
        # validate_args=False: the support is checked once, on the whole dataset, by check_data.
        logits = self.decoder(z)  # (*batch, C, H, W)
        return _PixelBernoulli(dist.Bernoulli(logits=logits, validate_args=False), self.event_dim)

    @classmethod
    def in_support(cls, x):
        return (x == 0) | (x == 1)


class ContinuousBernoulliLikelihood(_Likelihood):
    """p(x|z) = prod_i CB(x_i; lambda_i) with logits f(z) (Loaiza-Ganem & Cunningham, 2019):
    C(lambda) lambda^x (1 - lambda)^(1 - x) on [0, 1], with its normalizing constant C(lambda),
    so grey levels get a proper density. Its mean is not lambda."""

    name, accepts = "continuous-bernoulli", "pixels in [0, 1]"
    remedy = "scale the images to [0, 1]"

    def forward(self, z):
        logits = self.decoder(z)
        return dist.ContinuousBernoulli(logits=logits, validate_args=False).to_event(
            self.event_dim)

    @classmethod
    def in_support(cls, x):
        return (x >= 0) & (x <= 1)


class _LocationScaleLikelihood(_Likelihood):
    """``family(loc = f(z), scale)`` per pixel; scale fixed, or learned per pixel or per image."""

    family = None
    accepts = "finite pixel values"
    remedy = "remove or replace the NaN / infinite pixels"

    def __init__(self, decoder, scale=0.1, learn_scale=None):
        super().__init__(decoder)
        if learn_scale not in (None, "pixel", "image"):
            raise ValueError(f"learn_scale must be None, 'pixel' or 'image', got {learn_scale!r}")
        shape = {None: (), "pixel": decoder.image_shape, "image": ()}[learn_scale]
        if learn_scale is None:
            self.register_buffer("raw_scale", torch.tensor(float(scale)))
        else:
            self.raw_scale = nn.Parameter(torch.full(shape, _SOFTPLUS_INV_01))
        self.learn_scale = learn_scale

    @property
    def scale(self):
        return self.raw_scale if self.learn_scale is None else F.softplus(self.raw_scale) + 1e-3

    def forward(self, z):
        loc = self.decoder(z)
        return self.family(loc, self.scale.expand_as(loc), validate_args=False).to_event(
            self.event_dim)

    @classmethod
    def in_support(cls, x):
        return torch.isfinite(x)


class GaussianLikelihood(_LocationScaleLikelihood):
    """p(x|z) = prod_i N(x_i; f(z)_i, sigma^2): sigma fixed (0.1) or learned."""

    name, family = "gaussian", dist.Normal


class LaplaceLikelihood(_LocationScaleLikelihood):
    """p(x|z) = prod_i Laplace(x_i; f(z)_i, b): heavier tails than the Gaussian; b learned per
    image by default."""

    name, family = "laplace", dist.Laplace

    def __init__(self, decoder, scale=0.1, learn_scale="image"):
        super().__init__(decoder, scale, learn_scale)


class BetaLikelihood(_Likelihood):
    """p(x|z) = prod_i Beta(x_i; m_i k, (1 - m_i) k), mean m = sigmoid(f(z)) and a learned
    concentration k = softplus(c) shared by all pixels. Needs pixels strictly inside (0, 1)."""

    name, accepts = "beta", "pixels strictly inside (0, 1)"
    remedy = ("squeeze the images into (0, 1), e.g. 0.001 + 0.998 * x, or use "
              "--likelihood continuous-bernoulli for grey levels that reach 0 and 1")

    def __init__(self, decoder):
        super().__init__(decoder)
        self.raw_concentration = nn.Parameter(torch.tensor(2.0))

    def forward(self, z):
        mean = torch.sigmoid(self.decoder(z)).clamp(1e-4, 1 - 1e-4)
        k = F.softplus(self.raw_concentration) + 1e-2
        return dist.Beta(mean * k, (1 - mean) * k, validate_args=False).to_event(self.event_dim)

    @classmethod
    def in_support(cls, x):
        return (x > 0) & (x < 1)


#: name -> constructor taking the decoder net
LIKELIHOODS = {
    "bernoulli": BernoulliLikelihood,
    "continuous-bernoulli": ContinuousBernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "gaussian-pixel": lambda decoder: GaussianLikelihood(decoder, learn_scale="pixel"),
    "gaussian-image": lambda decoder: GaussianLikelihood(decoder, learn_scale="image"),
    "laplace": LaplaceLikelihood,
    "beta": BetaLikelihood,
}
