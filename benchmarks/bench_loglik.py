"""Throughput of the per-image log p(x) estimator against a per-image loop and against matmul.

For K = 5, 50 and 5000 samples per image on the 784-400-50 MLP VAE, measures (image x sample)
pairs per second of

- ``pyro_vae.estimators.log_likelihood`` (vectorized over images and samples, chunked), and
- a per-image loop: one image at a time, its K samples in one batch, the encoder re-run on K
  copies of the image (as pythae's ``get_nll`` does);

and converts the estimator's rate to FLOP/s counting the decoder's multiply-adds
(2 x (50*400 + 400*784) FLOP per pair), against ``torch.matmul`` FLOP/s measured in the same run
on a decoder-sized product. Peak memory (RSS growth on the CPU, the CUDA allocator's peak on a
GPU, the peak RSS growth of a fresh process on the CPU) is printed per K. The last line: ``efficiency <fraction of matmul FLOP/s at K=5000>``.

    python benchmarks/bench_loglik.py [--images 100] [--device cpu]
"""

import argparse
import math
import resource
import subprocess
import sys
import time

import pyro
import torch
import torch.nn.functional as F

from pyro_vae.build import build_vae
from pyro_vae.estimators import log_likelihood

LATENT, HIDDEN, PIXELS = 50, 400, 784
DECODER_FLOP = 2 * (LATENT * HIDDEN + HIDDEN * PIXELS)  # per (image, sample) pair
LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def per_image_loop(vae, x, k):
    """log p(x) image by image; K copies of each image through encoder and decoder at once."""
    out = []
    for xi in x:
        xk = xi.expand(k, *xi.shape)  # (K, 1, 28, 28)
        loc, raw = vae.encoder.net(xk).chunk(2, -1)
        scale = F.softplus(raw) + vae.encoder.min_scale
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        log_q = (-0.5 * eps**2 - scale.log() - 0.5 * LOG_2PI).sum(-1)
        log_p = (-0.5 * z**2 - 0.5 * LOG_2PI).sum(-1)
        logits = vae.likelihood.decoder(z)
        log_lik = -F.binary_cross_entropy_with_logits(logits, xk, reduction="none").sum((1, 2, 3))
        out.append(torch.logsumexp(log_lik + log_p - log_q, 0) - math.log(k))
    return torch.stack(out)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_flops(device, rows=4096):
    a = torch.randn(rows, HIDDEN, device=device)
    b = torch.randn(HIDDEN, PIXELS, device=device)
    torch.matmul(a, b)
    n = 20
    t = timed(lambda: [torch.matmul(a, b) for _ in range(n)], device, repeat=3)
    return n * 2 * rows * HIDDEN * PIXELS / t


def peak_memory_mb(k, images, device):
    """Peak memory of one estimate at K: the CUDA allocator's peak on a GPU; on the CPU the
    peak RSS of a fresh process that builds the model and runs the estimate, so that no earlier
    measurement's high-water mark hides it."""
    if device.type == "cuda":
        vae = build_vae((1, 28, 28), latent_dim=LATENT, hidden_dim=HIDDEN).to(device)
        x = torch.bernoulli(torch.rand(images, 1, 28, 28, device=device) * 0.3)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        log_likelihood(vae.model, vae.guide, x, k, khat=False)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    out = subprocess.run([sys.executable, __file__, "--memory-probe", str(k),
                          "--images", str(images)], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def memory_probe(k, images):
    vae = build_vae((1, 28, 28), latent_dim=LATENT, hidden_dim=HIDDEN)
    x = torch.bernoulli(torch.rand(images, 1, 28, 28) * 0.3)
    log_likelihood(vae.model, vae.guide, x[:1], 1, khat=False)  # imports and first-call costs
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    log_likelihood(vae.model, vae.guide, x, k, khat=False)
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="images per measurement")
    parser.add_argument("--loop-images", type=int, default=20,
                        help="images for the per-image loop (it is slow at large K)")
    parser.add_argument("--ks", default="5,50,5000")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory-probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        return memory_probe(args.memory_probe, args.images)
    device = torch.device(args.device)
    pyro.set_rng_seed(0)
    vae = build_vae((1, 28, 28), arch="mlp", latent_dim=LATENT, hidden_dim=HIDDEN).to(device)
    x = torch.bernoulli(torch.rand(args.images, 1, 28, 28, device=device) * 0.3)
    ks = [int(k) for k in args.ks.split(",")]

    memory = {k: peak_memory_mb(k, args.images, device) for k in sorted(set(ks) | {500})}
    flops_ref = matmul_flops(device)
    print(f"device {device}, threads {torch.get_num_threads()}, {args.images} images, "
          f"784-400-50 MLP; matmul {flops_ref / 1e9:.1f} GFLOP/s")
    print(f"{'K':>6} {'estimator pairs/s':>18} {'loop pairs/s':>14} {'speed-up':>9} "
          f"{'% matmul':>9} {'peak MB':>8}")
    efficiency = None
    for k in ks:
        est_t = timed(lambda: log_likelihood(vae.model, vae.guide, x, k, khat=False), device,
                      repeat=2 if k < 1000 else 1)
        xl = x[: args.loop_images]
        loop_t = timed(lambda: per_image_loop(vae, xl, k), device, repeat=2 if k < 1000 else 1)
        est_rate = len(x) * k / est_t
        loop_rate = len(xl) * k / loop_t
        efficiency = est_rate * DECODER_FLOP / flops_ref
        print(f"{k:>6} {est_rate:>18.0f} {loop_rate:>14.0f} {est_rate / loop_rate:>8.2f}x "
              f"{efficiency:>8.1%} {memory[k]:>8.1f}")
    print(f"peak memory of one estimate: K=500 {memory[500]:.1f} MB, K=5000 "
          f"{memory.get(5000, float('nan')):.1f} MB")
    print(f"efficiency {efficiency:.2f}")


if __name__ == "__main__":
    main()
