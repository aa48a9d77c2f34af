"""What the training scripts share: common flags and their checks, --resume, and the error policy.

The policy of every script's ``main``: a user mistake (a :class:`~pyro_vae.errors.UserError`: bad
flag, bad data, unusable checkpoint or run directory) prints one line ``<prog>: error: <what is wrong and what to do>`` and exits 2; a
run that fails (a non-finite loss) exits 1 after saying where its last good checkpoint is;
Ctrl-C saves the weights, says how to resume, and exits 130. No traceback for any of them; any
other exception is a bug and keeps its traceback.
"""

import argparse
import dataclasses
import os
import sys

import matplotlib
import pyro

from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.data import BINARIZATIONS, DATASETS, is_dataset_file
from pyro_vae.errors import CheckpointError, ConfigError, RunError, UserError, lookup
from pyro_vae.nets import NETS
from pyro_vae.runs import check_run_dir, prepare_run_dir
from pyro_vae.train import NonFiniteLossError

matplotlib.use("Agg")  # the scripts write files; no display is needed or wanted


class Parser(argparse.ArgumentParser):
    """argparse with the scripts' error policy: a bad flag value is one line, not the usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see --help\n")


def make_parser(prog, doc):
    """A :class:`Parser` whose description is the first paragraph of a script's docstring and
    whose epilog is the rest: the examples, and what the script writes."""
    first, _, rest = doc.partition("\n\n")
    return Parser(prog=prog, description=first, epilog=rest,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


class Interrupted(Exception):
    """Ctrl-C during training, after the weights were saved to ``path``."""

    def __init__(self, path, epoch):
        self.path, self.epoch = path, epoch


def add_data_args(p, d):
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=d.dataset,
                   help=f"{', '.join(DATASETS)}, or the path of an .npz file with x_train, x_test "
                   "(N, H, W) or (N, C, H, W), uint8 or floats in [0, 1], optional y_train, "
                   "y_test (default: %(default)s)")
    g.add_argument("--data-root", default=d.data_root,
                   help="folder of the IDX files: root/MNIST/raw, root/FashionMNIST/raw "
                   "(default: %(default)s)")
    g.add_argument("--no-download", dest="download", action="store_false",
                   help="never try the network; use what is under --data-root or the offline subset")
    g.add_argument("--binarize", default=d.binarize,
                   help=f"one of {', '.join(BINARIZATIONS)} (default: %(default)s)")


def add_net_args(g, d):
    g.add_argument("--arch", default=d.arch, help=f"networks: {', '.join(NETS)} (default: %(default)s)")
    g.add_argument("--latent-dim", type=int, default=d.latent_dim, help="size of z (default: %(default)s)")
    g.add_argument("--hidden-dim", type=int, default=d.hidden_dim, help="hidden width (default: %(default)s)")


def add_training_args(g, d):
    g.add_argument("--epochs", type=int, default=d.epochs,
                   help="passes over the training set; with --resume, the new total (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="default: %(default)s")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: %(default)s)")


def add_output_args(p, d):
    g = p.add_argument_group("output")
    g.add_argument("--out", default=d.out, help="run directory (default: %(default)s)")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR up to --epochs; its other settings come from "
                   "its checkpoint")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return g


def check_positive(cfg, names):
    for name in names:
        value = getattr(cfg, name)
        if value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


def check_common(cfg):
    """The checks every training config needs: names, sizes, learning rate."""
    if not is_dataset_file(cfg.dataset):
        lookup(DATASETS, "--dataset", cfg.dataset)
    lookup(BINARIZATIONS, "--binarize", cfg.binarize)
    lookup(NETS, "--arch", cfg.arch)
    check_positive(cfg, ("epochs", "batch_size", "latent_dim", "hidden_dim"))
    if not cfg.lr > 0:
        raise ConfigError(f"--lr must be positive, got {cfg.lr}")


def check_support(likelihood, data, binarize):
    """Refuse data outside ``likelihood``'s support before any training (DataError naming the
    likelihood and what to do): the test set, and the training set unless it is binarized
    afresh for every batch."""
    likelihood.check_data(data.x_test, "test set")
    if binarize != "dynamic":
        likelihood.check_data(data.x_train, "training set")


def config_from_args(config_cls, args, model, script):
    """The run's config and, with ``--resume``, its checkpoint state. A resumed run keeps its
    saved settings except ``epochs``, ``device`` and where its data are read from."""
    if not args.resume:
        cfg = config_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)})
        return cfg, None
    state = load_checkpoint(os.path.join(args.resume, "checkpoint_last.pt"))
    saved = dict(state["config"])
    if saved.get("model", "vae") not in model:
        raise CheckpointError(f"{args.resume} holds a run of {saved.get('model', 'vae')!r}; "
                              f"resume it with the script that made it, not {script}")
    names = {f.name for f in dataclasses.fields(config_cls)}
    saved = {k: v for k, v in saved.items() if k in names}
    saved.update(epochs=args.epochs, out=args.resume, device=args.device,
                 data_root=args.data_root, download=args.download)
    cfg = config_cls(**saved)
    if cfg.epochs <= state["epoch"]:
        raise RunError(f"{args.resume} has already run {state['epoch']} epochs; pass a larger "
                       "--epochs to continue it")
    return cfg, state


def start(cfg, resume, overwrite):
    """Check the run directory (refusing a finished run without ``overwrite``) and seed
    everything from ``cfg.seed``; called before the data are loaded and the model is built."""
    if not resume:
        check_run_dir(cfg.out, overwrite)
    pyro.set_rng_seed(cfg.seed)


def claim_run_dir(cfg, resume, overwrite):
    """Create the run directory, once the data and the model have passed their checks, so that
    a refused run leaves no folder behind."""
    if not resume:
        prepare_run_dir(cfg.out, overwrite=overwrite)


def save_figures(figures, out):
    """Write each figure of ``{file name: Figure}`` to ``out`` as a PNG."""
    for name, fig in figures.items():
        fig.savefig(os.path.join(out, name), dpi=120)


def run_main(prog, body):
    """Call ``body()`` under the error policy above; returns the exit code (``body``'s return
    value if it returns an int, e.g. that of a training script it ran)."""
    try:
        code = body()
    except UserError as e:  # not ValueError: a bug inside keeps its traceback
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"{prog}: error: {e}; the last good checkpoint is kept in the run directory",
              file=sys.stderr)
        return 1
    except Interrupted as e:
        run_dir = os.path.dirname(e.path)
        then = (f"checkpoint_last.pt holds epoch {e.epoch}, continue with --resume {run_dir}"
                if e.epoch else "no epoch had finished, so start again with --overwrite")
        print(f"{prog}: interrupted: the weights are saved in {e.path}; {then}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted outside training; files already written are kept",
              file=sys.stderr)
        return 130
    return code or 0
