"""Evaluation at the scale of a test set: numbers fixed by the seed and the chunk whatever the
number of processes or interruptions, --resume, --images all, and the paired comparison of runs.

A tiny VAE on a .npz of 250 test images (three chunks: 100, 100 and 50 images)."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyro
import pytest
import torch

from closed_form import LinearGaussian
from conftest import ROOT
from pyro_vae.estimators import log_likelihood
from pyro_vae.evaluation import CHUNK, ChunkStore, Task, chunked, paired_difference, stream_seed
from test_reliability import assert_refused, call

TRAIN = ["--epochs", "1", "--batch-size", "50", "--latent-dim", "2", "--hidden-dim", "8",
         "--quiet", "--device", "cpu", "--eval-samples", "2", "--eval-images", "4"]
# every estimator, on chunks of each length; AIS at 300 steps is slow enough to be killed in
EVAL = ["--samples", "20", "--curve", "1,5", "--curve-images", "150", "--images", "all",
        "--ais-images", "all", "--ais-steps", "3,300", "--ais-chains", "2", "--leapfrog", "2",
        "--bdmc-images", "120", "--gap-images", "30", "--device", "cpu", "--no-download"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # what torchrun gives each of its processes


def _npz(path, n_test, side, seed=0):
    g = np.random.default_rng(seed)
    np.savez(path, x_train=(g.random((100, side, side)) * 255).astype(np.uint8),
             x_test=(g.random((n_test, side, side)) * 255).astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    data = _npz(tmp / "tiny.npz", 250, 8)
    assert call("train_svi", "--dataset", data, *TRAIN, "--out", tmp / "run") == 0
    return tmp / "run"


def _evaluate(*args, env=None, torchrun=0):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={torchrun}"] if torchrun else [sys.executable])
    return subprocess.run([*launcher, os.path.join(ROOT, "scripts", "evaluate.py"),
                           *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory):
    """One uninterrupted evaluation in one single-threaded process."""
    out = tmp_path_factory.mktemp("reference") / "eval"
    proc = _evaluate(run, *EVAL, "--out", out, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    return out


def _rows(path):
    with open(path) as f:
        return list(csv.reader(f))


def test_per_image_csv_has_a_row_per_image_and_a_column_per_estimate(reference):
    rows = _rows(reference / "per_image.csv")
    header, body = rows[0], rows[1:]
    assert header == ["index", "elbo", "iwae", "ess", "khat", "iwae_1", "iwae_5", "ais_3",
                      "ais_300", "gap_elbo_amortized", "gap_elbo_optimal", "ais"]
    assert [int(r[0]) for r in body] == list(range(250))  # --images all: the whole test set
    col = {name: [r[i] for r in body] for i, name in enumerate(header)}
    assert all(col["iwae"]) and all(col["ais"])
    assert all(col["iwae_5"])  # the curve also runs on AIS's images, for the sandwich
    assert all(col["gap_elbo_optimal"][:30]) and not any(col["gap_elbo_optimal"][30:])
    assert col["ais"] == col["ais_300"]
    result = json.loads((reference / "evaluation.json").read_text())
    ais = np.array([float(v) for v in col["ais"]])
    assert result["ais"]["by_steps"]["300"]["mean"] == pytest.approx(ais.mean(), abs=1e-4)
    assert result["loglik"]["num_images"] == 250 and result["ais"]["num_images"] == 250
    bdmc = _rows(reference / "bdmc_per_image.csv")
    assert bdmc[0] == ["index", "lower_3", "upper_3", "lower_300", "upper_300"]
    assert len(bdmc) == 121
    # chunks of 100 test images, counted from the start of the test set
    saved = sorted(os.listdir(reference / "evaluation_chunks"))
    assert {"iwae-000000.pt", "iwae-000001.pt", "iwae-000002.pt", "bdmc300-000001.pt",
            "gap-000000.pt", "settings.json"} <= set(saved)


def test_two_processes_write_the_files_of_one_value_for_value(run, reference, tmp_path):
    proc = _evaluate(run, *EVAL, "--out", tmp_path / "eval", torchrun=2)
    assert proc.returncode == 0, proc.stderr
    for name in ("per_image.csv", "bdmc_per_image.csv"):
        assert _rows(tmp_path / "eval" / name) == _rows(reference / name), name
    # diagnostics over images are merged over the ranks' chunks, not averaged per rank
    one = json.loads((reference / "evaluation.json").read_text())
    two = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    for key in ("ais", "bdmc", "inference_gap", "loglik", "activity"):
        assert two[key] == one[key], key


def test_a_run_killed_mid_ais_resumes_to_the_uninterrupted_files(run, reference, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), run,
                             *EVAL, "--out", out], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=ROOT, **ONE_THREAD))
    chunks = out / "evaluation_chunks"
    _wait_for_chunk(proc, chunks, "ais300")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "per_image.csv").exists()  # killed before the end
    saved = len([n for n in os.listdir(chunks) if n.endswith(".pt") and not n.startswith(".")])
    resumed = _evaluate(run, *EVAL, "--out", out, "--resume", env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{saved} saved already" in resumed.stdout
    for name in ("per_image.csv", "bdmc_per_image.csv"):
        assert _rows(out / name) == _rows(reference / name), name


def _wait_for_chunk(proc, chunks, prefix):
    deadline = time.time() + 300
    while not (chunks.is_dir() and any(n.startswith(prefix) for n in os.listdir(chunks))):
        assert proc.poll() is None and time.time() < deadline, f"no {prefix} chunk was saved"
        time.sleep(0.02)


def test_ctrl_c_on_one_rank_stops_both_with_one_line_and_resume_finishes(run, reference,
                                                                         tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", os.path.join(ROOT, "scripts", "evaluate.py"),
                             run, *EVAL, "--out", out], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    _wait_for_chunk(proc, out / "evaluation_chunks", "ais300")
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "evaluate.py"],
                           capture_output=True, text=True).stdout.split()
    assert len(ranks) == 2
    os.kill(int(max(ranks, key=int)), signal.SIGINT)  # one rank only
    _, stderr = proc.communicate(timeout=300)  # every rank stops: no hang
    assert proc.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("evaluate.py:")]
    assert len(ours) == 1 and "interrupted: " in ours[0] and "--resume" in ours[0], stderr
    # the one traceback is torchrun's own report that a worker exited non-zero
    assert stderr.count("Traceback") == stderr.count("errors.ChildFailedError:") == 1, stderr
    resumed = _evaluate(run, *EVAL, "--out", out, "--resume", env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(out / "per_image.csv") == _rows(reference / "per_image.csv")


def test_ctrl_c_in_one_process_stops_at_once_and_keeps_the_saved_chunks(run, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"), run,
                             *EVAL, "--out", out], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, **ONE_THREAD))
    _wait_for_chunk(proc, out / "evaluation_chunks", "ais300")
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)  # within the chunk, not at the end of the work
    assert proc.returncode == 130, stderr
    assert "interrupted: " in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert not (out / "per_image.csv").exists()
    assert any(n.startswith("ais300") for n in os.listdir(out / "evaluation_chunks"))


def test_resume_refuses_what_would_change_the_numbers(capsys, run, reference, tmp_path):
    out = tmp_path / "eval"
    shutil.copytree(reference, out)
    base = [run, *EVAL, "--out", out, "--resume"]
    assert_refused(capsys, "evaluate", [*base, "--samples", "21"],
                   f"--samples 21 differs from the evaluation being resumed in {out} (20); pass "
                   "the same, or start again with --overwrite", out)
    assert_refused(capsys, "evaluate", [*base, "--ais-steps", "3,100"],
                   "--ais-steps 3,100 differs from the evaluation being resumed", out)
    assert_refused(capsys, "evaluate", [*base, "--seed", "1"],
                   "--seed 1 differs from the evaluation being resumed", out)
    assert_refused(capsys, "evaluate", [*base, "--overwrite"],
                   "--resume continues the evaluation in --out and --overwrite replaces it", out)
    assert_refused(capsys, "evaluate", [run, *EVAL, "--out", tmp_path / "none", "--resume"],
                   f"{tmp_path / 'none'} holds no evaluation to resume", tmp_path)
    assert _rows(out / "per_image.csv") == _rows(reference / "per_image.csv")  # left alone


def test_resume_adds_the_chunks_of_grown_image_counts(run, tmp_path):
    small = ["--samples", "5", "--curve", "1", "--ais-images", "0", "--bdmc-images", "0",
             "--gap-images", "0", "--device", "cpu", "--no-download"]
    assert call("evaluate", run, *small, "--images", "150", "--curve-images", "10",
                "--out", tmp_path / "grown") == 0
    assert call("evaluate", run, *small, "--images", "all", "--curve-images", "10",
                "--out", tmp_path / "grown", "--resume") == 0
    assert call("evaluate", run, *small, "--images", "all", "--curve-images", "10",
                "--out", tmp_path / "fresh") == 0
    grown, fresh = _rows(tmp_path / "grown" / "per_image.csv"), _rows(tmp_path / "fresh" /
                                                                      "per_image.csv")
    assert len(fresh) == 251 and grown == fresh  # the partial chunk (100..149) was redone


def test_a_run_compared_with_a_copy_of_itself_differs_by_exactly_zero(run, tmp_path):
    shutil.copytree(run, tmp_path / "copy")
    args = ["--samples", "10", "--curve", "1", "--images", "120", "--curve-images", "10",
            "--ais-images", "30", "--ais-steps", "4", "--ais-chains", "2", "--leapfrog", "2",
            "--bdmc-images", "0", "--gap-images", "0", "--device", "cpu", "--no-download"]
    assert call("evaluate", run, tmp_path / "copy", *args, "--out", tmp_path / "cmp") == 0
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert set(result["runs"]) == {"run", "copy"}
    assert [(p["a"], p["b"], p["estimator"]) for p in result["pairs"]] == [
        ("run", "copy", "iwae"), ("run", "copy", "ais")]
    for pair in result["pairs"]:
        d = pair["difference"]
        assert d["mean"] == 0.0 and d["stderr_paired"] == 0.0 and d["stderr_unpaired"] > 0
    for name in ("comparison.png", "run/per_image.csv", "copy/per_image.csv"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0


def test_a_comparison_resumes_where_a_run_had_not_begun(run, tmp_path):
    # as if stopped during the first run: its chunks saved, the second run's folder not made
    shutil.copytree(run, tmp_path / "copy")
    args = ["--samples", "5", "--curve", "1", "--images", "120", "--curve-images", "10",
            "--ais-images", "0", "--bdmc-images", "0", "--gap-images", "0", "--device", "cpu",
            "--no-download"]
    assert call("evaluate", run, *args, "--out", tmp_path / "cmp" / "run") == 0
    assert call("evaluate", run, tmp_path / "copy", *args, "--out", tmp_path / "cmp",
                "--resume") == 0
    pairs = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["pairs"]
    assert [p["difference"]["mean"] for p in pairs] == [0.0]


def test_a_gap_chunk_is_redone_when_the_ais_it_used_was(run, tmp_path):
    args = ["--samples", "5", "--curve", "1", "--images", "10", "--curve-images", "10",
            "--ais-steps", "4", "--ais-chains", "2", "--leapfrog", "2", "--bdmc-images", "0",
            "--gap-images", "30", "--device", "cpu", "--no-download"]
    assert call("evaluate", run, *args, "--ais-images", "50", "--out", tmp_path / "grown") == 0
    assert call("evaluate", run, *args, "--ais-images", "150", "--out", tmp_path / "grown",
                "--resume") == 0  # AIS's first chunk now holds 100 images: other values
    assert call("evaluate", run, *args, "--ais-images", "150", "--out", tmp_path / "fresh") == 0
    assert _rows(tmp_path / "grown" / "per_image.csv") == _rows(tmp_path / "fresh" /
                                                                 "per_image.csv")


def test_comparison_refuses_runs_on_other_images_before_any_work(capsys, run, tmp_path):
    data = _npz(tmp_path / "other.npz", 20, 6, seed=1)
    assert call("train_svi", "--dataset", data, *TRAIN, "--out", tmp_path / "other") == 0
    assert_refused(capsys, "evaluate", [run, tmp_path / "other", "--no-download", "--out",
                                        tmp_path / "cmp"], "differ in their", tmp_path)
    assert_refused(capsys, "evaluate", [run, tmp_path / "other", "--no-download"],
                   "several runs are compared into a folder of their own: pass --out DIR",
                   tmp_path)


# --- the library pieces ------------------------------------------------------------------------

def test_streams_are_fixed_by_seed_task_and_chunk_and_differ_between_them():
    assert stream_seed(0, "iwae", 3) == stream_seed(0, "iwae", 3)
    seeds = {stream_seed(s, name, c) for s in (0, 1) for name in ("iwae", "ais100")
             for c in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**32 for s in seeds)
    assert [(t.start, t.stop) for t in chunked("iwae", 250)] == [(0, 100), (100, 200),
                                                                 (200, 250)]
    assert CHUNK == 100 and chunked("iwae", 0) == []


def test_the_store_skips_a_chunk_a_kill_cut_short(tmp_path):
    store = ChunkStore(str(tmp_path / "chunks"))
    store.create({"seed": 0})
    task = Task("iwae", 0, 0, 3)
    store.save(task, {"iwae": torch.tensor([1.0, 2.0, 3.0])})
    (tmp_path / "chunks" / "iwae-000001.pt").write_bytes(b"PK\x03\x04 cut short")
    loaded = store.load()
    assert list(loaded) == ["iwae-000000"] and loaded["iwae-000000"][0] == task
    assert loaded["iwae-000000"][1]["iwae"].tolist() == [1.0, 2.0, 3.0]
    assert store.settings() == {"seed": 0}


def test_the_paired_interval_covers_a_known_difference_of_log_px():
    # two linear-Gaussian models with closed-form log p(x), each with a poor guide, on the
    # same images and the same streams: the per-image difference of their IWAE estimates is
    # the exact difference plus noise that the pairing largely cancels
    a, b = LinearGaussian(latent=2, dim=5, noise=0.7), LinearGaussian(latent=2, dim=5, noise=0.8)
    x = a.data(300)
    exact = (b.exact_log_px(x) - a.exact_log_px(x)).mean().item()
    est = {}
    for name, m in (("a", a), ("b", b)):
        parts = []
        for task in chunked("iwae", len(x)):
            pyro.set_rng_seed(stream_seed(0, "iwae", task.chunk))
            parts.append(log_likelihood(m.model, m.poor_guide, x[task.start:task.stop],
                                        num_samples=200, khat=False).per_image)
        est[name] = torch.cat(parts)
    d = paired_difference(est["a"], est["b"])
    assert abs(d["mean"] - exact) < 3 * d["stderr_paired"]
    assert d["stderr_paired"] < d["stderr_unpaired"] / 3  # shared images: a far tighter interval
    with pytest.raises(ValueError, match="the same images"):
        paired_difference(est["a"], est["b"][:-1])
