"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically, read safely.

A checkpoint is what ``torch.save`` writes for a dict such as ``{"model": state_dict,
"optimizer": state_dict, "config": {...}, "epoch": 3, "rng": {...}, "history": [...]}``. It is
written to a temporary file in the same folder and renamed over the target, so a process killed
mid-write leaves the previous checkpoint intact; it is read with ``weights_only=True``, so loading
never unpickles arbitrary objects.
"""

import os

import torch

from .errors import CheckpointError
from .files import atomic_write

__all__ = ["find_checkpoint", "load_checkpoint", "save_checkpoint"]

# The checkpoints of a run directory, in the order a reader prefers them.
RUN_CHECKPOINTS = ("checkpoint_best.pt", "checkpoint_last.pt")


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as f:
        torch.save(state, f)


def find_checkpoint(path):
    """The checkpoint ``path`` points at: a file as it is; for a run directory, its best
    checkpoint (lowest test loss), else its last. :class:`CheckpointError` if there is none."""
    if os.path.isdir(path):
        for name in RUN_CHECKPOINTS:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointError(f"{path} holds no {' or '.join(RUN_CHECKPOINTS)}; point at the run "
                              "directory of a training script")
    if not os.path.exists(path):
        raise CheckpointError(f"no run directory or checkpoint at {path}")
    return path


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`CheckpointError` if it is
    missing, truncated or not a checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, wrong format, disallowed pickle content
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({first})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a pyro_vae checkpoint (no model or config in it)")
    return state
