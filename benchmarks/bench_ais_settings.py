"""What AIS settings cost and buy: the BDMC gap on simulated digits and AIS against IWAE on test
digits, at the gradient evaluations each setting spends.

For a trained run and each setting ``STEPS x CHAINS x LEAPFROG`` (the pilot: 4 chains, 2
passes), on the same images: BDMC's mean gap (upper - lower bound on log p(x) of images simulated
from the model, the same images for every setting) with its standard error, and the mean AIS
estimate on the first test images minus their IWAE_K (K = ``--samples``), a paired difference
with its standard error. Gradient evaluations are per image and direction, the pilot included.
A setting whose gap is smaller at no more evaluations is the better one. The last line:
``best <setting>``, the smallest gap at no more than ``--budget`` evaluations.

    python benchmarks/bench_ais_settings.py runs/svi [--images 200] [--settings 200x8x3,80x16x5]
"""

import argparse
import sys
import time

import pyro

from pyro_vae.ais import ais_log_likelihood
from pyro_vae.annealing import TUNE_CHAINS, gradient_evaluations
from pyro_vae.bdmc import bdmc
from pyro_vae.build import vae_from_checkpoint
from pyro_vae.checkpoint import find_checkpoint, load_checkpoint
from pyro_vae.data import load_dataset
from pyro_vae.estimators import log_likelihood
from pyro_vae.evaluation import paired_difference


def setting(text):
    try:
        steps, chains, leapfrog = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is STEPSxCHAINSxLEAPFROG, got {text!r}") \
            from None
    return steps, chains, leapfrog


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory or checkpoint")
    parser.add_argument("--images", type=int, default=200,
                        help="simulated images for BDMC, and test images for AIS - IWAE")
    parser.add_argument("--settings", default="200x8x3,100x16x5,80x16x5,300x8x2,150x16x2",
                        help="comma-separated STEPSxCHAINSxLEAPFROG")
    parser.add_argument("--samples", type=int, default=5000, help="K of the IWAE reference")
    parser.add_argument("--budget", type=int, default=10000,
                        help="gradient evaluations per image and direction allowed")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        settings = [setting(s) for s in args.settings.split(",")]
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    if args.images < 2 or args.samples < 1 or min(min(s) for s in settings) < 1:
        parser.error("--images must be at least 2, and --samples and every setting's numbers "
                     "positive")
    state = load_checkpoint(find_checkpoint(args.run))
    data = load_dataset(state["config"]["dataset"], args.data_root, download=False,
                        binarize=state["config"]["binarize"])
    vae = vae_from_checkpoint(state, data.image_shape).eval()
    x = data.x_test[: args.images]
    pyro.set_rng_seed(args.seed)
    iwae = log_likelihood(vae.model, vae.guide, x, num_samples=args.samples, khat=False)
    print(f"{args.run}: BDMC on {args.images} simulated images, AIS - IWAE_{args.samples} on "
          f"{len(x)} test images (IWAE {iwae.mean:.2f})")
    print(f"{'setting':>10} {'evals':>7} {'BDMC gap':>9} {'+-':>5} {'AIS - IWAE':>10} {'+-':>5} "
          f"{'accept':>6} {'seconds':>7}")
    rows = []
    for steps, chains, leapfrog in settings:
        kw = dict(num_steps=steps, num_chains=chains, num_leapfrog=leapfrog,
                  tune_chains=TUNE_CHAINS)
        evals = gradient_evaluations(steps, chains, leapfrog, TUNE_CHAINS, None)
        t0 = time.perf_counter()
        pyro.set_rng_seed(args.seed + 1)  # the same simulated images for every setting
        sandwich = bdmc(vae.model, vae.guide, x, **kw)
        pyro.set_rng_seed(args.seed + 2)
        ais = ais_log_likelihood(vae.model, vae.guide, x, **kw)
        seconds = time.perf_counter() - t0
        s, d = sandwich.summary(), paired_difference(iwae.per_image, ais.per_image)
        name = f"{steps}x{chains}x{leapfrog}"
        rows.append((name, evals, s["gap_mean"]))
        print(f"{name:>10} {evals:>7,} {s['gap_mean']:>9.3f} {s['gap_stderr']:>5.3f} "
              f"{d['mean']:>10.3f} {d['stderr_paired']:>5.3f} {ais.image_acceptance.mean():>6.2f} "
              f"{seconds:>7.0f}", flush=True)
    within = [r for r in rows if r[1] <= args.budget]
    if not within:
        sys.exit(f"bench_ais_settings.py: no setting within {args.budget:,} evaluations")
    print(f"best {min(within, key=lambda r: r[2])[0]}")


if __name__ == "__main__":
    main()
