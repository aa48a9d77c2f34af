"""Run directories: device choice, refusing to clobber a finished run, metrics and JSON files.

A run directory holds ``config.json``, ``metrics.csv`` / ``metrics.json`` (one row per epoch),
``checkpoint_last.pt`` / ``checkpoint_best.pt``, ``summary.json`` and PNG figures.
"""

import csv
import json
import os
import tempfile

import torch

__all__ = ["RUN_MARKERS", "RunError", "prepare_run_dir", "resolve_device", "write_json",
           "write_metrics"]

# Files whose presence means a directory already holds a run.
RUN_MARKERS = ("config.json", "checkpoint_last.pt", "metrics.csv", "summary.json")


class RunError(ValueError):
    """A run directory or device that cannot be used as asked."""


def resolve_device(name):
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise RunError(f"unknown device {name!r}; choose one of: auto, cpu, cuda")
    return torch.device(name)


def prepare_run_dir(path, overwrite=False):
    """Create ``path``; refuse (RunError) if it already holds a run, unless ``overwrite``."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunError(f"--out {path} is a file, not a directory; choose another --out")
    found = [m for m in RUN_MARKERS if os.path.exists(os.path.join(path, m))]
    if found and not overwrite:
        raise RunError(
            f"{path} already holds a run ({found[0]}); pass --overwrite to replace it, "
            "--resume to continue it, or choose another --out"
        )
    os.makedirs(path, exist_ok=True)


def write_json(obj, path):
    """Write ``obj`` as indented JSON, atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def write_metrics(history, folder):
    """``metrics.csv`` and ``metrics.json`` from per-epoch rows (dicts with the same keys)."""
    write_json(history, os.path.join(folder, "metrics.json"))
    if not history:
        return
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=folder)
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, os.path.join(folder, "metrics.csv"))
