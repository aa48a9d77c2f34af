"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The content goes to a temporary file in the target's folder (so that the rename stays on one
file system), is flushed and fsynced, then renamed over the target with ``os.replace``, which is
atomic on POSIX and Windows. On any exception, Ctrl-C included, the temporary file is removed
and the target is left as it was; only a process killed outright leaves a ``.tmp-*`` file behind.
The file gets the mode any file the user writes gets (0666 less the umask), not the 0600 of a
temporary file; a file system that refuses the write (disk full, read-only, no permission) is a
:class:`~pyro_vae.errors.RunError` naming the file.
"""

import os
import tempfile
from contextlib import contextmanager

from .errors import RunError

__all__ = ["atomic_write", "file_mode"]


def file_mode():
    """0666 less the process's umask: the mode ``open(path, "w")`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path, mode="w", **kwargs):
    """``with atomic_write(path) as f:`` write to ``f``; ``path`` is replaced when the block
    ends without an exception. ``mode`` is ``"w"`` or ``"wb"``; ``kwargs`` go to ``open``."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    except OSError as e:
        raise _write_error(path, e) from None
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise _write_error(path, e) from None
        raise


def _write_error(path, e):
    return RunError(f"cannot write {path} ({e.strerror or e}); free some space or choose a "
                    "writable folder, then run again")
