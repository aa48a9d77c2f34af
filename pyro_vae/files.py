"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The content goes to a temporary file in the target's folder (so that the rename stays on one
file system), is flushed and fsynced, then renamed over the target with ``os.replace``, which is
atomic on POSIX and Windows. On any exception, Ctrl-C included, the temporary file is removed
and the target is left as it was; only a process killed outright leaves a ``.tmp-*`` file behind.
"""

import os
import tempfile
from contextlib import contextmanager

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path, mode="w", **kwargs):
    """``with atomic_write(path) as f:`` write to ``f``; ``path`` is replaced when the block
    ends without an exception. ``mode`` is ``"w"`` or ``"wb"``; ``kwargs`` go to ``open``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
