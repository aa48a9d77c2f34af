"""Estimate the marginal log-likelihood of a trained VAE on its test set, with diagnostics.

    python scripts/evaluate.py runs/svi                  # all of it, about 5 minutes on 2 cores
    python scripts/evaluate.py runs/svi --ais-images 0 --bdmc-images 0 --gap-images 0
    python scripts/evaluate.py runs/svi/checkpoint_last.pt --samples 1000 --images 500

Lower bounds on the test images: IWAE_K (K = --samples) with its standard error over images,
the ELBO, the bound curve E[IWAE_K] for K = 1, 5, 50, 500, 5000, and Pareto k-hat per image
(k-hat > 0.7: do not trust that image's IWAE estimate). Then annealed importance sampling (AIS,
HMC transitions) on --ais-images test images at each of --ais-steps; bidirectional Monte Carlo
(BDMC) on --bdmc-images images simulated from the model, whose forward and reverse AIS sandwich
log p(x) and so measure how far AIS at those steps is from it; and the split of log p(x) - ELBO
on --gap-images test images into the approximation gap (the diagonal Gaussian family) and the
amortization gap (one encoder for all images). Also active latent units and the KL per latent
dimension.

Writes evaluation.json, bound_curve.png, khat.png, kl_per_dimension.png, sandwich.png and
inference_gaps.png to --out (default: the run directory).
"""

import _startup  # noqa: F401  (first: a quiet Ctrl-C and writable caches during the imports)

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import pyro

from _cli import MAX_SIZE, check_seed, make_parser, run_main, save_figures
from pyro_vae.build import fill_earlier, vae_from_checkpoint
from pyro_vae.checkpoint import find_checkpoint, load_checkpoint
from pyro_vae.data import load_dataset
from pyro_vae.diagnostics import ACTIVE_THRESHOLD, active_units, kl_per_dimension
from pyro_vae.errors import ConfigError
from pyro_vae.ais import ais_log_likelihood
from pyro_vae.bdmc import bdmc
from pyro_vae.estimators import KHAT_THRESHOLD, bound_curve, log_likelihood
from pyro_vae.inference_gap import inference_gap
from pyro_vae.program import check_program
from pyro_vae.plots import (
    plot_bound_curve, plot_inference_gaps, plot_khat, plot_kl_per_dimension, plot_sandwich,
)
from pyro_vae.resources import available_memory, format_bytes
from pyro_vae.runs import check_out, lock_run_dir, prepare_run_dir, resolve_device, write_json

PROG = "evaluate.py"


@dataclass
class Config:
    checkpoint: str  # a checkpoint file, or a run directory (its best, else last, checkpoint)
    samples: int = 5000  # K, importance samples per image for log p(x)
    images: int = 1000  # test images evaluated (a prefix of the test set)
    curve: tuple = (1, 5, 50, 500, 5000)  # the K of the bound curve
    curve_images: int = 200  # test images in the bound curve
    batch_size: int = 100  # images per pass of the estimator
    ais_images: int = 100  # test images for AIS (0: no AIS)
    ais_steps: tuple = (10, 30, 100)  # AIS schedules run; the longest is the estimate
    ais_chains: int = 16  # AIS chains per image
    leapfrog: int = 10  # leapfrog steps per HMC transition
    bdmc_images: int = 20  # images simulated from the model for BDMC (0: none)
    gap_images: int = 20  # test images for the inference-gap split (0: none)
    data_root: str = "data"
    download: bool = True
    device: str = "auto"
    seed: int = 0
    out: str = None  # default: the checkpoint's folder
    overwrite: bool = False  # replace an earlier evaluation's files in out


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


def build_parser():
    d = Config(checkpoint="")
    p = make_parser(PROG, __doc__)
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--samples", type=int, default=d.samples, help="K for log p(x) (default: %(default)s)")
    p.add_argument("--images", type=int, default=d.images, help="test images (default: %(default)s)")
    p.add_argument("--curve", type=positive_ints("--curve"), default=d.curve,
                   help="K values of the bound curve (default: 1,5,50,500,5000)")
    p.add_argument("--curve-images", type=int, default=d.curve_images,
                   help="test images in the bound curve (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per pass (default: %(default)s)")
    g = p.add_argument_group("AIS, BDMC and the inference gaps")
    g.add_argument("--ais-images", type=int, default=d.ais_images,
                   help="test images for AIS; 0 skips it (default: %(default)s)")
    g.add_argument("--ais-steps", type=positive_ints("--ais-steps"), default=d.ais_steps,
                   help="AIS schedules (intermediate densities) to run, for AIS and BDMC; the "
                   "longest gives the estimate (default: 10,30,100)")
    g.add_argument("--ais-chains", type=int, default=d.ais_chains,
                   help="AIS chains per image (default: %(default)s)")
    g.add_argument("--leapfrog", type=int, default=d.leapfrog,
                   help="leapfrog steps per HMC transition (default: %(default)s)")
    g.add_argument("--bdmc-images", type=int, default=d.bdmc_images,
                   help="images simulated from the model for BDMC; 0 skips it "
                   "(default: %(default)s)")
    g.add_argument("--gap-images", type=int, default=d.gap_images,
                   help="test images for the inference-gap split; 0 skips it "
                   "(default: %(default)s)")
    p.add_argument("--data-root", default=d.data_root, help="default: %(default)s")
    p.add_argument("--no-download", dest="download", action="store_false")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of an earlier evaluation in --out")
    return p


def outputs(cfg):
    """Every file the evaluation may write in its output folder."""
    files = ["evaluation.json", "bound_curve.png", "khat.png", "kl_per_dimension.png"]
    if cfg.ais_images or cfg.bdmc_images:
        files.append("sandwich.png")
    if cfg.gap_images:
        files.append("inference_gaps.png")
    return tuple(files)


def _fmt(value, spec=".2f"):
    """A number of the summary as text; None (not a finite number) as "undefined"."""
    return "undefined" if value is None else format(value, spec)


IMAGE_COUNTS = ("images", "curve_images", "ais_images", "bdmc_images", "gap_images")


def check_flags(cfg):
    """Every number in range before any work: positive sizes (0 skips a part), each at most
    MAX_SIZE, as the training scripts' are."""
    check_seed(cfg.seed)
    for name in ("samples", "images", "curve_images", "batch_size", "ais_chains", "leapfrog",
                 "ais_images", "bdmc_images", "gap_images"):
        value, flag = getattr(cfg, name), f"--{name.replace('_', '-')}"
        low = 0 if name in ("ais_images", "bdmc_images", "gap_images") else 1
        if value < low:
            raise ConfigError(f"{flag} must be {'0 (skip) or ' if low == 0 else ''}a positive "
                              f"{'number of images' if low == 0 else 'integer'}, got {value}")
        if value > MAX_SIZE:
            raise ConfigError(f"{flag} must be at most {MAX_SIZE:,}, got {value}")
    for flag, values in (("--curve", cfg.curve), ("--ais-steps", cfg.ais_steps)):
        if values[-1] > MAX_SIZE:
            raise ConfigError(f"{flag} values must be at most {MAX_SIZE:,}, got {values[-1]}")


def clamp_images(cfg, available):
    """Image counts above the ``available`` test images are cut to it, and said."""
    for name in IMAGE_COUNTS:
        if getattr(cfg, name) > available:
            print(f"[{PROG}] --{name.replace('_', '-')} {getattr(cfg, name)} is more than the "
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
    diagnostics; the gap split starts from 1000 draws per image, 100 images at a time."""
    free, pair = available_memory(device), _pair_bytes(train_cfg, pixels)
    steps = cfg.ais_steps[-1]
    needs = []
    if cfg.ais_images or cfg.bdmc_images:
        images = max(1, 4096 // cfg.ais_chains)  # the images of one AIS pass
        stages = 8 * (steps + 1) + 3 * 4 * steps * images  # schedule; step sizes, pilot's too
        needs.append((max(4096, cfg.ais_chains) * pair + stages,
                      f"--ais-chains {cfg.ais_chains} --ais-steps {steps}"))
    if cfg.gap_images:
        needs.append((1000 * min(100, cfg.gap_images) * pair, f"--gap-images {cfg.gap_images}"))
    needs.append((max(8192, cfg.batch_size) * pair, f"--batch-size {cfg.batch_size}"))
    for need, flags in needs:
        if need > free:
            raise ConfigError(f"{flags} needs about {format_bytes(need)} in one pass, more than "
                              f"the {format_bytes(free)} free; choose smaller sizes")


def estimate_time(cfg, vae, x):
    """Say, before the work, how many model-and-guide evaluations it takes and about how long,
    from the time of one evaluation with gradients here. Refuses nothing."""
    from pyro_vae.annealing import AnnealingTarget, gradient_evaluations

    target = AnnealingTarget(vae.model, vae.guide, x[:4], 64)
    u = target.initial()
    target.evaluate(u)  # the first evaluation runs Pyro's checks
    t0 = time.perf_counter()
    target.evaluate(u)
    rate = 64 * len(x[:4]) / max(time.perf_counter() - t0, 1e-9)  # pairs per second
    work = cfg.images * cfg.samples / 3 + cfg.curve_images * sum(cfg.curve) / 3  # no gradients
    for steps in cfg.ais_steps:
        work += cfg.ais_images * gradient_evaluations(steps, cfg.ais_chains, cfg.leapfrog, 4,
                                                      None)
        work += cfg.bdmc_images * gradient_evaluations(steps, cfg.ais_chains, cfg.leapfrog, 4,
                                                       None, passes=2)
    seconds = work / rate
    if seconds > 60:
        print(f"[{PROG}] about {work:,.0f} evaluations of model and guide per pair, about "
              f"{_duration(seconds)} at {rate:,.0f} per second here"
              + (" (and the gap split's fits)" if cfg.gap_images else ""))
    return seconds


def _duration(seconds):
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.0f} {unit}"
    return f"{seconds:.0f} seconds"


def run(cfg):
    check_flags(cfg)
    device = resolve_device(cfg.device)
    path = find_checkpoint(cfg.checkpoint)
    state = load_checkpoint(path)
    out = cfg.out or os.path.dirname(os.path.abspath(path))
    check_out(out, outputs(cfg), cfg.overwrite, what="an evaluation")
    train_cfg = state["config"]
    data = load_dataset(train_cfg["dataset"], cfg.data_root, download=cfg.download,
                        binarize=train_cfg["binarize"], device=device)
    vae = vae_from_checkpoint(state, data.image_shape).to(device).eval()
    clamp_images(cfg, len(data.x_test))
    check_memory(cfg, fill_earlier(train_cfg), math.prod(data.image_shape), device)
    estimate_time(cfg, vae, data.x_test)
    prepare_run_dir(out, outputs(cfg), overwrite=cfg.overwrite)
    lock_run_dir(out)
    pyro.set_rng_seed(cfg.seed)
    x = data.x_test[: cfg.images]
    print(f"[{PROG}] {path} (epoch {state['epoch']}): {len(x)} test images of {data.source}, "
          f"K = {cfg.samples}")

    est = log_likelihood(vae.model, vae.guide, x, num_samples=cfg.samples,
                         batch_size=cfg.batch_size)
    curve = bound_curve(vae.model, vae.guide, x[: cfg.curve_images], ks=cfg.curve,
                        batch_size=cfg.batch_size)
    activity, n_active = active_units(vae, x)
    result = {
        "checkpoint": path, "epoch": state["epoch"], "dataset_source": data.source,
        "loglik": est.summary(),
        "bound_curve": {str(k): {"mean": e.mean, "stderr": e.stderr} for k, e in curve.items()},
        "bound_curve_images": len(x[: cfg.curve_images]),
        "active_units": n_active, "active_threshold": ACTIVE_THRESHOLD,
        "activity": activity.tolist(),
    }
    if hasattr(vae, "accuracy"):  # M2: its classifier q(y|x) on the labelled test images
        result["test_accuracy"] = vae.accuracy(data.x_test, data.y_test)
        print(f"[{PROG}] test accuracy of q(y|x): {result['test_accuracy']:.3f}")
    try:
        kl = kl_per_dimension(vae, x)
        result["kl_per_dimension"] = kl.tolist()
        save_figures({"kl_per_dimension.png": plot_kl_per_dimension(kl, activity)}, out)
    except NotImplementedError as e:
        print(f"[{PROG}] no KL per dimension: {e}")
    figures = {
        "bound_curve.png": plot_bound_curve(
            curve, title=f"Bounds on {len(x[: cfg.curve_images])} test images"),
        "khat.png": plot_khat(est.khat, threshold=KHAT_THRESHOLD),
    }
    # q* of the gap split in the encoder's family where the local fit has it, else diagonal
    family = "full" if train_cfg.get("posterior") == "full" else "diagonal"
    result.update(sandwich(vae, data.x_test, cfg, curve, x[: cfg.curve_images], figures, family,
                           _quantity(train_cfg)))
    result["quantity"] = _quantity(train_cfg)
    if train_cfg.get("model") == "cvae" and "ais" in result:
        compare_completion_net(result, os.path.dirname(os.path.abspath(path)))
    write_json(result, os.path.join(out, "evaluation.json"))
    save_figures(figures, out)

    s = result["loglik"]
    print(f"[{PROG}] {_quantity(train_cfg)} >= {s['mean']:.2f} +- {_fmt(s['stderr'])} nats per image "
          f"(IWAE, K={cfg.samples}); ELBO {s['elbo_mean']:.2f}")
    print(f"[{PROG}] bound curve: " + ", ".join(
        f"K={k}: {e.mean:.2f}" for k, e in curve.items()))
    khat = (f"Pareto k-hat > {KHAT_THRESHOLD} for {s['frac_unreliable']:.1%} of images (max "
            f"{_fmt(s['khat_max'])})" if s["frac_unreliable"] is not None else
            "Pareto k-hat undefined for every image (K < 21, or tied weights)")
    print(f"[{PROG}] {khat}; mean ESS {s['ess_mean']:.1f} of {cfg.samples}")
    print(f"[{PROG}] active units: {n_active} of {len(activity)}")
    written = ["evaluation.json", *(["kl_per_dimension.png"] if "kl_per_dimension" in result
                                    else []), *figures]
    print(f"[{PROG}] wrote {out}/: {' '.join(written)}")
    return result


def compare_completion_net(result, run_dir):
    """For a CVAE run: the deterministic network's log p(x_miss | x_obs) (from the run's
    summary.json) on the very test images AIS saw, beside AIS's."""
    n = len(result["ais"]["per_image"])
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


def sandwich(vae, x_test, cfg, curve, curve_x, figures, family, what="log p(x)"):
    """AIS on test images at each of ``cfg.ais_steps``, BDMC on simulated images, and the gap
    split; prints a line for each, adds the figures, returns the results' JSON sections."""
    kw = dict(num_chains=cfg.ais_chains, num_leapfrog=cfg.leapfrog, progress=True)
    longest, out = cfg.ais_steps[-1], {}
    ais = {}
    if cfg.ais_images:
        x = x_test[: cfg.ais_images]
        for steps in cfg.ais_steps:
            ais[steps] = ais_log_likelihood(vae.model, vae.guide, x, num_steps=steps, **kw)
            print(f"[{PROG}] AIS, {steps} steps x {cfg.ais_chains} chains x {cfg.leapfrog} "
                  f"leapfrog on {len(x)} test images: {what} >= {ais[steps].mean:.2f} +- "
                  f"{ais[steps].stderr:.2f} ({ais[steps].evaluations:,} gradient evaluations "
                  f"per image; acceptance {ais[steps].acceptance.mean():.2f})")
        if len(curve_x) != len(x):  # the IWAE curve on the very images AIS saw
            curve = bound_curve(vae.model, vae.guide, x, ks=cfg.curve, batch_size=cfg.batch_size)
        out["ais"] = {"num_images": len(x),
                      "iwae_curve": {str(k): e.summary() for k, e in curve.items()},
                      "by_steps": {str(t): e.summary() for t, e in ais.items()},
                      "per_image": ais[longest].per_image.tolist()}
    runs = {}
    if cfg.bdmc_images:
        for steps in cfg.ais_steps:
            pyro.set_rng_seed((cfg.seed + 1) % 2**32)  # the same simulated images at every schedule
            runs[steps] = bdmc(vae.model, vae.guide, x_test[: cfg.bdmc_images], num_steps=steps,
                               **kw)
            s = runs[steps].summary()
            print(f"[{PROG}] BDMC, {steps} steps on {cfg.bdmc_images} simulated images: "
                  f"{s['lower_mean']:.2f} <= {what} <= {s['upper_mean']:.2f} (gap "
                  f"{s['gap_mean']:.2f} +- {s['gap_stderr']:.2f} nats)")
        out["bdmc"] = {str(t): r.summary() for t, r in runs.items()}
    if ais or runs:
        figures["sandwich.png"] = plot_sandwich(curve if ais else None, ais, runs)
    discrete = check_program(vae.model, vae.guide, x_test[:2])
    if cfg.gap_images and (discrete.enumerated or discrete.discrete_sampled):
        print(f"[{PROG}] no inference-gap split: the model has the discrete latent "
              f"{(discrete.enumerated + discrete.discrete_sampled)[0]!r}, and the split's best "
              "local q* is a Gaussian over continuous sites")
    elif cfg.gap_images:
        x = x_test[: cfg.gap_images]
        known = ais[longest].per_image[: len(x)] if len(x) <= cfg.ais_images else None
        gap = inference_gap(vae.model, vae.guide, x, family=family, log_px=known,
                            num_steps=longest, **kw)
        out["inference_gap"] = gap.summary()
        figures["inference_gaps.png"] = plot_inference_gaps(
            gap, title=f"Where the ELBO loses, on {len(x)} test images")
        s = gap.summary()
        print(f"[{PROG}] on {len(x)} test images, q* {family} Gaussian: {what} (AIS, "
              f"{longest} steps) "
              f"{s['log_px']:.2f} = ELBO {s['elbo_amortized']:.2f} + approximation gap "
              f"{s['approximation_gap']:.2f} + amortization gap {s['amortization_gap']:.2f}")
    return out


def main(argv=None):
    args = build_parser().parse_args(argv)
    def body():
        run(Config(**vars(args)))

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
