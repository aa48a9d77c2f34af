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

HMC runs on every latent site jointly, in unconstrained space: z = T(u) with
``T = biject_to(site support)``, so the density on u gains log |det dT/du|; g is a ratio of
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

import math
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.transforms import biject_to
from pyro.poutine.util import site_is_subsample
from tqdm import tqdm

from .errors import ConfigError, lookup
from .estimators import Estimate, site_log_prob

__all__ = [
    "AISEstimate",
    "SCHEDULES",
    "STARTS",
    "ais_log_likelihood",
    "linear_schedule",
    "sigmoid_schedule",
]

TARGET_ACCEPT = 0.65
_STEP_SIZE_RANGE = (1e-4, 0.5)
_ADAPT_UP, _ADAPT_DOWN = 1.02, 0.98
_INITIAL_ROUNDS = 15  # HMC rounds at beta = 0 that size the pilot's first step


def sigmoid_schedule(num_steps, radius=4.0):
    """``num_steps + 1`` values from 0 to 1, denser near both ends: a logistic sigmoid of an even
    grid on [-radius, radius], rescaled to [0, 1] (Wu et al., 2017)."""
    if num_steps == 1:
        return torch.tensor([0.0, 1.0], dtype=torch.float64)
    s = torch.sigmoid(torch.linspace(-radius, radius, num_steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def linear_schedule(num_steps):
    """``num_steps + 1`` evenly spaced values from 0 to 1."""
    return torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)


SCHEDULES = {"sigmoid": sigmoid_schedule, "linear": linear_schedule}
STARTS = ("guide", "prior")  # pi_0: the guide q(z|x), or the model's prior p(z)


class _Target:
    """The annealing path of one batch of images on the flat unconstrained space ``(C, N, D)``.

    ``evaluate(u)`` returns ``log pi_0 + log|J|`` and ``g`` per (chain, image), with their
    gradients in u: f_t = base + beta_t g, so a change of beta needs no new evaluation.
    """

    def __init__(self, model, guide, x, num_chains, start, kwargs, data_plate,
                 max_plate_nesting):
        self.model, self.guide, self.x, self.kwargs = model, guide, x, kwargs
        self.num_chains, self.start = num_chains, start
        self.data_plate, self.num_dims = data_plate, max_plate_nesting + 1
        # Discover the latent sites, their supports and unconstrained shapes from one draw,
        # without using up the caller's random numbers.
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            trace = self._trace(self.model)
        self.sites, self.observed = [], []
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            (self.observed if site["is_observed"] else self.sites).append(name)
        if not self.sites:
            raise ValueError("the model has no latent sample sites: nothing to anneal")
        frames = {f.name: f.dim for f in trace.nodes[self.sites[0]]["cond_indep_stack"]}
        if data_plate not in frames:
            raise ValueError(f"latent site {self.sites[0]!r} is outside plate {data_plate!r}; "
                             "pass data_plate= the name of the data plate")
        self.data_dim = frames[data_plate]  # the data plate's dim, as the model declares it
        self.transforms, self.shapes, self.sizes = {}, {}, {}
        c, n = num_chains, x.shape[0]
        for name in self.sites:
            value = trace.nodes[name]["value"]
            if value.shape[:2] != (c, n):
                raise ValueError(
                    f"latent site {name!r} has shape {tuple(value.shape)} under {c} chains and "
                    f"{n} images; AIS needs every latent site to be batched over "
                    f"plate({data_plate!r}) only, (chains, images, *event)")
            t = biject_to(trace.nodes[name]["fn"].support)
            u = t.inv(value)
            self.transforms[name] = t
            self.shapes[name] = u.shape[2:]
            self.sizes[name] = u[0, 0].numel()
        self.dim = sum(self.sizes.values())
        offsets = [0]
        for name in self.sites:
            offsets.append(offsets[-1] + self.sizes[name])
        # site -> its columns of the flat unconstrained space (C, N, D)
        self.slices = {name: slice(a, b) for name, a, b in zip(self.sites, offsets, offsets[1:])}
        self._validate = True  # Pyro's checks on the first evaluation only: they triple its cost

    def _trace(self, fn, data=None):
        if data is not None:
            fn = poutine.condition(fn, data=data)
        with pyro.plate("_chains", self.num_chains, dim=-self.num_dims):
            return poutine.trace(fn).get_trace(self.x, **self.kwargs)

    def _sum(self, trace, names):
        trace.compute_log_prob(site_filter=lambda name, site: name in names)
        total = 0.0
        for name in names:
            total = total + site_log_prob(trace.nodes[name], self.data_plate, self.num_dims)
        return total  # (C, N)

    def flatten(self, z):
        """Latent values ``{site: (C, N, *event)}`` -> unconstrained ``(C, N, D)``."""
        c, n = self.num_chains, self.x.shape[0]
        parts = [self.transforms[s].inv(z[s]).reshape(c, n, self.sizes[s]) for s in self.sites]
        return torch.cat(parts, -1)

    def unflatten(self, u):
        """``(C, N, D)`` -> latent values ``{site: (C, N, *event)}`` and log|J| ``(C, N)``."""
        z, log_jac = {}, 0.0
        for s, sl in self.slices.items():
            us = u[..., sl].reshape(u.shape[:2] + self.shapes[s])
            z[s] = self.transforms[s](us)
            lj = self.transforms[s].log_abs_det_jacobian(us, z[s])
            log_jac = log_jac + (lj.reshape(u.shape[:2] + (-1,)).sum(-1) if lj.dim() > 2 else lj)
        return z, log_jac

    def initial(self):
        """A draw from pi_0 (the guide, or the model's prior), flattened: ``(C, N, D)``."""
        with torch.no_grad():
            trace = self._trace(self.guide if self.start == "guide" else self.model)
        missing = [s for s in self.sites if s not in trace.nodes]
        if missing:
            raise ValueError(f"the guide has no sample site {missing[0]!r} of the model")
        return self.flatten({s: trace.nodes[s]["value"] for s in self.sites}).detach()

    def evaluate(self, u, grad=True):
        """``base, g`` ``(C, N)`` and, with ``grad``, their gradients ``(C, N, D)`` in u."""
        with torch.set_grad_enabled(grad), pyro.validation_enabled(self._validate):
            self._validate = False
            u = u.detach().requires_grad_(grad)
            z, log_jac = self.unflatten(u)
            model_trace = self._trace(self.model, z)
            log_prior = self._sum(model_trace, self.sites)
            log_lik = self._sum(model_trace, self.observed)
            if self.start == "guide":
                log_q = self._sum(self._trace(self.guide, z), self.sites)
                base, g = log_q + log_jac, log_prior + log_lik - log_q
            else:
                base, g = log_prior + log_jac, log_lik
            if not grad:
                return base.detach(), g.detach(), None, None
            grad_base, = torch.autograd.grad(base.sum(), u, retain_graph=True)
            grad_g, = torch.autograd.grad(g.sum(), u)
        return base.detach(), g.detach(), grad_base, grad_g


def _hmc_step(target, state, beta, step_size, num_leapfrog):
    """One HMC transition leaving f_beta invariant, for every (chain, image) at once.

    ``state = (u, base, g, grad_base, grad_g)``; ``step_size`` is ``(N,)``. Returns the new state
    and the accept decisions ``(C, N)`` (a non-finite proposal is rejected).
    """
    u, base, g, grad_base, grad_g = state
    eps = step_size.to(u.dtype)[None, :, None]  # (1, N, 1): one step size per image
    p = torch.randn_like(u)
    h0 = -(base + beta * g) + 0.5 * (p * p).sum(-1)
    new = (u, base, g, grad_base, grad_g)
    p = p + 0.5 * eps * (grad_base + beta * grad_g)
    for i in range(num_leapfrog):
        new = (new[0] + eps * p,)
        new = new + target.evaluate(new[0])
        grad = new[3] + beta * new[4]
        p = p + (eps if i < num_leapfrog - 1 else 0.5 * eps) * grad
    h1 = -(new[1] + beta * new[2]) + 0.5 * (p * p).sum(-1)
    log_accept = h0 - h1  # NaN compares False below: rejected
    accept = torch.rand_like(log_accept).log() < log_accept
    accept &= torch.isfinite(h1)
    state = tuple(
        torch.where(accept.reshape(accept.shape + (1,) * (old.dim() - 2)), fresh, old)
        for old, fresh in zip(state, new)
    )
    return state, accept


def _initial_step_size(target, u, num_leapfrog, rounds=_INITIAL_ROUNDS):
    """Step sizes ``(N,)`` for f_0 = pi_0, where the chains start in equilibrium: from 0.01, x1.5
    or /1.5 per HMC round toward the target acceptance. The x1.02 rule that follows along the
    schedule then only has to track how the step size drifts with beta."""
    state = (u,) + target.evaluate(u)
    eps = torch.full((u.shape[1],), 0.01, device=u.device)
    for _ in range(rounds):
        state, accept = _hmc_step(target, state, 0.0, eps, num_leapfrog)
        up = accept.float().mean(0) > TARGET_ACCEPT
        eps = (eps * torch.where(up, 1.5, 1 / 1.5)).clamp(*_STEP_SIZE_RANGE)
    return eps


def _anneal(target, u, betas, step_sizes, num_leapfrog, reverse=False, adapt=False,
            progress=None):
    """Run the chains from ``u`` through the schedule; returns log weights ``(C, N)`` (float64),
    the step sizes used at each transition ``(T - 1, N)`` and the acceptance rate per
    transition ``(T - 1,)``.

    Forward: for t = 1..T, add (beta_t - beta_{t-1}) g(z), then (t < T) an HMC step for f_t.
    Reverse (from an exact posterior draw): for t = T..1, add (beta_{t-1} - beta_t) g(z), then
    (t > 1) an HMC step for f_{t-1}. Transition k (for f_k, k = 1..T-1) uses ``step_sizes[k-1]``;
    with ``adapt``, ``step_sizes`` is the initial ``(N,)`` and is tuned as the chains go.
    """
    num_steps = len(betas) - 1
    state = (u,) + target.evaluate(u)
    log_w = torch.zeros(u.shape[:2], dtype=torch.float64, device=u.device)
    used = torch.empty(max(num_steps - 1, 0), u.shape[1], device=u.device)
    acceptance = torch.empty(max(num_steps - 1, 0), dtype=torch.float64)
    eps = step_sizes.clone() if adapt else None
    stages = range(num_steps, 0, -1) if reverse else range(1, num_steps + 1)
    for t in stages:
        ratio = (betas[t - 1] - betas[t]) if reverse else (betas[t] - betas[t - 1])
        log_w += ratio * state[2].double()
        k = t - 1 if reverse else t  # the density the next transition leaves invariant
        if 1 <= k <= num_steps - 1:
            step = eps if adapt else step_sizes[k - 1]
            state, accept = _hmc_step(target, state, float(betas[k]), step, num_leapfrog)
            rate = accept.float().mean(0)  # (N,) over the chains
            used[k - 1], acceptance[k - 1] = step, rate.mean().item()
            if adapt:
                eps = (eps * torch.where(rate > TARGET_ACCEPT, _ADAPT_UP, _ADAPT_DOWN)).clamp(
                    *_STEP_SIZE_RANGE)
        if progress is not None:
            progress.update(1)
    return log_w, used, acceptance


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


def _logmeanexp(log_w):
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def _ess(log_w):
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))


def _check(num_steps, num_chains, num_leapfrog, tune_chains, schedule, start, step_size):
    for name, value in (("num_steps", num_steps), ("num_chains", num_chains),
                        ("num_leapfrog", num_leapfrog), ("tune_chains", tune_chains)):
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(schedule, str):
        lookup(SCHEDULES, "schedule", schedule)
    lookup(STARTS, "start", start)
    if step_size is not None and not (0 < float(step_size) < math.inf):
        raise ConfigError(f"step_size must be a positive number, got {step_size!r}")


def _betas(schedule, num_steps):
    if isinstance(schedule, str):
        return SCHEDULES[schedule](num_steps)
    betas = torch.as_tensor(schedule, dtype=torch.float64)
    if betas.dim() != 1 or len(betas) < 2 or betas[0] != 0 or betas[-1] != 1 or \
            bool((betas[1:] < betas[:-1]).any()):
        raise ConfigError("a schedule must be a non-decreasing sequence from 0 to 1")
    return betas


class _Chunk:
    """AIS on one batch of images: a pilot pass that tunes step sizes, then frozen-step runs."""

    def __init__(self, model, guide, x, *, num_chains, tune_chains, num_leapfrog, betas, start,
                 step_size, kwargs, data_plate, max_plate_nesting, progress):
        self.betas, self.num_leapfrog, self.progress = betas, num_leapfrog, progress
        make = lambda c: _Target(model, guide, x, c, start, kwargs,  # noqa: E731
                                 data_plate, max_plate_nesting)
        self.target = make(num_chains)
        n, transitions = x.shape[0], len(betas) - 2
        if step_size is not None:  # fixed by the caller: no pilot
            self.step_sizes = torch.full((max(transitions, 0), n), float(step_size),
                                         device=x.device)
        elif transitions <= 0:
            self.step_sizes = torch.empty(0, n, device=x.device)
        else:
            pilot = make(tune_chains)
            u = pilot.initial()
            init = _initial_step_size(pilot, u, num_leapfrog)
            _, self.step_sizes, _ = _anneal(pilot, u, betas, init, num_leapfrog, adapt=True,
                                            progress=progress)

    def forward(self):
        return _anneal(self.target, self.target.initial(), self.betas, self.step_sizes,
                       self.num_leapfrog, progress=self.progress)

    def reverse(self, z_exact):
        """Reverse AIS from exact posterior draws ``{site: (N, *event)}`` (shared by the chains)."""
        c = self.target.num_chains
        u = self.target.flatten({s: v.expand((c,) + v.shape) for s, v in z_exact.items()})
        return _anneal(self.target, u, self.betas, self.step_sizes, self.num_leapfrog,
                       reverse=True, progress=self.progress)


def _chunks(model, guide, x, *, num_steps, num_chains, num_leapfrog, tune_chains, schedule,
            start, step_size, batch_size, progress, data_plate, max_plate_nesting, kwargs, passes,
            desc):
    """Yield ``(slice, _Chunk)`` over the images, with one progress bar for all the stages."""
    _check(num_steps, num_chains, num_leapfrog, tune_chains, schedule, start, step_size)
    betas = _betas(schedule, num_steps)
    batch_size = batch_size or max(1, 4096 // num_chains)  # about 4096 (chain, image) pairs
    n = x.shape[0]
    chunks = math.ceil(n / batch_size)
    per_chunk = (len(betas) - 1) * (passes + (step_size is None and len(betas) > 2))
    bar = tqdm(total=chunks * per_chunk, desc=desc, unit="stage", disable=not progress,
               leave=False)
    try:
        for start_i in range(0, n, batch_size):
            sl = slice(start_i, min(n, start_i + batch_size))
            yield sl, _Chunk(model, guide, x[sl], num_chains=num_chains,
                             tune_chains=tune_chains, num_leapfrog=num_leapfrog, betas=betas,
                             start=start, step_size=step_size, kwargs=kwargs,
                             data_plate=data_plate, max_plate_nesting=max_plate_nesting,
                             progress=bar)
    finally:
        bar.close()


def _evaluations(num_steps, num_chains, num_leapfrog, tune_chains, step_size, passes=1):
    """Gradient evaluations per image: one per chain and leapfrog step of each of the T - 1
    transitions of each pass, plus the pilot's (its initial rounds included)."""
    transitions = max(num_steps - 1, 0)
    pilot = tune_chains * (_INITIAL_ROUNDS + transitions) if step_size is None and transitions else 0
    return (passes * num_chains * transitions + pilot) * num_leapfrog


def _weighted_mean(parts, weights):
    return (torch.stack(parts) * torch.tensor(weights)[:, None]).sum(0) / sum(weights)


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
    schedule = _betas(schedule, num_steps) if not isinstance(schedule, str) else schedule
    num_steps = num_steps if isinstance(schedule, str) else len(schedule) - 1
    per_image, ess, used, acc, sizes = [], [], [], [], []
    for sl, chunk in _chunks(model, guide, x, num_steps=num_steps, num_chains=num_chains,
                             num_leapfrog=num_leapfrog, tune_chains=tune_chains,
                             schedule=schedule, start=start, step_size=step_size,
                             batch_size=batch_size, progress=progress, data_plate=data_plate,
                             max_plate_nesting=max_plate_nesting, kwargs=kwargs, passes=1,
                             desc="AIS"):
        log_w, step_sizes, acceptance = chunk.forward()
        per_image.append(_logmeanexp(log_w).to(x.dtype).cpu())
        ess.append(_ess(log_w).to(x.dtype).cpu())
        used.append(step_sizes.cpu())
        acc.append(acceptance)
        sizes.append(sl.stop - sl.start)
    return AISEstimate(torch.cat(per_image), num_chains, torch.cat(ess),
                       betas=_betas(schedule, num_steps),
                       step_size=torch.cat(used, 1).median(1).values if used[0].numel() else
                       torch.empty(0),
                       acceptance=_weighted_mean(acc, sizes),
                       evaluations=_evaluations(num_steps, num_chains, num_leapfrog, tune_chains,
                                                step_size))
