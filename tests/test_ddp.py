"""One job over several processes (pyro_vae.distributed): two gloo ranks on the CPU, tiny sizes.

The library-level tests start their ranks with ``pyro_vae.launch.launch`` (what torchrun sets up);
the script-level ones run ``torchrun --standalone`` on a small .npz the test writes. Every launch
has a timeout: a rank left waiting for another would fail the test, not hang it.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyro
import pytest
import torch

from pyro_vae import distributed
from pyro_vae.build import build_autoencoder, build_vae
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.distributed import World, rank_seed
from pyro_vae.errors import RunError
from pyro_vae.launch import launch
from pyro_vae.train import NonFiniteLossError, fit, fit_autoencoder, make_elbo, run_epochs

from conftest import ROOT, run_script

SHAPE = (1, 8, 8)


def _images(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g)


def _vae():
    pyro.set_rng_seed(0)
    return build_vae(SHAPE, arch="mlp", latent_dim=3, hidden_dim=16)


# --- library level: launch ---------------------------------------------------------------------


def _one_step(x, batch_size, binarize):
    """A rank's part in one SGD step (lr 0, so the weights stay put) on the global batch ``x``;
    returns the gradient DDP left on the weights."""
    world = distributed.start("cpu")
    vae = _vae()
    generator = world.generator(0, x.device)
    optimizer = torch.optim.SGD(vae.parameters(), lr=0.0)
    fit(vae, make_elbo("trace"), optimizer, x, x[:5], epochs=1, batch_size=batch_size,
        binarize=binarize, generator=generator, progress=False, world=world)
    return [p.grad.clone() for p in vae.parameters()]


@pytest.mark.parametrize("binarize", ["dynamic", "none"])
def test_two_ranks_give_the_gradient_of_one_process_on_the_global_batch(binarize):
    x = _images(7)  # shares of 4 and 3 images: unequal, as a global batch often splits
    ddp = launch(_one_step, 2, x, 7, binarize, timeout=120)
    assert [r[0] for r in ddp] == ["ok", "ok"], ddp
    grads_0, grads_1 = ddp[0][1], ddp[1][1]
    for a, b in zip(grads_0, grads_1):  # DDP leaves the same gradient on both ranks
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # One process, the same global batch, each share with its rank's noise (the permutation
    # from the run's seed; binarization and z from rank_seed), loss summed, mean per image.
    vae = _vae()
    loss = make_elbo("trace")
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    total = 0.0
    for rank in range(2):
        xb = x[perm[World(rank, 2).share(7)]]
        if binarize == "dynamic":
            xb = torch.bernoulli(xb, generator=torch.Generator().manual_seed(rank_seed(0, rank)))
        torch.manual_seed(rank_seed(0, rank))
        with pyro.validation_enabled(True):
            total = total + loss.differentiable_loss(vae.model, vae.guide, xb)
    (total / 7).backward()
    for p, g in zip(vae.parameters(), grads_0):
        scale = p.grad.abs().max()
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-6 * scale)
    assert any(g.abs().max() > 0 for g in grads_0)


def _uneven_epoch():
    """9 images in global batches of 4 over 2 ranks: the last batch of 1 leaves rank 1 empty."""
    world = distributed.start("cpu")
    pyro.set_rng_seed(0)
    ae = build_autoencoder(SHAPE, model="dae", arch="mlp", latent_dim=3, hidden_dim=16,
                           noise="mask", noise_level=0.3)
    optimizer = torch.optim.Adam(ae.parameters(), lr=1e-2)
    x = torch.bernoulli(_images(9))
    rows = fit_autoencoder(ae, optimizer, x, x[:3], epochs=2, batch_size=4, binarize="none",
                           generator=world.generator(0, x.device), progress=False, world=world)
    return rows, [p.detach().clone() for p in ae.parameters()]


def test_a_batch_smaller_than_the_number_of_ranks_leaves_a_rank_empty_and_still_steps():
    out = launch(_uneven_epoch, 2, timeout=120)
    assert [r[0] for r in out] == ["ok", "ok"], out
    (rows_0, weights_0), (rows_1, weights_1) = out[0][1], out[1][1]
    for a, b in zip(weights_0, weights_1):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the ranks stay in step
    assert [r["epoch"] for r in rows_0] == [1, 2]
    assert [r["train_loss"] for r in rows_0] == [r["train_loss"] for r in rows_1]  # summed


class _Faulty:
    """A batch loss that, on ``rank`` at its ``at``-th call, returns NaN, raises, or sends this
    process SIGINT (as Ctrl-C or torchrun's SIGTERM would)."""

    def __init__(self, loss, rank, at, what):
        self.loss, self.rank, self.at, self.what, self.calls = loss, rank, at, what, 0

    def __call__(self, xb, epoch, first):
        self.calls += 1
        value = self.loss(xb, epoch, first)
        if distributed.env_rank() == self.rank and self.calls == self.at:
            if self.what == "nan":
                return value * float("nan")
            if self.what == "error":
                raise RuntimeError("a failure on one rank")
            os.kill(os.getpid(), signal.SIGINT)
        return value


class _FaultyAdam(torch.optim.Adam):
    """Adam whose ``at``-th step raises on ``rank``."""

    def __init__(self, params, rank, at):
        super().__init__(params, lr=1e-3)
        self.rank, self.at, self.steps = rank, at, 0

    def step(self, closure=None):
        self.steps += 1
        if distributed.env_rank() == self.rank and self.steps == self.at:
            raise RuntimeError("a failure in the step on one rank")
        return super().step(closure)


def _failing(what, check_every=None, at=3):
    """16 images in batches of 4 (4 steps an epoch); rank 1 fails at step ``at`` of epoch 1."""
    world = distributed.start("cpu")
    vae = _vae()
    loss = make_elbo("trace")
    x = torch.bernoulli(_images(16))
    optimizer = _FaultyAdam(vae.parameters(), 1 if what == "step" else -1, at)
    batch_loss = _Faulty(lambda xb, epoch, first: loss.differentiable_loss(vae.model, vae.guide,
                                                                           xb),
                         -1 if what == "step" else 1, at, what)
    run_epochs(vae, optimizer, batch_loss, lambda x: 0.0, x, x[:4], epochs=5, batch_size=4,
               binarize="none", generator=world.generator(0, x.device), progress=False,
               world=world, check_every=check_every)
    return "finished"


@pytest.mark.parametrize("what,check_every,at,raised_on_1,raised_on_0", [
    ("nan", None, 3, "NonFiniteLossError", "PeerStopped"),
    ("error", None, 3, "RuntimeError", "PeerStopped"),
    ("interrupt", None, 3, "PeerStopped", "KeyboardInterrupt"),  # rank 0 saves the weights
    # the optimizer's step, told at the next step's agreement, or at the epoch's last one
    ("step", None, 3, "RuntimeError", "PeerStopped"),
    ("step", None, 4, "RuntimeError", "PeerStopped"),
    # the GPU's deferred check: the failed rank runs a zero loss (backward still meets the
    # other's allreduce) until the check of step 4
    ("error", 2, 3, "RuntimeError", "PeerStopped"),
    ("step", 2, 3, "RuntimeError", "PeerStopped"),
])
def test_a_failure_on_one_rank_stops_both_without_hanging(what, check_every, at, raised_on_1,
                                                          raised_on_0):
    out = launch(_failing, 2, what, check_every, at, timeout=90)
    assert out[1][:2] == ("error", raised_on_1), out
    assert out[0][:2] == ("error", raised_on_0), out
    if what == "nan":
        assert "epoch 1, step 3" in out[1][2]
    if what == "step":
        assert out[1][2] == "a failure in the step on one rank"


class Interrupted(Exception):
    """As scripts/_cli.py's: the script's own interrupt, whose message says how to go on."""


def _interrupted_after_training():
    with distributed.together():
        distributed.start("cpu")
        raise Interrupted("checkpoint_last.pt holds all 2 epochs; finish with --resume run")


def test_an_interrupt_after_training_keeps_the_scripts_message_on_rank_0():
    out = launch(_interrupted_after_training, 2, timeout=60)
    assert out[0] == ("error", "Interrupted",
                      "checkpoint_last.pt holds all 2 epochs; finish with --resume run"), out
    assert out[1][:2] == ("error", "PeerStopped"), out


def _nan_test_loss():
    """A script's main (together) whose first epoch ends with a NaN test loss on every rank."""
    with distributed.together():
        world = distributed.start("cpu")
        vae = _vae()
        loss = make_elbo("trace")
        x = torch.bernoulli(_images(16))
        optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
        run_epochs(vae, optimizer,
                   lambda xb, epoch, first: loss.differentiable_loss(vae.model, vae.guide, xb),
                   lambda x: float("nan"), x, x[:4], epochs=2, batch_size=4, binarize="none",
                   generator=world.generator(0, x.device), progress=False, world=world)
    return "finished"


def test_a_nan_test_loss_stops_every_rank_with_one_message():
    out = launch(_nan_test_loss, 2, timeout=90)
    assert out[0][:2] == ("error", "NonFiniteLossError"), out  # rank 0 says it
    assert "epoch 1, step test" in out[0][2]
    assert out[1][:2] == ("error", "PeerStopped"), out  # the other leaves silently


def _more_processes_than_gpus():
    torch.cuda.device_count = lambda: 1  # this process's torch only
    distributed.resolve_device = lambda name: torch.device("cuda")
    try:
        distributed.start("cuda")
    except RunError as e:
        return str(e), distributed.quiet(e)
    return "started", None


def test_more_processes_than_gpus_is_said_once():
    out = launch(_more_processes_than_gpus, 2, timeout=60)
    assert [r[0] for r in out] == ["ok", "ok"], out
    (message_0, quiet_0), (message_1, quiet_1) = out[0][1], out[1][1]
    assert message_0 == message_1  # every rank stops, before any waits for the others
    assert message_0.startswith("2 processes on this machine, but torch sees 1 CUDA device(s)")
    assert (quiet_0, quiet_1) == (False, True)  # rank 0 says it, the other keeps it


def test_gpu_style_check_finds_a_nan_at_the_next_check_with_its_step():
    # A world of one with the GPU's deferred check (here on the CPU): the NaN of step 3 is read
    # at the check of step 4, with the step it happened at.
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 3"):
        _failing_one()


def _failing_one():
    world = World()
    vae = _vae()
    loss = make_elbo("trace")
    x = torch.bernoulli(_images(16))
    calls = []

    def batch_loss(xb, epoch, first):
        calls.append(1)
        with pyro.validation_enabled(False):  # as fit after its first step: NaN weights pass
            value = loss.differentiable_loss(vae.model, vae.guide, xb)
        return value * float("nan") if len(calls) == 3 else value

    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    try:
        run_epochs(vae, optimizer, batch_loss, lambda x: 0.0, x, x[:4], epochs=1, batch_size=2,
                   binarize="none", generator=world.generator(0, x.device), progress=False,
                   world=world, check_every=2)
    finally:
        assert len(calls) == 4  # steps 3 and 4 ran before the check read the flag


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_reads_the_loss_on_the_host_only_at_its_checks():
    vae = _vae().cuda()
    x = torch.bernoulli(_images(200)).cuda()
    world = World(device=torch.device("cuda"))
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    fit(vae, make_elbo("trace"), optimizer, x, x[:10], epochs=1, batch_size=4, binarize="none",
        generator=world.generator(0, x.device), progress=False, world=world)  # warm up
    torch.cuda.set_sync_debug_mode("warn")
    try:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(vae, make_elbo("trace"), optimizer, x, x[:10], epochs=2, batch_size=4,
                binarize="none", generator=world.generator(0, x.device), start_epoch=1,
                progress=False, world=world)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # 50 steps: a read at each of the 3 checks, and the epoch's end (sums, test loss)
    assert len(syncs) <= 12, [str(w.message) for w in syncs[:5]]


# --- script level: torchrun ---------------------------------------------------------------------

# a constant learning rate: a run stopped by a shorter --epochs then resumed steps as one
TINY = ["--epochs", "2", "--batch-size", "8", "--latent-dim", "2", "--hidden-dim", "8",
        "--quiet", "--device", "cpu", "--lr-cooldown", "0"]
SVI_EVAL = ["--eval-samples", "5", "--eval-images", "7"]
SVI_OUTPUTS = {"config.json", "metrics.csv", "metrics.json", "summary.json",
               "checkpoint_last.pt", "checkpoint_best.pt", "elbo_curves.png",
               "reconstructions.png", "prior_samples.png", "latent_space.png"}


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    g = np.random.default_rng(0)
    np.savez(path, x_train=(g.random((40, 8, 8)) * 255).astype(np.uint8),
             x_test=(g.random((12, 8, 8)) * 255).astype(np.uint8))
    return path


def torchrun(script, n, *args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
         os.path.join(ROOT, "scripts", script), *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _own_lines(text):
    """The lines of a torchrun run's stderr that come from the script, not from torchrun."""
    return [line for line in text.splitlines() if line.startswith(("train_svi.py:",
                                                                   "train_baselines.py:"))]


@pytest.fixture(scope="module")
def ddp_run(tiny_npz, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    proc = torchrun("train_svi.py", 2, "--dataset", tiny_npz, *TINY, *SVI_EVAL, "--out", "run",
                    cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return tmp, proc


def test_a_two_process_run_writes_exactly_one_run_directory(ddp_run):
    tmp, proc = ddp_run
    assert sorted(p.name for p in tmp.iterdir()) == ["run"]
    assert {p.name for p in (tmp / "run").iterdir()} == SVI_OUTPUTS
    metrics = json.loads((tmp / "run" / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics] == [1, 2]
    state = load_checkpoint(str(tmp / "run" / "checkpoint_last.pt"), resume=True)
    assert state["world_size"] == 2 and len(state["rng"]["ranks"]) == 2
    assert not any(k.startswith("module.") for k in state["model"])  # DDP's prefix stripped
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    assert summary["test_loglik_num_images"] == 7  # 4 + 3 images, gathered from both ranks
    # rank 0 alone reports: one line per epoch, one estimate
    assert proc.stdout.count("epoch    1/2") == 1 and proc.stdout.count("test log p(x)") == 1


def test_a_resumed_two_process_run_reproduces_the_uninterrupted_one(ddp_run, tiny_npz,
                                                                    tmp_path):
    tmp, _ = ddp_run
    common = ["--dataset", tiny_npz, *TINY, *SVI_EVAL]
    assert torchrun("train_svi.py", 2, *common, "--epochs", "1", "--out", "stopped",
                    cwd=tmp_path).returncode == 0
    proc = torchrun("train_svi.py", 2, "--resume", "stopped", "--epochs", "2", "--quiet",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    straight = json.loads((tmp / "run" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    key = lambda rows: [(r["epoch"], r["train_loss"], r["test_loss"]) for r in rows]  # noqa
    assert key(straight) == key(resumed) and len(straight) == 2
    a = load_checkpoint(str(tmp / "run" / "checkpoint_last.pt"))["model"]
    b = load_checkpoint(str(tmp_path / "stopped" / "checkpoint_last.pt"))["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resuming_under_another_number_of_processes_is_refused_in_one_line(ddp_run):
    tmp, _ = ddp_run
    before = (tmp / "run" / "checkpoint_last.pt").read_bytes()
    proc = run_script("train_svi.py", "--resume", tmp / "run", "--epochs", "3", "--quiet")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "was trained by 2 processes, and this is 1" in lines[0]
    assert "torchrun --nproc_per_node=2" in lines[0]
    assert (tmp / "run" / "checkpoint_last.pt").read_bytes() == before


def test_a_bad_flag_under_torchrun_is_said_once(tiny_npz, tmp_path):
    proc = torchrun("train_svi.py", 2, "--dataset", tiny_npz, *TINY, "--prior", "gamma",
                    "--out", "run", cwd=tmp_path)
    assert proc.returncode != 0
    assert _own_lines(proc.stderr) == [
        "train_svi.py: error: unknown --prior 'gamma'; choose one of: normal, learned-normal, "
        "mixture, vamp, flow"]
    assert not (tmp_path / "run").exists()


def test_a_nan_under_torchrun_stops_both_ranks_with_one_message(tiny_npz, tmp_path):
    proc = torchrun("train_svi.py", 2, "--dataset", tiny_npz, *TINY, *SVI_EVAL, "--lr", "1e30",
                    "--out", "run", cwd=tmp_path)
    assert proc.returncode != 0
    lines = _own_lines(proc.stderr)
    assert len(lines) == 1 and "the loss became" in lines[0], proc.stderr
    assert "training stopped" in lines[0]


def test_train_baselines_runs_as_one_job(tiny_npz, tmp_path):
    proc = torchrun("train_baselines.py", 2, "--dataset", tiny_npz, *TINY, "--model", "dae",
                    "--noise", "mask", "--noise-level", "0.3", "--out", "dae", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dae"]
    state = load_checkpoint(str(tmp_path / "dae" / "checkpoint_last.pt"), resume=True)
    assert state["world_size"] == 2 and state["epoch"] == 2
    assert (tmp_path / "dae" / "denoising.png").is_file()


def test_scripts_that_run_in_one_process_refuse_torchrun(tmp_path):
    proc = torchrun("compare.py", 2, "--out", tmp_path / "report", cwd=tmp_path)
    assert proc.returncode != 0
    assert "compare.py: error: compare.py runs in one process; start it with python, not " \
           "torchrun" in proc.stderr
    assert proc.stderr.count("compare.py: error:") == 1


def test_evaluate_under_torchrun_says_a_mistake_once(tmp_path):
    proc = torchrun("evaluate.py", 2, tmp_path / "nowhere", cwd=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("evaluate.py:")]
    assert len(lines) == 1 and lines[0].startswith("evaluate.py: error: ") and "nowhere" in lines[0]


@pytest.mark.parametrize("model,args", [("m2", ["--labels", "20"]),
                                        ("cvae", ["--observed-quadrants", "2"])])
def test_the_structured_models_train_as_one_job(tmp_path, model, args):
    path = tmp_path / "labelled.npz"
    g = np.random.default_rng(0)
    np.savez(path, x_train=(g.random((40, 8, 8)) * 255).astype(np.uint8),
             x_test=(g.random((12, 8, 8)) * 255).astype(np.uint8),
             y_train=np.arange(40) % 10, y_test=np.arange(12) % 10)
    proc = torchrun("train_svi.py", 2, "--dataset", path, *TINY, *SVI_EVAL, "--model", model,
                    *args, "--out", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = load_checkpoint(str(tmp_path / "run" / "checkpoint_last.pt"), resume=True)
    assert state["world_size"] == 2 and state["config"]["model"] == model
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert ("test_accuracy" in summary) == (model == "m2")
    assert ("baseline_loglik_mean" in summary) == (model == "cvae")
