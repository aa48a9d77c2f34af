"""Train a VAE on MNIST-like images with Pyro's SVI and write a run directory.

    python scripts/train_svi.py                       # MLP VAE on MNIST, ~1 minute on 2 CPU cores
    python scripts/train_svi.py --arch conv --epochs 20 --out runs/conv
    python scripts/train_svi.py --resume runs/svi --epochs 150
    torchrun --standalone --nproc_per_node=4 scripts/train_svi.py   # one run over 4 processes

The run directory (--out) receives config.json, metrics.csv / metrics.json (one row per epoch),
checkpoint_last.pt / checkpoint_best.pt, summary.json (the test log-likelihood estimate) and PNG
figures: training curves, reconstructions, prior samples and the latent space.
"""

import _startup  # noqa: F401  (first: a quiet Ctrl-C and writable caches during the imports)

import os
import sys
from dataclasses import dataclass


from _cli import (
    add_data_args, add_net_args, add_output_args, add_training_args, check_common,
    check_positive, check_positive_finite, config_from_args, failed_at,
    finish_run, interrupted_after_training, interrupted_in_training, make_parser, parse_args,
    prepare_run, run_main, save_figures, start_run,
)
from pyro_vae import distributed
from pyro_vae.build import STOCHASTIC_LAYERS, VAE_OPTIONS, build_vae
from pyro_vae.encoders import ENCODERS
from pyro_vae.errors import ConfigError, lookup
from pyro_vae.estimators import KHAT_THRESHOLD, log_likelihood
from pyro_vae.latents import batched
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.plots import plot_curves, plot_image_grid, plot_image_rows, plot_latents
from pyro_vae.priors import PRIORS
from pyro_vae.runs import RUN_FILES, write_json
from pyro_vae.train import ELBOS, NonFiniteLossError, fit, kl_schedule, lr_schedule, make_elbo

PROG = "train_svi.py"
FIGURES = ("elbo_curves.png", "reconstructions.png", "prior_samples.png", "latent_space.png")


@dataclass
class Config:
    dataset: str = "mnist"  # a name from pyro_vae.data.DATASETS
    data_root: str = "data"  # torchvision's root: MNIST is read from / downloaded to root/MNIST/raw
    download: bool = True  # try to download the dataset when it is not under data_root
    binarize: str = "dynamic"  # dynamic (fresh Bernoulli draw per batch) | static | none
    arch: str = "mlp"  # encoder/decoder networks, from pyro_vae.nets.NETS
    latent_dim: int = 50  # size of z
    hidden_dim: int = 400  # width of the hidden layer(s)
    depth: int = 1  # hidden layers in each of encoder and decoder
    activation: str = "silu"  # from pyro_vae.nets.ACTIVATIONS
    stochastic_layers: int = 1  # 1: VAE; 2: z2 -> z1 -> x (pyro_vae.hierarchical.TwoLayerVAE)
    prior: str = "normal"  # p(z), from pyro_vae.priors.PRIORS
    likelihood: str = "bernoulli"  # p(x|z), from pyro_vae.likelihoods.LIKELIHOODS
    posterior: str = "diagonal"  # q(z|x), from pyro_vae.encoders.ENCODERS
    elbo: str = "trace"  # training objective, from pyro_vae.train.ELBOS
    num_particles: int = 1  # samples of z per image in the training objective (K for iwae)
    beta: float = 1.0  # weight of the KL term (beta-VAE); 1 is the ELBO
    kl_warmup: int = 0  # epochs over which the KL weight rises linearly from 0 to beta
    epochs: int = 100  # passes over the training set
    batch_size: int = 100  # images per SVI step
    lr: float = 5e-3  # Adam learning rate
    lr_cooldown: float = 0.2  # fraction of the last steps over which the rate falls to 0
    seed: int = 0  # seeds Pyro/torch and the minibatch stream
    device: str = "auto"  # auto | cpu | cuda
    out: str = "runs/svi"  # the run directory
    eval_samples: int = 1000  # importance samples per image for the final test log p(x)
    eval_images: int = 1000  # test images in the final estimate (a prefix of the test set)


def build_parser():
    d = Config()
    p = make_parser(PROG, __doc__)
    add_data_args(p, d)
    g = p.add_argument_group("model")
    add_net_args(g, d)
    g.add_argument("--prior", default=d.prior, help=f"p(z): {', '.join(PRIORS)} (default: %(default)s)")
    g.add_argument("--likelihood", default=d.likelihood, help=f"p(x|z): {', '.join(LIKELIHOODS)} (default: %(default)s)")
    g.add_argument("--posterior", default=d.posterior, help=f"q(z|x): {', '.join(ENCODERS)} (default: %(default)s)")
    g.add_argument("--stochastic-layers", type=int, default=d.stochastic_layers,
                   help="1: z -> x; 2: z2 -> z1 -> x, z1 twice the size of --latent-dim, as in "
                   "the IWAE paper; --prior is p(z2), --posterior q(z1|x) (default: %(default)s)")
    g = p.add_argument_group("training")
    g.add_argument("--elbo", default=d.elbo, help=f"objective: {', '.join(ELBOS)} (default: %(default)s)")
    g.add_argument("--num-particles", type=int, default=d.num_particles, help="z samples per image per step (default: %(default)s)")
    g.add_argument("--beta", type=float, default=d.beta, help="KL weight, beta-VAE (default: %(default)s)")
    g.add_argument("--kl-warmup", type=int, default=d.kl_warmup,
                   help="epochs of linear KL warm-up from 0 to --beta (default: %(default)s)")
    add_training_args(g, d)
    g = add_output_args(p, d)
    g.add_argument("--eval-samples", type=int, default=d.eval_samples,
                   help="importance samples per test image for log p(x) (default: %(default)s)")
    g.add_argument("--eval-images", type=int, default=d.eval_images,
                   help="test images in the final log p(x) estimate (default: %(default)s)")
    return p


def check_config(cfg):
    """Raise ConfigError with a one-line message for settings no run can use."""
    check_common(cfg)
    for name, registry in (("prior", PRIORS), ("likelihood", LIKELIHOODS),
                           ("posterior", ENCODERS), ("elbo", ELBOS)):
        lookup(registry, f"--{name}", getattr(cfg, name))
    check_positive(cfg, ("num_particles", "eval_samples", "eval_images"))
    if cfg.stochastic_layers not in STOCHASTIC_LAYERS:
        raise ConfigError(f"--stochastic-layers must be 1 or 2, got {cfg.stochastic_layers}")
    check_positive_finite(cfg, ("beta",))
    if isinstance(cfg.kl_warmup, bool) or not isinstance(cfg.kl_warmup, int) or cfg.kl_warmup < 0:
        raise ConfigError(f"--kl-warmup must be zero or a positive number of epochs, "
                          f"got {cfg.kl_warmup}")


def outputs(cfg):
    """Every file the run writes in ``cfg.out``."""
    return RUN_FILES + FIGURES


def figures(vae, data, history):
    """The run's figures, ``{file name: Figure}`` (the names of :data:`FIGURES`)."""
    x = data.x_test[:10]
    return dict(zip(FIGURES, (
        plot_curves(history),
        plot_image_rows([x, vae.reconstruct(x)], ["test image", "reconstruction"],
                        "Test images and reconstructions"),
        plot_image_grid(vae.generate(100), "Decoder means at z ~ p(z)"),
        plot_latents(batched(vae.encode, data.x_test), data.y_test,
                     "Posterior means E[z|x] of test images"),
    )))


def prepare(cfg, resume=False, overwrite=False):
    """Every check of a run, before anything is written: settings, run directory, data, the
    model's size, the data's support. Returns ``(device, data, vae)``; raises a UserError."""
    check_config(cfg)
    options = {k: getattr(cfg, k) for k in VAE_OPTIONS}
    # flows cannot be built on the meta device; their few parameters are left out of the count
    meta = {**options, "prior": "normal" if cfg.prior == "flow" else cfg.prior,
            "posterior": "diagonal" if cfg.posterior == "flow" else cfg.posterior}
    return prepare_run(cfg, resume, overwrite, outputs(cfg), build_vae, options, meta,
                       cfg.num_particles)


def run(cfg, resume_state=None, *, progress=True, overwrite=False):
    """Train (or continue, from the checkpoint state ``resume_state``) the VAE run that ``cfg``
    describes and write its run directory; returns the summary dict. Settings, run directory,
    data and model are checked, in that order, before anything is written (a UserError names
    what is wrong). Under torchrun, one run over its processes (see pyro_vae.distributed)."""
    world, device, data, vae, optimizer, generator, recorder, start_epoch = start_run(
        cfg, resume_state, overwrite, prepare, outputs(cfg), "-ELBO")
    loss = make_elbo(cfg.elbo, cfg.num_particles, vae.max_plate_nesting)
    print(f"[{PROG}] {data.source}: {len(data.x_train)} train / {len(data.x_test)} test images, "
          f"device {device}, {sum(p.numel() for p in vae.parameters()):,} parameters")
    try:
        fit(vae, loss, optimizer, data.x_train, data.x_test, epochs=cfg.epochs,
            batch_size=cfg.batch_size, binarize=cfg.binarize, generator=generator,
            start_epoch=start_epoch, on_epoch=recorder, progress=progress,
            kl_weight=kl_schedule(cfg.beta, cfg.kl_warmup), world=world,
            lr_at=lr_schedule(cfg.lr, cfg.lr_cooldown))
    except KeyboardInterrupt:
        raise interrupted_in_training(recorder.save_interrupted(), recorder.last_epoch,
                                      cfg.out) from None
    except NonFiniteLossError as e:
        raise failed_at(e, recorder) from None
    try:
        summary = evaluate_and_draw(cfg, vae, data, recorder.history, world)
    except KeyboardInterrupt:
        raise interrupted_after_training(cfg.epochs, cfg.out) from None
    if world.is_main:
        finish_run(cfg.out)
    return summary


def evaluate_and_draw(cfg, vae, data, history, world=None):
    """What a run does once trained: the test log p(x), summary.json, the figures. With a
    ``world`` of several processes, each estimates log p(x) on its share of the images and rank
    0 writes (the others return None)."""
    world = world or distributed.current()
    vae.eval()
    x_eval = data.x_test[: cfg.eval_images]
    print(f"[{PROG}] estimating log p(x) on {len(x_eval)} test images with "
          f"{cfg.eval_samples} importance samples each ...")
    est = world.estimate(lambda x: log_likelihood(vae.model, vae.guide, x,
                                                  num_samples=cfg.eval_samples, batch_size=100),
                         x_eval)
    world.finish()
    if not world.is_main:
        return None
    summary = {f"test_loglik_{k}": v for k, v in est.summary().items()}
    summary.update(epochs=len(history), dataset_source=data.source)
    write_json(summary, os.path.join(cfg.out, "summary.json"))
    save_figures(figures(vae, data, history), cfg.out)
    unreliable = summary["test_loglik_frac_unreliable"]
    print(f"[{PROG}] test log p(x) >= {est.mean:.2f} +- {est.stderr:.2f} nats per image "
          f"(IWAE, K={cfg.eval_samples}); ELBO {summary['test_loglik_elbo_mean']:.2f}; "
          + (f"{unreliable:.1%} of images with Pareto k-hat > {KHAT_THRESHOLD}"
             if unreliable is not None else "Pareto k-hat undefined (K < 21)"))
    print(f"[{PROG}] wrote {cfg.out}/: config.json metrics.csv metrics.json summary.json "
          f"checkpoint_last.pt checkpoint_best.pt {' '.join(FIGURES)}")
    return summary


def main(argv=None):
    args, explicit = parse_args(build_parser, argv)

    def body():
        cfg, resume_state, overwrite = config_from_args(Config, args, explicit, ("vae",), PROG,
                                                        outputs)
        run(cfg, resume_state, progress=not args.quiet, overwrite=overwrite)

    return run_main(PROG, body, processes=True)


if __name__ == "__main__":
    sys.exit(main())
