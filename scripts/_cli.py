"""What the training scripts share: common flags and their checks, --resume, and the error policy.

The policy of every script's ``main``: a user mistake (a :class:`~pyro_vae.errors.UserError`: bad
flag, bad data, unusable checkpoint or run directory) prints one line ``<prog>: error: <what is
wrong and what to do>`` and exits 2; a run that fails (a non-finite loss) exits 1 after saying
where its last good checkpoint is; Ctrl-C or SIGTERM saves the weights, says how to resume, and
exits 130. No traceback for any of them; any other exception is a bug and keeps its traceback.
Every check runs before the first training step; ``--resume`` finishes whatever a stopped run
lacks.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
from functools import partial

import matplotlib
import pyro
import torch

from pyro_vae import distributed
from pyro_vae.build import EARLIER_OPTIONS, fill_earlier
from pyro_vae.checkpoint import check_fields, load_checkpoint
from pyro_vae.data import BINARIZATIONS, DATASETS, is_dataset_file, load_dataset
from pyro_vae.errors import (CheckpointError, ConfigError, NonFiniteLossError, RunError,
                             UserError, lookup)
from pyro_vae.files import save_figure
from pyro_vae.nets import ACTIVATIONS, NETS
from pyro_vae.resources import check_model_size
from pyro_vae.runs import (DistributedRecorder, Recorder, check_out, lock_run_dir, prepare_run_dir,
                           release_locks, resolve_device, write_json)

matplotlib.use("Agg")  # the scripts write files; no display is needed or wanted


class Parser(argparse.ArgumentParser):
    """argparse with the scripts' error policy: a bad flag value is one line, not the usage."""

    def error(self, message):
        # under torchrun every rank parses the same flags: rank 0 says what is wrong
        self.exit(2, None if distributed.env_rank() else f"{self.prog}: error: {message}; see --help\n")


def make_parser(prog, doc):
    """A :class:`Parser` described by a script's docstring's first paragraph, the rest (the
    examples, what the script writes) its epilog."""
    first, _, rest = doc.partition("\n\n")
    return Parser(prog=prog, description=first, epilog=rest,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM, once what could be saved was; the message says what, and how to go on."""


@contextlib.contextmanager
def training(recorder):
    """A run's training: Ctrl-C saves the weights and says how to go on (:class:`Interrupted`);
    a :class:`NonFiniteLossError` says what the run kept, its last good checkpoint or nothing."""
    try:
        yield
    except KeyboardInterrupt:
        path, epoch, out = recorder.save_interrupted(), recorder.last_epoch, recorder.out
        then = (f"checkpoint_last.pt holds epoch {epoch}, continue with --resume {out}" if epoch
                else f"no epoch had finished; start it again with --resume {out}")
        raise Interrupted(f"the weights are saved in {path}; {then}") from None
    except NonFiniteLossError as e:
        epoch, out, lower = recorder.last_epoch, recorder.out, recorder.config["lr"] / 10
        e.saved = (f"the last good checkpoint, checkpoint_last.pt of epoch {epoch}, is kept: "
                   f"continue from it at a lower rate with --resume {out} --lr {lower:g}"
                   if epoch else "no epoch had finished, so no checkpoint was written")
        raise e from None


def interrupted_after_training(epochs, out):
    """The :class:`Interrupted` of a stop once training was over (evaluation, figures)."""
    return Interrupted(f"checkpoint_last.pt holds all {epochs} epochs; finish the evaluation, "
                       f"summary and figures with --resume {out}")


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
    g.add_argument("--depth", type=int, default=d.depth,
                   help="hidden layers in each of encoder and decoder (default: %(default)s)")
    g.add_argument("--activation", default=d.activation,
                   help=f"{', '.join(ACTIVATIONS)} (default: %(default)s)")


def add_training_args(g, d):
    g.add_argument("--epochs", type=int, default=d.epochs,
                   help="passes over the training set; with --resume, the new total (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="default: %(default)s")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default: %(default)s)")
    g.add_argument("--lr-cooldown", type=float, default=d.lr_cooldown,
                   help="fraction of the run's last steps over which the learning rate falls "
                   "linearly to 0; 0 keeps it constant (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    g.add_argument("--device", default=d.device, help="auto, cpu or cuda (default: %(default)s)")


def add_output_args(p, d):
    g = p.add_argument_group("output")
    g.add_argument("--out", default=d.out, help="run directory (default: %(default)s)")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR up to --epochs (default: its own), or finish "
                   "what it lacks (evaluation, summary, figures); --device, the evaluation "
                   "sizes and a lower --lr (after a NaN) may change, recorded in config.json; "
                   "its other settings come from its checkpoint, and a flag that differs from "
                   "them is refused")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return g


# Ceilings far beyond any run a machine could hold: an absurd size is one line, not an overflow
MAX_SIZE = 2**31 - 1
MAX_DEPTH = 100


def check_positive(cfg, names):
    """Each setting of ``names`` an integer in [1, MAX_SIZE] (``depth``: [1, MAX_DEPTH])."""
    for name in names:
        value = getattr(cfg, name)
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
        ceiling = MAX_DEPTH if name == "depth" else MAX_SIZE
        if value > ceiling:
            raise ConfigError(f"{flag} must be at most {ceiling:,}, got {value}")


def check_positive_finite(cfg, names):
    """Each setting of ``names`` a finite number > 0 (inf and NaN are refused)."""
    for name in names:
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be positive and finite, got {value}")


SEED_RANGE = 2**32  # numpy's and torch's generators take seeds in [0, 2**32)


def check_seed(value, flag="--seed"):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_RANGE:
        raise ConfigError(f"{flag} must be an integer in [0, 2**32), got {value}")


def check_common(cfg):
    """The checks of every training config: names, sizes, learning rate, seed; a dataset path is
    made absolute, so that --resume and evaluate.py find it from any folder."""
    if is_dataset_file(cfg.dataset):
        cfg.dataset = os.path.abspath(cfg.dataset)
    else:
        lookup(DATASETS, "--dataset", cfg.dataset)
    lookup(BINARIZATIONS, "--binarize", cfg.binarize)
    lookup(NETS, "--arch", cfg.arch)
    lookup(ACTIVATIONS, "--activation", cfg.activation)
    check_positive(cfg, ("epochs", "batch_size", "latent_dim", "hidden_dim", "depth"))
    check_positive_finite(cfg, ("lr",))
    if not (isinstance(cfg.lr_cooldown, (int, float)) and 0 <= cfg.lr_cooldown <= 1):
        raise ConfigError(f"--lr-cooldown must be a fraction in [0, 1], got {cfg.lr_cooldown}")
    check_seed(cfg.seed)


def parse_args(build_parser, argv):
    """``(args, explicit)``: the parsed flags, and the names of those on the command line (parsed
    again with every default a marker)."""
    args = build_parser().parse_args(argv)
    bare, unset = build_parser(), object()
    for action in bare._actions:
        action.default = unset
    return args, {k for k, v in vars(bare.parse_args(argv)).items() if v is not unset}


# What a train_svi.py run from before --model was: a VAE.
BEFORE_MODELS = {"model": "vae", "labels": 0, "alpha": 50.0, "num_classes": 0}
# ... and what one from before --model cvae (with --model m2) lacks
BEFORE_CVAE = {"observed_quadrants": 0}
# Flags --resume takes from the command line; every other setting comes from the run.
RESUME_SETTINGS = ("epochs", "device", "data_root", "download")
# Settings that change what happens next but not what was trained: --resume takes them from the
# command line when given, and records them in config.json.
CHANGEABLE_ON_RESUME = ("eval_samples", "eval_images")


def config_from_args(config_cls, args, explicit, model, script, outputs):
    """``(cfg, resume_state, overwrite)``: the run's config, with ``--resume`` its checkpoint
    state, and whether the run may replace files in its folder.

    A resumed run keeps its saved settings but ``epochs`` (default: its own), ``device``, where
    its data are read from and :data:`CHANGEABLE_ON_RESUME`; another flag that differs from the
    run's setting is refused. A run with all its epochs but lacking some of ``outputs(cfg)`` is
    finished; one stopped before its first epoch (no checkpoint) is started again in place."""
    if not args.resume:  # (getattr's default: num_classes has no flag)
        return config_cls(**{f.name: getattr(args, f.name, f.default)
                             for f in dataclasses.fields(config_cls)}), None, args.overwrite
    run_dir = args.resume
    if "overwrite" in explicit:
        raise ConfigError("--overwrite and --resume exclude each other: --resume continues the "
                          f"run in {run_dir} and replaces nothing")
    if "out" in explicit and os.path.abspath(args.out) != os.path.abspath(run_dir):
        raise ConfigError(f"--out {args.out} differs from --resume {run_dir}: a resumed run "
                          "stays in its folder; drop --out")
    last = os.path.join(run_dir, "checkpoint_last.pt")
    config_path = os.path.join(run_dir, "config.json")
    trained = [f for f in ("checkpoint_best.pt", "metrics.json")
               if os.path.exists(os.path.join(run_dir, f))]
    if os.path.isfile(last) or not os.path.isfile(config_path):
        try:
            state = load_checkpoint(last, resume=True)
        except CheckpointError as e:
            if "checkpoint_best.pt" not in trained or not os.path.isfile(last):
                raise
            raise CheckpointError(f"{e}; checkpoint_best.pt is there: to resume from its epoch, "
                                  f"copy it over {last}") from None
        saved, where = dict(state["config"]), f"{last}: its config"
    elif trained:  # trained weights or metrics, but no checkpoint_last.pt: files disagree
        raise CheckpointError(
            f"{run_dir} holds {trained[0]} but no checkpoint_last.pt, so its files disagree; "
            "to resume from the best epoch, copy checkpoint_best.pt to checkpoint_last.pt; to "
            "start again, run without --resume and with --overwrite")
    else:  # stopped before its first epoch: start it again from its config
        state, saved, where = None, _read_config(config_path), config_path
    kind = saved.get("model", "vae")
    if kind not in model:
        raise CheckpointError(f"{run_dir} holds a run of {kind!r}; resume it with the script "
                              f"that made it, not {script}")
    # a run from before an option existed was trained without it: resume it as it was (each
    # group all or none: one from before --model, a VAE, lacks these alike)
    fields = {f.name: f.type for f in dataclasses.fields(config_cls)}
    for group in ({**EARLIER_OPTIONS, "lr_cooldown": 0.0}, BEFORE_MODELS, BEFORE_CVAE):
        saved = fill_earlier(saved, {k: v for k, v in group.items() if k in fields})
    check_fields(saved, {k: t for k, t in fields.items()
                         if k not in (*RESUME_SETTINGS, "out") and t in (str, int, float, bool)},
                 where)
    changed = {}
    for name in sorted(explicit & set(fields) - {*RESUME_SETTINGS, "out"}):
        lower_lr = (name == "lr" and isinstance(args.lr, (int, float))
                    and math.isfinite(args.lr) and 0 < args.lr < saved["lr"])
        if name in CHANGEABLE_ON_RESUME or lower_lr:  # a lower rate: how a run goes on after
            if getattr(args, name) != saved[name]:    # a NaN, from its last good epoch
                changed[name] = getattr(args, name)
            continue
        passed = getattr(args, name)
        if name == "dataset" and isinstance(passed, str) and is_dataset_file(passed):
            passed = os.path.abspath(passed)
        if passed != saved[name]:
            flag = "--" + name.replace("_", "-")
            lower = " (a lower --lr is taken: it continues a run after a NaN)" if name == "lr" \
                else ""
            raise ConfigError(f"{flag} {getattr(args, name)} differs from the run in {run_dir} "
                              f"({name} {saved[name]}); --resume keeps a run's settings: drop "
                              f"{flag}, or start a new run with another --out{lower}")
    saved = {k: v for k, v in saved.items() if k in fields}
    saved.update({k: getattr(args, k) for k in RESUME_SETTINGS if k != "epochs" or k in explicit},
                 out=run_dir)
    for name, value in changed.items():
        print(f"[{script}] --{name.replace('_', '-')} {value} from here on (the run had "
              f"{saved[name]}); recorded in config.json")
        saved[name] = value
    cfg = config_cls(**saved)
    if state is None:
        return cfg, None, True
    done = state["epoch"]
    missing = [f for f in outputs(cfg) if f != "checkpoint_interrupted.pt"
               and not os.path.exists(os.path.join(run_dir, f))]
    if cfg.epochs < done or (cfg.epochs == done and not missing):
        raise RunError(f"{run_dir} has already run {done} epochs; pass a larger --epochs to "
                       "continue it")
    if cfg.epochs == done:
        print(f"[{script}] {run_dir} has its {done} epochs; finishing what it lacks "
              f"({', '.join(missing)})")
    return cfg, state, False


def _read_config(path):
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable config ({e}); start the run again "
                              "with --overwrite") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds no settings; start the run again with --overwrite")
    return saved


def prepare_run(cfg, resume, overwrite, files, build, options, meta_options=None, particles=1,
                check_data=None):
    """A training run's checks after its settings', before anything is written: the run
    directory (without ``overwrite``, it holds none of ``files``, what the run writes), the
    data (and ``check_data(data)``, the model's own checks of them), the model's and a training
    batch's size against the memory free on the device (the model built on torch's meta device
    with ``meta_options``, default ``options``, and counted: pyro_vae.resources), the data's
    support (the test set, and the training set unless binarized afresh for every batch).
    Everything is seeded from ``cfg.seed`` before ``build(image_shape, **options)`` makes the
    model. Returns ``(device, data, model)``."""
    if not resume:
        check_out(cfg.out, files, overwrite)
    pyro.set_rng_seed(cfg.seed)
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_root, download=cfg.download,
                        binarize=cfg.binarize, device=device)
    if check_data is not None:
        check_data(data)
    # activations kept for the backward pass, per image and particle: the image through each
    # layer (64 channels of it for the conv nets), the hidden layers, the code
    per_item = (math.prod(data.image_shape) * (64 if cfg.arch == "conv" else 4)
                + 4 * cfg.hidden_dim * cfg.depth + 8 * cfg.latent_dim)
    settings = (f"--arch {cfg.arch} --hidden-dim {cfg.hidden_dim} --depth {cfg.depth} "
                f"--latent-dim {cfg.latent_dim} --batch-size {cfg.batch_size}"
                + (f" --num-particles {particles}" if particles > 1 else "")
                + f" on {'x'.join(map(str, data.image_shape))} images")
    check_model_size(lambda: build(data.image_shape, **(meta_options or options)),
                     activations_per_item=per_item, settings=settings, device=device,
                     items=min(cfg.batch_size, len(data.x_train)) * particles)
    model = build(data.image_shape, **options).to(device)
    model.likelihood.check_data(data.x_test, "test set")
    if cfg.binarize != "dynamic":
        model.likelihood.check_data(data.x_train, "training set")
    return device, data, model


def start_run(cfg, resume_state, overwrite, prepare, files, loss_label):
    """The start of every training run, in the order that matters: join the job (torchrun);
    ``prepare(cfg, resume, overwrite)`` checks settings, run directory, data and model before
    anything is written, and builds the model from the seed (rank 0 first: it may download);
    rank 0 makes the run directory (only now, so that a refused run leaves no folder behind)
    and locks it (:func:`~pyro_vae.runs.lock_run_dir`: a second process writing it is refused
    before it writes anything); then the optimizer, and only then the data generator (several
    ranks re-seed torch per rank, which must come after every rank built the same model); the
    recorder restores a resumed run's states (refusing a checkpoint of another number of
    processes); config.json is written. Returns ``(world, device, data, model, optimizer,
    generator, recorder, start_epoch)``."""
    resume = resume_state is not None
    world = distributed.start(cfg.device)
    device, data, model = world.in_turn(lambda: prepare(cfg, resume, overwrite))
    if not resume:
        world.on_main(prepare_run_dir, cfg.out, files, overwrite=overwrite)
    world.on_main(lock_run_dir, cfg.out)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    generator = world.generator(cfg.seed, device)
    config = dataclasses.asdict(cfg)
    recorder_of = Recorder if world.size == 1 else partial(DistributedRecorder, world)
    recorder = recorder_of(cfg.out, model, optimizer, config, generator, epochs=cfg.epochs,
                           loss_label=loss_label)
    start_epoch = recorder.resume(resume_state) if resume else 0
    world.on_main(write_json, config, os.path.join(cfg.out, "config.json"))
    return world, device, data, model, optimizer, generator, recorder, start_epoch


def finish_run(out):
    """After a run's last output is written: a stale ``checkpoint_interrupted.pt`` goes."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(out, "checkpoint_interrupted.pt"))


def save_figures(figures, out):
    """Write each figure of ``{file name: Figure}`` to ``out`` as a PNG."""
    for name, fig in figures.items():
        save_figure(fig, os.path.join(out, name))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _say(error, line):
    """Print ``line`` to stderr, unless another rank of a torchrun job prints it."""
    if not distributed.quiet(error):
        print(line, file=sys.stderr)


def run_main(prog, body, *, processes=False):
    """Call ``body()`` under the error policy above, SIGTERM handled as Ctrl-C; returns the exit
    code (``body``'s if it returns an int). ``processes``: the script runs as one job over the
    processes torchrun starts (:mod:`pyro_vae.distributed`), a failure on one rank stopping
    all, one rank saying why; without it, a script under torchrun is refused."""
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, handler) for sig, handler in (
            (signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _raise_interrupt))}
    try:
        if not processes and distributed.env_world_size() > 1:
            raise RunError(f"{prog} runs in one process; start it with python, not torchrun")
        with distributed.together() if processes else contextlib.nullcontext():
            code = body()
    except distributed.PeerStopped as e:  # another rank failed and says why
        return e.code
    except UserError as e:  # not ValueError: a bug inside keeps its traceback
        _say(e, f"{prog}: error: {e}")
        return 2
    except NonFiniteLossError as e:
        saved = getattr(e, "saved", "the last good checkpoint is kept in the run directory")
        _say(e, f"{prog}: error: {e}; {saved}")
        return 1
    except Interrupted as e:
        _say(e, f"{prog}: interrupted: {e}")
        return 130
    except KeyboardInterrupt as e:
        _say(e, f"{prog}: interrupted; files already written are kept")
        return 130
    finally:
        release_locks()  # (a process that dies releases them too)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return code or 0
