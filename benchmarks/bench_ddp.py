"""Training throughput of one job over 1, 2, ... processes (DistributedDataParallel), and its
scaling efficiency.

Each configuration trains the 784-400-50 MLP VAE (Trace_ELBO, Adam, dynamic binarization) on
random binary images with ``pyro_vae.train.fit``, as ``torchrun --nproc_per_node=N
scripts/train_svi.py`` does: a fixed global batch split over the ranks (strong scaling), one
torch thread per process (torchrun's default), gloo on the CPU, NCCL with one GPU per process.
It reports training images per second (the epochs after the first; test-loss passes excluded)
and the efficiency ``rate(N) / (N * rate(1))`` against one process of one thread, and, for
reference, one process using every core's thread. The last line: ``efficiency <E>`` at the
largest N.

    python benchmarks/bench_ddp.py [--max-procs 2] [--images 4000] [--batch-size 100]
"""

import argparse
import os
import sys
import time

import pyro
import torch

from pyro_vae import distributed
from pyro_vae.build import build_vae
from pyro_vae.launch import launch
from pyro_vae.train import fit, make_elbo


def train(args, device_name):
    """One rank's training; returns the images per second of the timed epochs (rank 0's rows
    count the images of every rank)."""
    world = distributed.start(device_name)
    device = world.device or torch.device(device_name)
    pyro.set_rng_seed(0)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.images, 1, 28, 28, generator=g) * 0.6).to(device)
    vae = build_vae((1, 28, 28), arch="mlp", latent_dim=args.latent_dim,
                    hidden_dim=args.hidden_dim).to(device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    rows = fit(vae, make_elbo("trace"), optimizer, x, x[:args.batch_size],
               epochs=args.epochs + 1, batch_size=args.batch_size, binarize="dynamic",
               generator=world.generator(0, device), progress=False, world=world)
    timed = rows[1:]
    return sum(r["images_per_second"] * r["seconds"] for r in timed) / sum(
        r["seconds"] for r in timed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-procs", type=int, default=None,
                        help="largest number of processes (default: the CPU cores, or GPUs)")
    parser.add_argument("--images", type=int, default=4000, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=100, help="global batch")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs (after one warm-up)")
    parser.add_argument("--hidden-dim", type=int, default=400)
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    available = torch.cuda.device_count() if args.device == "cuda" else cores
    max_procs = args.max_procs or available

    print(f"device {args.device}, {cores} CPU cores"
          + (f", {available} GPUs" if args.device == "cuda" else "")
          + f"; {args.hidden_dim}-{args.latent_dim} MLP VAE on 784 pixels, global batch "
          f"{args.batch_size}, {args.images} images, {args.epochs} timed epochs")
    rates = {}
    for n in range(1, max_procs + 1):
        t0 = time.perf_counter()
        out = launch(train, n, args, args.device, timeout=3600)
        failed = [r for r in out if r[0] != "ok"]
        if failed:
            sys.exit(f"bench_ddp.py: {n} processes failed: {failed[0][1:]}")
        rates[n] = out[0][1]
        eff = rates[n] / (n * rates[1])
        print(f"{n} process{'es' if n > 1 else ''} x 1 thread: {rates[n]:8,.0f} images/s  "
              f"efficiency {eff:.2f}  ({time.perf_counter() - t0:.0f} s with start-up)")
    if args.device == "cpu":
        torch.set_num_threads(cores)
        one = train(args, "cpu")
        distributed.close()
        print(f"1 process x {cores} threads (no DDP): {one:8,.0f} images/s; the best of the "
              f"processes above is {max(rates.values()) / one:.2f} x that")
    print(f"efficiency {rates[max_procs] / (max_procs * rates[1]):.2f}")


if __name__ == "__main__":
    main()
