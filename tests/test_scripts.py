"""Every script runs with tiny arguments; a coverage test fails if a script is missing here."""

import json
import os

import pytest
import torch

from pyro_vae.build import build_vae
from pyro_vae.checkpoint import load_checkpoint

from conftest import ROOT, run_script

TINY_SVI = ["--no-download", "--epochs", "2", "--batch-size", "200", "--latent-dim", "4",
            "--hidden-dim", "32", "--eval-samples", "20", "--eval-images", "50", "--quiet"]

SVI_OUTPUTS = ["config.json", "metrics.csv", "metrics.json", "summary.json", "checkpoint_last.pt",
               "checkpoint_best.pt", "elbo_curves.png", "reconstructions.png",
               "prior_samples.png", "latent_space.png"]

TESTED_SCRIPTS = {"train_svi.py", "evaluate.py"}


def test_every_script_is_tested():
    scripts = {f for f in os.listdir(os.path.join(ROOT, "scripts")) if f.endswith(".py")
               and not f.startswith("_")}
    assert scripts == TESTED_SCRIPTS


@pytest.fixture(scope="module")
def svi_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svi")
    out = tmp / "run"
    proc = run_script("train_svi.py", *TINY_SVI, "--data-root", tmp / "data", "--out", out,
                      "--arch", "conv")
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_train_svi_writes_every_output(svi_run):
    out, proc = svi_run
    for name in SVI_OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in SVI_OUTPUTS:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics] == [1, 2]
    csv_lines = (out / "metrics.csv").read_text().strip().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss,test_loss") and len(csv_lines) == 3
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "conv" and config["latent_dim"] == 4 and config["epochs"] == 2
    summary = json.loads((out / "summary.json").read_text())
    # IWAE >= ELBO on average; both are log-densities of binary 784-pixel images
    assert summary["test_loglik_elbo_mean"] <= summary["test_loglik_mean"] < 0
    assert summary["test_loglik_num_samples"] == 20 and summary["test_loglik_num_images"] == 50
    assert "test log p(x)" in proc.stdout


def test_train_svi_checkpoint_reloads_strictly(svi_run):
    out, _ = svi_run
    state = load_checkpoint(str(out / "checkpoint_last.pt"))
    assert state["epoch"] == 2 and len(state["history"]) == 2
    cfg = state["config"]
    vae = build_vae((1, 28, 28), arch=cfg["arch"], latent_dim=cfg["latent_dim"],
                    hidden_dim=cfg["hidden_dim"])
    vae.load_state_dict(state["model"])  # strict: every key and shape must match
    # plain torch.load with weights_only=True works too (no pickled objects inside)
    torch.load(out / "checkpoint_best.pt", weights_only=True)


def test_train_svi_refuses_to_overwrite_a_run(svi_run):
    out, _ = svi_run
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = run_script("train_svi.py", *TINY_SVI, "--out", out)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "already holds a run" in lines[0] and "--overwrite" in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("args,message", [
    (["--prior", "gamma"], "unknown --prior 'gamma'; choose one of: normal, learned-normal"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--lr", "-1"], "--lr must be positive"),
])
def test_train_svi_bad_flags_get_one_line(tmp_path, args, message):
    proc = run_script("train_svi.py", *TINY_SVI, "--out", tmp_path / "run", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"train_svi.py: error: {message}")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_evaluate_writes_bounds_and_diagnostics(svi_run, tmp_path):
    out, _ = svi_run
    proc = run_script("evaluate.py", out, "--no-download", "--data-root", tmp_path / "data",
                      "--samples", "30", "--images", "40", "--curve", "1,3,30",
                      "--curve-images", "20", "--out", tmp_path / "eval")
    assert proc.returncode == 0, proc.stderr
    for name in ("evaluation.json", "bound_curve.png", "khat.png", "kl_per_dimension.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0, name
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["loglik"]["num_samples"] == 30 and result["loglik"]["num_images"] == 40
    assert result["loglik"]["elbo_mean"] <= result["loglik"]["mean"]
    curve = result["bound_curve"]
    assert list(curve) == ["1", "3", "30"]
    assert curve["1"]["mean"] < curve["30"]["mean"]  # more samples, tighter bound
    assert len(result["activity"]) == 4 and 0 <= result["active_units"] <= 4
    assert len(result["kl_per_dimension"]) == 4


def test_evaluate_refuses_a_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "checkpoint_last.pt"
    bad.write_bytes(b"not a checkpoint")
    proc = run_script("evaluate.py", tmp_path, "--no-download")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a readable checkpoint" in lines[0]
    assert bad.read_bytes() == b"not a checkpoint"


def test_train_svi_swaps_every_kind_of_component_by_name(tmp_path):
    out = tmp_path / "run"
    proc = run_script("train_svi.py", *TINY_SVI, "--data-root", tmp_path / "data", "--out", out,
                      "--prior", "vamp", "--likelihood", "continuous-bernoulli",
                      "--binarize", "none", "--posterior", "flow", "--elbo", "iwae",
                      "--num-particles", "3", "--beta", "0.5", "--kl-warmup", "2")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["kl_weight"] for row in metrics] == [0.25, 0.5]
    config = json.loads((out / "config.json").read_text())
    assert (config["prior"], config["posterior"], config["elbo"]) == ("vamp", "flow", "iwae")


def test_train_svi_refuses_grey_levels_under_bernoulli(tmp_path):
    proc = run_script("train_svi.py", *TINY_SVI, "--data-root", tmp_path / "data",
                      "--out", tmp_path / "run", "--binarize", "none")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train_svi.py: error: the bernoulli likelihood needs binary pixels")
    assert "--binarize dynamic" in last and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_train_svi_resume_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    common = [*TINY_SVI, "--data-root", tmp_path / "data", "--eval-samples", "5"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_script("train_svi.py", *common, "--epochs", "3", "--out", straight).returncode == 0
    assert run_script("train_svi.py", *common, "--epochs", "1", "--out", stopped).returncode == 0
    proc = run_script("train_svi.py", "--resume", stopped, "--epochs", "3", "--quiet",
                      "--data-root", tmp_path / "data", "--no-download")
    assert proc.returncode == 0, proc.stderr
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((stopped / "metrics.json").read_text())
    key = lambda rows: [(r["epoch"], r["train_loss"], r["test_loss"]) for r in rows]  # noqa
    assert key(a) == key(b) and len(a) == 3
