"""The conditional VAE of image completion (Sohn, Lee & Yan, 2015; Pyro's ``examples/cvae``) as
a Pyro program, and the deterministic network it is measured against.

An image x is cut by a fixed mask into an observed part x_o and a missing part x_m (here: the
observed quadrants). The model is conditioned on x_o:

.. math::

    p(x_m \\mid x_o) = \\int p(z \\mid x_o)\\, p(x_m \\mid z)\\, dz, \\qquad
    q(z \\mid x_o, x_m) \\text{ the recognition network},

with a prior network p(z | x_o), a recognition network q(z | x) on the whole image, and a
generation network p(x_m | z), the decoder under any likelihood scoring the missing pixels
only (:class:`MaskedPixels`). ``model(x)`` and ``guide(x)`` take the whole image and cut it
themselves, so every estimator of the library applies as it is, and what it estimates per image
is the **conditional** log-likelihood log p(x_m | x_o): IWAE bounds it, AIS estimates it; the
ELBO is a bound on it, never the thing itself (Pyro's example prints its -ELBO as a "negative log
likelihood").

:class:`CompletionNet` is the deterministic counterpart: a network from x_o straight to the
likelihood of x_m (the autoencoders' nets and head), whose log p(x_m | x_o) is its likelihood
at its one prediction.
"""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from .errors import ConfigError
from .protocol import CodeViews
from .vae import _scaled

__all__ = ["QUADRANTS", "CompletionNet", "ConditionalVAE", "MaskedPixels", "quadrant_mask"]

# The quadrants in the order they are observed: with N observed, the first N.
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def quadrant_mask(image_shape, observed):
    """A bool ``image_shape`` mask, True on the first ``observed`` of :data:`QUADRANTS`; 1 to
    3 (0 would hide everything, 4 nothing): else a :class:`~pyro_vae.errors.ConfigError`."""
    if observed not in (1, 2, 3):
        raise ConfigError(f"observed_quadrants must be 1, 2 or 3, got {observed!r}")
    c, h, w = image_shape
    mask = torch.zeros(image_shape, dtype=torch.bool)
    for k in range(observed):
        rows = slice(0, h // 2) if k in (0, 1) else slice(h // 2, h)
        cols = slice(0, w // 2) if k in (0, 2) else slice(w // 2, w)
        mask[:, rows, cols] = True
    return mask


class MaskedPixels(dist.TorchDistribution):
    """A distribution over whole images that scores the pixels where ``keep`` is True only:
    log p = sum over kept pixels of ``pixels.base_dist.log_prob``; its mean and samples are
    ``pixels``' there and ``observed``'s elsewhere (so a simulated image keeps its observed
    part). ``pixels``: an ``Independent`` over the image's dims, as every likelihood returns."""

    arg_constraints = {}

    def __init__(self, pixels, keep, observed):
        self.pixels, self.keep, self.observed = pixels, keep, observed
        super().__init__(pixels.batch_shape, pixels.event_shape, validate_args=False)

    @property
    def support(self):
        return self.pixels.support

    @property
    def mean(self):
        return torch.where(self.keep, self.pixels.mean, self.observed)

    def sample(self, sample_shape=torch.Size()):
        return torch.where(self.keep, self.pixels.sample(sample_shape), self.observed)

    def log_prob(self, value):
        lp = self.pixels.base_dist.log_prob(value) * self.keep  # (*batch, C, H, W)
        return lp.flatten(-len(self.event_shape)).sum(-1)

    def expand(self, batch_shape, _instance=None):
        return MaskedPixels(self.pixels.expand(batch_shape), self.keep, self.observed)


class ConditionalVAE(CodeViews, nn.Module):
    """The CVAE, with sample sites ``"z"`` (latent) and ``"x"`` (observed: the whole image,
    scored on its missing pixels) in ``plate("data")``.

    :param prior_net: ``prior_net(x_o)`` -> p(z | x_o), x_o the image with its missing pixels 0.
    :param encoder: ``encoder(x)`` -> q(z | x_o, x_m), on the whole image.
    :param likelihood: ``likelihood(z)`` -> the pixels' distribution (of which x_m is scored).
    :param observed: a bool mask of the image's shape, True where a pixel is observed.
    """

    max_plate_nesting = 1

    def __init__(self, prior_net, encoder, likelihood, observed):
        super().__init__()
        self.prior_net, self.encoder, self.likelihood = prior_net, encoder, likelihood
        self.register_buffer("observed", observed)

    def observe(self, x):
        """x_o: the image with its missing pixels set to 0."""
        return x * self.observed

    def completion(self, z, x):
        """p(x_m | z), a :class:`MaskedPixels` keeping x's observed pixels."""
        return MaskedPixels(self.likelihood(z), ~self.observed, x)

    def model(self, x, kl_scale=1.0):
        """p(z | x_o) p(x_m | z)."""
        with pyro.plate("data", x.shape[0]):
            with _scaled(kl_scale):
                z = pyro.sample("z", self.prior_net(self.observe(x)))
            pyro.sample("x", self.completion(z, x), obs=x)

    def guide(self, x, kl_scale=1.0):
        """q(z | x_o, x_m)."""
        with pyro.plate("data", x.shape[0]):
            with _scaled(kl_scale):
                pyro.sample("z", self.encoder(x))

    @torch.no_grad()
    def complete(self, x, num_samples=1):
        """Completions of ``x``'s observed part: the decoder's means at z ~ p(z | x_o), observed
        pixels kept, ``(num_samples, N, *image_shape)``."""
        z = self.prior_net(self.observe(x)).sample((num_samples,))
        return self.completion(z, x).mean

    # The views of pyro_vae.protocol.CodeViews: the code z of q(z | x); a code's decoding and a
    # draw are completions of an empty observation (every observed pixel 0).

    def code_posterior(self, x, num_samples=100):
        return self.encoder(x)

    def code_prior(self):
        blank = torch.zeros((1,) + tuple(self.observed.shape), device=self.observed.device)
        return self.prior_net(blank)

    def code_likelihood(self, z):
        return self.completion(z, torch.zeros_like(self.observed, dtype=z.dtype))

    @torch.no_grad()
    def reconstruct(self, x):
        """The decoder's mean on the missing part at z = E q(z | x), x's observed part kept."""
        return self.completion(self.encode(x), x).mean

    @torch.no_grad()
    def generate(self, num_samples):
        return self.decode(self.code_prior().sample((num_samples,))[:, 0])


class CompletionNet(nn.Module):
    """The deterministic baseline: ``net(x_o)`` a code, ``likelihood(code)`` the pixels'
    distribution, scored on the missing pixels: log p(x_m | x_o) at its one prediction."""

    def __init__(self, net, likelihood, observed):
        super().__init__()
        self.net, self.likelihood = net, likelihood
        self.register_buffer("observed", observed)

    def forward(self, x):
        """p(x_m | x_o) as a :class:`MaskedPixels`."""
        return MaskedPixels(self.likelihood(self.net(x * self.observed)), ~self.observed, x)

    def training_loss(self, x, generator=None):
        """-log p(x_m | x_o), summed over the batch (``generator``: unused, as for an AE)."""
        return -self(x).log_prob(x).sum()

    @torch.no_grad()
    def complete(self, x):
        """The prediction: the likelihood's mean on the missing pixels, x's elsewhere."""
        return self(x).mean
