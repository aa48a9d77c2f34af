"""What every script run as a program does before its heavy imports (torch, Pyro, matplotlib,
ArviZ); imported (by the tests, by compare.py), it changes nothing.

- Ctrl-C or SIGTERM while they load (seconds) ends the program with one line and exit 130, not
  a traceback from inside an import; :func:`_cli.run_main` takes the signals over later.
- ArviZ's cache (``~/.cache``) and matplotlib's config (``~/.config``) go to a temporary folder,
  removed at exit, where HOME's cannot be written, instead of crashing the run after training.
"""

import atexit
import os
import shutil
import signal
import sys
import tempfile


def _quit(signum, frame):
    prog = os.path.basename(sys.argv[0])
    sys.stderr.write(f"{prog}: interrupted while starting; nothing was written\n")
    sys.stderr.flush()
    os._exit(130)


def _writable(folder):
    try:
        os.makedirs(folder, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=folder))
        return True
    except OSError:
        return False


def writable_caches():
    """Point ArviZ's cache and matplotlib's config at a temporary folder where HOME's cannot be
    written."""
    home = os.path.expanduser("~")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    config = os.environ.get("MPLCONFIGDIR") or os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "matplotlib")
    unwritable = [var for var, folder in (("XDG_CACHE_HOME", os.path.join(cache, "arviz")),
                                          ("MPLCONFIGDIR", config)) if not _writable(folder)]
    if unwritable:
        tmp = tempfile.mkdtemp(prefix="pyro_vae-cache-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        os.environ.update(dict.fromkeys(unwritable, tmp))


if os.path.dirname(os.path.abspath(sys.argv[0] or ".")) == os.path.dirname(os.path.abspath(__file__)):
    signal.signal(signal.SIGINT, _quit)
    signal.signal(signal.SIGTERM, _quit)
    writable_caches()
