"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically, read safely.

A checkpoint is what ``torch.save`` writes for a dict such as ``{"model": state_dict,
"optimizer": state_dict, "config": {...}, "epoch": 3, "rng": {...}, "history": [...]}``. It is
written to a temporary file in the same folder and renamed over the target, so a process killed
mid-write leaves the previous checkpoint intact; it is read with ``weights_only=True``, so loading
never unpickles arbitrary objects.
"""

import os
import tempfile

import torch

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit what it is loaded into."""


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
