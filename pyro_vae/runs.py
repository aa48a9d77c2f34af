"""Run directories: device choice, refusing to clobber a finished run, metrics, checkpoints, and
the bookkeeping of a run (:class:`Recorder`; :class:`DistributedRecorder` for one of its ranks).

A run directory holds ``config.json``, ``metrics.csv`` / ``metrics.json`` (one row per epoch),
``checkpoint_last.pt`` (the last finished epoch, which ``--resume`` continues),
``checkpoint_best.pt`` (lowest test loss), ``summary.json``, PNG figures, and after Ctrl-C
``checkpoint_interrupted.pt``.
"""

import csv
import json
import math
import os
import tempfile

import torch
from tqdm import tqdm

from .checkpoint import save_checkpoint
from .errors import CheckpointError, RunError, lookup
from .files import atomic_write

__all__ = [
    "RUN_FILES",
    "DistributedRecorder",
    "Recorder",
    "check_out",
    "lock_run_dir",
    "prepare_run_dir",
    "release_locks",
    "resolve_device",
    "rng_state",
    "set_rng_state",
    "write_json",
    "write_metrics",
]

# The files a training run writes besides its figures (checkpoint_interrupted.pt when stopped)
RUN_FILES = ("config.json", "metrics.csv", "metrics.json", "checkpoint_last.pt",
             "checkpoint_best.pt", "checkpoint_interrupted.pt", "summary.json")


def resolve_device(name):
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without CUDA is an error."""
    lookup(("auto", "cpu", "cuda"), "device", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


def check_out(path, files, overwrite=False, *, flag="--out", what="a run"):
    """Refuse (RunError), creating nothing, an output folder that cannot be one (a file, under a
    file, where nothing can be created) or, unless ``overwrite``, one that holds any of
    ``files`` (the names, relative to ``path``, of everything the caller will write)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):  # the nearest folder (or file) there is
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == os.path.abspath(path) else f"is under {existing}, a file"
        raise RunError(f"{flag} {path} {where}, not a folder; choose another {flag}")
    try:  # can a file be created there? (os.access says yes to root, even on /proc)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=existing))
    except OSError as e:
        raise RunError(f"{flag} {path}: nothing can be created in {existing} ({e.strerror or e}); "
                       f"choose another {flag}") from None
    found = [f for f in files if os.path.lexists(os.path.join(path, f))]
    if found and not overwrite:
        resume = "--resume to continue it, " if what in ("a run", "an evaluation") else ""
        raise RunError(f"{path} already holds {what} ({found[0]}); pass --overwrite to replace "
                       f"it, {resume}or choose another {flag}")


def prepare_run_dir(path, files, overwrite=False):
    """Create ``path`` after :func:`check_out`; a file system that refuses is a RunError."""
    check_out(path, files, overwrite)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot create {path} ({e.strerror or e}); choose another --out") from None


_held_locks = {}  # path -> the open descriptor of the folder whose flock is held


def lock_run_dir(path):
    """Hold an exclusive ``flock`` on the folder ``path`` itself for the life of this process, so
    that a second process writing the same run (two ``--resume``, an evaluation into a run being
    trained) is refused in one line. It dies with its process: a killed run resumes at once."""
    import fcntl

    key = os.path.abspath(path)
    if key in _held_locks:
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise RunError(f"cannot lock {path} ({e.strerror or e}); choose another folder") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunError(f"{path} is being written by another process (a training or an "
                       "evaluation of it is running); wait for it to end, or use another "
                       "folder") from None
    _held_locks[key] = fd


def release_locks():
    """Release every lock :func:`lock_run_dir` took (a script's end, in this process)."""
    while _held_locks:
        os.close(_held_locks.popitem()[1])


def _json_safe(obj):
    """``obj`` with every float that is not finite replaced by None (JSON has no inf or NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(obj, path):
    """Write ``obj`` as indented JSON, atomically; NaN and infinities become null, so that every
    JSON reader can read the file (``allow_nan=False`` guards it)."""
    text = json.dumps(_json_safe(obj), indent=2, allow_nan=False)
    with atomic_write(path) as f:
        f.write(text + "\n")


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
    """Per-epoch bookkeeping of a run directory, a training loop's ``on_epoch``: each call appends
    the epoch's row to ``history``; saves ``checkpoint_best.pt`` when the test loss is the lowest
    so far, then ``checkpoint_last.pt`` (model, optimizer, config, epoch, random states,
    history); then rewrites the metrics files, and prints one line."""

    writes = True  # whether this process writes the run directory
    processes = 1  # the run's processes: a checkpoint resumes exactly only under as many
    _lacks = ""  # what else a checkpoint that does not load may lack, for the error

    def __init__(self, out, model, optimizer, config, generator, *, epochs, loss_label="loss"):
        self.out, self.model, self.optimizer = out, model, optimizer
        self.config, self.generator, self.epochs = config, generator, epochs
        self.loss_label, self.history, self.best = loss_label, [], float("inf")

    def resume(self, state):
        """Restore a ``checkpoint_last.pt`` of as many processes; returns the epoch it finished."""
        saved = state.get("world_size", 1)
        if saved != self.processes:
            how = f"torchrun --nproc_per_node={saved} ..." if saved > 1 else "python, not torchrun"
            raise CheckpointError(
                f"{self.out} was trained by {saved} process{'es' if saved > 1 else ''}, and this "
                f"is {self.processes}: a run resumes exactly only as it ran; resume it with {how}")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self._restore_rng(state)
            self.history = list(state["history"])
            epoch = int(state["epoch"])
        except (KeyError, IndexError, RuntimeError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"the checkpoint in {self.out} does not fit the model its "
                                  f"config describes{self._lacks} ({first})") from None
        self.best = min((row["test_loss"] for row in self.history), default=float("inf"))
        if self.writes:
            write_metrics(self.history, self.out)  # metrics agree with the checkpoint resumed
        return epoch

    def _restore_rng(self, state):
        set_rng_state(state["rng"], self.generator)

    def state(self, epoch):
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "config": self.config, "epoch": epoch, "rng": rng_state(self.generator),
                "history": self.history}

    def __call__(self, row):
        # The checkpoints first, the metrics only once they are written: metrics.json never
        # claims an epoch that checkpoint_last.pt lacks (a full disk stops the run between).
        self.history.append(row)
        state = self.state(row["epoch"])
        saved = False  # whether checkpoint_last.pt holds this epoch
        try:
            if row["test_loss"] < self.best:
                save_checkpoint(state, os.path.join(self.out, "checkpoint_best.pt"))
            save_checkpoint(state, os.path.join(self.out, "checkpoint_last.pt"))
            saved = True
            write_metrics(self.history, self.out)
        except RunError as e:
            if not saved:
                self.history.pop()
            then = (f"checkpoint_last.pt keeps epoch {self.last_epoch}, continue with --resume "
                    f"{self.out}" if self.last_epoch else
                    f"no epoch was saved; start it again with --resume {self.out}")
            raise RunError(f"{e}; {then}") from None
        self.best = min(self.best, row["test_loss"])
        tqdm.write(f"epoch {row['epoch']:4d}/{self.epochs}  train {self.loss_label} "
                   f"{row['train_loss']:8.2f}  test {self.loss_label} {row['test_loss']:8.2f}  "
                   f"({row['images_per_second']:.0f} images/s)")

    @property
    def last_epoch(self):
        """The last finished epoch (0 before the first)."""
        return self.history[-1]["epoch"] if self.history else 0

    def save_interrupted(self):
        """Save the weights as they are now to ``checkpoint_interrupted.pt`` (if this process
        ``writes``), ``checkpoint_last.pt`` left at the last finished epoch; returns its path."""
        path = os.path.join(self.out, "checkpoint_interrupted.pt")
        if self.writes:
            save_checkpoint({**self.state(self.last_epoch), "interrupted": True}, path)
        return path


class DistributedRecorder(Recorder):
    """A :class:`Recorder` for one rank of several (``world``, a
    :class:`~pyro_vae.distributed.World`): every rank keeps the history, rank 0 alone writes. A
    checkpoint holds ``world_size`` and, under ``rng``, the permutations' generator (``order``)
    and every rank's states (``ranks``), so that a resumed run continues every stream exactly."""

    def __init__(self, world, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.world, self.writes, self.processes = world, world.is_main, world.size
        self._lacks = f", or lacks rank {world.rank}'s random state"
        self._rng = None

    def state(self, epoch):
        state = {**super().state(epoch), "world_size": self.world.size}
        if self._rng is not None:
            state["rng"] = self._rng  # (in the place of this rank's own)
        return state

    def _restore_rng(self, state):
        self.world.order.set_state(state["rng"]["order"])
        set_rng_state(state["rng"]["ranks"][self.world.rank], self.generator)

    def __call__(self, row):
        states = self.world.gather(rng_state(self.generator))  # a collective: every rank
        self._rng = {"order": self.world.order.get_state(), "ranks": states}
        if not self.writes:
            self.history.append(row)
            self.best = min(self.best, row["test_loss"])
        self.world.on_main(super().__call__, row)
