"""Sizes that cannot be allocated, refused before allocating: models, training batches, arrays.

A size the user chose (``--hidden-dim 10**7``, an .npz whose header declares terabytes) would
otherwise end in a ``MemoryError`` or a swap storm after minutes of work. Where the size is
known beforehand it is compared here with the memory the device has free, and a
:class:`~pyro_vae.errors.ConfigError` / :class:`~pyro_vae.errors.DataError` names the setting.
"""

import math
import os

import torch

from .errors import ConfigError

__all__ = ["available_memory", "check_model_size", "format_bytes"]

# bytes per parameter while training with Adam: weights, gradients, two moment estimates (float32)
_TRAINING_BYTES_PER_PARAMETER = 16


def available_memory(device="cpu"):
    """Bytes the ``device`` can still allocate: CUDA's free memory; on the host the smaller of
    MemAvailable (Linux; else the physical memory) and what this process's own limit leaves
    (``ulimit -v``: RLIMIT_AS less the address space already mapped)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return min(_host_available(), _process_headroom())


def _host_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return math.inf


def _process_headroom():
    """RLIMIT_AS (soft) less this process's mapped address space (VmSize), or inf."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):
        return math.inf
    if limit == resource.RLIM_INFINITY or limit < 0:
        return math.inf
    used = 0
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except OSError:
        pass
    return max(limit - used, 0)


def format_bytes(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def check_model_size(build, *, activations_per_item, items, settings, device="cpu"):
    """Refuse (ConfigError naming ``settings``, e.g. ``"--hidden-dim 10000000"``) a model whose
    training would need more memory than ``device`` has free.

    ``build()`` makes the model; it is called on torch's ``meta`` device, so nothing is
    allocated. The estimate: 16 bytes per parameter (weights, gradients, Adam's two moments) plus
    4 bytes x ``activations_per_item`` x ``items`` (images x particles in one step). Returns the
    number of parameters.
    """
    with torch.device("meta"):
        model = build()
    params = sum(p.numel() for p in model.parameters())
    need = params * _TRAINING_BYTES_PER_PARAMETER + 4 * activations_per_item * items
    free = available_memory(device)
    if need > free:
        raise ConfigError(
            f"{settings} makes a model of {params:,} parameters that needs about "
            f"{format_bytes(need)} to train, more than the {format_bytes(free)} free on "
            f"{torch.device(device).type}; choose smaller sizes")
    return params
