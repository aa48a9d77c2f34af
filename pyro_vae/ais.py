"""Annealed importance sampling (AIS) of log p(x) with HMC transitions, for any Pyro model/guide.

For one image x, AIS (Neal, 2001) moves C chains through intermediate densities between a start
distribution pi_0 (the guide q(z|x), or the prior p(z)) and the posterior, on a schedule
0 = beta_0 < beta_1 < ... < beta_T = 1:

.. math::

    \\log f_t(z) = \\log \\pi_0(z) + \\beta_t\\, g(z), \\qquad
    g(z) = \\log p(x, z) - \\log \\pi_0(z),

so log f_t = (1 - beta_t) log q(z|x) + beta_t log p(x, z) from the guide, or
log p(z) + beta_t log p(x|z) from the prior. A chain starts at z_1 ~ pi_0; at each stage it adds
(beta_t - beta_{t-1}) g(z_t) to its log weight, then takes an HMC step that leaves f_t invariant.
The mean weight is an unbiased estimate of p(x), so its log is a stochastic lower bound
(E[log p_hat] <= log p(x)), and with T = 1 AIS is plain importance sampling from pi_0.

HMC runs on every continuous latent site jointly (discrete sites marked for enumeration are
summed out of the densities, :mod:`pyro_vae.annealing`), in unconstrained space: z = T(u) with
``T = biject_to(site support)``, so the density on u gains ``log |det dT/du|``; g is a ratio of
densities on the same z and needs no Jacobian. Gradients come from autograd through the
replayed model and guide.

**Step sizes.** A leapfrog step size per image is adapted toward an acceptance rate of 0.65
(x1.02 above, x0.98 below, clamped to [1e-4, 0.5]; Wu et al., 2017). Adapting on the chains' own
accept decisions makes each transition depend on the chain's past, which breaks the invariance
AIS relies on: the weights are no longer unbiased for p(x). So the step sizes are tuned in a *pilot* pass with a few
separate chains, frozen, and the estimate is made by fresh chains with the frozen schedule.

Memory: chains x images are one batch, processed ``batch_size`` images at a time; the chain
state is overwritten at each stage, so nothing grows with the number of stages but the
per-stage diagnostics (T floats each).
"""


from dataclasses import dataclass

import torch

from .annealing import (
    SCHEDULES,
    STARTS,
    annealed_batches,
    effective_sample_size,
    gradient_evaluations,
    linear_schedule,
    log_mean_exp,
    schedule_betas,
    sigmoid_schedule,
    weighted_mean,
)
from .estimators import Estimate

__all__ = [
    "AISEstimate",
    "SCHEDULES",
    "STARTS",
    "ais_log_likelihood",
    "linear_schedule",
    "sigmoid_schedule",
]


@dataclass
class AISEstimate(Estimate):
    """An :class:`~pyro_vae.estimators.Estimate` from AIS (``num_samples`` = chains per image),
    with the schedule and its diagnostics: ``betas`` ``(T + 1,)``, and per HMC transition
    ``(T - 1,)`` the frozen ``step_size`` (median over images) and the ``acceptance`` rate of the
    estimating chains (mean over chains and images)."""

    betas: torch.Tensor = None
    step_size: torch.Tensor = None
    acceptance: torch.Tensor = None
    evaluations: int = 0  # gradient evaluations of log p(x, z) per image, pilot included

    def summary(self):
        out = super().summary()
        out.update(num_steps=len(self.betas) - 1, gradient_evaluations=self.evaluations)
        if len(self.acceptance):
            out.update(acceptance_mean=self.acceptance.mean().item(),
                       step_size_median=self.step_size.median().item())
        return out

def ais_log_likelihood(model, guide, x, *, num_steps=500, num_chains=16, num_leapfrog=10,
                       tune_chains=4, schedule="sigmoid", start="guide", step_size=None,
                       batch_size=None, progress=False, data_plate="data", max_plate_nesting=1,
                       **kwargs):
    """Per-image AIS estimates of log p(x): ``log (1/C) sum_c w_c`` over C = ``num_chains``.

    :param model, guide: Pyro callables ``(x, **kwargs)`` whose sample sites all sit in
        ``plate(data_plate)`` over the first dimension of ``x``; the guide has the model's latent
        sites (it is the start distribution with ``start="guide"``).
    :param num_steps: T, the number of annealing steps (densities f_0..f_T; HMC transitions:
        T - 1).
    :param num_leapfrog: leapfrog steps per HMC transition.
    :param tune_chains: chains of the pilot pass that tunes the step sizes.
    :param schedule: ``"sigmoid"``, ``"linear"``, or a sequence beta_0 = 0 <= ... <= beta_T = 1.
    :param start: ``"guide"`` (q(z|x)) or ``"prior"`` (p(z)).
    :param step_size: a fixed leapfrog step size for every stage and image (no pilot pass).
    :param batch_size: images per pass (default: about 4096 chain-image pairs).
    :returns: :class:`AISEstimate`, ``per_image`` ``(N,)`` on the CPU in x's dtype; ``ess`` is
        the effective sample size of the C chain weights; ``elbo`` is None.
    """
    schedule = schedule_betas(schedule, num_steps) if not isinstance(schedule, str) else schedule
    num_steps = num_steps if isinstance(schedule, str) else len(schedule) - 1
    per_image, ess, used, acc, sizes = [], [], [], [], []
    for sl, chunk in annealed_batches(model, guide, x, num_steps=num_steps, num_chains=num_chains,
                             num_leapfrog=num_leapfrog, tune_chains=tune_chains,
                             schedule=schedule, start=start, step_size=step_size,
                             batch_size=batch_size, progress=progress, data_plate=data_plate,
                             max_plate_nesting=max_plate_nesting, kwargs=kwargs, passes=1,
                             desc="AIS"):
        log_w, step_sizes, acceptance = chunk.forward()
        per_image.append(log_mean_exp(log_w).to(x.dtype).cpu())
        ess.append(effective_sample_size(log_w).to(x.dtype).cpu())
        used.append(step_sizes.cpu())
        acc.append(acceptance)
        sizes.append(sl.stop - sl.start)
    return AISEstimate(torch.cat(per_image), num_chains, torch.cat(ess),
                       betas=schedule_betas(schedule, num_steps),
                       step_size=torch.cat(used, 1).median(1).values if used[0].numel() else
                       torch.empty(0),
                       acceptance=weighted_mean(acc, sizes),
                       evaluations=gradient_evaluations(num_steps, num_chains, num_leapfrog, tune_chains,
                                                step_size))
