"""Bidirectional Monte Carlo (BDMC): AIS lower and upper bounds on log p(x) for simulated data.

Grosse, Ghahramani & Adams (2015); Wu, Burda, Salakhutdinov & Grosse (2017). On data simulated
from the model, (z*, x) ~ p(z) p(x|z), z* is an exact draw from the posterior p(z|x). Forward AIS
from pi_0 to the posterior gives weights with E[w] = p(x), so

.. math:: \\mathbb{E}\\Big[\\log \\tfrac1C \\textstyle\\sum_c w_c\\Big] \\le \\log p(x);

reverse AIS, started at z* and run down the same schedule, gives weights with
E[w_rev] = 1 / p(x), so

.. math:: \\log p(x) \\le \\mathbb{E}\\Big[-\\log \\tfrac1C \\textstyle\\sum_c w^{rev}_c\\Big].

The two sandwich log p(x): ``upper - lower`` bounds the error of forward AIS with that schedule
on data like these (the upper bound holds only for simulated data, where z* is exact). The
reverse chains use the step sizes tuned by the forward pilot, so both directions run the same
transitions.
"""

import math
from dataclasses import dataclass

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from .annealing import (
    annealed_batches,
    effective_sample_size,
    gradient_evaluations,
    log_mean_exp,
    schedule_betas,
    TUNE_CHAINS,
    TUNE_PASSES,
)

__all__ = ["BDMCResult", "bdmc", "merge_bdmc", "simulate"]


@dataclass
class BDMCResult:
    """Per-image ``lower`` and ``upper`` stochastic bounds ``(N,)`` on log p(x) of the simulated
    images ``x`` ``(N, ...)``, with the chains' effective sample sizes and each direction's
    acceptance rate per transition and image ``(T - 1, N)``; results on disjoint images merge
    with :func:`merge_bdmc`."""

    lower: torch.Tensor
    upper: torch.Tensor
    x: torch.Tensor
    num_steps: int
    num_chains: int
    ess_forward: torch.Tensor
    ess_reverse: torch.Tensor
    acceptance_forward: torch.Tensor
    acceptance_reverse: torch.Tensor
    evaluations: int = 0  # gradient evaluations per image, both directions and the pilot

    @property
    def gap(self):
        """``upper - lower`` per image: how far AIS at this schedule may be from log p(x)."""
        return self.upper - self.lower

    def summary(self):
        """A JSON-able dict of means over the images."""
        n = self.lower.numel()
        se = lambda t: (t.std() / math.sqrt(n)).item() if n > 1 else float("nan")  # noqa: E731
        return {"lower_mean": self.lower.mean().item(), "upper_mean": self.upper.mean().item(),
                "gap_mean": self.gap.mean().item(), "gap_stderr": se(self.gap),
                "num_images": n, "num_steps": self.num_steps, "num_chains": self.num_chains,
                "gradient_evaluations": self.evaluations,
                "acceptance_forward": self.acceptance_forward.mean().item(),
                "acceptance_reverse": self.acceptance_reverse.mean().item()}


@torch.no_grad()
def simulate(model, x, **kwargs):
    """Draw (z*, x) from the model: ``poutine.uncondition`` samples its observed site. ``x``
    gives the batch and image shape only. Returns ``(x_sim, {latent site: z*})``; the model must
    have exactly one observed site, the one ``x`` is passed to."""
    trace = poutine.trace(poutine.uncondition(model)).get_trace(x, **kwargs)
    observed, latent = [], {}
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            if site["is_observed"] or site["infer"].get("was_observed"):
                observed.append(name)
            else:
                latent[name] = site["value"]
    if len(observed) != 1:
        raise ValueError(f"BDMC needs a model with exactly one observed site (the data x); "
                         f"this one has {len(observed)}: {observed}")
    x_sim = trace.nodes[observed[0]]["value"]
    if x_sim.shape != x.shape:
        raise ValueError(f"the model's observed site {observed[0]!r} has shape "
                         f"{tuple(x_sim.shape)}, not that of x {tuple(x.shape)}")
    return x_sim.to(x.dtype), latent


def bdmc(model, guide, x, *, num_steps=200, num_chains=8, num_leapfrog=3, tune_chains=TUNE_CHAINS,
         tune_passes=TUNE_PASSES, schedule="sigmoid", start="guide", step_size=None, batch_size=None, progress=False,
         data_plate="data", max_plate_nesting=1, **kwargs):
    """BDMC bounds on log p(x) for ``x.shape[0]`` images simulated from ``model``.

    The arguments are those of :func:`~pyro_vae.ais.ais_log_likelihood`; ``x`` gives the number
    and shape of the simulated images only. Returns a :class:`BDMCResult`.
    """
    schedule = schedule_betas(schedule, num_steps) if not isinstance(schedule, str) else schedule
    num_steps = num_steps if isinstance(schedule, str) else len(schedule) - 1
    x_sim, z_exact = simulate(model, x, **kwargs)
    lower, upper, ess_f, ess_r, acc_f, acc_r = [], [], [], [], [], []
    for sl, chunk in annealed_batches(model, guide, x_sim, num_steps=num_steps, num_chains=num_chains,
                             num_leapfrog=num_leapfrog, tune_chains=tune_chains,
                             schedule=schedule, start=start, step_size=step_size,
                             batch_size=batch_size, progress=progress, data_plate=data_plate,
                             max_plate_nesting=max_plate_nesting, kwargs=kwargs, passes=2,
                             desc="BDMC", tune_passes=tune_passes):
        log_w, acc = chunk.forward()  # acceptance (T - 1, n)
        log_w_rev, acc_rev = chunk.reverse({s: z[sl] for s, z in z_exact.items()})
        lower.append(log_mean_exp(log_w).cpu())
        upper.append(-log_mean_exp(log_w_rev).cpu())
        ess_f.append(effective_sample_size(log_w).cpu())
        ess_r.append(effective_sample_size(log_w_rev).cpu())
        acc_f.append(acc)
        acc_r.append(acc_rev)
    cat = lambda ts: torch.cat(ts).to(x.dtype)  # noqa: E731
    return BDMCResult(cat(lower), cat(upper), x_sim, num_steps, num_chains, cat(ess_f),
                      cat(ess_r), torch.cat(acc_f, 1), torch.cat(acc_r, 1),
                      gradient_evaluations(num_steps, num_chains, num_leapfrog, tune_chains,
                                           step_size, passes=2, tune_passes=tune_passes))


def merge_bdmc(parts):
    """One :class:`BDMCResult` of the simulated images of ``parts`` (disjoint, same settings),
    in their order."""
    cat = lambda name, dim=0: torch.cat([getattr(p, name) for p in parts], dim)  # noqa: E731
    first = parts[0]
    return BDMCResult(cat("lower"), cat("upper"), cat("x"), first.num_steps, first.num_chains,
                      cat("ess_forward"), cat("ess_reverse"), cat("acceptance_forward", 1),
                      cat("acceptance_reverse", 1), first.evaluations)
