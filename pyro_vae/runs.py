"""Run directories: device choice, refusing to clobber a finished run, metrics, checkpoints.

A run directory holds ``config.json``, ``metrics.csv`` / ``metrics.json`` (one row per epoch),
``checkpoint_last.pt`` (end of the last finished epoch: what ``--resume`` continues from) and
``checkpoint_best.pt`` (lowest test loss), ``summary.json`` and PNG figures; after Ctrl-C, also
``checkpoint_interrupted.pt`` (the weights at the moment of the interrupt).
"""

import csv
import json
import os

import torch
from tqdm import tqdm

from .checkpoint import save_checkpoint
from .errors import CheckpointError, RunError, lookup
from .files import atomic_write

__all__ = [
    "RUN_MARKERS",
    "Recorder",
    "check_run_dir",
    "prepare_run_dir",
    "resolve_device",
    "rng_state",
    "set_rng_state",
    "write_json",
    "write_metrics",
]

# Files whose presence means a directory already holds a run.
RUN_MARKERS = ("config.json", "checkpoint_last.pt", "metrics.csv", "summary.json")


def resolve_device(name):
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    lookup(("auto", "cpu", "cuda"), "device", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def check_run_dir(path, overwrite=False):
    """RunError if ``path`` is a file, or already holds a run and ``overwrite`` is not set."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"--out {path} is a file, not a directory; choose another --out")
    found = [m for m in RUN_MARKERS if os.path.exists(os.path.join(path, m))]
    if found and not overwrite:
        raise RunError(
            f"{path} already holds a run ({found[0]}); pass --overwrite to replace it, "
            "--resume to continue it, or choose another --out"
        )


def prepare_run_dir(path, overwrite=False):
    """Create ``path``; refuse (RunError) if it already holds a run, unless ``overwrite``."""
    check_run_dir(path, overwrite)
    os.makedirs(path, exist_ok=True)


def write_json(obj, path):
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_metrics(history, folder):
    """``metrics.csv`` and ``metrics.json`` from per-epoch rows (dicts with the same keys)."""
    write_json(history, os.path.join(folder, "metrics.json"))
    if not history:
        return
    with atomic_write(os.path.join(folder, "metrics.csv"), newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def rng_state(generator):
    """Every random state a run draws from: torch's global one (Pyro's sample sites, inits), the
    data ``generator`` (permutations, binarization, noise), CUDA's when present."""
    state = {"torch": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, generator):
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Recorder:
    """Per-epoch bookkeeping of a run directory, passed to a training loop as ``on_epoch``.

    Each call appends the epoch's row to ``history``, rewrites the metrics files, saves
    ``checkpoint_last.pt`` (model, optimizer, config, epoch, random states, history) and, when the
    test loss is the lowest so far, ``checkpoint_best.pt``, then prints one line.
    """

    def __init__(self, out, model, optimizer, config, generator, *, epochs, loss_label="loss"):
        self.out, self.model, self.optimizer = out, model, optimizer
        self.config, self.generator, self.epochs = config, generator, epochs
        self.loss_label = loss_label
        self.history, self.best = [], float("inf")

    def resume(self, state):
        """Restore a ``checkpoint_last.pt``; returns the epoch it finished."""
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"], self.generator)
            self.history = list(state["history"])
            epoch = int(state["epoch"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"the checkpoint in {self.out} does not fit the model its "
                                  f"config describes ({first})") from None
        self.best = min((row["test_loss"] for row in self.history), default=float("inf"))
        return epoch

    def state(self, epoch):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "config": self.config, "epoch": epoch, "rng": rng_state(self.generator),
                "history": self.history}

    def __call__(self, row):
        self.history.append(row)
        write_metrics(self.history, self.out)
        state = self.state(row["epoch"])
        save_checkpoint(state, os.path.join(self.out, "checkpoint_last.pt"))
        if row["test_loss"] < self.best:
            self.best = row["test_loss"]
            save_checkpoint(state, os.path.join(self.out, "checkpoint_best.pt"))
        tqdm.write(f"epoch {row['epoch']:4d}/{self.epochs}  train {self.loss_label} "
                   f"{row['train_loss']:8.2f}  test {self.loss_label} {row['test_loss']:8.2f}  "
                   f"({row['images_per_second']:.0f} images/s)")

    @property
    def last_epoch(self):
        """The last finished epoch (0 before the first)."""
        return self.history[-1]["epoch"] if self.history else 0

    def save_interrupted(self):
        """Save the weights as they are now (mid-epoch) to ``checkpoint_interrupted.pt``; returns
        its path. ``checkpoint_last.pt`` is left at the last finished epoch, for an exact resume."""
        path = os.path.join(self.out, "checkpoint_interrupted.pt")
        save_checkpoint({**self.state(self.last_epoch), "interrupted": True}, path)
        return path
