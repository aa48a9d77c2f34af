"""Running one job's ranks from Python, without torchrun (:mod:`pyro_vae.distributed`):
:func:`launch` starts ``size`` processes on this machine with the environment torchrun would
set, for tests, benchmarks and notebooks."""

import io
import os
import socket
import time

import torch
import torch.multiprocessing as mp

from .distributed import close

__all__ = ["launch"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launched(rank, size, port, fn, args, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        result = ("ok", fn(*args))
    except BaseException as e:  # noqa: B036  (reported to the parent)
        result = ("error", type(e).__name__, str(e))
    finally:
        close()
    # as bytes: torch would share tensors through file descriptors that die with this process
    buffer = io.BytesIO()
    torch.save(result, buffer)
    queue.put((rank, buffer.getvalue()))


def launch(fn, size, *args, timeout=120):
    """Run ``fn(*args)`` in ``size`` new processes, ranks 0..size-1 of one job on this machine
    (what torchrun would set up, one torch thread each); ``fn`` must be importable (a module's
    top-level function) and calls :func:`pyro_vae.distributed.start` itself. Returns each rank's
    outcome in rank order: ``("ok", value)`` or ``("error", exception class name, message)``. A
    process still running after ``timeout`` seconds is killed and TimeoutError raised."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_launched, args=(r, size, port, fn, args, queue), daemon=True)
             for r in range(size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    results = {}
    while len(results) < size and time.monotonic() < deadline:
        if not queue.empty():
            rank, data = queue.get()
            results[rank] = torch.load(io.BytesIO(data), weights_only=False)
        elif all(not p.is_alive() for p in procs) and queue.empty():
            break
        else:
            time.sleep(0.05)
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()) if len(results) == size else 0)
        if p.is_alive():
            p.kill()
            p.join()
    if len(results) < size:
        missing = sorted(set(range(size)) - set(results))
        raise TimeoutError(f"ranks {missing} did not finish within {timeout} s")
    return [results[r] for r in range(size)]
