"""The benchmarks are run by hand, but they must not rot: each runs here with tiny arguments, and
the SVI benchmark's hand-written reference is checked to compute the loss Trace_ELBO computes."""

import importlib.util
import os
import re
import subprocess
import sys

import pyro
import pytest
import torch

from pyro_vae.build import build_vae
from pyro_vae.train import make_elbo

from conftest import ROOT, tiny_images

BENCHMARKS = {"bench_svi_step.py", "bench_loglik.py", "bench_ais.py", "bench_quality.py",
              "bench_ddp.py", "bench_eval.py", "bench_ais_settings.py"}


def _run(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", name), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_is_tested():
    found = {f for f in os.listdir(os.path.join(ROOT, "benchmarks")) if f.endswith(".py")}
    assert found == BENCHMARKS


def test_svi_reference_is_the_same_loss_and_gradient():
    # Same seed, same noise: the plain step's -ELBO and its gradients equal Trace_ELBO's, so the
    # benchmark's ratio compares the same computation done two ways.
    plain_loss = _load("bench_svi_step.py").plain_loss
    vae = build_vae((1, 28, 28), arch="mlp", latent_dim=5, hidden_dim=16)
    params = list(vae.parameters())
    x = tiny_images(8)
    torch.manual_seed(1)
    with pyro.validation_enabled(False):
        svi = make_elbo("trace").differentiable_loss(vae.model, vae.guide, x)
    svi_grads = torch.autograd.grad(svi, params)
    torch.manual_seed(1)
    plain = plain_loss(vae, x)
    plain_grads = torch.autograd.grad(plain, params)
    torch.testing.assert_close(plain, svi)
    for g_plain, g_svi in zip(plain_grads, svi_grads):
        torch.testing.assert_close(g_plain, g_svi, rtol=1e-4, atol=1e-5)


def test_svi_step_benchmark_runs_and_ends_with_its_ratio():
    proc = _run("bench_svi_step.py", "--batch-size", "8", "--rounds", "4", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio \d+\.\d\d", lines[-1]), lines[-1]
    assert any(line.startswith("per-round ratio quartiles") for line in lines)


def test_loglik_benchmark_runs_and_ends_with_its_efficiency():
    proc = _run("bench_loglik.py", "--images", "4", "--loop-images", "2", "--ks", "5")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"efficiency \d+\.\d\d", last), last


def test_ais_benchmark_runs_and_ends_with_its_ratio():
    proc = _run("bench_ais.py", "--images", "3", "--steps", "3", "--chains", "2", "--leapfrog",
                "2", "--samples", "5", "--memory-steps", "2,4")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"ratio \d+\.\d\d", lines[-1]), lines[-1]
    memory = next(line for line in lines if line.startswith("AIS peak memory: 2 stages"))
    peaks = [float(m) for m in re.findall(r"(-?\d+\.\d) MB", memory)]
    assert len(peaks) == 2 and all(p > 0 for p in peaks)  # measured, not a 0 that cannot move


def test_quality_benchmark_trains_both_models_on_a_subset_and_ends_with_the_difference(tmp_path):
    proc = _run("bench_quality.py", "--no-download", "--data-root", str(tmp_path / "data"),
                "--train-images", "300", "--epochs", "1", "--batch-size", "100",
                "--eval-samples", "5", "--eval-images", "20", "--peers",
                "pyro-example,pythae-arch")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"difference -?\d+\.\d\d", lines[-1]), lines[-1]
    assert "300 training images, 1 epochs x batch 100" in proc.stdout
    rows = [re.fullmatch(r"(\S+) +NLL +(-?\d+\.\d+) \+- .*", line) for line in lines]
    nll = {row[1]: float(row[2]) for row in rows if row}
    assert set(nll) == {"default", "pyro-example", "pythae-arch"}
    # the last line is the difference of the two NLLs printed above it
    assert float(lines[-1].split()[1]) == pytest.approx(nll["pyro-example"] - nll["default"],
                                                         abs=0.011)


def test_ddp_benchmark_runs_one_and_two_processes_and_ends_with_its_efficiency():
    proc = _run("bench_ddp.py", "--max-procs", "2", "--images", "64", "--batch-size", "16",
                "--epochs", "1", "--hidden-dim", "16", "--latent-dim", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"efficiency \d+\.\d\d", lines[-1]), lines[-1]
    assert lines[1].startswith("1 process x 1 thread:") and " efficiency 1.00 " in lines[1]
    assert lines[2].startswith("2 processes x 1 thread:")


def test_eval_benchmark_runs_one_and_two_processes_and_ends_with_its_efficiency(tmp_path):
    proc = _run("bench_eval.py", "--max-procs", "2", "--images", "20", "--samples", "5",
                "--ais-steps", "3", "--data-root", str(tmp_path / "data"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"efficiency \d+\.\d\d", lines[-1]), lines[-1]
    assert lines[1].startswith("1 process x 1 thread:") and " efficiency 1.00" in lines[1]
    assert lines[2].startswith("2 processes x 1 thread:") and "DIFFERS" not in lines[2]


def test_ais_settings_benchmark_runs_and_names_the_best_setting(tmp_path):
    import numpy as np

    g = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=(g.random((60, 6, 6)) * 255).astype(np.uint8),
             x_test=(g.random((10, 6, 6)) * 255).astype(np.uint8))
    train = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train_svi.py"),
                            "--dataset", str(data), "--epochs", "1", "--latent-dim", "2",
                            "--hidden-dim", "8", "--quiet", "--eval-images", "2",
                            "--eval-samples", "2", "--out", str(tmp_path / "run")],
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    proc = _run("bench_ais_settings.py", str(tmp_path / "run"), "--images", "4", "--samples",
                "10", "--settings", "5x2x2,3x2x1", "--budget", "100")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    rows = {line.split()[0]: line.split() for line in lines if re.match(r" *\d+x\d+x\d+ ", line)}
    assert set(rows) == {"5x2x2", "3x2x1"}
    assert int(rows["5x2x2"][1].replace(",", "")) == 200  # (2 x 4 + 4 x (15 + 2 x 4)) x 2
    assert lines[-1] == "best 3x2x1"  # the only setting within 100 evaluations
