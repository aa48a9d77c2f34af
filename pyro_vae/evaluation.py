"""Evaluation at the scale of a test set: chunks, random streams, a store of finished chunks, and
the ranks' share of the work.

The test set is cut into chunks of :data:`CHUNK` images, counted from its start. Each estimator
(a *task name*: ``"iwae"``, ``"curve"``, ``"ais100"``, ...) runs on a chunk as one unit of work
(a :class:`Task`), and every random draw it makes there comes from torch's global generator
seeded by :func:`stream_seed` (the evaluation's seed, the task's name and the chunk's index).
An image's estimates therefore depend on its chunk (and on how many of the chunk's images are
evaluated, where a count ends inside it), not on the number of processes, not on which rank ran
the chunk, not on whether the evaluation was resumed. (On the CPU, floating-point sums can still
differ in the last bits between thread counts; the same count gives the same bits.)

A :class:`ChunkStore` keeps each finished chunk as a file of its own, written atomically as it
finishes, beside the settings that fix the numbers; an evaluation that resumes computes only the
chunks it lacks. :func:`run_tasks` hands the tasks to the ranks of a
:class:`~pyro_vae.distributed.World` in rounds of one task per rank: after each round the ranks
agree (an error, a NaN or Ctrl-C on any rank stops all of them with one message), then the
round's results are gathered and rank 0 saves them. One process runs the same loop with no
collective.
"""

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .errors import RunError
from .files import atomic_write

__all__ = ["CHUNK", "ChunkStore", "Task", "chunked", "paired_difference", "run_tasks",
           "stream_seed"]

CHUNK = 100  # test images per chunk: the unit of streams, of work and of resuming


@dataclass(frozen=True)
class Task:
    """Estimator ``name`` on images ``start:stop`` of the test set, chunk ``chunk``."""

    name: str
    chunk: int
    start: int
    stop: int

    @property
    def size(self):
        return self.stop - self.start

    @property
    def key(self):
        return f"{self.name}-{self.chunk:06d}"


def chunked(name, num_images):
    """The tasks of estimator ``name`` on the first ``num_images`` test images: one per chunk of
    :data:`CHUNK` (the last one may be shorter)."""
    return [Task(name, c, start, min(start + CHUNK, num_images))
            for c, start in enumerate(range(0, num_images, CHUNK))]


def stream_seed(seed, name, chunk):
    """The seed of estimator ``name`` on chunk ``chunk``: 32 bits of a SHA-256 of the three, the
    same in every process (Python's ``hash`` of a string is not)."""
    digest = hashlib.sha256(f"{seed}/{name}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class ChunkStore:
    """The finished chunks of one evaluation, in ``folder`` (one ``<task key>.pt`` each), and
    ``settings.json``: what fixes the numbers, checked when the evaluation resumes."""

    SETTINGS = "settings.json"

    def __init__(self, folder):
        self.folder = folder

    @property
    def exists(self):
        return os.path.exists(os.path.join(self.folder, self.SETTINGS))

    def create(self, settings):
        """Start an empty store with ``settings`` (an earlier store there is removed: the caller
        was told to overwrite it)."""
        if os.path.isdir(self.folder):
            shutil.rmtree(self.folder)
        try:
            os.makedirs(self.folder)
        except OSError as e:
            raise RunError(f"cannot create {self.folder} ({e.strerror or e}); choose another "
                           "--out") from None
        with atomic_write(os.path.join(self.folder, self.SETTINGS)) as f:
            json.dump(settings, f, indent=2)

    def settings(self):
        try:
            with open(os.path.join(self.folder, self.SETTINGS)) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise RunError(f"cannot read {os.path.join(self.folder, self.SETTINGS)} ({e}); "
                           "start the evaluation again with --overwrite") from None

    def save(self, task, payload):
        """Keep ``payload`` (tensors and numbers) as the result of ``task``, atomically."""
        with atomic_write(os.path.join(self.folder, task.key + ".pt"), "wb") as f:
            torch.save({"task": vars(task), "payload": payload}, f)

    def load(self):
        """``{task key: (Task, payload)}`` of every chunk saved (a file that cannot be read, as
        a write that a kill cut short would leave, is not a chunk: it is computed again)."""
        out = {}
        for name in sorted(os.listdir(self.folder)):
            if name.endswith(".pt") and not name.startswith("."):
                try:
                    saved = torch.load(os.path.join(self.folder, name), weights_only=True)
                    task = Task(**saved["task"])
                except Exception:  # noqa: BLE001  (any unreadable file: computed again)
                    continue
                out[task.key] = (task, saved["payload"])
        return out


def run_tasks(world, tasks, compute, save, *, cost=None, desc="evaluating", progress=True):
    """Run ``compute(task)`` for every task over the ranks of ``world`` and return ``{task key:
    payload}`` on every rank; ``save(task, payload)`` is called on rank 0 as each round ends.

    Round r gives task ``r * size + rank`` to each rank; then an agreement (a failure on any
    rank stops all: :meth:`~pyro_vae.distributed.World.agree`), and the round's payloads are
    gathered. Ctrl-C and SIGTERM are deferred to the end of the round, so that every rank stops
    at the same collective; the chunks of the rounds already ended are saved. The progress bar
    (rank 0) advances by ``cost(task)`` (default: the task's images), so that its estimate of
    the time left weighs a slow estimator's chunk as it should."""
    cost = cost or (lambda task: task.size)
    results = {}
    bar = tqdm(total=sum(cost(t) for t in tasks), desc=desc, disable=not (progress and
               world.is_main) or not tasks, dynamic_ncols=True,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
    try:
        with world.deferring_interrupts():
            for first in range(0, len(tasks), world.size):
                round_ = tasks[first:first + world.size]
                mine = round_[world.rank] if world.rank < len(round_) else None
                payload, error = None, None
                try:
                    payload = compute(mine) if mine is not None else None
                except BaseException as e:  # noqa: B036  (handed to the agreement)
                    if world.size == 1:
                        raise
                    error = e
                world.agree(error)
                gathered = world.gather(payload)
                for task, value in zip(round_, gathered):
                    results[task.key] = value
                    if world.is_main:
                        save(task, value)
                bar.update(sum(cost(t) for t in round_))
                bar.set_description_str(f"{desc} ({round_[-1].name}, chunk {round_[-1].chunk})")
    finally:
        bar.close()
    return results


def paired_difference(a, b):
    """The mean over images of ``b - a`` (two runs' per-image estimates ``(N,)`` on the same
    images), with its paired standard error std(b - a) / sqrt(N) and the unpaired one
    sqrt(var(a) / N + var(b) / N), which ignores that the images are shared. A dict of floats
    (None where undefined, N < 2)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or a.dim() != 1:
        raise ValueError(f"paired estimates need the same images: shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    n, d = a.numel(), b - a
    if n < 2:
        return {"mean": d.mean().item() if n else None, "stderr_paired": None,
                "stderr_unpaired": None}
    return {"mean": d.mean().item(), "stderr_paired": (d.std() / math.sqrt(n)).item(),
            "stderr_unpaired": math.sqrt((a.var() / n + b.var() / n).item())}
