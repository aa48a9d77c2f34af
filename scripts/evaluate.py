"""Estimate the marginal log-likelihood of a trained VAE on its test set, with diagnostics.

    python scripts/evaluate.py runs/svi                  # K = 5000 samples per image
    python scripts/evaluate.py runs/svi/checkpoint_last.pt --samples 1000 --images 500

Reports the test log p(x) estimate (IWAE_K) with its standard error over images, the ELBO, the
bound curve E[IWAE_K] for K = 1, 5, 50, 500, 5000, Pareto k-hat per image (k-hat > 0.7: do not
trust that image's estimate), active latent units and the KL per latent dimension. Writes
evaluation.json, bound_curve.png, khat.png and kl_per_dimension.png to --out (default: the run
directory).
"""

import argparse
import os
import sys
from dataclasses import dataclass

import pyro

from _cli import make_parser, run_main, save_figures
from pyro_vae.build import vae_from_checkpoint
from pyro_vae.checkpoint import find_checkpoint, load_checkpoint
from pyro_vae.data import load_dataset
from pyro_vae.diagnostics import ACTIVE_THRESHOLD, active_units, kl_per_dimension
from pyro_vae.errors import ConfigError
from pyro_vae.estimators import KHAT_THRESHOLD, bound_curve, log_likelihood
from pyro_vae.plots import plot_bound_curve, plot_khat, plot_kl_per_dimension
from pyro_vae.runs import resolve_device, write_json

PROG = "evaluate.py"


@dataclass
class Config:
    checkpoint: str  # a checkpoint file, or a run directory (its best, else last, checkpoint)
    samples: int = 5000  # K, importance samples per image for log p(x)
    images: int = 1000  # test images evaluated (a prefix of the test set)
    curve: tuple = (1, 5, 50, 500, 5000)  # the K of the bound curve
    curve_images: int = 200  # test images in the bound curve
    batch_size: int = 100  # images per pass of the estimator
    data_root: str = "data"
    download: bool = True
    device: str = "auto"
    seed: int = 0
    out: str = None  # default: the checkpoint's folder


def parse_ks(text):
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--curve takes comma-separated integers, got {text!r}")
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--curve values must be positive integers, got {text!r}")
    return ks


def build_parser():
    d = Config(checkpoint="")
    p = make_parser(PROG, __doc__)
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--samples", type=int, default=d.samples, help="K for log p(x) (default: %(default)s)")
    p.add_argument("--images", type=int, default=d.images, help="test images (default: %(default)s)")
    p.add_argument("--curve", type=parse_ks, default=d.curve,
                   help="K values of the bound curve (default: 1,5,50,500,5000)")
    p.add_argument("--curve-images", type=int, default=d.curve_images,
                   help="test images in the bound curve (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per pass (default: %(default)s)")
    p.add_argument("--data-root", default=d.data_root, help="default: %(default)s")
    p.add_argument("--no-download", dest="download", action="store_false")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's folder)")
    return p


def run(cfg):
    for name in ("samples", "images", "curve_images", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, "
                              f"got {getattr(cfg, name)}")
    device = resolve_device(cfg.device)
    path = find_checkpoint(cfg.checkpoint)
    state = load_checkpoint(path)
    out = cfg.out or os.path.dirname(os.path.abspath(path))
    train_cfg = state["config"]
    data = load_dataset(train_cfg["dataset"], cfg.data_root, download=cfg.download,
                        binarize=train_cfg["binarize"], device=device)
    vae = vae_from_checkpoint(state, data.image_shape).to(device).eval()
    os.makedirs(out, exist_ok=True)
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
    try:
        kl = kl_per_dimension(vae, x)
        result["kl_per_dimension"] = kl.tolist()
        save_figures({"kl_per_dimension.png": plot_kl_per_dimension(kl, activity)}, out)
    except NotImplementedError as e:
        print(f"[{PROG}] no KL per dimension: {e}")
    write_json(result, os.path.join(out, "evaluation.json"))
    save_figures({
        "bound_curve.png": plot_bound_curve(
            curve, title=f"Bounds on {len(x[: cfg.curve_images])} test images"),
        "khat.png": plot_khat(est.khat, threshold=KHAT_THRESHOLD),
    }, out)

    s = result["loglik"]
    print(f"[{PROG}] log p(x) >= {s['mean']:.2f} +- {s['stderr']:.2f} nats per image "
          f"(IWAE, K={cfg.samples}); ELBO {s['elbo_mean']:.2f}")
    print(f"[{PROG}] bound curve: " + ", ".join(
        f"K={k}: {e.mean:.2f}" for k, e in curve.items()))
    print(f"[{PROG}] Pareto k-hat > {KHAT_THRESHOLD} for {s['frac_unreliable']:.1%} of images "
          f"(max {s['khat_max']:.2f}); mean ESS {s['ess_mean']:.1f} of {cfg.samples}")
    print(f"[{PROG}] active units: {n_active} of {len(activity)}")
    print(f"[{PROG}] wrote {out}/: evaluation.json bound_curve.png khat.png"
          + (" kl_per_dimension.png" if "kl_per_dimension" in result else ""))
    return result


def main(argv=None):
    args = build_parser().parse_args(argv)
    def body():
        run(Config(**vars(args)))

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
