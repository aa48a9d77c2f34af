"""Reliability, round two: every mistake caught before work starts, every stopped run
finishable with --resume, nothing overwritten (issue 13). One section per class of fault; the
helpers and tiny sizes are those of test_reliability.py."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pyro_vae.checkpoint import load_checkpoint, save_checkpoint
from pyro_vae.files import atomic_write

from conftest import ROOT
from test_reliability import TINY, TINY_SVI, assert_refused, call, digits, save_npz


def strict_json(path):
    """Parse ``path`` as JSON that has no NaN or Infinity (which JSON does not allow)."""
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")
    with open(path) as f:
        return json.load(f, parse_constant=refuse)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """A small labelled .npz dataset (60 train, 20 test digits)."""
    path = tmp_path_factory.mktemp("npz") / "digits.npz"
    return save_npz(path, x_train=digits(60), x_test=digits(20, seed=1),
                    y_train=np.arange(60) % 10, y_test=np.arange(20) % 10)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, npz):
    """A finished tiny VAE run on the .npz (2 epochs)."""
    out = tmp_path_factory.mktemp("vae") / "run"
    assert call("train_svi", *TINY_SVI, "--epochs", "2", "--dataset", npz, "--out", out) == 0
    return out


# ---------------------------------------------------------------------------------------------
# 1. Checked before the work, and what passed the checks is usable to the end
# ---------------------------------------------------------------------------------------------


def test_compare_checks_given_runs_before_training_the_others(capsys, tmp_path, vae_run, npz):
    out = tmp_path / "report"
    for args, message in [
        (["--latent-dim", "3"], "the runs differ in --latent-dim (ae 3, dae 3, vae 2)"),
        (["--latent-dim", "2", "--dataset", tmp_path / "other.npz"], "the runs differ in --dataset"),
        (["--latent-dim", "2", "--noise", "blur"], "unknown --noise 'blur'"),
        (["--latent-dim", "2", "--noise-level", "inf"], "--noise-level: the gaussian noise level"),
    ]:
        assert_refused(capsys, "compare", [*TINY, "--vae", vae_run, "--dataset", npz,
                                           "--out", out, *args], message, tmp_path)
        assert not out.exists()  # no ae/ or dae/ trained and left behind


def test_compare_refuses_data_the_report_cannot_use_before_training(capsys, tmp_path):
    unlabelled = save_npz(tmp_path / "u.npz", x_train=digits(20), x_test=digits(10))
    few = save_npz(tmp_path / "few.npz", x_train=digits(20), x_test=digits(3),
                   y_train=np.arange(20) % 10)
    for path, message in [(unlabelled, "has no labels (y_train)"),
                          (few, "has 3 test images; the report needs at least 4")]:
        assert_refused(capsys, "compare", [*TINY, "--dataset", path, "--out", tmp_path / "r"],
                       message, tmp_path)


@pytest.mark.parametrize("channels", [2, 5])
def test_images_with_channels_no_figure_can_show_are_refused_before_training(
        capsys, tmp_path, channels):
    arrays = dict(x_train=digits(20, (channels, 8, 8)), x_test=digits(5, (channels, 8, 8)))
    path = save_npz(tmp_path / "c.npz", **arrays)
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", path, "--out", tmp_path / "r"],
                   f"has {channels} channels", tmp_path)


def test_what_passes_the_checks_runs_to_the_end(capsys, tmp_path):
    """One eval sample (k-hat undefined), one test image of one class, RGB images, latent 1."""
    path = save_npz(tmp_path / "rgb.npz", x_train=digits(12, (3, 8, 8)),
                    x_test=digits(1, (3, 8, 8)), y_train=np.zeros(12, int), y_test=np.zeros(1, int))
    out = tmp_path / "run"
    assert call("train_svi", *TINY_SVI, "--dataset", path, "--latent-dim", "1",
                "--eval-samples", "1", "--out", out) == 0
    summary = strict_json(out / "summary.json")
    assert summary["test_loglik_khat_max"] is None and summary["test_loglik_stderr"] is None
    assert call("train_baselines", *TINY, "--dataset", path, "--latent-dim", "1",
                "--model", "dae", "--out", tmp_path / "dae") == 0


def test_interpolation_pairs_exist_for_one_class_or_no_labels():
    from pyro_vae.latents import class_pairs

    assert class_pairs(torch.zeros(5, dtype=torch.long)) == [(0, 1), (2, 3)]
    assert class_pairs(torch.full((1,), -1)) == [(0, 0)]
    assert class_pairs(torch.tensor([3, 3, 7])) == [(0, 2)]


# ---------------------------------------------------------------------------------------------
# 2. Every stopped run can be finished
# ---------------------------------------------------------------------------------------------


def test_resume_finishes_a_run_stopped_during_its_evaluation(capsys, tmp_path, npz, monkeypatch):
    import train_svi

    out = tmp_path / "run"

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_svi, "log_likelihood", stopped)
    capsys.readouterr()
    assert call("train_svi", *TINY_SVI, "--epochs", "2", "--dataset", npz, "--out", out) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint_last.pt holds all 2 epochs" in err[0]
    assert f"--resume {out}" in err[0] and not (out / "summary.json").exists()
    monkeypatch.undo()
    before = (out / "checkpoint_last.pt").read_bytes()
    assert call("train_svi", "--resume", out, "--quiet") == 0  # --epochs: the run's own
    assert "finishing what it lacks" in capsys.readouterr().out
    assert (out / "checkpoint_last.pt").read_bytes() == before  # no epoch added
    assert strict_json(out / "summary.json")["epochs"] == 2
    assert (out / "latent_space.png").is_file()
    # now complete: a further --resume has nothing to do
    assert_refused(capsys, "train_svi", ["--resume", out], "has already run 2 epochs", tmp_path)


def test_resume_finishes_a_baseline_run_missing_a_figure(capsys, tmp_path, npz):
    out = tmp_path / "dae"
    assert call("train_baselines", *TINY, "--model", "dae", "--dataset", npz, "--out", out) == 0
    os.remove(out / "denoising.png")
    assert call("train_baselines", "--resume", out, "--quiet") == 0
    assert (out / "denoising.png").is_file()


def test_a_run_stopped_before_its_first_epoch_starts_again_with_resume(capsys, tmp_path, npz):
    out = tmp_path / "run"
    assert call("train_svi", *TINY_SVI, "--dataset", npz, "--out", out) == 0
    for name in os.listdir(out):
        if name != "config.json":
            os.remove(out / name)
    (out / "checkpoint_interrupted.pt").write_bytes(b"weights of a stopped epoch")
    assert call("train_svi", "--resume", out, "--quiet") == 0
    assert load_checkpoint(str(out / "checkpoint_last.pt"))["epoch"] == 1
    assert not (out / "checkpoint_interrupted.pt").exists()  # stale after a finished run


def test_a_failed_checkpoint_write_leaves_metrics_and_checkpoint_agreeing(capsys, tmp_path, npz,
                                                                          monkeypatch):
    import errno

    import pyro_vae.files as files

    real_fsync, calls = os.fsync, []

    def disk_full_from_epoch_2(fd):  # writes of epoch 1 go through, then the disk is full
        calls.append(fd)
        if os.path.exists(tmp_path / "run" / "metrics.csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", disk_full_from_epoch_2)
    out = tmp_path / "run"
    capsys.readouterr()
    assert call("train_baselines", *TINY, "--epochs", "3", "--dataset", npz, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    assert "checkpoint_last.pt keeps epoch 1" in err[0] and "--resume" in err[0]
    monkeypatch.undo()
    metrics = strict_json(out / "metrics.json")
    assert [r["epoch"] for r in metrics] == [1] == [load_checkpoint(
        str(out / "checkpoint_last.pt"))["epoch"]]
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert call("train_baselines", "--resume", out, "--quiet") == 0  # up to its 3 epochs
    assert [r["epoch"] for r in strict_json(out / "metrics.json")] == [1, 2, 3]


def _start(script, args, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", script),
                             *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)


def test_sigterm_is_handled_like_ctrl_c(tmp_path, npz):
    out = tmp_path / "run"
    proc = _start("train_baselines.py", [*TINY, "--epochs", "100000", "--batch-size", "10",
                                         "--dataset", npz, "--out", out], tmp_path)
    deadline = time.time() + 120
    while not (out / "checkpoint_last.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted: the weights are saved in" in lines[0]
    assert (out / "checkpoint_interrupted.pt").exists()


def test_ctrl_c_while_starting_is_one_line(tmp_path):
    proc = _start("train_svi.py", ["--out", tmp_path / "run"], tmp_path)
    time.sleep(0.5)  # torch and Pyro are still being imported
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# 3. Nothing overwritten
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["checkpoint_best.pt", "metrics.json", "latent_space.png",
                                  "checkpoint_interrupted.pt"])
def test_any_file_a_run_would_write_is_not_overwritten(capsys, tmp_path, npz, name):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / name).write_text("mine")
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", npz, "--out", tmp_path / "out"],
                   f"already holds a run ({name}); pass --overwrite", tmp_path)


def test_every_file_a_run_writes_is_in_its_list(tmp_path, vae_run, npz):
    import train_baselines
    import train_svi

    cfg = train_svi.Config(out=str(vae_run))
    assert set(os.listdir(vae_run)) <= set(train_svi.outputs(cfg))
    out = tmp_path / "dae"
    assert call("train_baselines", *TINY, "--model", "dae", "--dataset", npz, "--out", out) == 0
    cfg = train_baselines.Config(model="dae", out=str(out))
    assert set(os.listdir(out)) == set(train_baselines.outputs(cfg)) - {"checkpoint_interrupted.pt"}


def test_evaluate_twice_refuses_without_overwrite(capsys, tmp_path, vae_run):
    args = [vae_run, "--samples", "3", "--images", "4", "--curve", "1,2", "--curve-images", "2",
            "--ais-images", "0", "--bdmc-images", "0", "--gap-images", "0",
            "--out", tmp_path / "eval"]
    assert call("evaluate", *args) == 0
    assert_refused(capsys, "evaluate", args, "already holds an evaluation (evaluation.json); "
                   "pass --overwrite", tmp_path)
    assert call("evaluate", *args, "--overwrite") == 0
    assert strict_json(tmp_path / "eval" / "evaluation.json")["loglik"]["khat_max"] is None


# ---------------------------------------------------------------------------------------------
# 4. Values and files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script,args,message", [
    ("train_svi", ["--lr", "inf"], "--lr must be positive and finite, got inf"),
    ("train_svi", ["--beta", "inf"], "--beta must be positive and finite, got inf"),
    ("train_baselines", ["--lr=-inf"], "--lr must be positive and finite, got -inf"),
    ("train_baselines", ["--noise-level", "inf"], "--noise-level: the gaussian noise level"),
    ("train_svi", ["--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
    ("train_baselines", ["--seed", str(2**32)], "--seed must be an integer in [0, 2**32)"),
    ("compare", ["--seed", str(2**64)], "--seed must be an integer in [0, 2**32)"),
    ("compare", ["--lr", "nan"], "--lr must be positive and finite, got nan"),
])
def test_non_finite_numbers_and_seeds_out_of_range(capsys, tmp_path, script, args, message):
    assert_refused(capsys, script, [*TINY, "--out", tmp_path / "r", *args], message, tmp_path)


def test_evaluate_refuses_a_seed_out_of_range(capsys, tmp_path, vae_run):
    assert_refused(capsys, "evaluate", [vae_run, "--seed", "-3", "--out", tmp_path / "e"],
                   "--seed must be an integer in [0, 2**32), got -3", tmp_path)


def test_a_relative_dataset_path_is_stored_absolute(capsys, tmp_path, monkeypatch):
    save_npz(tmp_path / "mine.npz", x_train=digits(12, (8, 8)), x_test=digits(4, (8, 8)))
    monkeypatch.chdir(tmp_path)
    assert call("train_svi", *TINY_SVI, "--dataset", "mine.npz", "--out", "run") == 0
    assert strict_json(tmp_path / "run" / "config.json")["dataset"] == str(tmp_path / "mine.npz")
    monkeypatch.chdir(tmp_path.parent)  # --resume and evaluate.py from another folder
    assert call("train_svi", "--resume", tmp_path / "run", "--epochs", "2", "--quiet") == 0
    assert call("evaluate", tmp_path / "run", "--samples", "2", "--images", "2", "--curve", "1",
                "--ais-images", "0", "--bdmc-images", "0", "--gap-images", "0",
                "--out", tmp_path / "eval") == 0


@pytest.mark.parametrize("spoil,message", [
    (lambda s: s.pop("epoch"), "has no 'epoch'"),
    (lambda s: s["config"].update(latent_dim="2"), "'latent_dim' is '2', not a positive int"),
    (lambda s: s["config"].pop("dataset"), "its config has no 'dataset'"),
    (lambda s: s["config"].pop("lr"), "its config has no 'lr'"),
    (lambda s: s["config"].update(beta=True), "'beta' is True, not a float"),
    (lambda s: s.update(history=s["history"][:1]), "does not match its 1 rows of history"),
])
def test_checkpoints_with_missing_or_mistyped_fields(capsys, tmp_path, vae_run, spoil, message):
    state = load_checkpoint(str(vae_run / "checkpoint_last.pt"))
    spoil(state)
    save_checkpoint(state, str(tmp_path / "checkpoint_last.pt"))
    assert_refused(capsys, "train_svi", ["--resume", tmp_path, "--epochs", "3"], message, tmp_path)
    if message != "its config has no 'lr'" and "beta" not in message:  # evaluate needs no lr
        assert_refused(capsys, "evaluate", [tmp_path / "checkpoint_last.pt"], message, tmp_path)


def test_resume_refuses_flags_that_differ_from_the_run(capsys, tmp_path, vae_run):
    for args, message in [
        (["--lr", "0.5"], "--lr 0.5 differs from the run in"),
        (["--latent-dim", "7"], "--latent-dim 7 differs from the run in"),
        (["--prior", "vamp"], "--prior vamp differs from the run in"),
        (["--overwrite"], "--overwrite and --resume exclude each other"),
        (["--out", tmp_path / "elsewhere"], "differs from --resume"),
    ]:
        assert_refused(capsys, "train_svi", ["--resume", vae_run, "--epochs", "3", *args],
                       message, vae_run.parent)


def test_resume_accepts_flags_equal_to_the_run(capsys, tmp_path, vae_run):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(vae_run, run)
    assert call("train_svi", "--resume", run, "--epochs", "3", "--latent-dim", "2",
                "--hidden-dim", "8", "--quiet") == 0


def test_file_system_errors_are_one_line(capsys, tmp_path, vae_run):
    (tmp_path / "a_file").write_text("x")
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--out", tmp_path / "a_file" / "run"],
                   "is under", tmp_path)
    assert_refused(capsys, "train_baselines", [*TINY, "--out", "/proc/pyro_vae_run"],
                   "nothing can be created in /proc", tmp_path)
    assert_refused(capsys, "evaluate", [vae_run, "--out", tmp_path / "a_file"],
                   "is a file, not a folder", tmp_path)


# ---------------------------------------------------------------------------------------------
# 5. Resources
# ---------------------------------------------------------------------------------------------


def test_sizes_that_cannot_be_allocated_are_refused_naming_the_flag(capsys, tmp_path, npz):
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", npz, "--hidden-dim", str(10**7),
                                         "--out", tmp_path / "r"],
                   "--hidden-dim 10000000", tmp_path)
    assert_refused(capsys, "train_baselines", [*TINY, "--dataset", npz, "--latent-dim",
                                               str(10**9), "--out", tmp_path / "r"],
                   "--latent-dim 1000000000", tmp_path)


def test_an_npz_header_declaring_terabytes_is_refused_before_reading(capsys, tmp_path):
    import io
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10**10, 28, 28)})
    test = io.BytesIO()
    np.save(test, digits(4))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as z:
        z.writestr("x_train.npy", header.getvalue())
        z.writestr("x_test.npy", test.getvalue())
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", tmp_path / "huge.npz",
                                         "--out", tmp_path / "r"],
                   "huge.npz: its arrays need about", tmp_path)


# ---------------------------------------------------------------------------------------------
# 6. Environment
# ---------------------------------------------------------------------------------------------


def test_an_unwritable_home_does_not_stop_a_run(tmp_path, npz):
    env = dict(os.environ, HOME="/proc/no-home", PYTHONUNBUFFERED="1")
    env.pop("XDG_CACHE_HOME", None)
    env.pop("MPLCONFIGDIR", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train_svi.py"),
                           *TINY_SVI, "--eval-samples", "30", "--dataset", str(npz),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"),
                           str(tmp_path / "run"), "--samples", "30", "--images", "4", "--curve",
                           "1", "--ais-images", "0", "--bdmc-images", "0", "--gap-images", "0"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "khat.png").is_file()


def test_outputs_honour_the_umask(tmp_path, vae_run):
    old = os.umask(0o027)
    try:
        with atomic_write(str(tmp_path / "f.json")) as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "f.json").st_mode) == 0o640
    # the run of the fixture was written under the test process's umask
    expected = 0o666 & ~old
    for name in ("summary.json", "checkpoint_last.pt", "latent_space.png"):
        assert stat.S_IMODE(os.stat(vae_run / name).st_mode) == expected, name


def test_json_files_hold_no_nan_or_infinity(tmp_path):
    from pyro_vae.runs import write_json

    write_json({"a": float("inf"), "b": [float("nan"), 1.5]}, str(tmp_path / "x.json"))
    assert strict_json(tmp_path / "x.json") == {"a": None, "b": [None, 1.5]}
