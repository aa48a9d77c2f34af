"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically, read safely.

A checkpoint is what ``torch.save`` writes for a dict such as ``{"model": state_dict,
"optimizer": state_dict, "config": {...}, "epoch": 3, "rng": {...}, "history": [...]}``. It is
written to a temporary file in the same folder and renamed over the target, so a process killed
mid-write leaves the previous checkpoint intact; it is read with ``weights_only=True``, so loading
never unpickles arbitrary objects.
"""

import math
import os
import zipfile

import torch

from .errors import CheckpointError
from .files import atomic_write

__all__ = ["CONFIG_FIELDS", "STATE_FIELDS", "check_fields", "find_checkpoint", "load_checkpoint",
           "save_checkpoint"]

# The checkpoints of a run directory, in the order a reader prefers them.
RUN_CHECKPOINTS = ("checkpoint_best.pt", "checkpoint_last.pt")

# The schema, in one place: what a checkpoint must hold, with the types its readers rely on.
STATE_FIELDS = {"model": dict, "config": dict, "epoch": int, "history": list}
# ... and what --resume needs besides
RESUME_FIELDS = {"optimizer": dict, "rng": dict}
# The config fields a model is rebuilt from, by the model the config's "model" names
_SHARED_FIELDS = {"dataset": str, "binarize": str, "arch": str, "latent_dim": int,
                  "hidden_dim": int, "likelihood": str}
CONFIG_FIELDS = {
    "vae": {**_SHARED_FIELDS, "prior": str, "posterior": str},
    "ae": {**_SHARED_FIELDS, "model": str},
    "dae": {**_SHARED_FIELDS, "model": str, "noise": str, "noise_level": float},
    "m2": {**_SHARED_FIELDS, "model": str, "num_classes": int, "alpha": float},
    "cvae": {**_SHARED_FIELDS, "model": str, "observed_quadrants": int},
}
# fields that must be positive (sizes) or finite and >= 0
_POSITIVE = ("latent_dim", "hidden_dim")


def _type_ok(value, kind):
    if kind is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_fields(mapping, fields, where):
    """:class:`CheckpointError` unless ``mapping`` holds every name of ``fields`` (``{name:
    type}``) with a value of that type (an int is a float; a bool is not an int; floats must be
    finite) and positive sizes; ``where`` names the file in the message."""
    for name, kind in fields.items():
        if name not in mapping:
            raise CheckpointError(f"{where} has no {name!r}; it was not written by this version "
                                  "of pyro_vae, or was edited: train the run again")
        value = mapping[name]
        if not _type_ok(value, kind) or (name in _POSITIVE and value < 1):
            raise CheckpointError(f"{where}: {name!r} is {value!r}, not a"
                                  f"{' positive' if name in _POSITIVE else ''} {kind.__name__}; "
                                  "it was edited or corrupted: train the run again")


def check_state(state, path, resume=False):
    """Check a loaded checkpoint against the schema above (and, with ``resume``, what --resume
    needs); :class:`CheckpointError` naming the file and the field otherwise."""
    check_fields(state, {**STATE_FIELDS, **(RESUME_FIELDS if resume else {})}, path)
    if state["epoch"] < 0 or len(state["history"]) != state["epoch"]:
        raise CheckpointError(f"{path}: epoch {state['epoch']} does not match its "
                              f"{len(state['history'])} rows of history; it is corrupted")
    for row in state["history"]:
        if not isinstance(row, dict):
            raise CheckpointError(f"{path}: its history holds {row!r}, not a row of metrics")
        check_fields(row, {"epoch": int, "train_loss": float, "test_loss": float},
                     f"{path}: a row of its history")
    config = state["config"]
    model = config.get("model", "vae")
    if model not in CONFIG_FIELDS:
        raise CheckpointError(f"{path}: its config names model {model!r}, not one of "
                              f"{', '.join(CONFIG_FIELDS)}")
    check_fields(config, CONFIG_FIELDS[model], f"{path}: its config")


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


def load_checkpoint(path, map_location="cpu", *, check=True, resume=False):
    """Read a checkpoint written by :func:`save_checkpoint`; :class:`CheckpointError` if it is
    missing, truncated or not a checkpoint, or (``check``) lacks a field of the schema above or
    holds one of the wrong type (``resume``: also what --resume needs)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is not one
        raise CheckpointError(f"{path} is not a readable checkpoint (not the zip archive torch.save "
                              "writes: empty, truncated or another kind of file)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, wrong format, disallowed pickle content
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({first})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a pyro_vae checkpoint (no model or config in it)")
    if check:
        check_state(state, path, resume)
    return state
