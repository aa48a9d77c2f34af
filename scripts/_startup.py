"""What every script does before its heavy imports (torch, Pyro, matplotlib, ArviZ).

- Ctrl-C or SIGTERM while they load (seconds) ends the program with one line and exit 130,
  not a traceback from deep inside an import; :func:`_cli.run_main` takes the signals over
  once the script's work begins.
- ArviZ writes a cache under ``~/.cache`` when imported, and matplotlib a config under
  ``~/.config``; with a HOME where nothing can be written, they are pointed at a temporary
  folder (removed at exit) instead of crashing the run after its training.

Only a script run as a program is affected: imported (by the tests, by compare.py), it changes
nothing.
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
    if _writable(os.path.join(cache, "arviz")) and _writable(config):
        return
    tmp = tempfile.mkdtemp(prefix="pyro_vae-cache-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    if not _writable(os.path.join(cache, "arviz")):
        os.environ["XDG_CACHE_HOME"] = tmp
    if not _writable(config):
        os.environ["MPLCONFIGDIR"] = tmp


if os.path.dirname(os.path.abspath(sys.argv[0] or ".")) == os.path.dirname(os.path.abspath(__file__)):
    signal.signal(signal.SIGINT, _quit)
    signal.signal(signal.SIGTERM, _quit)
    writable_caches()
