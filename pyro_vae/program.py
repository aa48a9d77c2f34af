"""What an estimator checks about a Pyro program before it estimates, and the joint log densities
it then computes, with enumerated discrete sites summed out.

An estimator of log p(x) for a ``model`` and ``guide`` is only right if the two traces fit each
other, as Pyro's own ``util.check_model_guide_match`` demands of an ELBO. :func:`check_program`
traces the guide and the model once each, and sorts every unobserved sample site of
the model into one of four kinds, or refuses the program with a :class:`ModelError` that names
the site and says what would work:

- **sampled**: a site of model and guide, with the same event shape and the same plates;
  continuous or discrete, importance-sampled from the guide;
- **model-enumerated**: a discrete site marked ``infer={"enumerate": "parallel"}`` in the model
  and absent from the guide (as ``TraceEnum_ELBO`` allows); it is summed out of the model,

  .. math:: \\log p(x, z) = \\log \\sum_y p(x, y, z);

- **guide-enumerated**: a discrete site of model and guide that the guide marks for enumeration
  (``config_enumerate``); it is summed out of both, so that the guide's density of the
  continuous sites is the mixture

  .. math:: q(z \\mid x) = \\sum_y q(y \\mid x)\\, q(z \\mid x, y);

- anything else is refused: a continuous model site the guide lacks (its log-density would be
  added with no proposal term, a silently wrong estimate), a guide site the model lacks, a site
  outside the data plate (no per-image log p(x)), an enumerated site inside a plate nested in
  the data plate, sequential enumeration.

Summing out is exact: the enumerated sites get fresh dimensions left of the estimator's
particle plate (Pyro's ``poutine.enum`` with ``first_available_dim``), every site's log-prob is
summed over the plates but the particle and data plates, the sites are added with broadcasting,
and the enumerated dimensions are reduced by ``logsumexp``. That is exact whenever every
enumerated site lives in the data plate and no plate nested in it (checked), the case of
mixtures and semi-supervised models.
"""

from dataclasses import dataclass, field

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample

from .errors import ModelError

__all__ = ["Program", "check_program", "log_density", "site_log_prob"]

def _sample_sites(trace):
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def _plates(site):
    return {f.name: f.dim for f in site["cond_indep_stack"] if f.vectorized}


def _enumerated(site):
    return site["infer"].get("enumerate")


def _discrete(site):
    return bool(getattr(site["fn"].support, "is_discrete", False))


@dataclass
class Program:
    """The sites of a checked model/guide pair: ``sampled`` (in both, drawn from the guide;
    ``discrete_sampled`` the discrete ones among them), ``model_enumerated`` and
    ``guide_enumerated`` (summed out), ``observed``; ``data_plate`` and ``max_plate_nesting``
    as the estimators were given them."""

    sampled: list
    observed: list
    data_plate: str
    max_plate_nesting: int
    model_enumerated: list = field(default_factory=list)
    guide_enumerated: list = field(default_factory=list)
    discrete_sampled: list = field(default_factory=list)

    @property
    def enumerated(self):
        """Every site that is summed out, in the model or in both."""
        return self.model_enumerated + self.guide_enumerated

    def refuse_discrete(self, method, why):
        """A :class:`ModelError` for ``method`` if the program has any discrete latent site."""
        discrete = self.enumerated + self.discrete_sampled
        if discrete:
            raise ModelError(f"{method} cannot be used on a model with the discrete latent site "
                             f"{discrete[0]!r}: {why}")


def check_program(model, guide, x, *args, data_plate="data", max_plate_nesting=1,
                  method="the estimator", **kwargs):
    """Trace ``guide(x, *args, **kwargs)`` and the model (on its own draws), check that they
    fit (module doc), and return their :class:`Program`; raise :class:`ModelError` naming the
    first site that does not fit. Draws no number from the caller's random stream."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices), \
            pyro.validation_enabled(False):
        guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
        # the model on its own draws: a guide of the wrong shape cannot break it before the check
        model_trace = poutine.trace(model).get_trace(x, *args, **kwargs)
    guide_sites, model_sites = _sample_sites(guide_trace), _sample_sites(model_trace)
    program = Program([], [], data_plate, max_plate_nesting)
    for name, site in model_sites.items():
        observed = site["is_observed"]
        plates = _plates(site)
        if data_plate not in plates:
            raise ModelError(
                f"sample site {name!r} is outside plate {data_plate!r}: {method} gives a "
                f"log p(x) per image and needs every sample site inside it (pass data_plate= "
                f"the name of the data plate)")
        if len(plates) > max_plate_nesting:
            raise ModelError(f"sample site {name!r} is in {len(plates)} plates but "
                             f"max_plate_nesting is {max_plate_nesting}; pass "
                             f"max_plate_nesting={len(plates)}")
        if len(site["fn"].batch_shape) > max_plate_nesting:
            raise ModelError(f"sample site {name!r} has batch shape "
                             f"{tuple(site['fn'].batch_shape)}, more dims than "
                             f"max_plate_nesting={max_plate_nesting}; declare every batch dim "
                             "with a plate (or use .to_event for event dims)")
        if observed:
            if name in guide_sites:
                raise ModelError(f"site {name!r} is observed in the model but sampled by the "
                                 "guide; the guide must not sample the data")
            program.observed.append(name)
            continue
        mode = _enumerated(site)
        if name not in guide_sites:
            if not (mode and _discrete(site)):
                raise ModelError(
                    f"the model's latent site {name!r} is not in the guide: its density would "
                    "be added with no proposal term, a wrong log p(x); sample it in the guide, "
                    "or, if it is discrete, mark it infer={'enumerate': 'parallel'} in the "
                    "model so that it is summed out")
            _check_enumerable(name, site, mode, data_plate)
            program.model_enumerated.append(name)
            continue
        gsite = guide_sites[name]
        if _plates(gsite) != plates:
            raise ModelError(f"site {name!r} is in plates {sorted(_plates(gsite))} in the guide "
                             f"but {sorted(plates)} in the model; use the same plates")
        if tuple(gsite["fn"].event_shape) != tuple(site["fn"].event_shape):
            raise ModelError(f"site {name!r} has event shape {tuple(gsite['fn'].event_shape)} "
                             f"in the guide but {tuple(site['fn'].event_shape)} in the model")
        if _enumerated(gsite) and _discrete(gsite):
            _check_enumerable(name, gsite, _enumerated(gsite), data_plate)
            program.guide_enumerated.append(name)
            continue
        program.sampled.append(name)
        if _discrete(site):
            program.discrete_sampled.append(name)
    extra = [name for name in guide_sites if name not in model_sites]
    if extra:
        raise ModelError(f"the guide samples {extra[0]!r}, which the model does not have; "
                         "every guide site must be a latent site of the model")
    if not program.sampled and not program.enumerated:
        raise ModelError(f"the model has no latent sample sites: {method} has nothing to "
                         "estimate")
    return program


def _check_enumerable(name, site, mode, data_plate):
    if not getattr(site["fn"], "has_enumerate_support", False):
        raise ModelError(f"site {name!r} is marked for enumeration but its distribution "
                         f"({type(site['fn']).__name__}) has no finite support to sum over")
    if "_markov_scope" in site["infer"]:
        raise ModelError(f"the enumerated site {name!r} is under pyro.markov, which reuses "
                         "enumeration dims; the estimators sum each site out in a dim of its "
                         "own: drop pyro.markov")
    if mode != "parallel":
        raise ModelError(f"site {name!r} is marked enumerate={mode!r}; the estimators sum out "
                         "discrete sites in parallel only: mark it 'parallel'")
    inner = [p for p in _plates(site) if p != data_plate]
    if inner:
        raise ModelError(f"the enumerated site {name!r} is in plate {inner[0]!r} inside the data "
                         "plate; the estimators sum out discrete sites of one image, not of "
                         "each element of an inner plate")


def site_log_prob(site, data_plate, num_dims, enum=True):
    """A site's log-prob, scaled and masked, summed over every plate dim but the particle dim
    (the leftmost of the ``num_dims`` plate dims) and the data plate's: shape
    ``(*enum, K, N)``, with the site's enumeration dims (left of the plate dims) kept, and
    size 1 where the site does not vary. With ``enum=False`` a dim left of the plates is a
    :class:`ModelError` (a batch dim no plate declares)."""
    lp = site["log_prob"]
    if not enum and lp.dim() > num_dims:
        raise ModelError(f"site {site['name']!r} has batch shape {tuple(lp.shape)}, with dims "
                         f"left of its {num_dims - 1} plate(s) and the particle dim; declare "
                         "every batch dim with a plate (or raise max_plate_nesting)")
    if lp.dim() < num_dims:
        lp = lp.reshape((1,) * (num_dims - lp.dim()) + lp.shape)
    frames = _plates(site)
    if data_plate not in frames:
        raise ModelError(
            f"sample site {site['name']!r} is outside plate {data_plate!r}: a per-image log p(x) "
            f"needs every sample site inside it (pass data_plate= the name of the data plate)")
    data_dim = frames[data_plate]
    other = [d for d in range(-num_dims + 1, 0) if d != data_dim]
    if other:
        lp = lp.sum(other, keepdim=True)
    enum = lp.shape[: lp.dim() - num_dims]
    return lp.reshape(enum + (lp.shape[-num_dims], lp.shape[data_dim]))


def log_density(trace, names, data_plate, num_dims):
    """``sum`` over the sites ``names`` of :func:`site_log_prob`, with every enumeration
    dimension summed out by ``logsumexp``: shape ``(K, N)`` (broadcast; compute the trace's
    log-probs first)."""
    total = 0.0
    for name in names:
        total = total + site_log_prob(trace.nodes[name], data_plate, num_dims)
    if not torch.is_tensor(total):
        raise ModelError("no sample sites to score")
    while total.dim() > 2:
        total = torch.logsumexp(total, 0)
    return total
