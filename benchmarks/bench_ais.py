"""Throughput and memory of AIS against the importance-weighted estimator and against matmul.

On the 784-400-50 MLP VAE, in one run, measures

- AIS gradient evaluations per second: (chain, image) pairs at which log p(x, z), log q(z|x)
  and their gradients in z are computed, one per leapfrog step, counted over the pilot and
  the estimating chains alike (``pyro_vae.ais.ais_log_likelihood``);
- the importance-weighted estimator's forward (sample, image) pairs per second at K = 1000
  (``pyro_vae.estimators.log_likelihood``);
- ``torch.matmul`` FLOP/s on a decoder-sized product, and the FLOP/s both estimators reach
  counting the decoder's multiply-adds (a gradient evaluation is a forward pass and a backward
  pass to the input only: 2x the forward's FLOP);

and the peak memory of AIS at two numbers of stages, which should be about the same: in a fresh
process on the CPU, the peak growth of resident memory during the call over the memory held just
before it, sampled every millisecond (the chains x images state and its gradients; the per-stage
diagnostics are a few floats per image and stage). A gradient costs two to three forward passes, so a ratio of
AIS evaluations to estimator pairs of 1/3 or more means AIS wastes nothing. The last line:
``ratio <AIS evaluations per second / estimator pairs per second>``.

    python benchmarks/bench_ais.py [--images 100] [--steps 20] [--device cpu]
"""

import argparse
import os
import subprocess
import sys
import threading
import time

import pyro
import torch

import pyro_vae.ais as ais
import pyro_vae.annealing as annealing
from pyro_vae.build import build_vae
from pyro_vae.estimators import log_likelihood

LATENT, HIDDEN, PIXELS = 50, 400, 784
DECODER_FLOP = 2 * (LATENT * HIDDEN + HIDDEN * PIXELS)  # forward, per (image, sample) pair


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def matmul_flops(device, rows=4096):
    a = torch.randn(rows, HIDDEN, device=device)
    b = torch.randn(HIDDEN, PIXELS, device=device)
    torch.matmul(a, b)
    n = 20
    t, _ = timed(lambda: [torch.matmul(a, b) for _ in range(n)], device)
    return n * 2 * rows * HIDDEN * PIXELS / t


class CountingTarget(annealing.AnnealingTarget):
    """The AIS target, counting the (chain, image) pairs it evaluates with gradients."""

    pairs = 0

    def evaluate(self, u, grad=True):
        if grad:
            CountingTarget.pairs += u.shape[0] * u.shape[1]
        return super().evaluate(u, grad)


def setup(images, device):
    pyro.set_rng_seed(0)
    vae = build_vae((1, 28, 28), arch="mlp", latent_dim=LATENT, hidden_dim=HIDDEN).to(device)
    x = torch.bernoulli(torch.rand(images, 1, 28, 28, device=device) * 0.3)
    return vae.eval(), x


def peak_memory_mb(steps, args):
    out = subprocess.run([sys.executable, __file__, "--memory-probe", str(steps), "--images",
                          str(args.images), "--chains", str(args.chains), "--leapfrog",
                          str(args.leapfrog)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def _rss_bytes():
    """This process's resident memory now (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe(steps, args):
    """Print the peak growth of resident memory during one AIS call of ``steps`` stages, in MB,
    over the memory held just before it (the model, the images, a warm-up call's caches):
    a thread samples the resident set every millisecond while the call runs."""
    vae, x = setup(args.images, torch.device("cpu"))
    kw = dict(num_chains=args.chains, num_leapfrog=args.leapfrog)
    ais.ais_log_likelihood(vae.model, vae.guide, x, num_steps=2, **kw)  # first-call costs
    base, peak, running = _rss_bytes(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        ais.ais_log_likelihood(vae.model, vae.guide, x, num_steps=steps, **kw)
    finally:
        running[0] = False
        thread.join()
    print((max(peak[0], _rss_bytes()) - base) / 2**20)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="images per measurement")
    parser.add_argument("--steps", type=int, default=20, help="AIS stages timed")
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--leapfrog", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000, help="K of the IWAE estimator")
    parser.add_argument("--memory-steps", default="20,200",
                        help="two stage counts whose peak memory is compared (CPU only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe, args)
    device = torch.device(args.device)
    vae, x = setup(args.images, device)
    annealing.AnnealingTarget = CountingTarget  # count every gradient evaluation, pilot included

    flops_ref = matmul_flops(device)
    log_likelihood(vae.model, vae.guide, x[:2], 2, khat=False)  # first-call costs
    t_iw, _ = timed(lambda: log_likelihood(vae.model, vae.guide, x, args.samples, khat=False),
                    device)
    iw_rate = len(x) * args.samples / t_iw
    CountingTarget.pairs = 0
    t_ais, _ = timed(lambda: ais.ais_log_likelihood(
        vae.model, vae.guide, x, num_steps=args.steps, num_chains=args.chains,
        num_leapfrog=args.leapfrog), device)
    ais_rate = CountingTarget.pairs / t_ais

    print(f"device {device}, threads {torch.get_num_threads()}, {args.images} images, "
          f"784-400-50 MLP; matmul {flops_ref / 1e9:.1f} GFLOP/s")
    print(f"IWAE K={args.samples}: {iw_rate:,.0f} forward pairs/s "
          f"({iw_rate * DECODER_FLOP / flops_ref:.0%} of matmul FLOP/s)")
    print(f"AIS {args.steps} stages x {args.chains} chains x {args.leapfrog} leapfrog: "
          f"{ais_rate:,.0f} gradient evaluations/s "
          f"({2 * ais_rate * DECODER_FLOP / flops_ref:.0%} of matmul FLOP/s)")
    if device.type == "cpu":
        steps = [int(s) for s in args.memory_steps.split(",")]
        peaks = [peak_memory_mb(s, args) for s in steps]
        print("AIS peak memory: " + ", ".join(f"{s} stages {m:.1f} MB"
                                              for s, m in zip(steps, peaks)))
    print(f"ratio {ais_rate / iw_rate:.2f}")


if __name__ == "__main__":
    main()
