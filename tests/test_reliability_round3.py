"""Reliability, round three (issue 20): write failures as one line, no resume that discards
trained weights, sizes checked before the work, labels refused with the true reason, recovery
paths that can be followed, one writer per run, messages that say the truth. The helpers and
tiny sizes are those of test_reliability.py; every component evaluating end to end is
test_every_component_evaluates.py."""

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.errors import RunError
from pyro_vae.files import save_figure
from pyro_vae.runs import lock_run_dir, release_locks

from conftest import ROOT
from test_reliability import TINY, TINY_SVI, assert_refused, call, digits, save_npz
from test_reliability_round2 import npz, vae_run  # noqa: F401  (fixtures)


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


# --- 2. write failures ----------------------------------------------------------------------

def _limited(limit):
    def preexec():  # a file-size limit, with SIGXFSZ ignored: writes past it fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_file_size_limit_during_a_checkpoint_write_is_one_line(tmp_path, npz):
    # 4 kB: config.json is written, the first checkpoint is not, and torch.save's zip writer
    # hides the OSError in a RuntimeError
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train_svi.py"),
                           *TINY_SVI, "--dataset", npz, "--out", out], capture_output=True,
                          text=True, preexec_fn=_limited(4000), timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(
        f"train_svi.py: error: cannot write {out / 'checkpoint_best.pt'} (")
    assert "no epoch was saved; start it again with --resume" in lines[0]
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]
    assert all(os.path.getsize(out / n) > 0 for n in os.listdir(out))


def test_a_full_disk_while_drawing_the_figures_is_one_line_and_resumable(capsys, monkeypatch,
                                                                         tmp_path, npz):
    from matplotlib.figure import Figure

    def full(self, f, **kwargs):
        f.write(b"\x89PNG half an image")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    out = tmp_path / "run"
    capsys.readouterr()
    assert call("train_svi", *TINY_SVI, "--dataset", npz, "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ".png (No space left on device)" in err[0]
    assert not [n for n in os.listdir(out) if n.endswith(".png") or n.startswith(".tmp-")]
    monkeypatch.undo()
    assert call("train_svi", "--resume", out, "--quiet") == 0  # finishes what it lacks
    assert (out / "prior_samples.png").stat().st_size > 0


def test_a_figure_that_cannot_be_written_leaves_no_file(tmp_path):
    class Full:
        def savefig(self, f, **kwargs):
            f.write(b"\x89PNG half an image")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RunError, match="cannot write .*a.png \\(No space left on device\\)"):
        save_figure(Full(), str(tmp_path / "a.png"))
    assert os.listdir(tmp_path) == []


def test_the_message_of_a_failed_write_says_which_epoch_is_kept(monkeypatch, tmp_path, npz,
                                                                capsys):
    import pyro_vae.runs as runs

    real = runs.write_metrics

    def metrics_fail(history, folder):  # checkpoint_last.pt of epoch 1 is written, then this
        raise RunError("cannot write metrics.json (No space left on device)")

    monkeypatch.setattr(runs, "write_metrics", metrics_fail)
    out = tmp_path / "run"
    capsys.readouterr()
    assert call("train_svi", *TINY_SVI, "--dataset", npz, "--out", out) == 2
    err = capsys.readouterr().err
    assert "checkpoint_last.pt keeps epoch 1, continue with --resume" in err
    assert load_checkpoint(str(out / "checkpoint_last.pt"))["epoch"] == 1
    monkeypatch.setattr(runs, "write_metrics", real)
    assert call("train_svi", "--resume", out, "--quiet") == 0


# --- 3. no resume that discards trained weights -----------------------------------------------

def test_resume_without_checkpoint_last_but_with_best_is_refused(capsys, tmp_path, vae_run):
    run = _copy(vae_run, tmp_path)
    os.remove(run / "checkpoint_last.pt")
    assert_refused(capsys, "train_svi", ["--resume", run, "--epochs", "3"],
                   "holds checkpoint_best.pt but no checkpoint_last.pt", tmp_path)


def test_a_corrupt_checkpoint_last_names_the_best_one(capsys, tmp_path, vae_run):
    run = _copy(vae_run, tmp_path)
    (run / "checkpoint_last.pt").write_bytes(b"not a zip")
    line = assert_refused(capsys, "train_svi", ["--resume", run, "--epochs", "3"],
                          "not the zip archive torch.save writes", tmp_path)
    assert "checkpoint_best.pt is there: to resume from its epoch, copy it over" in line


# --- 4. sizes checked before the work -----------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--ais-chains", 10**8], "--ais-chains 100000000 --ais-steps 200 needs about"),
    (["--ais-steps", 10**9], "--ais-steps 1000000000 needs about"),
    (["--samples", 2**40], "--samples must be at most 2,147,483,647"),
    (["--curve", f"1,{2**40}"], "--curve values must be at most"),
    (["--leapfrog", 2**40], "--leapfrog must be at most"),
])
def test_absurd_evaluation_sizes_are_refused_before_any_work(capsys, tmp_path, vae_run, args,
                                                             message):
    run = _copy(vae_run, tmp_path)
    assert_refused(capsys, "evaluate", [run, "--no-download", "--out", tmp_path / "eval", *args],
                   message, tmp_path)


def test_a_process_memory_limit_is_counted(monkeypatch):
    import pyro_vae.resources as resources

    monkeypatch.setattr(resources.resource if hasattr(resources, "resource") else resource,
                        "getrlimit", lambda which: (2**30, 2**30))
    assert resources.available_memory("cpu") <= 2**30


def test_counts_above_the_test_set_are_said_to_be_clamped(capsys, tmp_path, vae_run):
    run = _copy(vae_run, tmp_path)
    capsys.readouterr()
    assert call("evaluate", run, "--no-download", "--samples", "5", "--images", "500",
                "--curve", "1,5", "--ais-images", "0", "--bdmc-images", "0",
                "--gap-images", "0") == 0
    out = capsys.readouterr().out
    assert "--images 500 is more than the 20 test images: using 20" in out
    assert json.loads((run / "evaluation.json").read_text())["loglik"]["num_images"] == 20


# --- 5. labels --------------------------------------------------------------------------------

def test_compare_refuses_unlabelled_images_with_the_true_reason(capsys, tmp_path):
    bad = save_npz(tmp_path / "d.npz", x_train=digits(60), x_test=digits(20, seed=1),
                   y_train=np.r_[np.arange(50) % 10, [-1] * 10], y_test=np.arange(20) % 10)
    assert_refused(capsys, "compare", [*TINY, "--dataset", bad, "--out", tmp_path / "report"],
                   "has images without a label (-1 in y_train or y_test)", tmp_path)


def test_bad_labels_are_refused_by_every_script_before_any_work(capsys, tmp_path):
    bad = tmp_path / "d.npz"
    np.savez(bad, x_train=digits(60), x_test=digits(20, seed=1), y_train=np.full(60, 10**12))
    for script in ("train_svi", "train_baselines", "compare"):
        assert_refused(capsys, script, [*TINY, "--dataset", bad, "--out", tmp_path / "out"],
                       "y_train holds labels in [1000000000000", tmp_path)


# --- 6. recovery paths ------------------------------------------------------------------------

def test_resume_takes_new_evaluation_sizes_and_a_lower_learning_rate(capsys, tmp_path,
                                                                     vae_run):
    run = _copy(vae_run, tmp_path)
    capsys.readouterr()
    assert call("train_svi", "--resume", run, "--epochs", "3", "--lr", "0.001",
                "--eval-samples", "3", "--quiet") == 0
    out = capsys.readouterr().out
    assert "--lr 0.001 from here on (the run had 0.005)" in out
    config = json.loads((run / "config.json").read_text())
    assert (config["lr"], config["eval_samples"]) == (0.001, 3)
    assert json.loads((run / "summary.json").read_text())["test_loglik_num_samples"] == 3


def test_the_nan_message_says_how_to_continue(capsys, tmp_path, npz, monkeypatch):
    import pyro_vae.train as train

    calls = []
    real = train.run_epochs

    def nan_in_epoch_2(*args, **kwargs):
        batch_loss = args[2]

        def poisoned(batch, epoch, first):
            value = batch_loss(batch, epoch, first)
            return value * float("nan") if epoch == 2 else value
        calls.append(1)
        return real(args[0], args[1], poisoned, *args[3:], **kwargs)

    monkeypatch.setattr(train, "run_epochs", nan_in_epoch_2)
    out = tmp_path / "run"
    capsys.readouterr()
    assert call("train_svi", *TINY_SVI, "--epochs", "3", "--dataset", npz, "--out", out) == 1
    err = capsys.readouterr().err
    assert "continue from it at a lower rate with --resume" in err and "--lr 0.0005" in err
    monkeypatch.undo()
    assert call("train_svi", "--resume", out, "--lr", "0.0005", "--quiet") == 0


# --- 7. one writer per run --------------------------------------------------------------------

def test_a_second_writer_of_a_run_is_refused(capsys, tmp_path, vae_run):
    run = _copy(vae_run, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from pyro_vae.runs import lock_run_dir; "
                               f"lock_run_dir({str(run)!r}); print('locked', flush=True); "
                               "time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for script, args in (("train_svi", ["--resume", run, "--epochs", "3", "--quiet"]),
                             ("evaluate", [run, "--no-download", "--ais-images", "0"])):
            capsys.readouterr()
            assert call(script, *args) == 2
            err = capsys.readouterr().err
            assert "is being written by another process" in err and "Traceback" not in err
    finally:
        holder.kill()  # kill -9: its lock dies with it
        holder.wait()
    lock_run_dir(str(run))  # at once
    release_locks()
    assert not [n for n in os.listdir(run) if "lock" in n]  # nothing added to the run


def test_a_failure_inside_compare_names_the_training_script(capsys, monkeypatch, tmp_path, npz):
    import train_baselines
    import train_svi

    def full(cfg, **kwargs):
        raise RunError(f"cannot write {cfg.out}/checkpoint_last.pt (No space left on device); "
                       f"no epoch was saved; start it again with --resume {cfg.out}")

    monkeypatch.setattr(train_svi, "run", full)
    monkeypatch.setattr(train_baselines, "run", full)
    capsys.readouterr()
    assert call("compare", *TINY, "--dataset", npz, "--out", tmp_path / "report") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--resume" in err and ".py); then give the run to compare.py with --" in err


def test_runs_from_before_each_model_option_resume(capsys, tmp_path, vae_run):
    from pyro_vae.checkpoint import save_checkpoint

    for dropped in (("observed_quadrants",),  # a run from before --model cvae
                    ("model", "labels", "alpha", "num_classes", "observed_quadrants")):
        run = tmp_path / f"run{len(dropped)}"
        shutil.copytree(vae_run, run)
        state = load_checkpoint(str(run / "checkpoint_last.pt"))
        for name in dropped:
            del state["config"][name]
        save_checkpoint(state, str(run / "checkpoint_last.pt"))
        assert call("train_svi", "--resume", run, "--epochs", "3", "--quiet") == 0


def test_undefined_khat_is_said_plainly(capsys, tmp_path, vae_run):
    run = _copy(vae_run, tmp_path)
    capsys.readouterr()
    assert call("evaluate", run, "--no-download", "--samples", "5", "--curve", "1,5",
                "--ais-images", "0", "--bdmc-images", "0", "--gap-images", "0") == 0
    out = capsys.readouterr().out
    assert "Pareto k-hat undefined for every image (K < 21, or tied weights)" in out
    assert "for undefined of images" not in out
