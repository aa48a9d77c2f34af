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
image, started at the guide's output (the moments of its draws in u), trained by SVI with
``Trace_ELBO`` on all images at once, and stopped once the mean of the images' best ELBOs has
stopped rising. For Cremer's split, the family should hold the guide's own (a diagonal Gaussian
encoder: "diagonal"; full covariance: "full"); for a richer guide, such as a flow, the
"amortization gap" against a Gaussian q* can be negative. log p(x) comes from AIS
(:func:`~pyro_vae.ais.ais_log_likelihood`).
"""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ReshapeTransform
from pyro.infer import Trace_ELBO
from tqdm import tqdm

from .ais import ais_log_likelihood
from .annealing import AnnealingTarget
from .errors import lookup
from .estimators import elbo
from .program import check_program

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


# Why the gap split refuses a discrete latent: Cremer et al.'s q* is a Gaussian per image.
_NO_DISCRETE = ("the best local q* is a Gaussian over continuous sites, and the split of a "
                "discrete latent's gap has no such family; use log_likelihood and "
                "ais_log_likelihood for its bounds")
FAMILIES = ("diagonal", "full")  # Gaussian families of the local fit, per latent site


class LocalGaussianGuide:
    """A Pyro guide with its own Gaussian per image and latent site, in unconstrained space.

    The latent sites' unconstrained values are concatenated, in the model's order, into
    ``(N, D)``; site s gets ``TransformedDistribution(N(m_s, S_s), [reshape, biject_to(support_s)])``.
    The parameters are *whitened* by a fixed start N(m0, L0 L0^T) (``loc0`` ``(N, D)``; ``chol0``
    ``(N, D)`` scales for the ``"diagonal"`` family, ``(N, D, D)`` with one lower-triangular block
    per site for ``"full"``), so that Adam's steps are in units of the start's own scale, however
    tight the posterior:

    .. math:: m = m_0 + L_0 \\delta, \\qquad S = L_0 \\tilde L \\tilde L^T L_0^T,

    ``shift`` = delta ``(N, D)`` and ``raw`` = log of a diagonal ``(N, D)``, or ``(N, D, D)``
    blocks whose strictly lower part is L~'s and whose diagonal is log diag L~. Zeros: the start.
    """

    def __init__(self, target, loc0, chol0, family, data_plate, plate_dim, shift=None, raw=None):
        self.target, self.family = target, family
        self.data_plate, self.plate_dim = data_plate, plate_dim
        self.loc0, self.chol0 = loc0.detach(), chol0.detach()
        self.shift = (torch.zeros_like(loc0) if shift is None else shift).detach().clone()
        self.raw = (torch.zeros_like(chol0) if raw is None else raw).detach().clone()
        self.shift.requires_grad_()
        self.raw.requires_grad_()

    @classmethod
    def from_draws(cls, target, u, family, data_plate):
        """Started at the moments of draws ``u`` ``(M, N, D)``: their mean, and their standard
        deviations or (per site) the Cholesky factor of their covariance."""
        loc = u.mean(0)
        if family == "diagonal":
            chol = u.std(0).clamp_min(1e-6)
        else:
            centred = u - loc
            cov = torch.einsum("mni,mnj->nij", centred, centred) / (u.shape[0] - 1)
            chol = torch.zeros_like(cov)
            for sl in target.slices.values():
                eye = torch.eye(sl.stop - sl.start, dtype=u.dtype, device=u.device)
                chol[:, sl, sl] = torch.linalg.cholesky(cov[:, sl, sl] + 1e-12 * eye)
        return cls(target, loc, chol, family, data_plate, target.data_dim)

    def parameters(self):
        return [self.shift, self.raw]

    def _bases(self):
        """``(site, slice, base distribution of the site's flat u, batch (N,))`` per site."""
        for s, sl in self.target.slices.items():
            if self.family == "diagonal":
                scale0 = self.chol0[:, sl]
                base = dist.Normal(self.loc0[:, sl] + scale0 * self.shift[:, sl],
                                   scale0 * self.raw[:, sl].exp()).to_event(1)
            else:
                l0, raw = self.chol0[:, sl, sl], self.raw[:, sl, sl]
                tril = raw.tril(-1) + torch.diag_embed(raw.diagonal(0, -2, -1).exp())
                loc = self.loc0[:, sl] + (l0 @ self.shift[:, sl].unsqueeze(-1)).squeeze(-1)
                base = dist.MultivariateNormal(loc, scale_tril=l0 @ tril)
            yield s, sl, base

    @property
    def loc(self):
        """The means ``(N, D)``."""
        return torch.cat([base.mean for _, _, base in self._bases()], -1)

    @property
    def scale(self):
        """The standard deviations ``(N, D)``."""
        return torch.cat([base.variance.sqrt() for _, _, base in self._bases()], -1)

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


def fit_local_guide(model, guide, x, *, family="diagonal", num_particles=10, lr=0.05,
                    check_every=50, check_particles=100, patience=5, min_improvement=0.01,
                    max_steps=10000, init_samples=1000, progress=False, data_plate="data",
                    max_plate_nesting=1, **kwargs):
    """Fit a :class:`LocalGaussianGuide` to the images ``x`` by SVI (Adam on -ELBO, summed over
    images, ``num_particles`` vectorized particles per step), starting from the moments of
    ``init_samples`` draws of ``guide``; ``family`` is ``"diagonal"`` or ``"full"`` (a full
    covariance per latent site).

    Every ``check_every`` steps each image's ELBO is estimated with the same
    ``check_particles`` standard-normal draws, and the image's best parameters so far are kept;
    each check whose best mean ELBO has not risen by ``min_improvement`` nats halves the
    learning rate, and the fit stops after ``patience`` such checks in a row (or at
    ``max_steps``). Cremer et al. (2018) use Adam at 1e-3 with 100
    particles, 100 steps between checks and a patience of 10 (pass those to reproduce it); here
    the parameters are whitened by the start (see :class:`LocalGaussianGuide`), so one learning
    rate serves posteriors of any scale. Returns ``(local_guide, steps)``, the guide holding each
    image's best parameters.
    """
    lookup(FAMILIES, "family", family)
    program = check_program(model, guide, x, data_plate=data_plate,
                            max_plate_nesting=max_plate_nesting, method="fit_local_guide",
                            **kwargs)
    program.refuse_discrete("fit_local_guide", _NO_DISCRETE)
    target = AnnealingTarget(model, guide, x, init_samples, "guide", kwargs, data_plate,
                             max_plate_nesting, program)
    u = target.initial()  # (init_samples, N, D)
    local = LocalGaussianGuide.from_draws(target, u, family, data_plate)
    loss_fn = Trace_ELBO(num_particles=num_particles, vectorize_particles=True,
                         max_plate_nesting=max_plate_nesting)
    optimizer = torch.optim.Adam(local.parameters(), lr=lr)
    # Checks use the same standard-normal draws every time (common random numbers), so that one
    # image's checks compare its parameters, not fresh luck. (Keeping the best check still
    # favours what suits these draws; the ELBO reported is estimated afresh.)
    scorer = AnnealingTarget(model, guide, x, check_particles, "prior", kwargs, data_plate,
                             max_plate_nesting, target.program)
    noise = torch.randn(check_particles, *u.shape[1:], dtype=u.dtype, device=u.device)

    @torch.no_grad()
    def check():
        v, log_q = local.reparameterize(noise)  # (K, N, D), (K, N)
        log_prior_jac, log_lik = scorer.evaluate(v, grad=False)[:2]
        return (log_prior_jac + log_lik - log_q).mean(0)  # (N,) ELBO in u-space

    best = check()
    best_shift, best_raw = local.shift.detach().clone(), local.raw.detach().clone()
    best_mean, stale, step = best.mean().item(), 0, 0
    bar = tqdm(total=max_steps, desc="local q*", unit="step", disable=not progress, leave=False)
    with pyro.validation_enabled(False):
        while step < max_steps and stale < patience:
            for _ in range(min(check_every, max_steps - step)):
                loss = loss_fn.differentiable_loss(model, local, x, **kwargs)
                # gradients of the local parameters only: the model's stay untouched
                grads = torch.autograd.grad(loss, local.parameters())
                for param, grad in zip(local.parameters(), grads):
                    param.grad = grad
                optimizer.step()
                step += 1
            bar.update(min(check_every, bar.total - bar.n))
            current = check()
            better = current > best
            best = torch.where(better, current, best)
            best_shift[better] = local.shift.detach()[better]
            best_raw[better] = local.raw.detach()[better]
            if best.mean().item() > best_mean + min_improvement:
                stale = 0
            else:  # near the optimum Adam's own jitter dominates: halve its steps
                stale += 1
                for group in optimizer.param_groups:
                    group["lr"] *= 0.5
            best_mean = max(best_mean, best.mean().item())  # (best only rises per image)
            bar.set_postfix(elbo=f"{best_mean:.2f}")
    bar.close()
    return LocalGaussianGuide(target, local.loc0, local.chol0, family, data_plate,
                              target.data_dim, best_shift, best_raw), step


def inference_gap(model, guide, x, *, family="diagonal", log_px=None, num_steps=200,
                  num_chains=8, num_leapfrog=3, elbo_samples=1000, batch_size=100,
                  progress=False, data_plate="data", max_plate_nesting=1, fit_options=None,
                  **kwargs):
    """The inference-gap split of each image of ``x``: log p(x) by AIS (or ``log_px``, if already
    known), the guide's ELBO and the ELBO of the best local Gaussian of ``family``, each estimated
    with ``elbo_samples`` draws. ``fit_options`` go to :func:`fit_local_guide`; images are
    fitted ``batch_size`` at a time. Returns an :class:`InferenceGap`.
    """
    kw = dict(data_plate=data_plate, max_plate_nesting=max_plate_nesting, **kwargs)
    check_program(model, guide, x[:batch_size], method="inference_gap", **kw).refuse_discrete(
        "inference_gap", _NO_DISCRETE)
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
