"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The content goes to a temporary file in the target's folder (so that the rename stays on one
file system), is flushed and fsynced, then renamed over the target with ``os.replace``, which is
atomic on POSIX and Windows. On any exception, Ctrl-C included, the temporary file is removed
and the target is left as it was; only a process killed outright leaves a ``.tmp-*`` file behind.
The file gets the mode any file the user writes gets (0666 less the umask), not the 0600 of a
temporary file; a file system that refuses the write (disk full, read-only, no permission, a
file-size limit) is a :class:`~pyro_vae.errors.RunError` naming the file, also where the writer
turns the ``OSError`` into its own error (``torch.save``'s zip writer raises ``RuntimeError``,
a ``SIGXFSZ`` left ignored gives ``EFBIG``). Every file the project writes goes through here:
checkpoints, JSON and CSV, figures (:func:`save_figure`).
"""

import os
import tempfile
from contextlib import contextmanager

from .errors import RunError

__all__ = ["atomic_write", "file_mode", "save_figure"]

# What torch's zip writer says when the file system refuses a write (it hides the OSError).
_WRITER_FAILURES = ("PytorchStreamWriter failed", "unexpected pos", "file write failed")


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
        if isinstance(e, RuntimeError) and any(m in str(e) for m in _WRITER_FAILURES):
            raise _write_error(path, _disk_error(folder)) from None
        raise


def _disk_error(folder):
    """The likeliest reason a writer that hid its OSError failed: no space left, or not."""
    try:
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < 1 << 20:
            return OSError(28, "no space left on device")
    except OSError:
        pass
    return OSError(5, "the write failed: the disk is full or a file-size limit was reached")


def save_figure(fig, path, dpi=120):
    """Write a matplotlib figure as a PNG through :func:`atomic_write`: a full disk leaves no
    0-byte image, and is one :class:`~pyro_vae.errors.RunError`."""
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


def _write_error(path, e):
    return RunError(f"cannot write {path} ({e.strerror or e}); free some space or choose a "
                    "writable folder, then run again")
