"""Where an ELBO loses: the approximation gap and the amortization gap (Cremer, Li & Duvenaud 2018).

For an image x, a guide q(z|x) (the encoder) and a variational family Q:

.. math::

    \\log p(x) - \\mathrm{ELBO}[q] =
    \\underbrace{\\log p(x) - \\mathrm{ELBO}[q^*]}_{\\text{approximation gap}}
    + \\underbrace{\\mathrm{ELBO}[q^*] - \\mathrm{ELBO}[q]}_{\\text{amortization gap}},
    \\qquad q^* = \\arg\\max_{q' \\in Q} \\mathrm{ELBO}[q'].

The approximation gap is what the family costs, KL(q* || p(z|x)); the amortization gap is what
sharing one encoder across all images costs. Here Q is a Gaussian family on every latent site
in unconstrained space (z = biject_to(support)(u), u ~ N(m, diag(s^2)), or N(m, L L^T) with a
full covariance per site), fitted to each image alone: a local Pyro guide with parameters per
image, initialised at the guide's output (the moments of its draws in u), trained by SVI with ``Trace_ELBO`` on all
images at once, and stopped when no image's ELBO has improved for ``patience`` checks. log p(x)
comes from AIS (:func:`~pyro_vae.ais.ais_log_likelihood`).
"""

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ReshapeTransform
from pyro.infer import Trace_ELBO
from tqdm import tqdm

from .ais import _Target, ais_log_likelihood
from .errors import lookup
from .estimators import elbo

__all__ = ["FAMILIES", "InferenceGap", "LocalGaussianGuide", "fit_local_guide", "inference_gap"]


@dataclass
class InferenceGap:
    """Per-image ``(N,)`` log p(x) (AIS), the amortized guide's ELBO and the fitted local
    Gaussians' ELBO, in nats; ``steps`` is the number of SVI steps the local fit took."""

    log_px: torch.Tensor
    elbo_amortized: torch.Tensor
    elbo_optimal: torch.Tensor
    steps: int
    family: str = "diagonal"  # the family q* was fitted in

    @property
    def approximation_gap(self):
        """log p(x) - ELBO[q*]: the cost of the variational family."""
        return self.log_px - self.elbo_optimal

    @property
    def amortization_gap(self):
        """ELBO[q*] - ELBO[q]: the cost of one encoder for all images."""
        return self.elbo_optimal - self.elbo_amortized

    def summary(self):
        """A JSON-able dict of means over images."""
        out = {name: getattr(self, name).mean().item() for name in (
            "log_px", "elbo_amortized", "elbo_optimal", "approximation_gap", "amortization_gap")}
        out.update(num_images=self.log_px.numel(), steps=self.steps, family=self.family)
        return out


FAMILIES = ("diagonal", "full")  # Gaussian families of the local fit, per latent site


class LocalGaussianGuide:
    """A Pyro guide with its own Gaussian per image and latent site, in unconstrained space.

    ``loc`` is ``(N, D)``, the latent sites' unconstrained values concatenated in the model's
    order; site s gets ``TransformedDistribution(base_s, [reshape, biject_to(support_s)])`` with
    ``base_s = N(loc_s, diag(exp(raw_s))^2)`` for the ``"diagonal"`` family (``raw`` is ``(N, D)``
    log-scales) or ``N(loc_s, L_s L_s^T)`` for ``"full"`` (``raw`` is ``(N, D, D)``: L_s is the
    site's diagonal block, strictly lower part as is, diagonal exponentiated).
    """

    def __init__(self, target, loc, raw, family, data_plate, plate_dim):
        self.target, self.family = target, family
        self.data_plate, self.plate_dim = data_plate, plate_dim
        self.loc = loc.detach().clone().requires_grad_()
        self.raw = raw.detach().clone().requires_grad_()

    @classmethod
    def from_draws(cls, target, u, family, data_plate):
        """Moment-matched to draws ``u`` ``(M, N, D)``: their mean, and their standard deviations
        or (per site) the Cholesky factor of their covariance."""
        loc = u.mean(0)
        if family == "diagonal":
            raw = u.std(0).clamp_min(1e-4).log()
        else:
            centred = u - loc
            cov = torch.einsum("mni,mnj->nij", centred, centred) / (u.shape[0] - 1)
            raw = torch.zeros_like(cov)
            for sl in cls._slices(target):
                eye = torch.eye(sl.stop - sl.start, dtype=u.dtype, device=u.device)
                chol = torch.linalg.cholesky(cov[:, sl, sl] + 1e-6 * eye)
                raw[:, sl, sl] = chol.tril(-1) + torch.diag_embed(chol.diagonal(0, -2, -1).log())
        return cls(target, loc, raw, family, data_plate, target.data_dim)

    @staticmethod
    def _slices(target):
        offset = 0
        for s in target.sites:
            yield slice(offset, offset + target.sizes[s])
            offset += target.sizes[s]

    def _bases(self):
        """``(site, slice, base distribution of the site's flat u, batch (N,))`` per site."""
        for s, sl in zip(self.target.sites, self._slices(self.target)):
            if self.family == "diagonal":
                base = dist.Normal(self.loc[:, sl], self.raw[:, sl].exp()).to_event(1)
            else:
                raw = self.raw[:, sl, sl]
                tril = raw.tril(-1) + torch.diag_embed(raw.diagonal(0, -2, -1).exp())
                base = dist.MultivariateNormal(self.loc[:, sl], scale_tril=tril)
            yield s, sl, base

    def parameters(self):
        return [self.loc, self.raw]

    def reparameterize(self, noise):
        """Draws ``(K, N, D)`` from standard-normal ``noise`` of that shape, and their log q
        ``(K, N)`` in u-space."""
        parts, log_q = [], 0.0
        for _, sl, base in self._bases():
            eps = noise[..., sl]
            if self.family == "diagonal":
                u = base.base_dist.loc + base.base_dist.scale * eps
            else:
                u = base.loc + (base.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
            parts.append(u)
            log_q = log_q + base.log_prob(u)
        return torch.cat(parts, -1), log_q

    def __call__(self, x, **kwargs):
        t = self.target
        with pyro.plate(self.data_plate, x.shape[0], dim=self.plate_dim):
            for s, _, base in self._bases():
                shape = t.shapes[s]
                reshape = [ReshapeTransform((t.sizes[s],), shape)] if shape != (t.sizes[s],) else []
                pyro.sample(s, dist.TransformedDistribution(base, reshape + [t.transforms[s]]))


def fit_local_guide(model, guide, x, *, family="diagonal", num_particles=10, lr=1e-2,
                    check_every=50, check_particles=100, patience=5, min_improvement=0.01,
                    max_steps=10000, init_samples=1000, progress=False, data_plate="data",
                    max_plate_nesting=1, **kwargs):
    """Fit a :class:`LocalGaussianGuide` to the images ``x`` by SVI (Adam on -ELBO, summed over
    images, ``num_particles`` vectorized particles per step), starting from the moments of
    ``init_samples`` draws of ``guide``; ``family`` is ``"diagonal"`` or ``"full"`` (a full
    covariance per latent site).

    Every ``check_every`` steps each image's ELBO is estimated with the same
    ``check_particles`` standard-normal draws, and the image's best parameters so far are kept;
    the fit stops once the best mean ELBO has not risen by ``min_improvement`` nats for
    ``patience`` checks (or at ``max_steps``). Cremer et al. (2018) use Adam at 1e-3 with 100
    particles, 100 steps between checks and a patience of 10: slower, and as good where it ends
    (pass those to reproduce it). Returns ``(local_guide, steps)``, the guide holding each
    image's best parameters.
    """
    lookup(FAMILIES, "family", family)
    target = _Target(model, guide, x, init_samples, "guide", kwargs, data_plate,
                     max_plate_nesting)
    u = target.initial()  # (init_samples, N, D)
    local = LocalGaussianGuide.from_draws(target, u, family, data_plate)
    loss_fn = Trace_ELBO(num_particles=num_particles, vectorize_particles=True,
                         max_plate_nesting=max_plate_nesting)
    optimizer = torch.optim.Adam(local.parameters(), lr=lr)
    # Checks use the same standard-normal draws every time (common random numbers), so that an
    # image's best parameters are picked by its ELBO, not by the luck of one check's draws.
    scorer = _Target(model, guide, x, check_particles, "prior", kwargs, data_plate,
                     max_plate_nesting)
    noise = torch.randn(check_particles, *u.shape[1:], dtype=u.dtype, device=u.device)

    @torch.no_grad()
    def check():
        v, log_q = local.reparameterize(noise)  # (K, N, D), (K, N)
        log_prior_jac, log_lik = scorer.evaluate(v, grad=False)[:2]
        return (log_prior_jac + log_lik - log_q).mean(0)  # (N,) ELBO in u-space

    best = check()
    best_loc, best_raw = local.loc.detach().clone(), local.raw.detach().clone()
    best_mean, stale, step = best.mean().item(), 0, 0
    bar = tqdm(total=max_steps, desc="local q*", unit="step", disable=not progress, leave=False)
    with pyro.validation_enabled(False):
        while step < max_steps and stale < patience:
            for _ in range(min(check_every, max_steps - step)):
                optimizer.zero_grad(set_to_none=True)
                loss_fn.differentiable_loss(model, local, x, **kwargs).backward()
                optimizer.step()
                step += 1
            bar.update(min(check_every, bar.total - bar.n))
            current = check()
            better = current > best
            best = torch.where(better, current, best)
            best_loc[better] = local.loc.detach()[better]
            best_raw[better] = local.raw.detach()[better]
            stale = 0 if best.mean().item() > best_mean + min_improvement else stale + 1
            best_mean = max(best_mean, best.mean().item())
            bar.set_postfix(elbo=f"{best_mean:.2f}")
    bar.close()
    return LocalGaussianGuide(target, best_loc, best_raw, family, data_plate,
                              target.data_dim), step


def inference_gap(model, guide, x, *, family="diagonal", log_px=None, num_steps=500,
                  num_chains=16, num_leapfrog=10, elbo_samples=1000, batch_size=100,
                  progress=False, data_plate="data", max_plate_nesting=1, fit_options=None,
                  **kwargs):
    """The inference-gap split of each image of ``x``: log p(x) by AIS (or ``log_px``, if already
    known), the guide's ELBO and the best local diagonal Gaussian's ELBO, each ELBO estimated
    with ``elbo_samples`` draws. ``fit_options`` go to :func:`fit_local_guide`; images are
    fitted ``batch_size`` at a time. Returns an :class:`InferenceGap`.
    """
    kw = dict(data_plate=data_plate, max_plate_nesting=max_plate_nesting, **kwargs)
    if log_px is None:
        log_px = ais_log_likelihood(model, guide, x, num_steps=num_steps,
                                    num_chains=num_chains, num_leapfrog=num_leapfrog,
                                    progress=progress, **kw).per_image
    amortized = elbo(model, guide, x, elbo_samples, **kw).per_image
    optimal, steps = [], 0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start:start + batch_size]
        local, n = fit_local_guide(model, guide, xb, family=family, progress=progress,
                                   **(fit_options or {}), **kw)
        optimal.append(elbo(model, local, xb, elbo_samples, **kw).per_image)
        steps = max(steps, n)
    return InferenceGap(torch.as_tensor(log_px).to(amortized.dtype), amortized,
                        torch.cat(optimal), steps, family)
