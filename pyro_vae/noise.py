"""Corruptions for denoising: callables ``noise(x, generator) -> x_noisy``, drawn fresh per call.

Images are ``(N, C, H, W)`` in [0, 1] and stay in [0, 1]. Each noise model has one level:

- ``gaussian`` (sigma): x + sigma * eps, eps ~ N(0, 1) per pixel, clipped to [0, 1];
- ``salt-pepper`` (p): each pixel, with probability p, replaced by 0 or 1 (equally likely);
- ``mask`` (p): each pixel, with probability p, set to 0 (masking noise; Vincent et al., 2010).

Denoising is scored by the peak signal-to-noise ratio of each image against the clean one,
PSNR = 10 log10(1 / MSE) dB for pixels in [0, 1] (:func:`psnr`).

All randomness comes from ``generator`` (a ``torch.Generator`` on ``x.device``, or None for the
global one), so a training stream is reproducible from the generator's state.
"""

import math

import torch

from .errors import ConfigError, lookup

__all__ = ["NOISES", "GaussianNoise", "MaskingNoise", "SaltAndPepperNoise", "make_noise", "psnr"]


class _Noise:
    name = None
    level_name = None  # what the level means, for messages and plots
    max_level = None  # the largest meaningful level (None: unbounded)

    def __init__(self, level):
        level = float(level)
        top = self.max_level if self.max_level is not None else math.inf
        if not (0 <= level <= top and math.isfinite(level)):
            bound = f"in [0, {self.max_level}]" if self.max_level is not None else ">= 0 and finite"
            raise ConfigError(f"the {self.name} noise level ({self.level_name}) must be {bound}, "
                              f"got {level}")
        self.level = level

    def __repr__(self):
        return f"{type(self).__name__}({self.level_name}={self.level})"

    def __call__(self, x, generator=None):
        raise NotImplementedError


def _uniform(x, generator):
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class GaussianNoise(_Noise):
    """x + sigma * eps, clipped to [0, 1]."""

    name, level_name = "gaussian", "sigma"

    def __call__(self, x, generator=None):
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + self.level * eps).clamp(0.0, 1.0)


class SaltAndPepperNoise(_Noise):
    """Each pixel, with probability p, becomes 0 or 1 with equal chance."""

    name, level_name, max_level = "salt-pepper", "p", 1.0

    def __call__(self, x, generator=None):
        hit = _uniform(x, generator) < self.level
        salt = _uniform(x, generator) < 0.5
        return torch.where(hit, salt.to(x.dtype), x)


class MaskingNoise(_Noise):
    """Each pixel, with probability p, is set to 0."""

    name, level_name, max_level = "mask", "p", 1.0

    def __call__(self, x, generator=None):
        keep = _uniform(x, generator) >= self.level
        return x * keep.to(x.dtype)


#: name -> class taking the level
NOISES = {cls.name: cls for cls in (GaussianNoise, SaltAndPepperNoise, MaskingNoise)}


def make_noise(name, level):
    """A noise model by name (see :data:`NOISES`); ConfigError naming the valid ones otherwise."""
    return lookup(NOISES, "noise", name)(level)


def psnr(estimate, clean, eps=1e-10):
    """Per-image PSNR in dB, ``10 log10(1 / mean_i (estimate_i - clean_i)^2)``, shape ``(N,)``;
    a perfect estimate is capped at 100 dB (the ``eps`` floor on the MSE)."""
    mse = (estimate - clean).square().flatten(1).mean(-1)
    return 10 * torch.log10(1.0 / mse.clamp(min=eps))
