"""Training past one process: one job over N processes with torchrun and DistributedDataParallel.

``torchrun --nproc_per_node=N scripts/train_svi.py ...`` starts N processes, the *ranks* of one
job (torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
gloo joins them on the CPU, NCCL on GPUs (one GPU per rank). :func:`pyro_vae.train.run_epochs`
steps every rank with its :class:`World`'s steps; a world of one (no torchrun) is one process,
with no agreement. What a rank does:

- **The loss module.** A batch's summed loss is the forward of a module whose parameters are the
  model's (Pyro's ``svi_lightning.py`` pattern; our VAE holds plain ``nn.Parameter`` s, no
  ``pyro.param``), wrapped in DDP, which copies rank 0's weights at the start and averages the
  ranks' gradients in the backward pass.
- **The batches.** One permutation per epoch, drawn alike on every rank from a generator seeded
  with the run's seed (``World.order``, which draws nothing else), cut into global batches of B
  images; rank r takes share r of N contiguous shares (:meth:`World.share`; no ``pyro.plate``
  subsampling: every rank would draw the same one). In the first epoch, and in every epoch when
  nothing else draws from the data generator, the global batches are one process's very
  batches; with dynamic binarization or a DAE's noise they differ from epoch 2 on.
- **The gradient.** Each rank backpropagates its share's summed loss times N / B; DDP's average
  then gives sum_r grad(loss_r) / B, the gradient of the global batch's mean loss per image that
  one process steps on.
- **Noise.** Reparameterized draws (torch's global generator) and dynamic binarization or a
  DAE's corruption (the data generator) are seeded per rank, by :func:`rank_seed`.
- **Writing.** Only rank 0 writes and prints (:class:`~pyro_vae.runs.DistributedRecorder`);
  metrics are summed over ranks; the final log p(x) estimate is sharded and gathered.
- **Stopping together.** A rank that fails (a NaN or infinite loss, an exception, Ctrl-C or
  SIGTERM) must not leave the others waiting in a collective. Ranks meet at *agreements*
  (:meth:`World.agree`): each says whether it failed, and if one did, all stop. Agreements are
  held before every backward pass on the CPU (every :data:`CUDA_CHECK_EVERY` steps on a GPU),
  after each epoch's checkpoint, and when a rank leaves the job. Signals are deferred to the
  next agreement while training, and so is an exception in a training step, the failed rank
  running a zero loss meanwhile so that its collectives still match the others'. The lowest
  failing rank prints the one message (rank 0 for an interrupt: it saves the weights, or says
  how to finish the run); the others exit silently (:class:`PeerStopped`) with the same exit
  code. A rank that dies outright is seen by gloo at once, and torchrun stops the rest; a
  collective that waits longer than :data:`TIMEOUT` fails.
- **Resume.** Rank 0's checkpoint holds every rank's random state and the number of ranks; a
  run resumes exactly under the same number, and is refused in one line under another.

:func:`pyro_vae.launch.launch` starts a job's ranks from Python, without torchrun.
"""

import contextlib
import datetime
import io
import os
import signal
import sys
import threading

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .data import batches
from .errors import NonFiniteLossError, RunError, UserError
from .estimators import Estimate
from .runs import resolve_device
from .train import CUDA_CHECK_EVERY, Steps, batch_size_of, rows

__all__ = [
    "CUDA_CHECK_EVERY",
    "TIMEOUT",
    "PeerStopped",
    "World",
    "close",
    "current",
    "env_rank",
    "env_world_size",
    "quiet",
    "rank_seed",
    "start",
    "together",
]

# How long a collective waits for the slowest rank before it fails: longer than any stretch one
# rank works alone (rank 0 writing a checkpoint, the ranks loading the data in turn).
TIMEOUT = datetime.timedelta(minutes=10)

# A rank's status at an agreement, and the exit code each gives
_OK, _NONFINITE, _USER, _BUG, _INTERRUPT = 0, 1, 2, 3, 4
_EXIT = {_NONFINITE: 1, _USER: 2, _BUG: 1, _INTERRUPT: 130}


class PeerStopped(Exception):
    """This rank stops because another rank failed or was interrupted; that rank (or rank 0)
    prints the message. ``code`` is the exit code to leave with."""

    def __init__(self, code, rank):
        self.code, self.rank = code, rank
        super().__init__(f"stopped: rank {rank} failed")


def env_rank():
    """This process's rank as torchrun set it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def env_world_size():
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def quiet(error):
    """Whether this process should keep ``error`` to itself: on ranks other than 0, errors that
    every rank raises alike (before the ranks are joined) are printed by rank 0 alone; an error
    that an agreement found here is printed here."""
    return env_rank() > 0 and not getattr(error, "_report_here", False)


def rank_seed(seed, rank):
    """The seed of rank ``rank``'s noise in a run seeded ``seed``: well mixed (numpy's
    SeedSequence), different for every rank, the same on every machine and Python version."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _status(error):
    if error is None:
        return _OK
    if isinstance(error, NonFiniteLossError):
        return _NONFINITE
    if isinstance(error, UserError):
        return _USER
    if isinstance(error, KeyboardInterrupt) or type(error).__name__ == "Interrupted":
        return _INTERRUPT
    return _BUG


class _LossModule(nn.Module):
    """The loss as a module, for DDP: ``forward(xb, *args)`` is ``loss(xb, *args)``, summed over
    the batch; its parameters are ``model``'s. An empty share (a last global batch smaller than
    the number of ranks) gives 0 with a zero gradient for every parameter, as DDP requires; so
    does a loss that raises, kept in ``error`` for the next agreement, so that this rank's
    backward still meets the others' in DDP's allreduce."""

    def __init__(self, model, loss):
        super().__init__()
        self.model, self.loss = model, loss
        self.error = None

    def forward(self, xb, *args, **kwargs):
        if batch_size_of(xb):
            try:
                return self.loss(xb, *args, **kwargs)
            except Exception as e:  # noqa: BLE001  (kept for the next agreement)
                self.error = e
        return sum((p * 0).sum() for p in self.model.parameters() if p.requires_grad)


class World:
    """This process's place in the job, ``rank`` of ``size`` processes, and what the ranks do
    together."""

    def __init__(self, rank=0, size=1, local_rank=0, device=None):
        self.rank, self.size, self.local_rank, self.device = rank, size, local_rank, device
        self.order = None  # the generator of the permutations, alike on every rank
        self.stopped = False  # an agreement found a failure: no more collectives
        self.finished = False  # past the last collective of the job
        self.interrupted = False  # a signal deferred to the next agreement

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def joined(self):
        """Whether collectives are still to be held (more than one rank, none stopped)."""
        return self.size > 1 and not self.stopped and not self.finished

    # --- agreements --------------------------------------------------------------------------

    def agree(self, error=None):
        """Every rank calls this at the same point; each says whether it failed (``error``,
        or a deferred interrupt). If none did, returns. Otherwise every rank stops: the lowest
        rank that failed re-raises its ``error`` (if only interrupts: rank 0 re-raises its own
        ``error``, or without one raises KeyboardInterrupt, so that it saves the weights), the
        others raise :class:`PeerStopped`."""
        if not self.joined:
            if error is not None:
                raise error
            return
        mine = _status(error)
        if mine == _OK and self.interrupted:
            mine = _INTERRUPT
        status = torch.tensor([mine], dtype=torch.long, device=self._comm_device())
        gathered = [torch.zeros_like(status) for _ in range(self.size)]
        try:
            dist.all_gather(gathered, status)
        except Exception:
            self.stopped = True  # a peer died or timed out: the collective itself failed
            if error is not None:
                raise error
            raise
        codes = [int(s.item()) for s in gathered]
        if not any(codes):
            return
        self.stopped = True
        failed = [r for r, c in enumerate(codes) if c not in (_OK, _INTERRUPT)]
        reporter = failed[0] if failed else 0  # only interrupts: rank 0 says how to go on
        if reporter == self.rank:  # with its own error (the script's Interrupted, or a failure),
            error = error if error is not None else KeyboardInterrupt()  # else one that saves
            error._report_here = True
            raise error
        raise PeerStopped(_EXIT[codes[reporter]] if failed else 130, reporter)

    def in_turn(self, fn):
        """``fn()`` on rank 0, then (once it succeeded) on the others, their stderr (notices rank
        0 gave) dropped; returns its value. For work that may write shared files (a download)."""
        if self.size == 1:
            return fn()
        value = self._attempt(self.is_main, fn)  # both calls on every rank: agreements
        quiet = contextlib.redirect_stderr(io.StringIO()) if self.rank else contextlib.nullcontext()
        with quiet:  # the others' notices, which rank 0 gave, dropped
            later = self._attempt(not self.is_main, fn)
        return value if self.is_main else later

    def on_main(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on rank 0 only, then an agreement."""
        self._attempt(self.is_main, fn, *args, **kwargs)

    def _attempt(self, here, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` where ``here``, then (every rank) an agreement on its failure;
        returns its value (None where not ``here``)."""
        value, error = None, None
        if here:
            try:
                value = fn(*args, **kwargs)
            except BaseException as e:  # noqa: B036  (handed to the agreement)
                error = e
        self.agree(error)
        return value

    def finish(self):
        """The job's last collective: after it, rank 0 writes alone and the others are done."""
        self.agree()
        self.finished = True

    @contextlib.contextmanager
    def deferring_interrupts(self):
        """With several ranks, Ctrl-C and SIGTERM set a flag that the next agreement reads, so
        that every rank stops at the same step; an agreement on leaving normally."""
        if self.size == 1 or threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, lambda *_: setattr(self, "interrupted", True))
               for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
            self.agree()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    # --- data and numbers ----------------------------------------------------------------------

    def share(self, n):
        """This rank's contiguous share of ``n`` items, a slice: the first ``n % size`` ranks take
        ``n // size + 1``, the others ``n // size`` (as ``torch.tensor_split``)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def generator(self, seed, device):
        """Seed this rank and return its data generator (binarization, a DAE's noise): one
        process's ``torch.Generator(device).manual_seed(seed)``, torch's global one untouched;
        several ranks': torch's global and the data generator at :func:`rank_seed`, ``order``
        at ``seed`` alike on every rank. Call it after every rank built the same model."""
        if self.size == 1:
            return torch.Generator(device=device).manual_seed(seed)
        torch.manual_seed(rank_seed(seed, self.rank))  # also every CUDA device's
        self.order = torch.Generator(device=device).manual_seed(seed)
        return torch.Generator(device=device).manual_seed(rank_seed(seed, self.rank))

    def gather(self, obj):
        """Every rank's ``obj`` (picklable; tensors are moved to the CPU), in rank order."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def estimate(self, fn, x):
        """``fn(x)``, an :class:`~pyro_vae.estimators.Estimate` over the images ``x``, computed by
        each rank on its share, its per-image fields gathered in rank order (that of ``x``)."""
        if self.size == 1:
            return fn(x)
        share, mine = x[self.share(x.shape[0])], None
        if share.shape[0]:
            mine = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in vars(fn(share)).items()}
        parts = [p for p in self.gather(mine) if p is not None]
        return Estimate(**{k: torch.cat([p[k] for p in parts]) if torch.is_tensor(v) else v
                           for k, v in parts[0].items()})

    def steps(self, module, optimizer, batch_loss, check_every, device):
        """This rank's :class:`_RankSteps`, for :func:`pyro_vae.train.run_epochs`."""
        return _RankSteps(self, module, optimizer, batch_loss, check_every, device)

    def _comm_device(self):
        if self.size > 1 and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


class _RankSteps(Steps):
    """The training steps of one rank of several: its share of every global batch, its loss
    through DDP (:class:`_LossModule`) scaled by ranks / global batch, the rows summed over
    ranks, and an agreement at every check of the loss, where a failure kept on one rank stops
    all (the module doc, "Stopping together")."""

    def __init__(self, world, module, optimizer, batch_loss, check_every, device):
        super().__init__(module, optimizer, batch_loss, check_every, device)
        self.world, self.reports = world, world.is_main
        self.pending = None  # this rank's failure, not yet told to the others
        world.agree()  # DDP's constructor is a collective: it copies rank 0's weights to all
        on_gpu = world.device is not None and world.device.type == "cuda"
        self.ddp = DistributedDataParallel(_LossModule(module, batch_loss),
                                           device_ids=[world.local_rank] if on_gpu else None)

    def epochs_context(self):
        return self.world.deferring_interrupts()

    def batches(self, train, batch_size, *, binarize, generator):
        """This rank's share of each global batch of the epoch's permutation (drawn from
        ``world.order``), its images binarized from ``generator``, and the global batch's size."""
        n = batch_size_of(train)  # the global batches are of batch_size, the last of the rest
        return zip(batches(train, batch_size, binarize=binarize, generator=generator,
                           order=self.world.order, share=self.world.share),
                   (min(batch_size, n - start) for start in range(0, n, batch_size)))

    def step(self, batch, global_size, epoch, step, *, first, check):
        loss = None
        try:  # a failed rank runs the empty share (a zero loss) until the agreement
            if self.pending is not None:
                batch = rows(batch, slice(0, 0))
            loss = self.ddp(batch, epoch, first=first)  # summed, (,)
            error, self.ddp.module.error = self.ddp.module.error, None
            if self.pending is None:
                self.pending = error or self.nonfinite(loss, epoch, step, check)
        except Exception as e:  # noqa: BLE001  (handed to the agreement)
            self.pending = self.pending or e
        if check or loss is None:  # loss None: DDP's own forward failed, nothing to backpropagate
            self.world.agree(self.pending)  # raises if any rank failed
        try:
            self.optimizer.zero_grad(set_to_none=True)
            # DDP averages over ranks: size / B here makes it sum_r grad(loss_r) / B
            (loss * (self.world.size / global_size)).backward()
            if self.pending is None:
                self.optimizer.step()
        except Exception as e:  # noqa: BLE001  (handed to the next agreement)
            self.pending = self.pending or e
        return loss.detach() if self.pending is None else 0.0  # (a failed rank's is not summed)

    def means(self, total, seen, test_loss, test):
        """An agreement on a failure in the last steps or in ``test_loss`` on this rank's share of
        ``test``; then the sums over ranks of the losses (times the images of each share for
        the test loss) and of the images, divided."""
        error, self.pending = self.pending, None  # the last step's failure is told here
        n = batch_size_of(test)
        mine = self.world.share(n)
        test_sum = 0.0
        if error is None and mine.stop > mine.start:
            try:
                test_sum = test_loss(rows(test, mine)) * (mine.stop - mine.start)
            except Exception as e:  # noqa: BLE001  (handed to the agreement)
                error = e
        self.world.agree(error)
        sums = torch.tensor([float(total), float(seen), float(test_sum)], dtype=torch.float64,
                            device=self.world._comm_device())
        dist.all_reduce(sums)
        total, seen, test_sum = sums.tolist()
        return total / seen, test_sum / n, seen


# The process's world, once :func:`start` made it.
_current = None


def current():
    """The world :func:`start` made (a world of one before)."""
    return _current if _current is not None else World()


def start(device="auto", *, timeout=TIMEOUT):
    """Join this process to its job and return its :class:`World`: outside torchrun a world of
    one, nothing initialized; under torchrun the process group (gloo on the CPU, NCCL with one
    GPU per rank, ``cuda:LOCAL_RANK``), stdout to /dev/null on ranks other than 0."""
    global _current
    size = env_world_size()
    if size <= 1:
        _current = World()
        return _current
    dev = resolve_device(device)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        here, count = int(os.environ.get("LOCAL_WORLD_SIZE", size)), torch.cuda.device_count()
        if here > count or local >= count:  # every rank of this machine raises it alike
            error = RunError(f"{here} processes on this machine, but torch sees {count} CUDA "
                             "device(s): start at most that many with --nproc_per_node, or use "
                             "--device cpu")
            error._report_here = local == 0  # one rank of the machine says it (rank 0 here)
            raise error
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    _current = World(dist.get_rank(), dist.get_world_size(), local, dev)
    if not _current.is_main:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the life of the process)
    return _current


def close():
    """Leave the job: destroy the process group, forget the world."""
    global _current
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _current = None


@contextlib.contextmanager
def together():
    """The body of a script's ``main`` under torchrun: a rank that leaves it, by an error or at
    the end, first meets the others, so that a failure on one rank stops all of them; the
    process group is destroyed on the way out."""
    try:
        yield
        current().agree()
    except PeerStopped:
        raise
    except BaseException as e:  # noqa: B036  (told to the other ranks; agree raises it)
        current().agree(e)
        raise
    finally:
        close()
