"""Per-image importance-weighted estimates of log p(x) and of the ELBO, for any Pyro model/guide.

For an image x_n and K draws z_{kn} ~ q(z | x_n), with log weights
w_{kn} = log p(x_n, z_{kn}) - log q(z_{kn} | x_n):

.. math::

    \\mathrm{ELBO}(x_n) \\approx \\frac1K \\sum_k w_{kn},
    \\qquad
    \\mathrm{IWAE}_K(x_n) = \\log \\frac1K \\sum_k e^{w_{kn}},

    \\mathbb{E}[\\mathrm{ELBO}] \\le \\mathbb{E}[\\mathrm{IWAE}_K] \\le \\mathbb{E}[\\mathrm{IWAE}_{K+1}]
    \\le \\log p(x_n),

and IWAE_K -> log p(x_n) as K grows (Burda et al., 2016). Pyro's ``Importance`` and
``vectorized_importance_weights`` weight a whole batch jointly; here each image gets its own
weights. The guide is traced once per chunk of samples under a particle plate to the left of the
model's plates, the model is replayed against it (or, with discrete sites to sum out, conditioned
on the guide's draws and enumerated), and each site's log-prob is summed over every dimension but
the particle and data dimensions. Chunks are combined with a streaming logsumexp,
so memory does not grow with K.

Diagnostics: the importance-sampling effective sample size
ESS_n = (sum_k e^{w_kn})^2 / sum_k e^{2 w_kn}, and the Pareto k-hat of the weights (Vehtari et al.,
PSIS): k-hat > 0.7 means the estimate of that image is not to be trusted. PSIS fits a generalized
Pareto distribution to each image's largest M = ceil(min(K / 5, 3 sqrt(K))) weights only, so the
estimator keeps a streaming top-(M + 1) per image (the extra one is the tail's threshold) and its
memory stays flat in K. k-hat is NaN where it is undefined: fewer than 5 weights above the
threshold (K < 21, or ties), or a fit that fails.
"""

import math
from dataclasses import dataclass

import numpy as np

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from .program import check_program, log_density, site_log_prob

__all__ = [
    "Estimate",
    "KHAT_THRESHOLD",
    "bound_curve",
    "elbo",
    "guide_log_density",
    "joint_log_density",
    "log_likelihood",
    "log_weights",
    "pareto_khat",
    "site_log_prob",
]

_PARTICLE_PLATE = "_num_samples"  # the estimators' plate of samples, left of the model's plates

KHAT_THRESHOLD = 0.7

# (sample, image) pairs per pass: large enough for efficient matmuls, small enough that the
# decoder's (pairs, pixels) outputs stay near the cache; 8192 was fastest on a 2-core CPU for the
# 784-400-50 MLP (benchmarks/bench_loglik.py), 2**15 ran 40% slower.
_PAIRS_PER_PASS = 8192


@torch.no_grad()
def log_weights(model, guide, x, num_samples, *args, data_plate="data", max_plate_nesting=1,
                program=None, **kwargs):
    """Log importance weights ``w`` of shape ``(num_samples, N)`` for the images ``x`` (N, ...).

    ``model(x, *args, **kwargs)`` and ``guide(x, *args, **kwargs)`` must put every sample site
    inside ``plate(data_plate)`` over the first dimension of ``x``. ``max_plate_nesting`` is the
    number of plates the model nests (the particle plate goes one to the left of them).
    ``program``: the :class:`~pyro_vae.program.Program` of :func:`~pyro_vae.program.check_program`
    (checked here when not given). Discrete sites marked for enumeration are summed out:
    w = log sum_y p(x, y, z) - log q(z | x), q(z | x) a mixture where the guide enumerates y.
    """
    if program is None:
        program = check_program(model, guide, x, *args, data_plate=data_plate,
                                max_plate_nesting=max_plate_nesting, method="log_weights",
                                **kwargs)
    num_dims = program.max_plate_nesting + 1
    with pyro.plate(_PARTICLE_PLATE, num_samples, dim=-num_dims):
        guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
        if not program.enumerated:  # the common case: one replay, no enumeration
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                x, *args, **kwargs)
            w = x.new_zeros(num_samples, x.shape[0])
            for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                trace.compute_log_prob()
                for site in trace.nodes.values():  # site by site, in the traces' order
                    if site["type"] == "sample" and not site_is_subsample(site):
                        w = w + sign * site_log_prob(site, data_plate, num_dims, enum=False)
            return w
        values = {s: guide_trace.nodes[s]["value"] for s in program.sampled}
        log_p = joint_log_density(model, values, program, x, args, kwargs)
        log_q = guide_log_density(guide, values, program, x, args, kwargs)
    return log_p - log_q


def _enumerating(fn, names, num_dims):
    """``fn`` with the sites ``names`` marked for parallel enumeration, under ``poutine.enum``
    whose dims start left of the ``num_dims`` plate dims."""
    marked = poutine.infer_config(
        fn, lambda site: {"enumerate": "parallel"} if site["name"] in names else {})
    return poutine.enum(marked, first_available_dim=-num_dims - 1)


def joint_log_density(model, values, program, x, args, kwargs):
    """log p(x, z) ``(K, N)`` at the sampled sites' ``values`` ``{site: (K, N, *event)}`` (under
    the caller's particle plate), every enumerated site summed out."""
    num_dims = program.max_plate_nesting + 1
    fn = _enumerating(poutine.condition(model, data=values), program.guide_enumerated, num_dims)
    trace = poutine.trace(fn).get_trace(x, *args, **kwargs)
    trace.compute_log_prob()
    names = program.sampled + program.enumerated + program.observed
    return log_density(trace, names, program.data_plate, num_dims)


def guide_log_density(guide, values, program, x, args, kwargs):
    """log q(z | x) ``(K, N)`` at the sampled sites' ``values``, the guide-enumerated sites
    summed out (the mixture over them)."""
    num_dims = program.max_plate_nesting + 1
    fn = _enumerating(poutine.condition(guide, data=values), program.guide_enumerated, num_dims)
    trace = poutine.trace(fn).get_trace(x, *args, **kwargs)
    trace.compute_log_prob()
    return log_density(trace, program.sampled + program.guide_enumerated, program.data_plate,
                       num_dims)


@dataclass
class Estimate:
    """A per-image estimate with its diagnostics.

    ``per_image``: (N,) values in nats; ``ess``: (N,) importance-sampling effective sample size
    (between 1 and ``num_samples``); ``khat``: (N,) Pareto k-hat (NaN where undefined, see
    :func:`pareto_khat`), or None if not computed;
    ``elbo``: (N,) the mean log weight of the same samples (set by :func:`log_likelihood`).
    """

    per_image: torch.Tensor
    num_samples: int
    ess: torch.Tensor
    khat: torch.Tensor = None
    elbo: torch.Tensor = None

    @property
    def mean(self):
        return self.per_image.mean().item()

    @property
    def stderr(self):
        """Standard error of the mean over images (the Monte-Carlo error per image is not in it)."""
        n = self.per_image.numel()
        return (self.per_image.std() / math.sqrt(n)).item() if n > 1 else float("nan")

    @property
    def unreliable(self):
        """(N,) bool: images whose k-hat exceeds :data:`KHAT_THRESHOLD`; None without k-hat."""
        return None if self.khat is None else self.khat > KHAT_THRESHOLD

    def summary(self):
        """A dict that is valid JSON: mean, stderr, num_samples, num_images, ess_mean, and where
        known elbo_mean, khat_max and frac_unreliable (the fraction with k-hat > 0.7 among the
        images whose k-hat is defined). A value that is not a finite number (the stderr of one
        image, k-hat where undefined) is None (JSON null)."""
        out = {"mean": self.mean, "stderr": self.stderr, "num_samples": self.num_samples,
               "num_images": self.per_image.numel(), "ess_mean": self.ess.mean().item()}
        if self.elbo is not None:
            out["elbo_mean"] = self.elbo.mean().item()
        if self.khat is not None:
            defined = self.khat[torch.isfinite(self.khat)]
            out["khat_max"] = defined.max().item() if len(defined) else None
            out["frac_unreliable"] = ((defined > KHAT_THRESHOLD).float().mean().item()
                                      if len(defined) else None)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in out.items()}


def psis_tail_size(num_samples):
    """M = ceil(min(K / 5, 3 sqrt(K))): how many of K weights PSIS fits its Pareto tail to."""
    return math.ceil(min(num_samples / 5, 3 * math.sqrt(num_samples)))


def _accumulate(model, guide, x, num_samples, chunk_size, keep_tail, kw, program):
    """Stream over chunks of samples: returns logsumexp_k w, logsumexp_k 2w, sum_k w, and with
    ``keep_tail`` each image's largest M + 1 log weights ``(M + 1, n)`` (a streaming top-k, so
    memory is flat in ``num_samples``), else None."""
    lse = lse2 = top = None
    total = x.new_zeros(x.shape[0])
    keep = psis_tail_size(num_samples) + 1
    for start in range(0, num_samples, chunk_size):
        k = min(chunk_size, num_samples - start)
        w = log_weights(model, guide, x, k, program=program, **kw)  # (k, n)
        c1, c2 = torch.logsumexp(w, 0), torch.logsumexp(2 * w, 0)
        lse = c1 if lse is None else torch.logaddexp(lse, c1)
        lse2 = c2 if lse2 is None else torch.logaddexp(lse2, c2)
        total += w.sum(0)
        if keep_tail:
            top = w if top is None else torch.cat([top, w])
            if top.shape[0] > keep:
                top = top.topk(keep, dim=0).values  # (keep, n)
    return lse, lse2, total, top


def _estimate(model, guide, x, num_samples, batch_size, chunk_size, khat, kw, method):
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    batch_size = batch_size or x.shape[0]
    # Default chunk: about _PAIRS_PER_PASS (sample, image) pairs per forward pass.
    chunk_size = chunk_size or max(1, min(num_samples,
                                           _PAIRS_PER_PASS // min(batch_size, x.shape[0])))
    iwae, elbo_, ess, khats = [], [], [], []
    program = None
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        if program is None:  # checked once, on the first chunk of images
            program = check_program(model, guide, xb, method=method, **kw)
        lse, lse2, total, top = _accumulate(model, guide, xb, num_samples, chunk_size, khat, kw,
                                            program)
        iwae.append(lse - math.log(num_samples))
        elbo_.append(total / num_samples)
        ess.append(torch.exp(2 * lse - lse2))
        if khat:
            khats.append(_khat_from_top(top.T, num_samples))
    cat = lambda ts: torch.cat(ts).cpu()  # noqa: E731
    return cat(iwae), cat(elbo_), cat(ess), (cat(khats) if khat else None)


def log_likelihood(model, guide, x, num_samples=1000, *, batch_size=None, chunk_size=None,
                   khat=True, **kwargs):
    """Per-image IWAE_K estimates of log p(x), K = ``num_samples``, with ESS and Pareto k-hat.

    :param x: images (N, ...); every sample site must sit in ``plate(data_plate)`` over dim 0.
    :param batch_size: images per pass (default: all at once).
    :param chunk_size: samples per pass (default: about 8192 sample-image pairs per pass).
    :param khat: compute Pareto k-hat (keeps each image's largest M + 1 weights, M =
        :func:`psis_tail_size` (K); NaN where undefined, e.g. K < 21).
    :param kwargs: ``data_plate``, ``max_plate_nesting``, and extra arguments of model and guide.
    :returns: :class:`Estimate` whose ``per_image`` is (N,) on the CPU.
    """
    iwae, elbo_, ess, khats = _estimate(model, guide, x, num_samples, batch_size, chunk_size,
                                        khat, kwargs, "log_likelihood")
    return Estimate(iwae, num_samples, ess, khats, elbo_)


def elbo(model, guide, x, num_samples=1, *, batch_size=None, chunk_size=None, **kwargs):
    """Per-image Monte-Carlo ELBO, the mean of ``num_samples`` log weights; same form as
    :func:`log_likelihood` (its ``ess`` describes the same weights)."""
    _, elbo_, ess, _ = _estimate(model, guide, x, num_samples, batch_size, chunk_size, False,
                                 kwargs, "elbo")
    return Estimate(elbo_, num_samples, ess)


def bound_curve(model, guide, x, ks=(1, 5, 50, 500, 5000), **kwargs):
    """Mean IWAE_K over the images ``x`` for each K in ``ks``: estimates of E[IWAE_K], which rise
    with K from the ELBO (K = 1) towards log p(x). Returns ``{K: Estimate}``; keyword arguments
    go to :func:`log_likelihood` (``khat`` defaults to False here)."""
    kwargs.setdefault("khat", False)
    return {k: log_likelihood(model, guide, x, num_samples=k, **kwargs) for k in ks}


def _gpd_fit(tail):
    """Shape k of a generalized Pareto distribution fitted to ``tail`` (sorted ascending, > 0):
    the empirical-Bayes estimate of Zhang & Stephens (2009) with the weak prior of Vehtari et al.
    (PSIS), as ArviZ's ``_gpdfit`` computes it."""
    n = len(tail)
    m_est = 30 + int(n**0.5)
    b = 1 - np.sqrt(m_est / (np.arange(1, m_est + 1, dtype=float) - 0.5))
    b /= 3 * tail[int(n / 4 + 0.5) - 1]  # prior_bs = 3
    b += 1 / tail[-1]
    k = np.log1p(-b[:, None] * tail).mean(axis=1)
    len_scale = n * (np.log(-(b / k)) - k - 1)
    weights = 1 / np.exp(len_scale - len_scale[:, None]).sum(axis=1)
    real = weights >= 10 * np.finfo(float).eps
    b, weights = b[real], weights[real] / weights[real].sum()
    k_post = np.log1p(-np.sum(b * weights) * tail).mean()
    return (n * k_post + 10 * 0.5) / (n + 10)  # prior_k = 10


def _khat_from_top(top, num_samples):
    """k-hat of each row of ``top`` ``(rows, >= M + 1)``, a row's largest log weights out of
    ``num_samples``: the PSIS fit to the weights above the (M + 1)-th largest, NaN where fewer
    than 5 lie above it (ArviZ returns inf there, and fails outright for K = 1)."""
    m = psis_tail_size(num_samples)
    rows = top.detach().cpu().double().numpy()
    out = np.full(len(rows), np.nan)
    if rows.shape[1] < m + 1:
        return torch.as_tensor(out, dtype=torch.float32)
    cutoff_min = np.log(np.finfo(float).tiny)
    for i, row in enumerate(rows):
        row = np.sort(row)[::-1][: m + 1]  # descending
        row = row - row[0]
        cutoff = max(row[m], cutoff_min)
        tail = np.sort(row[row > cutoff])
        if len(tail) > 4 and np.isfinite(tail).all():
            with np.errstate(all="ignore"):
                k = _gpd_fit(np.exp(tail) - np.exp(cutoff))
            out[i] = k if np.isfinite(k) else np.nan
    return torch.as_tensor(out, dtype=torch.float32)


def pareto_khat(log_weights):
    """Pareto k-hat of each row of ``log_weights`` (rows = images, columns = K samples): PSIS's
    generalized-Pareto fit to the row's largest M = :func:`psis_tail_size` (K) weights (Vehtari et
    al., 2024), the k-hat of ArviZ's ``psislw``. Returns a float tensor of shape ``(rows,)``, NaN
    where k-hat is undefined (fewer than 5 weights in the tail: K < 21, or ties)."""
    lw = log_weights.detach()
    keep = min(lw.shape[-1], psis_tail_size(lw.shape[-1]) + 1)
    return _khat_from_top(lw.topk(keep, dim=-1).values, lw.shape[-1])
