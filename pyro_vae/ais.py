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

**Step sizes.** Adapting a step size on the estimating chains' own accept decisions would make
each transition depend on the chain's past, which breaks the invariance AIS relies on: the
weights would no longer be unbiased for p(x). So a *pilot* of a few separate chains tunes one
leapfrog step size per transition and image toward an acceptance rate of 0.65
(:func:`~pyro_vae.annealing.tune_step_sizes`: a pass that adapts along the schedule, then
passes with the sizes frozen that correct each stage by x1.25 or x0.8), the sizes are frozen,
and fresh chains make the estimate. The defaults (200 steps, 8 chains, 3 leapfrog steps, a
pilot of 4 chains and 2 passes: 9,732 gradient evaluations per image) were chosen by the BDMC
gap on a trained MNIST VAE, at equal cost: more stages buy more than more chains or longer
trajectories.

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
    TUNE_CHAINS,
    TUNE_PASSES,
)
from .estimators import Estimate

__all__ = [
    "AISEstimate",
    "SCHEDULES",
    "STARTS",
    "ais_log_likelihood",
    "merge_ais",
    "linear_schedule",
    "sigmoid_schedule",
]


@dataclass
class AISEstimate(Estimate):
    """An :class:`~pyro_vae.estimators.Estimate` from AIS (``num_samples`` = chains per image),
    with the schedule and its diagnostics: ``betas`` ``(T + 1,)``, and per HMC transition and
    image ``(T - 1, N)`` the frozen ``image_step_sizes`` and the ``image_acceptance`` of the
    estimating chains (the fraction of the chains that accepted). ``step_size`` (median over
    images) and ``acceptance`` (mean over images) summarize them per transition; estimates of
    disjoint images merge with :func:`merge_ais`."""

    betas: torch.Tensor = None
    image_step_sizes: torch.Tensor = None
    image_acceptance: torch.Tensor = None
    evaluations: int = 0  # gradient evaluations of log p(x, z) per image, pilot included

    @property
    def step_size(self):
        """``(T - 1,)``: the median over images of each transition's step size."""
        s = self.image_step_sizes
        return s.median(1).values if s.numel() else s.new_empty(s.shape[0])

    @property
    def acceptance(self):
        """``(T - 1,)``: each transition's acceptance rate, the mean over chains and images."""
        return self.image_acceptance.mean(1) if self.image_acceptance.numel() else \
            self.image_acceptance.new_empty(self.image_acceptance.shape[0])

    def summary(self):
        out = super().summary()
        out.update(num_steps=len(self.betas) - 1, gradient_evaluations=self.evaluations)
        if self.image_acceptance.numel():
            out.update(acceptance_mean=self.image_acceptance.mean().item(),
                       step_size_median=self.image_step_sizes.median().item())
        return out


def merge_ais(parts):
    """One :class:`AISEstimate` of the images of ``parts`` (estimates of disjoint images at the
    same settings), in their order: per-image values concatenated, so that the medians and means
    over images are those of all of them."""
    cat = lambda name, dim=0: torch.cat([getattr(p, name) for p in parts], dim)  # noqa: E731
    first = parts[0]
    return AISEstimate(cat("per_image"), first.num_samples, cat("ess"), betas=first.betas,
                       image_step_sizes=cat("image_step_sizes", 1),
                       image_acceptance=cat("image_acceptance", 1),
                       evaluations=first.evaluations)


def ais_log_likelihood(model, guide, x, *, num_steps=200, num_chains=8, num_leapfrog=3,
                       tune_chains=TUNE_CHAINS, tune_passes=TUNE_PASSES, schedule="sigmoid", start="guide",
                       step_size=None, batch_size=None, progress=False, data_plate="data",
                       max_plate_nesting=1, **kwargs):
    """Per-image AIS estimates of log p(x): ``log (1/C) sum_c w_c`` over C = ``num_chains``.

    :param model, guide: Pyro callables ``(x, **kwargs)`` whose sample sites all sit in
        ``plate(data_plate)`` over the first dimension of ``x``; the guide has the model's latent
        sites (it is the start distribution with ``start="guide"``).
    :param num_steps: T, the number of annealing steps (densities f_0..f_T; HMC transitions:
        T - 1).
    :param num_leapfrog: leapfrog steps per HMC transition.
    :param tune_chains: chains of the pilot that tunes the step sizes.
    :param tune_passes: passes of the pilot through the schedule
        (:func:`~pyro_vae.annealing.tune_step_sizes`).
    :param schedule: ``"sigmoid"``, ``"linear"``, or a sequence beta_0 = 0 <= ... <= beta_T = 1.
    :param start: ``"guide"`` (q(z|x)) or ``"prior"`` (p(z)).
    :param step_size: a fixed leapfrog step size for every stage and image (no pilot).
    :param batch_size: images per pass (default: about 4096 chain-image pairs).
    :returns: :class:`AISEstimate`, ``per_image`` ``(N,)`` on the CPU in x's dtype; ``ess`` is
        the effective sample size of the C chain weights; ``elbo`` is None.
    """
    schedule = schedule_betas(schedule, num_steps) if not isinstance(schedule, str) else schedule
    num_steps = num_steps if isinstance(schedule, str) else len(schedule) - 1
    parts = []
    for sl, chunk in annealed_batches(model, guide, x, num_steps=num_steps, num_chains=num_chains,
                             num_leapfrog=num_leapfrog, tune_chains=tune_chains,
                             schedule=schedule, start=start, step_size=step_size,
                             batch_size=batch_size, progress=progress, data_plate=data_plate,
                             max_plate_nesting=max_plate_nesting, kwargs=kwargs, passes=1,
                             desc="AIS", tune_passes=tune_passes):
        log_w, rates = chunk.forward()
        parts.append(AISEstimate(
            log_mean_exp(log_w).to(x.dtype).cpu(), num_chains,
            effective_sample_size(log_w).to(x.dtype).cpu(),
            betas=schedule_betas(schedule, num_steps), image_step_sizes=chunk.step_sizes.cpu(),
            image_acceptance=rates,
            evaluations=gradient_evaluations(num_steps, num_chains, num_leapfrog, tune_chains,
                                             step_size, tune_passes=tune_passes)))
    return merge_ais(parts)
