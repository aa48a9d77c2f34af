"""The machinery of annealing, shared by AIS, BDMC and the gap split: the annealing target of a
Pyro program on a flat unconstrained space, HMC transitions, schedules, and the chains of one
batch of images.

For images x, a start distribution pi_0 (the guide q(z|x), or the prior p(z)) and a schedule
0 = beta_0 <= ... <= beta_T = 1, the intermediate densities are

.. math::

    \\log f_t(z) = \\log \\pi_0(z) + \\beta_t\\, g(z), \\qquad
    g(z) = \\log p(x, z) - \\log \\pi_0(z).

:class:`AnnealingTarget` evaluates ``log pi_0 + log|J|`` and ``g`` with their gradients on
u = T^{-1}(z), ``T = biject_to(support)`` per continuous latent site, for chains x images at
once. Discrete sites marked for enumeration are summed out of log p(x, z), and where the guide
enumerates them, pi_0 = q(z | x) is the mixture over them (:mod:`pyro_vae.program`): HMC moves
the continuous sites only, as Pyro's MCMC does. :func:`anneal` runs chains through a schedule,
forward or in reverse, and :class:`AnnealedChains` tunes the step sizes of one batch of images
in a pilot pass before freezing them (see :mod:`pyro_vae.ais` for why).
"""

import math

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.transforms import biject_to
from torch.distributions import constraints
from tqdm import tqdm

from .errors import ConfigError, ModelError, lookup
from .estimators import guide_log_density, joint_log_density
from .program import check_program, log_density

__all__ = [
    "SCHEDULES",
    "STARTS",
    "TARGET_ACCEPT",
    "PAIRS_PER_PASS",
    "TUNE_CHAINS",
    "TUNE_PASSES",
    "AnnealedChains",
    "AnnealingTarget",
    "anneal",
    "annealed_batches",
    "effective_sample_size",
    "gradient_evaluations",
    "hmc_step",
    "initial_step_size",
    "linear_schedule",
    "log_mean_exp",
    "schedule_betas",
    "sigmoid_schedule",
    "tune_step_sizes",
]

TARGET_ACCEPT = 0.65
_STEP_SIZE_RANGE = (1e-4, 0.5)
_INITIAL_ROUNDS = 15  # HMC rounds at beta = 0 that size the pilot's first step
_ADAPT_UP, _ADAPT_DOWN = 1.02, 0.98  # the pilot's first pass, after each transition
_TUNE_UP, _TUNE_DOWN = 1.25, 0.8  # a stage's step size after a pilot pass above / below target
TUNE_PASSES = 2  # pilot passes through the whole schedule: one adapting, then frozen ones
TUNE_CHAINS = 4  # the pilot's chains
PAIRS_PER_PASS = 4096  # (chain, image) pairs annealed together by default


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


# torch's constraint of a MixtureSameFamily's support (absent from older torch: nothing matches)
_MIXTURE_SUPPORT = getattr(constraints, "MixtureSameFamilyConstraint", ())


def _unconstraining(support):
    """The bijection from unconstrained space onto ``support``. A mixture's support (torch's
    ``MixtureSameFamilyConstraint``, e.g. of the mixture and VampPrior priors) has none
    registered: it is its components' support, whose bijection serves."""
    while isinstance(support, _MIXTURE_SUPPORT):
        support = support.base_constraint
    return biject_to(support)


class AnnealingTarget:
    """The annealing path of one batch of images on the flat unconstrained space ``(C, N, D)``.

    ``evaluate(u)`` returns ``log pi_0 + log|J|`` and ``g`` per (chain, image), with their
    gradients in u: f_t = base + beta_t g, so a change of beta needs no new evaluation. The
    program is checked first (:func:`~pyro_vae.program.check_program`, or pass its
    ``program``); u holds its continuous latent sites, enumerated discrete sites are summed out,
    and a discrete site the guide samples is refused (HMC cannot move it).

    :param model, guide: ``(x, **kwargs)`` Pyro callables, every sample site in
        ``plate(data_plate)`` over dim 0 of ``x``.
    :param num_chains: C, the chains per image (a plate left of the model's plates).
    :param start: ``"guide"`` (pi_0 = q(z|x)) or ``"prior"`` (pi_0 = p(z)).
    """

    def __init__(self, model, guide, x, num_chains, start="guide", kwargs=None,
                 data_plate="data", max_plate_nesting=1, program=None, method="AIS"):
        kwargs = kwargs or {}
        self.model, self.guide, self.x, self.kwargs = model, guide, x, kwargs
        self.num_chains, self.start = num_chains, start
        self.data_plate, self.num_dims = data_plate, max_plate_nesting + 1
        if program is None:
            program = check_program(model, guide, x, data_plate=data_plate,
                                    max_plate_nesting=max_plate_nesting, method=method, **kwargs)
        if program.discrete_sampled:
            raise ModelError(
                f"{method} moves latent sites by HMC, which cannot move the discrete site "
                f"{program.discrete_sampled[0]!r} that the guide samples; mark it "
                "infer={'enumerate': 'parallel'} (in the model, or config_enumerate the guide) "
                "so that it is summed out, or use log_likelihood (importance sampling)")
        if not program.sampled:
            raise ModelError(f"{method} anneals continuous latent sites, and this model has "
                             "none: its discrete sites are summed out exactly, so "
                             "log_likelihood gives log p(x) itself")
        self.program = program
        # Discover the latent sites' supports and unconstrained shapes from one draw, without
        # using up the caller's random numbers.
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            trace = self._trace(self.model)
        self.sites, self.observed = list(program.sampled), list(program.observed)
        frames = {f.name: f.dim for f in trace.nodes[self.sites[0]]["cond_indep_stack"]}
        self.data_dim = frames[data_plate]  # the data plate's dim, as the model declares it
        self.transforms, self.shapes, self.sizes = {}, {}, {}
        c, n = num_chains, x.shape[0]
        for name in self.sites:
            value = trace.nodes[name]["value"]
            if value.shape[:2] != (c, n):
                raise ModelError(
                    f"latent site {name!r} has shape {tuple(value.shape)} under {c} chains and "
                    f"{n} images; {method} needs every latent site to be batched over "
                    f"plate({data_plate!r}) only, (chains, images, *event)")
            t = _unconstraining(trace.nodes[name]["fn"].support)
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
        return log_density(trace, names, self.data_plate, self.num_dims)  # (C, N)

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
        """A draw from pi_0 (the guide, or the model's prior), flattened: ``(C, N, D)``. (An
        enumerated site is drawn too, so that z is a draw of the mixture, and then dropped.)"""
        with torch.no_grad():
            trace = self._trace(self.guide if self.start == "guide" else self.model)
        return self.flatten({s: trace.nodes[s]["value"] for s in self.sites}).detach()

    def _densities(self, z):
        """What ``evaluate`` needs at ``z``, ``(C, N)`` each, enumerated sites summed out: for
        the guide start ``(log p(x, z), None, log q(z|x))``, for the prior start ``(None,
        log p(z), log p(x|z))``."""
        program, start = self.program, self.start
        if not program.enumerated:
            model_trace = self._trace(self.model, z)
            log_prior = self._sum(model_trace, self.sites)
            log_lik = self._sum(model_trace, self.observed)
            if start == "guide":
                log_q = self._sum(self._trace(self.guide, z), self.sites)
                return log_prior + log_lik, None, log_q
            return None, log_prior, log_lik  # (g = log p(x|z) exactly, as before)
        args = (self.x, (), self.kwargs)
        with pyro.plate("_chains", self.num_chains, dim=-self.num_dims):
            log_joint = joint_log_density(self.model, z, program, *args)
            if start == "guide":
                return log_joint, None, guide_log_density(self.guide, z, program, *args)
            prior = poutine.block(self.model, hide=program.observed)
            log_prior = joint_log_density(prior, z, _latent_only(program), *args)
        return None, log_prior, log_joint - log_prior

    def evaluate(self, u, grad=True):
        """``base, g`` ``(C, N)`` and, with ``grad``, their gradients ``(C, N, D)`` in u."""
        with torch.set_grad_enabled(grad), pyro.validation_enabled(self._validate):
            self._validate = False
            u = u.detach().requires_grad_(grad)
            z, log_jac = self.unflatten(u)
            log_joint, log_prior, third = self._densities(z)
            if self.start == "guide":
                log_q = third
                base, g = log_q + log_jac, log_joint - log_q
            else:
                base, g = log_prior + log_jac, third
            if not grad:
                return base.detach(), g.detach(), None, None
            grad_base, = torch.autograd.grad(base.sum(), u, retain_graph=True)
            grad_g, = torch.autograd.grad(g.sum(), u)
        return base.detach(), g.detach(), grad_base, grad_g


def _latent_only(program):
    """``program`` without its observed sites: log p(z), the enumerated sites summed out."""
    return type(program)(program.sampled, [], program.data_plate, program.max_plate_nesting,
                         program.model_enumerated, program.guide_enumerated,
                         program.discrete_sampled)


def hmc_step(target, state, beta, step_size, num_leapfrog):
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


def initial_step_size(target, u, num_leapfrog, rounds=_INITIAL_ROUNDS):
    """Step sizes ``(N,)`` for f_0 = pi_0, where the chains start in equilibrium: from 0.01, x1.5
    or /1.5 per HMC round toward the target acceptance; the pilot (:func:`tune_step_sizes`)
    starts its first pass from them."""
    state = (u,) + target.evaluate(u)
    eps = torch.full((u.shape[1],), 0.01, device=u.device)
    for _ in range(rounds):
        state, accept = hmc_step(target, state, 0.0, eps, num_leapfrog)
        up = accept.float().mean(0) > TARGET_ACCEPT
        eps = (eps * torch.where(up, 1.5, 1 / 1.5)).clamp(*_STEP_SIZE_RANGE)
    return eps


def anneal(target, u, betas, step_sizes, num_leapfrog, reverse=False, progress=None):
    """Run the chains from ``u`` through the schedule with frozen ``step_sizes`` ``(T - 1, N)``;
    returns log weights ``(C, N)`` (float64) and the acceptance rate of each transition and
    image over the chains ``(T - 1, N)`` (on the CPU, copied there once, at the end).

    Forward: for t = 1..T, add (beta_t - beta_{t-1}) g(z), then (t < T) an HMC step for f_t.
    Reverse (from an exact posterior draw): for t = T..1, add (beta_{t-1} - beta_t) g(z), then
    (t > 1) an HMC step for f_{t-1}. Transition k (for f_k, k = 1..T-1) uses ``step_sizes[k-1]``.
    """
    num_steps = len(betas) - 1
    state = (u,) + target.evaluate(u)
    log_w = torch.zeros(u.shape[:2], dtype=torch.float64, device=u.device)
    rates = torch.empty(max(num_steps - 1, 0), u.shape[1], dtype=torch.float64, device=u.device)
    stages = range(num_steps, 0, -1) if reverse else range(1, num_steps + 1)
    for t in stages:
        ratio = (betas[t - 1] - betas[t]) if reverse else (betas[t] - betas[t - 1])
        log_w += ratio * state[2].double()
        k = t - 1 if reverse else t  # the density the next transition leaves invariant
        if 1 <= k <= num_steps - 1:
            state, accept = hmc_step(target, state, float(betas[k]), step_sizes[k - 1],
                                     num_leapfrog)
            rates[k - 1] = accept.double().mean(0)  # (N,) over the chains
        if progress is not None:
            progress.update(1)
    return log_w, rates.cpu()


def tune_step_sizes(target, betas, num_leapfrog, passes=TUNE_PASSES, progress=None):
    """The pilot: step sizes ``(T - 1, N)``, one per transition and image, for chains that will
    not adapt. From :func:`initial_step_size` at beta = 0, the pilot's chains first run the
    schedule adapting as they go (x1.02 after a transition accepted above
    :data:`TARGET_ACCEPT` over the chains, x0.98 below), which follows the drift of the step
    size with beta over any range; then ``passes - 1`` times they run it again with the sizes
    frozen, and after each such pass a stage's size is multiplied by 1.25 where its acceptance
    was above the target, by 0.8 where below. Sizes stay in [1e-4, 0.5]. The estimating chains
    never see these accept decisions: their transitions do not depend on their own past."""
    transitions, n = max(len(betas) - 2, 0), target.x.shape[0]
    u = target.initial()
    eps = initial_step_size(target, u, num_leapfrog)
    sizes = torch.empty(transitions, n, device=u.device)
    if passes == 0:
        return sizes.copy_(eps.expand(transitions, n))
    state = (u,) + target.evaluate(u)
    for k in range(1, transitions + 1):
        state, accept = hmc_step(target, state, float(betas[k]), eps, num_leapfrog)
        sizes[k - 1] = eps
        up = accept.float().mean(0) > TARGET_ACCEPT
        eps = (eps * torch.where(up, _ADAPT_UP, _ADAPT_DOWN)).clamp(*_STEP_SIZE_RANGE)
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.update(1)  # (as many updates as a pass of anneal: one per stage)
    for _ in range(passes - 1):
        _, rates = anneal(target, target.initial(), betas, sizes, num_leapfrog,
                          progress=progress)
        up = (rates > TARGET_ACCEPT).to(sizes.device)
        sizes = (sizes * torch.where(up, _TUNE_UP, _TUNE_DOWN)).clamp(*_STEP_SIZE_RANGE)
    return sizes


def log_mean_exp(log_w):
    """log (1/C) sum_c e^{w_c} over dim 0: the AIS estimate from the chains' log weights."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def effective_sample_size(log_w):
    """(sum_c w_c)^2 / sum_c w_c^2 over dim 0, from log weights."""
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))


def check_settings(num_steps, num_chains, num_leapfrog, tune_chains, schedule, start, step_size,
                   tune_passes=TUNE_PASSES):
    for name, value in (("num_steps", num_steps), ("num_chains", num_chains),
                        ("num_leapfrog", num_leapfrog), ("tune_chains", tune_chains)):
        if not (isinstance(value, int) and value >= 1):
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(tune_passes, int) and tune_passes >= 0):
        raise ConfigError(f"tune_passes must be a non-negative integer, got {tune_passes!r}")
    if isinstance(schedule, str):
        lookup(SCHEDULES, "schedule", schedule)
    lookup(STARTS, "start", start)
    if step_size is not None and not (0 < float(step_size) < math.inf):
        raise ConfigError(f"step_size must be a positive number, got {step_size!r}")


def schedule_betas(schedule, num_steps):
    if isinstance(schedule, str):
        return SCHEDULES[schedule](num_steps)
    betas = torch.as_tensor(schedule, dtype=torch.float64)
    if betas.dim() != 1 or len(betas) < 2 or betas[0] != 0 or betas[-1] != 1 or \
            bool((betas[1:] < betas[:-1]).any()):
        raise ConfigError("a schedule must be a non-decreasing sequence from 0 to 1")
    return betas

class AnnealedChains:
    """AIS on one batch of images: a pilot that tunes step sizes (:func:`tune_step_sizes`),
    then runs of fresh chains with the step sizes frozen."""

    def __init__(self, model, guide, x, *, num_chains, tune_chains, num_leapfrog, betas, start,
                 step_size, kwargs, data_plate, max_plate_nesting, progress, program=None,
                 method="AIS", tune_passes=TUNE_PASSES):
        self.betas, self.num_leapfrog, self.progress = betas, num_leapfrog, progress
        self.target = AnnealingTarget(model, guide, x, num_chains, start, kwargs, data_plate,
                                      max_plate_nesting, program, method)
        n, transitions = x.shape[0], len(betas) - 2
        if step_size is not None:  # fixed by the caller: no pilot
            self.step_sizes = torch.full((max(transitions, 0), n), float(step_size),
                                         device=x.device)
        elif transitions <= 0:
            self.step_sizes = torch.empty(0, n, device=x.device)
        else:
            pilot = AnnealingTarget(model, guide, x, tune_chains, start, kwargs, data_plate,
                                    max_plate_nesting, self.target.program)
            self.step_sizes = tune_step_sizes(pilot, betas, num_leapfrog, tune_passes, progress)

    def forward(self):
        return anneal(self.target, self.target.initial(), self.betas, self.step_sizes,
                       self.num_leapfrog, progress=self.progress)

    def reverse(self, z_exact):
        """Reverse AIS from exact posterior draws ``{site: (N, *event)}`` (shared by the chains)."""
        c = self.target.num_chains
        u = self.target.flatten({s: v.expand((c,) + v.shape) for s, v in z_exact.items()})
        return anneal(self.target, u, self.betas, self.step_sizes, self.num_leapfrog,
                       reverse=True, progress=self.progress)


def annealed_batches(model, guide, x, *, num_steps, num_chains, num_leapfrog, tune_chains,
                     schedule, start, step_size, batch_size, progress, data_plate,
                     max_plate_nesting, kwargs, passes, desc, tune_passes=TUNE_PASSES):
    """Yield ``(slice, AnnealedChains)`` over the images, with one progress bar for all the
    stages; the program is checked once, on the first batch (``desc`` names the method in
    its errors)."""
    check_settings(num_steps, num_chains, num_leapfrog, tune_chains, schedule, start, step_size,
                   tune_passes)
    betas = schedule_betas(schedule, num_steps)
    batch_size = batch_size or max(1, PAIRS_PER_PASS // num_chains)
    n = x.shape[0]
    chunks = math.ceil(n / batch_size)
    per_chunk = (len(betas) - 1) * (passes + (step_size is None and len(betas) > 2) * tune_passes)
    bar = tqdm(total=chunks * per_chunk, desc=desc, unit="stage", disable=not progress,
               leave=False)
    program = None
    try:
        for start_i in range(0, n, batch_size):
            sl = slice(start_i, min(n, start_i + batch_size))
            chains = AnnealedChains(model, guide, x[sl], num_chains=num_chains,
                                    tune_chains=tune_chains, num_leapfrog=num_leapfrog,
                                    betas=betas, start=start, step_size=step_size, kwargs=kwargs,
                                    data_plate=data_plate, max_plate_nesting=max_plate_nesting,
                                    progress=bar, program=program, method=desc,
                                    tune_passes=tune_passes)
            program = chains.target.program
            yield sl, chains
    finally:
        bar.close()


def gradient_evaluations(num_steps, num_chains, num_leapfrog, tune_chains, step_size, passes=1,
                         tune_passes=TUNE_PASSES):
    """Gradient evaluations per image: one per chain and leapfrog step of each of the T - 1
    transitions of each pass, plus the pilot's (its initial rounds at beta = 0 and its
    ``tune_passes`` passes)."""
    transitions = max(num_steps - 1, 0)
    pilot = (tune_chains * (_INITIAL_ROUNDS + tune_passes * transitions)
             if step_size is None and transitions else 0)
    return (passes * num_chains * transitions + pilot) * num_leapfrog
