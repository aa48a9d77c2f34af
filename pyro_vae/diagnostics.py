"""Latent-space diagnostics of a trained VAE: active units and KL per latent dimension.

- Active units (Burda et al., 2016): dimension d is active when
  A_d = Cov_x( E_{q(z|x)}[z_d] ) > 0.01, i.e. the posterior mean moves with the input.
- KL per dimension: E_x[ KL(q(z_d | x) || p(z_d)) ], in closed form when both the posterior and
  the prior factorize over dimensions into distributions torch knows the KL of.
"""

import torch
from torch.distributions import Independent, kl_divergence

__all__ = ["ACTIVE_THRESHOLD", "active_units", "kl_per_dimension"]

ACTIVE_THRESHOLD = 0.01


@torch.no_grad()
def active_units(vae, x, batch_size=1000, threshold=ACTIVE_THRESHOLD):
    """Returns ``(activity, count)``: A_d of shape ``(latent_dim,)`` and how many exceed
    ``threshold``."""
    means = torch.cat([vae.encode(xb) for xb in x.split(batch_size)])  # (N, D)
    activity = means.var(0, unbiased=True)
    return activity.cpu(), int((activity > threshold).sum())


def _base(d):
    """Unwrap ``Independent`` (and Pyro's expanded wrappers) to the per-dimension distribution."""
    while isinstance(d, Independent):
        d = d.base_dist
    return d


@torch.no_grad()
def kl_per_dimension(vae, x, batch_size=1000):
    """E_x KL(q(z_d|x) || p(z_d)) for each d, shape ``(latent_dim,)``, in nats.

    Raises ``NotImplementedError`` when q or p does not factorize over dimensions (e.g. a
    full-covariance posterior or a mixture prior): then no per-dimension KL exists.
    """
    encoder, prior = getattr(vae, "encoder", None), getattr(vae, "prior", None)
    if encoder is None:  # e.g. M2, whose q(z | x, y) needs a class
        raise NotImplementedError("the model has no encoder q(z|x) of the image alone")
    if prior is None:  # e.g. the CVAE, whose p(z | x_obs) depends on the image
        raise NotImplementedError("the model's prior is conditional, not one p(z)")
    prior = _base(prior())
    total = 0.0
    for xb in x.split(batch_size):
        q = _base(encoder(xb))
        latent_dim = prior.batch_shape[-1:] if prior.event_shape == () else None
        if q.event_shape != () or latent_dim is None or q.batch_shape != (len(xb), *latent_dim):
            raise NotImplementedError("the posterior or prior does not factorize per dimension")
        total = total + kl_divergence(q, prior).sum(0)  # (D,)
    return (total / x.shape[0]).cpu()
