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

TINY_AE = ["--no-download", "--epochs", "2", "--batch-size", "200", "--latent-dim", "4",
           "--hidden-dim", "32", "--quiet"]

AE_OUTPUTS = ["config.json", "metrics.csv", "metrics.json", "summary.json", "checkpoint_last.pt",
              "checkpoint_best.pt", "loss_curves.png", "reconstructions.png",
              "random_samples.png", "latent_space.png"]

REPORT_OUTPUTS = ["report.md", "comparison.json", "reconstructions.png", "denoising.png",
                  "denoising_psnr.png", "samples.png", "interpolations.png"]

TESTED_SCRIPTS = {"train_svi.py", "evaluate.py", "train_baselines.py", "compare.py"}


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
                      "--curve-images", "20", "--out", tmp_path / "eval", "--ais-images", "6",
                      "--ais-steps", "8,2", "--ais-chains", "3", "--leapfrog", "2",
                      "--bdmc-images", "4", "--gap-images", "3")
    assert proc.returncode == 0, proc.stderr
    for name in ("evaluation.json", "bound_curve.png", "khat.png", "kl_per_dimension.png",
                 "sandwich.png", "inference_gaps.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0, name
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["loglik"]["num_samples"] == 30 and result["loglik"]["num_images"] == 40
    assert result["loglik"]["elbo_mean"] <= result["loglik"]["mean"]
    curve = result["bound_curve"]
    assert list(curve) == ["1", "3", "30"]
    assert curve["1"]["mean"] < curve["30"]["mean"]  # more samples, tighter bound
    assert len(result["activity"]) == 4 and 0 <= result["active_units"] <= 4
    assert len(result["kl_per_dimension"]) == 4
    # AIS at each schedule, on the 6 images the IWAE curve beside it was recomputed on
    ais = result["ais"]
    assert list(ais["by_steps"]) == ["2", "8"] and len(ais["per_image"]) == 6
    assert ais["num_images"] == 6 and list(ais["iwae_curve"]) == ["1", "3", "30"]
    assert ais["by_steps"]["8"]["num_samples"] == 3
    assert ais["by_steps"]["8"]["gradient_evaluations"] > ais["by_steps"]["2"]["gradient_evaluations"]
    assert list(result["bdmc"]) == ["2", "8"] and result["bdmc"]["8"]["num_images"] == 4
    gap = result["inference_gap"]
    assert gap["num_images"] == 3
    assert gap["log_px"] - gap["elbo_amortized"] == pytest.approx(
        gap["approximation_gap"] + gap["amortization_gap"], abs=1e-4)
    assert "BDMC, 8 steps on 4 simulated images" in proc.stdout


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
    # a constant learning rate: the stop is a shorter --epochs, whose cooldown would differ
    common = [*TINY_SVI, "--data-root", tmp_path / "data", "--eval-samples", "5",
              "--lr-cooldown", "0"]
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


@pytest.fixture(scope="module")
def baseline_runs(tmp_path_factory):
    """An AE and a DAE with the networks of ``svi_run`` (conv, latent 4, hidden 32)."""
    tmp = tmp_path_factory.mktemp("baselines")
    runs = {}
    for model in ("ae", "dae"):
        runs[model] = tmp / model
        proc = run_script("train_baselines.py", *TINY_AE, "--model", model, "--arch", "conv",
                          "--data-root", tmp / "data", "--out", runs[model],
                          "--noise", "mask", "--noise-level", "0.3")
        assert proc.returncode == 0, proc.stderr
        runs[model + "_stdout"] = proc.stdout
    return runs


@pytest.mark.parametrize("model", ["ae", "dae"])
def test_train_baselines_writes_every_output(baseline_runs, model):
    out = baseline_runs[model]
    expected = AE_OUTPUTS + (["denoising.png"] if model == "dae" else [])
    for name in expected:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "denoising.png").exists() == (model == "dae")
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["arch"], config["likelihood"]) == (model, "conv", "bernoulli")
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics] == [1, 2]
    assert metrics[1]["train_loss"] < metrics[0]["train_loss"]
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["test_reconstruction_loss"] < 784 * 0.7  # below the constant-0.5 guess
    if model == "dae":
        assert summary["noise"] == "MaskingNoise(p=0.3)"
        assert summary["test_psnr_noisy"] > 0 and summary["test_psnr_denoised"] > 0
        assert "denoising" in baseline_runs["dae_stdout"]
    state = load_checkpoint(str(out / "checkpoint_last.pt"))
    from pyro_vae.build import autoencoder_from_checkpoint

    ae = autoencoder_from_checkpoint(state, (1, 28, 28))
    assert (ae.noise is not None) == (model == "dae")


def test_compare_loads_runs_trains_the_missing_one_and_writes_the_report(svi_run, baseline_runs,
                                                                         tmp_path):
    out = tmp_path / "report"
    proc = run_script("compare.py", "--vae", svi_run[0], "--ae", baseline_runs["ae"],
                      "--no-download", "--data-root", tmp_path / "data", "--arch", "conv",
                      "--latent-dim", "4", "--hidden-dim", "32", "--epochs", "1",
                      "--batch-size", "200", "--classifier-epochs", "1", "--quiet",
                      "--out", out)
    assert proc.returncode == 0, proc.stderr
    for name in REPORT_OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "dae" / "checkpoint_last.pt").is_file()  # the DAE was trained here
    assert not (out / "vae").exists() and not (out / "ae").exists()  # the others were loaded
    result = json.loads((out / "comparison.json").read_text())
    assert set(result["reconstruction"]) == {"ae", "dae", "vae"}
    assert set(result["denoising"]) == {"gaussian", "salt-pepper", "mask"}
    for noise, methods in result["denoising"].items():
        assert set(methods) == {"noisy input", "AE", "DAE", "VAE"}
        noisy = [p for _, p in methods["noisy input"]]
        assert noisy == sorted(noisy, reverse=True), noise  # more noise, lower PSNR
    gen = result["generation"]
    assert list(gen) == ["real digits (held out)", "AE, z ~ N(0, I)",
                         "AE, z ~ Gaussian fitted to codes", "DAE, z ~ N(0, I)",
                         "DAE, z ~ Gaussian fitted to codes", "VAE, z ~ p(z)"]
    for scores in gen.values():
        assert 0.1 <= scores["confidence"] <= 1 and 0 <= scores["class_entropy"] <= 2.303
        assert scores["frechet"] >= 0 and sum(scores["class_counts"]) == 500
    report = (out / "report.md").read_text()
    for name in REPORT_OUTPUTS[2:]:
        assert f"({name})" in report, name
    assert "| VAE, z ~ p(z) |" in report


def test_compare_refuses_runs_of_different_sizes_or_kinds(svi_run, baseline_runs, tmp_path):
    other = tmp_path / "ae"
    assert run_script("train_baselines.py", *TINY_AE, "--latent-dim", "3", "--arch", "conv",
                      "--data-root", tmp_path / "data", "--epochs", "1",
                      "--out", other).returncode == 0
    common = ["--vae", svi_run[0], "--out", tmp_path / "report", "--no-download"]
    for args, message in [
        (["--ae", other, "--dae", baseline_runs["dae"]],
         "the runs differ in --latent-dim (ae 3, dae 4, vae 4)"),
        (["--ae", baseline_runs["ae"], "--dae", baseline_runs["ae"]],
         "holds a run of model 'ae', not 'dae'"),
    ]:
        proc = run_script("compare.py", *common, *args)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("compare.py: error: ")
        assert message in lines[0]
    assert not (tmp_path / "report").exists()


def test_a_two_layer_run_resumes_and_evaluates_like_a_one_layer_one(tmp_path):
    out, data = tmp_path / "run", tmp_path / "data"
    common = ["--no-download", "--data-root", data]
    assert run_script("train_svi.py", *TINY_SVI, "--data-root", data, "--out", out, "--epochs",
                      "1", "--stochastic-layers", "2", "--kl-warmup", "2").returncode == 0
    proc = run_script("train_svi.py", "--resume", out, "--epochs", "2", "--quiet", *common)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert [(r["epoch"], r["kl_weight"]) for r in metrics] == [(1, 0.5), (2, 1.0)]
    proc = run_script("evaluate.py", out, *common, "--samples", "30", "--images", "20",
                      "--curve", "1,30", "--curve-images", "10", "--out", tmp_path / "eval",
                      "--ais-images", "4", "--ais-steps", "4", "--ais-chains", "2",
                      "--leapfrog", "2", "--bdmc-images", "2", "--gap-images", "2")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    # z2 and z1 are both summed over by every estimator
    assert result["loglik"]["elbo_mean"] <= result["loglik"]["mean"]
    assert len(result["ais"]["per_image"]) == 4 and list(result["bdmc"]) == ["4"]
    assert result["inference_gap"]["num_images"] == 2
    assert len(result["activity"]) == 4  # the top code z2
    assert "kl_per_dimension" not in result and "no KL per dimension" in proc.stdout
