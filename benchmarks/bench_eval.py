"""Evaluation throughput over 1, 2, ... processes (``torchrun scripts/evaluate.py``), and its
scaling efficiency.

Each configuration runs ``scripts/evaluate.py`` on the same run and the same test images, AIS
and IWAE only (the chunks, their random streams, the gathers and rank 0's saving of each chunk
included), one torch thread per process (torchrun's default), gloo on the CPU, NCCL with one
GPU per process. It reports test images per second of the estimation (``evaluation.json``'s
``estimation_seconds``: start-up and the final figures excluded) and the efficiency
``rate(N) / (N * rate(1))`` against one process of one thread, and, for reference, one process
using every core's threads; it also checks that every configuration wrote the same
``per_image.csv``. Without ``--run`` it first trains the default 784-400-50 MLP VAE for one
epoch. The last line: ``efficiency <E>`` at the largest N.

    python benchmarks/bench_eval.py [--run runs/svi] [--max-procs 2] [--images 400]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")


def _run(cmd, env=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))
    if proc.returncode:
        sys.exit(f"bench_eval.py: {' '.join(cmd[:4])} ... failed:\n{proc.stderr[-2000:]}")
    return proc


def evaluate(run, out, procs, args, threads):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={procs}"] if procs > 1 else [sys.executable])
    _run([*launcher, os.path.join(SCRIPTS, "evaluate.py"), run, "--out", out,
          "--images", str(args.images), "--samples", str(args.samples), "--curve", "1",
          "--curve-images", "1", "--ais-images", str(args.images), "--ais-steps",
          str(args.ais_steps), "--bdmc-images", "0", "--gap-images", "0", "--device",
          args.device, "--no-download", "--data-root", args.data_root],
         env={"OMP_NUM_THREADS": str(threads)})
    with open(os.path.join(out, "evaluation.json")) as f:
        seconds = json.load(f)["estimation_seconds"]
    with open(os.path.join(out, "per_image.csv")) as f:
        return args.images / seconds, f.read()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a trained run (default: train one for an epoch)")
    parser.add_argument("--max-procs", type=int, default=None,
                        help="largest number of processes (default: the CPU cores, or GPUs)")
    parser.add_argument("--images", type=int, default=400, help="test images (4 chunks)")
    parser.add_argument("--samples", type=int, default=500, help="K of the IWAE estimate")
    parser.add_argument("--ais-steps", type=int, default=50, help="AIS steps")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    available = torch.cuda.device_count() if args.device == "cuda" else cores
    max_procs = args.max_procs or available
    if args.device not in ("cpu", "cuda") or available < 1:
        parser.error(f"--device {args.device}: none is available here; use cpu or cuda")
    for name in ("max_procs", "images", "samples", "ais_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:  # (max_procs: None)
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run
        if run is None:
            run = os.path.join(tmp, "run")
            _run([sys.executable, os.path.join(SCRIPTS, "train_svi.py"), "--epochs", "1",
                  "--eval-images", "10", "--quiet", "--no-download", "--data-root",
                  args.data_root, "--out", run, "--device", args.device])
        print(f"device {args.device}, {cores} CPU cores; {args.images} test images, IWAE K = "
              f"{args.samples}, AIS {args.ais_steps} steps at the default chains and leapfrog")
        rates, files = {}, {}
        for n in range(1, max_procs + 1):
            rates[n], files[n] = evaluate(run, os.path.join(tmp, f"p{n}"), n, args, 1)
            print(f"{n} process{'es' if n > 1 else ''} x 1 thread: {rates[n]:7.2f} images/s  "
                  f"efficiency {rates[n] / (n * rates[1]):.2f}"
                  + ("" if files[n] == files[1] else "  (per_image.csv DIFFERS from 1 process)"))
        if args.device == "cpu" and cores > 1:
            one, _ = evaluate(run, os.path.join(tmp, "threads"), 1, args, cores)
            print(f"1 process x {cores} threads: {one:7.2f} images/s; the best of the "
                  f"processes above is {max(rates.values()) / one:.2f} x that")
    print(f"efficiency {rates[max_procs] / (max_procs * rates[1]):.2f}")


if __name__ == "__main__":
    main()
