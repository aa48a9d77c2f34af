"""Estimate the marginal log-likelihood of trained VAEs on their test set, with diagnostics.

    python scripts/evaluate.py runs/svi                  # the default sizes: 1 min 40 s on 2 cores
    python scripts/evaluate.py runs/svi --images all --ais-images all --resume
    torchrun --standalone --nproc_per_node=4 scripts/evaluate.py runs/svi --ais-images all
    python scripts/evaluate.py runs/a runs/b --out runs/a_vs_b    # paired comparison of two runs

Lower bounds on the test images: IWAE_K (K = --samples) with its standard error over images,
the ELBO, the bound curve E[IWAE_K] for K = 1, 5, 50, 500, 5000, and Pareto k-hat per image
(k-hat > 0.7: do not trust that image's IWAE estimate). Then annealed importance sampling (AIS,
HMC transitions) on --ais-images test images at each of --ais-steps; bidirectional Monte Carlo
(BDMC) on --bdmc-images images simulated from the model, whose forward and reverse AIS sandwich
log p(x) and so measure how far AIS at those steps is from it; and the split of log p(x) - ELBO
on --gap-images test images into the approximation gap (the diagonal Gaussian family) and the
amortization gap (one encoder for all images). Also active latent units and the KL per latent
dimension. An image count may be "all" (the whole test set).

The test set is cut into chunks of 100 images; every random draw on a chunk comes from a stream
fixed by --seed and the chunk, so an image's numbers are the same in one process or many, fresh
or resumed. Each finished chunk is saved at once (in evaluation_chunks/); --resume continues a
stopped evaluation from them, and may add images. Under torchrun the ranks share the chunks.

Several runs: each is evaluated into a folder of its own under --out, on the same images with the
same streams, and comparison.json gives each pair's per-image difference (b - a) of IWAE and AIS
with its paired and unpaired standard errors.

Writes evaluation.json, per_image.csv (a row per test image), bdmc_per_image.csv (a row per
simulated image), bound_curve.png, khat.png, kl_per_dimension.png, sandwich.png and
inference_gaps.png to --out (default: the run directory); with several runs, also
comparison.json and comparison.png.
"""

import _startup  # noqa: F401  (first: a quiet Ctrl-C and writable caches during the imports)

import argparse
import csv
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import pyro
import torch

from _cli import MAX_SIZE, Interrupted, check_seed, make_parser, run_main, save_figures
from pyro_vae import distributed
from pyro_vae.ais import AISEstimate, ais_log_likelihood, merge_ais
from pyro_vae.annealing import (
    PAIRS_PER_PASS, TUNE_CHAINS, TUNE_PASSES, AnnealingTarget, gradient_evaluations,
    schedule_betas,
)
from pyro_vae.bdmc import BDMCResult, bdmc, merge_bdmc
from pyro_vae.build import fill_earlier, vae_from_checkpoint
from pyro_vae.checkpoint import find_checkpoint, load_checkpoint
from pyro_vae.data import load_dataset
from pyro_vae.diagnostics import ACTIVE_THRESHOLD, active_units, kl_per_dimension
from pyro_vae.errors import ConfigError, RunError
from pyro_vae.estimators import KHAT_THRESHOLD, Estimate, log_likelihood
from pyro_vae.evaluation import CHUNK, ChunkStore, chunked, paired_difference, run_tasks, stream_seed
from pyro_vae.files import atomic_write
from pyro_vae.inference_gap import InferenceGap, inference_gap
from pyro_vae.plots import (
    plot_bound_curve, plot_comparison, plot_inference_gaps, plot_khat, plot_kl_per_dimension,
    plot_sandwich,
)
from pyro_vae.program import check_program
from pyro_vae.resources import available_memory, format_bytes
from pyro_vae.runs import check_out, lock_run_dir, prepare_run_dir, resolve_device, write_json

PROG = "evaluate.py"
ALL = "all"  # an image count: the whole test set
STORE = "evaluation_chunks"


@dataclass
class Config:
    checkpoints: list = field(default_factory=list)  # run directories or checkpoint files
    samples: int = 5000  # K, importance samples per image for log p(x)
    images: object = 1000  # test images evaluated (a prefix of the test set), or "all"
    curve: tuple = (1, 5, 50, 500, 5000)  # the K of the bound curve
    curve_images: object = 200  # test images in the bound curve
    ais_images: object = 100  # test images for AIS (0: no AIS)
    ais_steps: tuple = (10, 50, 200)  # AIS schedules run; the longest is the estimate
    ais_chains: int = 8  # AIS chains per image
    leapfrog: int = 3  # leapfrog steps per HMC transition
    bdmc_images: object = 20  # images simulated from the model for BDMC (0: none)
    gap_images: object = 20  # test images for the inference-gap split (0: none)
    data_root: str = "data"
    download: bool = True
    device: str = "auto"
    seed: int = 0
    out: str = None  # default: the checkpoint's folder (one run), required for several
    overwrite: bool = False  # replace an earlier evaluation's files in out
    resume: bool = False  # continue the evaluation in out from its saved chunks


def positive_ints(flag):
    """An argparse type: comma-separated positive integers, as a sorted tuple."""
    def parse(text):
        try:
            values = tuple(sorted({int(k) for k in text.split(",")}))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} takes comma-separated integers, got {text!r}") from None
        if not values or values[0] < 1:
            raise argparse.ArgumentTypeError(
                f"{flag} values must be positive integers, got {text!r}")
        return values
    return parse


def image_count(text):
    """An argparse type: a number of images, or "all"."""
    if text.strip().lower() == ALL:
        return ALL
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a number of images or 'all', got {text!r}") \
            from None


def build_parser():
    d = Config()
    p = make_parser(PROG, __doc__)
    p.add_argument("checkpoints", metavar="RUN_DIR_OR_CHECKPOINT", nargs="+",
                   help="a run directory (its best, else last, checkpoint) or a checkpoint file; "
                   "several are compared on the same images")
    p.add_argument("--samples", type=int, default=d.samples, help="K for log p(x) (default: %(default)s)")
    p.add_argument("--images", type=image_count, default=d.images,
                   help="test images, or all (default: %(default)s)")
    p.add_argument("--curve", type=positive_ints("--curve"), default=d.curve,
                   help="K values of the bound curve (default: 1,5,50,500,5000)")
    p.add_argument("--curve-images", type=image_count, default=d.curve_images,
                   help="test images in the bound curve (default: %(default)s)")
    g = p.add_argument_group("AIS, BDMC and the inference gaps")
    g.add_argument("--ais-images", type=image_count, default=d.ais_images,
                   help="test images for AIS; 0 skips it (default: %(default)s)")
    g.add_argument("--ais-steps", type=positive_ints("--ais-steps"), default=d.ais_steps,
                   help="AIS schedules (intermediate densities) to run, for AIS and BDMC; the "
                   "longest gives the estimate (default: %s)" % ",".join(map(str, d.ais_steps)))
    g.add_argument("--ais-chains", type=int, default=d.ais_chains,
                   help="AIS chains per image (default: %(default)s)")
    g.add_argument("--leapfrog", type=int, default=d.leapfrog,
                   help="leapfrog steps per HMC transition (default: %(default)s)")
    g.add_argument("--bdmc-images", type=image_count, default=d.bdmc_images,
                   help="images simulated from the model for BDMC; 0 skips it "
                   "(default: %(default)s)")
    g.add_argument("--gap-images", type=image_count, default=d.gap_images,
                   help="test images for the inference-gap split; 0 skips it "
                   "(default: %(default)s)")
    p.add_argument("--data-root", default=d.data_root, help="default: %(default)s")
    p.add_argument("--no-download", dest="download", action="store_false")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's folder; "
                   "required with several runs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier evaluation in --out")
    p.add_argument("--resume", action="store_true",
                   help="continue the evaluation in --out from its saved chunks (the same "
                   "settings; the image counts may grow)")
    return p


def outputs(cfg):
    """Every file the evaluation of one run may write in its output folder."""
    files = ["evaluation.json", "per_image.csv", STORE, "bound_curve.png", "khat.png",
             "kl_per_dimension.png"]
    if cfg.bdmc_images:
        files.append("bdmc_per_image.csv")
    if cfg.ais_images or cfg.bdmc_images:
        files.append("sandwich.png")
    if cfg.gap_images:
        files.append("inference_gaps.png")
    return tuple(files)


COMPARISON = ("comparison.json", "comparison.png")


def _fmt(value, spec=".2f"):
    """A number of the summary as text; None (not a finite number) as "undefined"."""
    return "undefined" if value is None else format(value, spec)


IMAGE_COUNTS = ("images", "curve_images", "ais_images", "bdmc_images", "gap_images")
# What fixes an image's numbers: refused if it changes on --resume (the image counts may change).
FIXED = ("seed", "samples", "curve", "ais_steps", "ais_chains", "leapfrog")


def check_flags(cfg):
    """Every number in range before any work: positive sizes (0 skips a part), each at most
    MAX_SIZE, as the training scripts' are."""
    check_seed(cfg.seed)
    for name in ("samples", "images", "curve_images", "ais_chains", "leapfrog",
                 "ais_images", "bdmc_images", "gap_images"):
        value, flag = getattr(cfg, name), f"--{name.replace('_', '-')}"
        if value == ALL:
            continue
        low = 0 if name in ("ais_images", "bdmc_images", "gap_images") else 1
        if value < low:
            raise ConfigError(f"{flag} must be {'0 (skip), ' if low == 0 else ''}a positive "
                              f"{'number of images' if name in IMAGE_COUNTS else 'integer'}"
                              f"{' or all' if name in IMAGE_COUNTS else ''}, got {value}")
        if value > MAX_SIZE:
            raise ConfigError(f"{flag} must be at most {MAX_SIZE:,}, got {value}")
    for flag, values in (("--curve", cfg.curve), ("--ais-steps", cfg.ais_steps)):
        if values[-1] > MAX_SIZE:
            raise ConfigError(f"{flag} values must be at most {MAX_SIZE:,}, got {values[-1]}")
    if cfg.resume and cfg.overwrite:
        raise ConfigError("--resume continues the evaluation in --out and --overwrite replaces "
                          "it: pass one of them")
    if len(cfg.checkpoints) > 1 and not cfg.out:
        raise ConfigError("several runs are compared into a folder of their own: pass --out DIR")


def clamp_images(cfg, available):
    """Image counts of "all" become the ``available`` test images; counts above it are cut to
    it, and said."""
    for name in IMAGE_COUNTS:
        value = getattr(cfg, name)
        if value == ALL:
            setattr(cfg, name, available)
        elif value > available:
            print(f"[{PROG}] --{name.replace('_', '-')} {value} is more than the "
                  f"{available} test images: using {available}")
            setattr(cfg, name, available)


def _pair_bytes(train_cfg, pixels):
    """Bytes one (sample or chain, image) pair holds in a pass with gradients: the activations
    of the nets (as the training scripts count them), forward and backward."""
    conv = train_cfg.get("arch") == "conv"
    per_item = (pixels * (64 if conv else 4) + 4 * train_cfg["hidden_dim"] *
                train_cfg.get("depth", 1) + 8 * train_cfg["latent_dim"])
    return 2 * 4 * per_item


def check_memory(cfg, train_cfg, pixels, device):
    """Refuse, in one line naming the flags, a pass that cannot fit in the memory free (the
    process's own limit included): AIS and BDMC hold chains x images pairs and per-stage
    diagnostics; the gap split starts from 1000 draws per image, a chunk at a time."""
    free, pair = available_memory(device), _pair_bytes(train_cfg, pixels)
    steps = cfg.ais_steps[-1]
    needs = []
    if cfg.ais_images or cfg.bdmc_images:
        stages = 8 * (steps + 1) + 3 * 8 * steps * CHUNK  # schedule; per-image step sizes, rates
        # a pass anneals as many of a chunk's images as make about PAIRS_PER_PASS pairs
        pairs = cfg.ais_chains * min(CHUNK, max(1, PAIRS_PER_PASS // cfg.ais_chains))
        needs.append((pairs * pair + stages,
                      f"--ais-chains {cfg.ais_chains} --ais-steps {steps}"))
    if cfg.gap_images:
        needs.append((1000 * min(CHUNK, cfg.gap_images) * pair, f"--gap-images {cfg.gap_images}"))
    needs.append((8192 * pair, f"--samples {cfg.samples}"))
    for need, flags in needs:
        if need > free:
            raise ConfigError(f"{flags} needs about {format_bytes(need)} in one pass, more than "
                              f"the {format_bytes(free)} free; choose smaller sizes")


def _ais_evaluations(cfg, steps, passes=1):
    return gradient_evaluations(steps, cfg.ais_chains, cfg.leapfrog, TUNE_CHAINS, None,
                                passes=passes)


def task_cost(cfg, task):
    """About how many evaluations of model and guide with gradients a task takes (a forward
    pass without gradients counts a third): the weights of the progress bar."""
    kind, steps = _kind(task.name)
    per_image = {"iwae": cfg.samples / 3, "curve": sum(cfg.curve) / 3,
                 "ais": steps and _ais_evaluations(cfg, steps),
                 "bdmc": steps and _ais_evaluations(cfg, steps, passes=2),
                 "gap": 2000 / 3 + 10 * 300}[kind]
    return per_image * task.size


def estimate_time(cfg, vae, x, tasks, processes=1):
    """Say, before the work, how many model-and-guide evaluations it takes and about how long
    over ``processes``, from the time of an evaluation with gradients here. Refuses nothing."""
    target = AnnealingTarget(vae.model, vae.guide, x[:8], 128)  # a chunk's batch, about
    u = target.initial()
    target.evaluate(u)  # the first evaluation runs Pyro's checks
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        target.evaluate(u)
        times.append(time.perf_counter() - t0)
    rate = 128 * len(x[:8]) / max(sorted(times)[1], 1e-9)  # pairs per second (the median)
    work = sum(task_cost(cfg, t) for t in tasks)
    seconds = work / rate / processes
    if seconds > 60:
        print(f"[{PROG}] about {work:,.0f} evaluations of model and guide, about "
              f"{_duration(seconds)} at {rate:,.0f} per second in "
              + ("this process" if processes == 1 else f"each of {processes} processes"))
    return seconds


def _duration(seconds):
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.0f} {unit}"
    return f"{seconds:.0f} seconds"


# --- the tasks: an estimator on a chunk -----------------------------------------------------

def _kind(name):
    """``"ais100"`` -> ``("ais", 100)``; ``"iwae"`` -> ``("iwae", None)``."""
    for kind in ("ais", "bdmc"):
        if name.startswith(kind) and name[len(kind):].isdigit():
            return kind, int(name[len(kind):])
    return name, None


def plan(cfg):
    """The evaluation's tasks, in two phases: the gap split's (second) needs AIS's log p(x) on
    its images, so the longest schedule's AIS covers them too."""
    longest = cfg.ais_steps[-1]
    first = chunked("iwae", cfg.images) + chunked("curve", max(cfg.curve_images, cfg.ais_images))
    for steps in cfg.ais_steps:
        n = max(cfg.ais_images, cfg.gap_images) if steps == longest else cfg.ais_images
        first += chunked(f"ais{steps}", n)
    for steps in cfg.ais_steps:
        first += chunked(f"bdmc{steps}", cfg.bdmc_images)
    return first, chunked("gap", cfg.gap_images)


def _gap_family(train_cfg):
    """q* of the gap split in the encoder's family where the local fit has it, else diagonal."""
    return "full" if train_cfg.get("posterior") == "full" else "diagonal"


# The per-image estimates of each estimator's payload, which must be finite numbers.
_ESTIMATES = {"iwae": ("iwae", "elbo"), "ais": ("per_image",), "bdmc": ("lower", "upper"),
              "gap": ("elbo_amortized", "elbo_optimal")}


def checked(task, payload):
    """``payload``, once its estimates are finite: a NaN or infinite estimate stops the
    evaluation (every rank, at the agreement that follows) in one line naming the images."""
    for field_ in _ESTIMATES.get(_kind(task.name)[0], ()):
        bad = (~torch.isfinite(payload[field_])).nonzero().flatten()
        if len(bad):
            images = "simulated images" if task.name.startswith("bdmc") else "test images"
            raise RunError(f"the {task.name} estimate is {payload[field_][bad[0]].item()} on "
                           f"{len(bad)} of {images} {task.start}..{task.stop - 1} (the first: "
                           f"{task.start + bad[0].item()}): the model gives them non-finite "
                           "densities; nothing of that chunk was saved")
    return payload


def compute(task, vae, x_test, cfg, family, results):
    """The payload of ``task``: per-image tensors (on the CPU) and the chunk's diagnostics.
    Every draw comes from the task's stream; BDMC's is the same at every schedule, so that each
    schedule sees the same simulated images."""
    kind, steps = _kind(task.name)
    pyro.set_rng_seed(stream_seed(cfg.seed, "bdmc" if kind == "bdmc" else task.name, task.chunk))
    x = x_test[task.start:task.stop]
    model, guide = vae.model, vae.guide
    ais_kw = dict(num_chains=cfg.ais_chains, num_leapfrog=cfg.leapfrog, tune_chains=TUNE_CHAINS)
    if kind == "iwae":
        est = log_likelihood(model, guide, x, num_samples=cfg.samples)
        return {"iwae": est.per_image, "elbo": est.elbo, "ess": est.ess, "khat": est.khat}
    if kind == "curve":
        out = {}
        for k in cfg.curve:
            est = log_likelihood(model, guide, x, num_samples=k, khat=False)
            out[f"iwae_{k}"], out[f"ess_{k}"] = est.per_image, est.ess
        return out
    if kind == "ais":
        est = ais_log_likelihood(model, guide, x, num_steps=steps, **ais_kw)
        return {"per_image": est.per_image, "ess": est.ess,
                "image_step_sizes": est.image_step_sizes, "image_acceptance": est.image_acceptance}
    if kind == "bdmc":
        r = bdmc(model, guide, x, num_steps=steps, **ais_kw)
        return {name: getattr(r, name) for name in (
            "lower", "upper", "ess_forward", "ess_reverse", "acceptance_forward",
            "acceptance_reverse")}
    # the gap split, with log p(x) from the longest schedule's AIS on the same chunk
    log_px = results[f"ais{cfg.ais_steps[-1]}-{task.chunk:06d}"]["per_image"][: task.size]
    gap = inference_gap(model, guide, x, family=family, log_px=log_px, batch_size=CHUNK)
    return {"log_px": gap.log_px, "elbo_amortized": gap.elbo_amortized,
            "elbo_optimal": gap.elbo_optimal, "steps": gap.steps}


def _stale_gap(task, results, cfg):
    """Whether the saved gap chunk ``task`` was made from other AIS values than those saved now
    for its images (its AIS chunk was computed again since)."""
    ais = results[f"ais{cfg.ais_steps[-1]}-{task.chunk:06d}"]["per_image"][: task.size]
    return not torch.equal(results[task.key]["log_px"], ais)


def _todo(tasks, done):
    """The tasks whose chunk is not saved whole (a chunk saved with fewer images, before the
    image count grew, is computed again)."""
    return [t for t in tasks if t.key not in done or done[t.key][0].stop != t.stop]


# --- one run's evaluation --------------------------------------------------------------------

def settings_of(cfg, path, train_cfg, source, device):
    """What fixes the numbers of this evaluation, as JSON: checked on --resume."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    out = {name: (list(v) if isinstance(v, tuple) else v)
           for name, v in ((n, getattr(cfg, n)) for n in FIXED)}
    out.update(checkpoint_sha256=digest, dataset=train_cfg["dataset"], dataset_source=source,
               device=device.type, chunk=CHUNK, tune_chains=TUNE_CHAINS, tune_passes=TUNE_PASSES)
    return out


def check_settings(store, settings, out):
    """Refuse, in one line, a --resume whose settings would change the saved chunks' numbers."""
    if not store.exists:
        raise RunError(f"{out} holds no evaluation to resume ({STORE}/ is missing); run "
                       "without --resume")
    saved = store.settings()
    for name, value in settings.items():
        if saved.get(name) != value:
            if name == "checkpoint_sha256":
                raise ConfigError(f"the checkpoint is not the one the evaluation in {out} "
                                  "started from (it was trained further or replaced); start "
                                  "again with --overwrite, or choose another --out")
            shown = lambda v: ",".join(map(str, v)) if isinstance(v, list) else v  # noqa: E731
            if name in FIXED or name == "device":
                raise ConfigError(f"--{name.replace('_', '-')} {shown(value)} differs from the "
                                  f"evaluation being resumed in {out} ({shown(saved.get(name))});"
                                  " pass the same, or start again with --overwrite")
            raise ConfigError(f"the evaluation in {out} was made with {name} "
                              f"{shown(saved.get(name))}, and this one has {shown(value)} (other "
                              "data, or another version of evaluate.py); start again with "
                              "--overwrite, or choose another --out")


@dataclass
class Prepared:
    """One run, checked and ready: its checkpoint, model, data, output folder, chunk store and
    the settings that fix its numbers; ``cfg`` with its image counts cut to its test set."""

    path: str
    state: dict
    vae: object
    data: object
    out: str
    store: ChunkStore
    settings: dict
    cfg: Config


def prepare(cfg, path, out, world, not_started_ok=False):
    """Everything checked for one run before any estimate: the checkpoint, the data, the sizes,
    the output folder (and on --resume the saved settings; with ``not_started_ok``, a run of a
    comparison whose evaluation had not begun when it stopped starts afresh)."""
    state = load_checkpoint(path)
    train_cfg = state["config"]
    device = world.device or resolve_device(cfg.device)
    data = world.in_turn(lambda: load_dataset(
        train_cfg["dataset"], cfg.data_root, download=cfg.download,
        binarize=train_cfg["binarize"], device=device))
    vae = vae_from_checkpoint(state, data.image_shape).to(device).eval()
    cfg = Config(**vars(cfg))  # the counts of this run's test set
    clamp_images(cfg, len(data.x_test))
    check_memory(cfg, fill_earlier(train_cfg), math.prod(data.image_shape), device)
    store = ChunkStore(os.path.join(out, STORE))
    settings = settings_of(cfg, path, train_cfg, data.source, device)
    if cfg.resume and not store.exists and not_started_ok:
        cfg.resume = False  # a comparison stopped before this run's evaluation began
    if cfg.resume:
        check_settings(store, settings, out)
        check_out(out, (), what="an evaluation")
    else:
        check_out(out, outputs(cfg), cfg.overwrite, what="an evaluation")
    return Prepared(path, state, vae, data, out, store, settings, cfg)


def evaluate(run, world):
    """Estimate every task of one prepared run (saving each chunk as it ends), then on rank 0
    write its files; returns the summary (rank 0) or None."""
    cfg, vae, x_test = run.cfg, run.vae, run.data.x_test
    def claim():  # rank 0, then an agreement: a failure there stops every rank in one line
        prepare_run_dir(run.out, (), overwrite=True)
        lock_run_dir(run.out)
        if not cfg.resume:
            run.store.create(run.settings)

    world.on_main(claim)
    done = world.gather(run.store.load() if world.is_main else None)[0]
    discrete = check_program(vae.model, vae.guide, x_test[:2])
    discrete = (discrete.enumerated + discrete.discrete_sampled)[:1]
    if discrete and cfg.gap_images:
        print(f"[{PROG}] no inference-gap split: the model has the discrete latent "
              f"{discrete[0]!r}, and the split's best local q* is a Gaussian over continuous "
              "sites")
        cfg.gap_images = 0
    first, second = plan(cfg)
    todo, unsaved_gaps = _todo(first, done), _todo(second, done)
    results = {k: payload for k, (_, payload) in done.items()}
    saved = {t.key for t in first + second} - {t.key for t in todo + unsaved_gaps}
    if world.is_main:
        print(f"[{PROG}] {run.path} (epoch {run.state['epoch']}): {cfg.images} test images of "
              f"{run.data.source}, K = {cfg.samples}; {len(first) + len(second)} chunks"
              + (f", {len(saved)} saved already" if cfg.resume else "")
              + (f", over {world.size} processes" if world.size > 1 else ""))
    if todo or unsaved_gaps:  # (alike on every rank)
        world.on_main(estimate_time, cfg, vae, x_test, todo + unsaved_gaps, world.size)
    family = _gap_family(run.state["config"])

    def save(task, payload):
        run.store.save(task, payload)
        saved.add(task.key)

    t0 = time.perf_counter()
    try:
        results.update(run_tasks(world, todo, lambda t: checked(t, compute(
            t, vae, x_test, cfg, family, results)), save,
                                 cost=lambda t: task_cost(cfg, t)))
        # a gap chunk is computed again unless it was made from the AIS values now saved
        todo2 = [t for t in second if t in unsaved_gaps or _stale_gap(t, results, cfg)]
        results.update(run_tasks(world, todo2, lambda t: checked(t, compute(
            t, vae, x_test, cfg, family, results)), save,
                                 cost=lambda t: task_cost(cfg, t)))
    except KeyboardInterrupt:
        raise Interrupted(f"{len(saved)} of {len(first) + len(second)} chunks are saved in "
                          f"{run.store.folder}; finish the evaluation with the same command "
                          "and --resume") from None
    seconds = time.perf_counter() - t0
    world.agree()  # rank 0 writes alone; a failure there stops the others at their next agreement
    if not world.is_main:
        return None
    return write_results(run, results, first + second, seconds, world.size)


def _stack(results, tasks, name, field_):
    """The per-image tensor ``field_`` of the tasks of estimator ``name``, concatenated."""
    parts = [results[t.key][field_][: t.size] for t in tasks if t.name == name]
    return torch.cat(parts) if parts else torch.empty(0)


def assemble(cfg, results, tasks, family):
    """The estimates over the chunks: ``(est, curve, ais, bdmc, gap)``, each as one
    estimator's result over all its images."""
    est = Estimate(_stack(results, tasks, "iwae", "iwae"), cfg.samples,
                   _stack(results, tasks, "iwae", "ess"), _stack(results, tasks, "iwae", "khat"),
                   _stack(results, tasks, "iwae", "elbo"))
    curve_all = {k: Estimate(_stack(results, tasks, "curve", f"iwae_{k}"), k,
                             _stack(results, tasks, "curve", f"ess_{k}")) for k in cfg.curve}
    ais, runs = {}, {}
    for steps in cfg.ais_steps if cfg.ais_images else ():
        parts = [results[t.key] for t in tasks if t.name == f"ais{steps}"]
        betas = schedule_betas("sigmoid", steps)
        ais[steps] = merge_ais([AISEstimate(
            p["per_image"], cfg.ais_chains, p["ess"], betas=betas,
            image_step_sizes=p["image_step_sizes"], image_acceptance=p["image_acceptance"],
            evaluations=_ais_evaluations(cfg, steps)) for p in parts])
        ais[steps] = _first(ais[steps], cfg.ais_images)
    for steps in cfg.ais_steps if cfg.bdmc_images else ():
        parts = [results[t.key] for t in tasks if t.name == f"bdmc{steps}"]
        runs[steps] = merge_bdmc([BDMCResult(
            p["lower"], p["upper"], p["lower"].new_empty(len(p["lower"]), 0), steps,
            cfg.ais_chains, p["ess_forward"], p["ess_reverse"], p["acceptance_forward"],
            p["acceptance_reverse"], _ais_evaluations(cfg, steps, passes=2)) for p in parts])
    gap = None
    gap_tasks = [t for t in tasks if t.name == "gap" and t.key in results]
    if gap_tasks:
        field_ = lambda f: torch.cat([results[t.key][f][: t.size] for t in gap_tasks])  # noqa
        gap = InferenceGap(field_("log_px"), field_("elbo_amortized"), field_("elbo_optimal"),
                           max(results[t.key]["steps"] for t in gap_tasks), family)
    return est, curve_all, ais, runs, gap


def _first(e, n):
    """An AISEstimate of its first ``n`` images."""
    return AISEstimate(e.per_image[:n], e.num_samples, e.ess[:n], betas=e.betas,
                       image_step_sizes=e.image_step_sizes[:, :n],
                       image_acceptance=e.image_acceptance[:, :n], evaluations=e.evaluations)


def _head(curve, n):
    """The bound curve on its first ``n`` images."""
    return {k: Estimate(e.per_image[:n], e.num_samples, e.ess[:n]) for k, e in curve.items()}


def per_image_rows(cfg, results, tasks):
    """The rows of per_image.csv: ``(columns, rows)``, a row per test image any estimator ran
    on, None where one did not."""
    columns = {"elbo": ("iwae", "elbo"), "iwae": ("iwae", "iwae"), "ess": ("iwae", "ess"),
               "khat": ("iwae", "khat")}
    columns.update({f"iwae_{k}": ("curve", f"iwae_{k}") for k in cfg.curve})
    columns.update({f"ais_{t}": (f"ais{t}", "per_image") for t in cfg.ais_steps})
    columns.update({"gap_elbo_amortized": ("gap", "elbo_amortized"),
                    "gap_elbo_optimal": ("gap", "elbo_optimal")})
    n = max((t.stop for t in tasks if not t.name.startswith("bdmc")), default=0)
    table = {}
    for col, (name, field_) in columns.items():
        values = [None] * n
        for t in tasks:
            if t.name == name and t.key in results:
                values[t.start:t.stop] = results[t.key][field_][: t.size].tolist()
        if any(v is not None for v in values):
            table[col] = values
    if f"ais_{cfg.ais_steps[-1]}" in table:
        table["ais"] = table[f"ais_{cfg.ais_steps[-1]}"]
    return ["index", *table], [[i, *(table[c][i] for c in table)] for i in range(n)]


def bdmc_rows(cfg, results, tasks):
    columns, n = {}, max((t.stop for t in tasks if t.name.startswith("bdmc")), default=0)
    for steps in cfg.ais_steps:
        for side in ("lower", "upper"):
            values = [None] * n
            for t in tasks:
                if t.name == f"bdmc{steps}":
                    values[t.start:t.stop] = results[t.key][side][: t.size].tolist()
            columns[f"{side}_{steps}"] = values
    return ["index", *columns], [[i, *(columns[c][i] for c in columns)] for i in range(n)]


def write_csv(path, columns, rows):
    """A CSV file written atomically; None is a blank cell, numbers keep every digit."""
    with atomic_write(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v)
                        for v in row])


def write_results(run, results, tasks, seconds, processes):
    """evaluation.json, the CSV files and the figures of one run; prints the summary."""
    cfg, vae, out, x_test = run.cfg, run.vae, run.out, run.data.x_test
    train_cfg = run.state["config"]
    what = _quantity(train_cfg)
    family = _gap_family(train_cfg)
    est, curve_all, ais, runs, gap = assemble(cfg, results, tasks, family)
    curve = _head(curve_all, cfg.curve_images)
    x = x_test[: cfg.images]
    activity, n_active = active_units(vae, x)
    result = {
        "checkpoint": run.path, "epoch": run.state["epoch"], "dataset_source": run.data.source,
        "seed": cfg.seed, "chunk": CHUNK, "loglik": est.summary(),
        "bound_curve": {str(k): {"mean": e.mean, "stderr": e.stderr} for k, e in curve.items()},
        "bound_curve_images": cfg.curve_images,
        "active_units": n_active, "active_threshold": ACTIVE_THRESHOLD,
        "activity": activity.tolist(), "quantity": what,
        # the estimates' time in this invocation (a resumed one: only its chunks)
        "estimation_seconds": seconds, "processes": processes,
    }
    if hasattr(vae, "accuracy"):  # M2: its classifier q(y|x) on the labelled test images
        result["test_accuracy"] = vae.accuracy(run.data.x_test, run.data.y_test)
        print(f"[{PROG}] test accuracy of q(y|x): {result['test_accuracy']:.3f}")
    figures = {"bound_curve.png": plot_bound_curve(
                   curve, title=f"Bounds on {cfg.curve_images} test images"),
               "khat.png": plot_khat(est.khat, threshold=KHAT_THRESHOLD)}
    try:
        kl = kl_per_dimension(vae, x)
        result["kl_per_dimension"] = kl.tolist()
        figures["kl_per_dimension.png"] = plot_kl_per_dimension(kl, activity)
    except NotImplementedError as e:
        print(f"[{PROG}] no KL per dimension: {e}")
    longest = cfg.ais_steps[-1]
    if ais:
        ais_curve = _head(curve_all, cfg.ais_images)  # the IWAE curve on the very images AIS saw
        result["ais"] = {"num_images": cfg.ais_images,
                         "iwae_curve": {str(k): e.summary() for k, e in ais_curve.items()},
                         "by_steps": {str(t): e.summary() for t, e in ais.items()},
                         "per_image": ais[longest].per_image.tolist()}
        for steps, e in ais.items():
            print(f"[{PROG}] AIS, {steps} steps x {cfg.ais_chains} chains x {cfg.leapfrog} "
                  f"leapfrog on {cfg.ais_images} test images: {what} >= {e.mean:.2f} +- "
                  f"{_fmt(e.stderr)} ({e.evaluations:,} gradient evaluations per image; "
                  f"acceptance {e.image_acceptance.mean():.2f})")
    if runs:
        result["bdmc"] = {str(t): r.summary() for t, r in runs.items()}
        for steps, r in runs.items():
            s = r.summary()
            print(f"[{PROG}] BDMC, {steps} steps on {cfg.bdmc_images} simulated images: "
                  f"{s['lower_mean']:.2f} <= {what} <= {s['upper_mean']:.2f} (gap "
                  f"{s['gap_mean']:.2f} +- {_fmt(s['gap_stderr'])} nats)")
    if ais or runs:
        figures["sandwich.png"] = plot_sandwich(_head(curve_all, cfg.ais_images) if ais else None,
                                                ais, runs)
    if gap is not None:
        result["inference_gap"] = s = gap.summary()
        figures["inference_gaps.png"] = plot_inference_gaps(
            gap, title=f"Where the ELBO loses, on {cfg.gap_images} test images")
        print(f"[{PROG}] on {cfg.gap_images} test images, q* {family} Gaussian: {what} "
              f"(AIS, {longest} steps) {s['log_px']:.2f} = ELBO {s['elbo_amortized']:.2f} + "
              f"approximation gap {s['approximation_gap']:.2f} + amortization gap "
              f"{s['amortization_gap']:.2f}")
    if train_cfg.get("model") == "cvae" and "ais" in result:
        compare_completion_net(result, os.path.dirname(os.path.abspath(run.path)))
    written = ["evaluation.json", "per_image.csv"]
    write_csv(os.path.join(out, "per_image.csv"), *per_image_rows(cfg, results, tasks))
    if runs:
        write_csv(os.path.join(out, "bdmc_per_image.csv"), *bdmc_rows(cfg, results, tasks))
        written.append("bdmc_per_image.csv")
    write_json(result, os.path.join(out, "evaluation.json"))
    save_figures(figures, out)

    s = result["loglik"]
    print(f"[{PROG}] {what} >= {s['mean']:.2f} +- {_fmt(s['stderr'])} nats per image "
          f"(IWAE, K={cfg.samples}, {cfg.images} images); ELBO {s['elbo_mean']:.2f}")
    print(f"[{PROG}] bound curve: " + ", ".join(
        f"K={k}: {e.mean:.2f}" for k, e in curve.items()))
    khat = (f"Pareto k-hat > {KHAT_THRESHOLD} for {s['frac_unreliable']:.1%} of images (max "
            f"{_fmt(s['khat_max'])})" if s["frac_unreliable"] is not None else
            "Pareto k-hat undefined for every image (K < 21, or tied weights)")
    print(f"[{PROG}] {khat}; mean ESS {s['ess_mean']:.1f} of {cfg.samples}")
    print(f"[{PROG}] active units: {n_active} of {len(activity)}")
    print(f"[{PROG}] wrote {out}/: {' '.join(written + list(figures))}")
    result["_per_image"] = {"iwae": est.per_image,
                            "ais": ais[longest].per_image if ais else None}
    return result


def compare_completion_net(result, run_dir):
    """For a CVAE run: the deterministic network's log p(x_miss | x_obs) (from the run's
    summary.json) on the very test images AIS saw, beside AIS's."""
    n = result["ais"]["num_images"]
    try:
        with open(os.path.join(run_dir, "summary.json")) as f:
            summary = json.load(f)
    except (OSError, ValueError):
        summary = {}
    baseline = summary.get("baseline_loglik_per_image") or []
    if summary.get("dataset_source") != result["dataset_source"] or len(baseline) < n:
        print(f"[{PROG}] no comparison with the deterministic network: the run's summary.json "
              "does not hold its log-likelihoods on these test images")
        return
    mean = sum(baseline[:n]) / n
    longest = max(result["ais"]["by_steps"], key=int)
    ais = result["ais"]["by_steps"][longest]["mean"]
    result["ais"]["completion_net_mean"] = mean
    print(f"[{PROG}] on those {n} test images, log p(x_miss | x_obs): CVAE by AIS {ais:.2f}, "
          f"the deterministic network {mean:.2f} (difference {ais - mean:.2f} nats)")


def _quantity(train_cfg):
    """What the estimators estimate per image, in words: a CVAE's is conditional."""
    return "log p(x_miss | x_obs)" if train_cfg.get("model") == "cvae" else "log p(x)"


# --- several runs: the paired comparison -----------------------------------------------------

def run_names(paths):
    """A folder name per run: the name of its checkpoint's folder, made unique with -2, -3, ..."""
    names = []
    for path in paths:
        base = os.path.basename(os.path.dirname(os.path.abspath(path))) or "run"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def check_comparable(prepared):
    """Refuse, before any work, runs that are not on the same test images: another dataset,
    binarization or image shape, or another quantity (a CVAE's is conditional)."""
    first = prepared[0]
    key = lambda r: (r.state["config"]["dataset"], r.state["config"]["binarize"],  # noqa: E731
                     tuple(r.data.image_shape), _quantity(r.state["config"]))
    for other in prepared[1:]:
        if key(other) != key(first):
            names = ("dataset", "binarization", "image shape", "estimated quantity")
            which = next(n for n, a, b in zip(names, key(first), key(other)) if a != b)
            raise ConfigError(f"{other.path} and {first.path} differ in their {which} "
                              f"({key(other)[names.index(which)]} and "
                              f"{key(first)[names.index(which)]}): only runs on the same test "
                              "images can be compared")


def compare(names, results, out, cfg):
    """comparison.json, a table and comparison.png: every pair's per-image difference b - a."""
    pairs = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            for estimator in ("iwae", "ais"):
                a, b = results[i]["_per_image"][estimator], results[j]["_per_image"][estimator]
                if a is None or b is None:
                    continue
                pairs.append({"a": names[i], "b": names[j], "estimator": estimator,
                              "num_images": len(a), "difference": paired_difference(a, b)})
    runs = {}
    for name, r in zip(names, results):
        runs[name] = {"checkpoint": r["checkpoint"],
                      "iwae": {k: r["loglik"][k] for k in ("mean", "stderr", "num_images")}}
        if "ais" in r:
            longest = str(cfg.ais_steps[-1])
            runs[name]["ais"] = {k: r["ais"]["by_steps"][longest][k]
                                 for k in ("mean", "stderr", "num_images")}
    write_json({"runs": runs, "pairs": pairs, "seed": cfg.seed}, os.path.join(out, "comparison.json"))
    save_figures({"comparison.png": plot_comparison(pairs)}, out)
    print(f"[{PROG}] paired differences (b - a), nats per image:")
    print(f"  {'a':<16} {'b':<16} {'estimator':<9} {'images':>6} {'b - a':>8} "
          f"{'paired se':>10} {'unpaired se':>12}")
    for p in pairs:
        d = p["difference"]
        print(f"  {p['a']:<16} {p['b']:<16} {p['estimator']:<9} {p['num_images']:>6} "
              f"{d['mean']:>8.3f} {_fmt(d['stderr_paired'], '.3f'):>10} "
              f"{_fmt(d['stderr_unpaired'], '.3f'):>12}")
    print(f"[{PROG}] wrote {out}/: comparison.json comparison.png")


def run(cfg):
    check_flags(cfg)
    world = distributed.start(cfg.device)
    paths = [find_checkpoint(c) for c in cfg.checkpoints]
    names = run_names(paths)
    if len(paths) == 1:
        outs = [cfg.out or os.path.dirname(os.path.abspath(paths[0]))]
    else:
        check_out(cfg.out, COMPARISON, cfg.overwrite or cfg.resume, what="a comparison")
        outs = [os.path.join(cfg.out, name) for name in names]
    prepared = [prepare(cfg, path, out, world, not_started_ok=len(paths) > 1)
                for path, out in zip(paths, outs)]
    if len(prepared) > 1:
        check_comparable(prepared)
    world.agree()  # every rank checked everything before rank 0 creates anything
    results = []
    for i, run_ in enumerate(prepared):
        if len(prepared) > 1 and world.is_main:
            print(f"[{PROG}] run {i + 1} of {len(prepared)}: {run_.path} -> {run_.out}")
        results.append(evaluate(run_, world))
    if len(prepared) > 1 and world.is_main:
        compare(names, results, cfg.out, cfg)
    return results[0] if len(results) == 1 else results


def main(argv=None):
    args = build_parser().parse_args(argv)

    def body():
        run(Config(**vars(args)))

    return run_main(PROG, body, processes=True)


if __name__ == "__main__":
    sys.exit(main())
