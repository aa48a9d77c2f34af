"""Train a VAE on MNIST-like images with Pyro's SVI and write a run directory.

    python scripts/train_svi.py                       # MLP VAE on MNIST, ~1 minute on 2 CPU cores
    python scripts/train_svi.py --arch conv --epochs 20 --out runs/conv
    python scripts/train_svi.py --resume runs/svi --epochs 150
    python scripts/train_svi.py --model m2 --labels 100 --out runs/m2   # semi-supervised
    python scripts/train_svi.py --model cvae --observed-quadrants 1 --out runs/cvae
    torchrun --standalone --nproc_per_node=4 scripts/train_svi.py   # one run over 4 processes

The run directory (--out) receives config.json, metrics.csv / metrics.json (one row per epoch),
checkpoint_last.pt / checkpoint_best.pt, summary.json (the test log-likelihood estimate) and PNG
figures: training curves, reconstructions, prior samples and the latent space; with --model m2
also test_accuracy and baseline_accuracy in summary.json, accuracy.png (per epoch, against the
baseline) and class_styles.png (the styles of test digits drawn as every class); with --model
cvae, test log p(x_miss | x_obs) against the deterministic network's in summary.json and
completions.png in place of prior_samples.png.
"""

import _startup  # noqa: F401  (first: a quiet Ctrl-C and writable caches during the imports)

import os
import sys
from dataclasses import dataclass

import torch


from _cli import (
    add_data_args, add_net_args, add_output_args, add_training_args, check_common,
    check_positive, check_positive_finite, config_from_args, finish_run,
    interrupted_after_training, make_parser, parse_args, prepare_run, run_main, save_figures,
    start_run, training,
)
from pyro_vae import distributed
from pyro_vae.build import (
    CVAE_OPTIONS, M2_OPTIONS, STOCHASTIC_LAYERS, VAE_MODELS, VAE_OPTIONS, build_completion_net,
    build_cvae, build_m2, build_vae,
)
from pyro_vae.classifier import fit_classifier
from pyro_vae.data import choose_labelled, semi_supervised
from pyro_vae.encoders import ENCODERS
from pyro_vae.errors import CheckpointError, ConfigError, DataError, RunError, lookup
from pyro_vae.estimators import KHAT_THRESHOLD, log_likelihood
from pyro_vae.latents import batched
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.plots import plot_curves, plot_image_grid, plot_image_rows, plot_latents
from pyro_vae.priors import PRIORS
from pyro_vae.runs import RUN_FILES, write_json
from pyro_vae.train import (
    ELBOS, NonFiniteLossError, fit, fit_autoencoder, kl_schedule, lr_schedule, make_elbo,
)

PROG = "train_svi.py"
FIGURES = ("elbo_curves.png", "reconstructions.png", "prior_samples.png", "latent_space.png")
M2_FIGURES = ("accuracy.png", "class_styles.png")
CVAE_FIGURES = ("elbo_curves.png", "reconstructions.png", "completions.png", "latent_space.png")
# --model: vae (pyro_vae.vae), m2 (pyro_vae.semisupervised), cvae (pyro_vae.conditional)
MODELS = tuple(VAE_MODELS)
# what M2 and the CVAE take of the VAE's settings; the others must stay at their defaults
FIXED = {"m2": {"stochastic_layers": 1, "prior": "normal", "posterior": "diagonal",
                "elbo": "trace", "num_particles": 1},
         "cvae": {"stochastic_layers": 1, "prior": "normal", "posterior": "diagonal"}}
WHY_FIXED = {"m2": "its q(z|x,y) is diagonal, p(z) standard normal, one layer, and y is summed "
                   "out by TraceEnum_ELBO",
             "cvae": "its p(z|x_obs) and q(z|x) are diagonal Gaussian networks, one layer"}


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
    model: str = "vae"  # vae | m2 (semi-supervised, Kingma et al. 2014) | cvae (completion)
    labels: int = 0  # m2: labelled training images, balanced over the classes (100 if unset)
    alpha: float = 50.0  # m2: weight of -log q(y|x) on each labelled image
    num_classes: int = 0  # m2: classes in the data (set from the labels)
    observed_quadrants: int = 0  # cvae: quadrants observed, 1 to 3 (1 if unset)


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
    g = p.add_argument_group("structured models (--model m2, --model cvae)")
    g.add_argument("--model", default=d.model,
                   help=f"{', '.join(MODELS)}: m2 is p(y) p(z) p(x|y,z) with y enumerated for "
                   "unlabelled images; cvae completes images from their observed quadrants "
                   "(default: %(default)s)")
    g.add_argument("--labels", type=int, default=None,
                   help="labelled training images, a multiple of the classes, balanced over "
                   "them and chosen by --seed; the rest unlabelled (default: 100)")
    g.add_argument("--alpha", type=float, default=d.alpha,
                   help="weight of -log q(y|x) on labelled images, Kingma et al.'s alpha "
                   "(default: %(default)s)")
    g.add_argument("--observed-quadrants", type=int, default=None,
                   help="--model cvae: quadrants observed (top-left, then top-right, then "
                   "bottom-left), 1 to 3; the rest is completed (default: 1)")
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
    lookup(MODELS, "--model", cfg.model)
    # None: not given (the model's default); 0: what a run of another model records
    if cfg.model != "m2" and cfg.labels:
        raise ConfigError("--labels is for the semi-supervised --model m2")
    if cfg.model != "cvae" and cfg.observed_quadrants:
        raise ConfigError("--observed-quadrants is for the conditional --model cvae")
    cfg.labels = (100 if cfg.model == "m2" else 0) if cfg.labels is None else cfg.labels
    if cfg.observed_quadrants is None:
        cfg.observed_quadrants = 1 if cfg.model == "cvae" else 0
    for name, value in FIXED.get(cfg.model, {}).items():
        if getattr(cfg, name) != value:
            raise ConfigError(f"--model {cfg.model} takes --{name.replace('_', '-')} {value} "
                              f"only (got {getattr(cfg, name)}): {WHY_FIXED[cfg.model]}")
    if cfg.model == "m2":
        check_positive(cfg, ("labels",))
        check_positive_finite(cfg, ("alpha",))
    if cfg.model == "cvae":
        if cfg.observed_quadrants not in (1, 2, 3):
            raise ConfigError(f"--observed-quadrants must be 1, 2 or 3 (0 would hide "
                              f"everything, 4 nothing), got {cfg.observed_quadrants}")


def outputs(cfg):
    """Every file the run writes in ``cfg.out``."""
    if cfg.model == "cvae":
        return RUN_FILES + CVAE_FIGURES
    return RUN_FILES + FIGURES + (M2_FIGURES if cfg.model == "m2" else ())


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


def check_labels_for(cfg, data):
    """M2's checks of the data's labels, before any training: labels there, and enough of each
    class for ``--labels``. Sets ``cfg.num_classes``."""
    labelled = int((data.y_train >= 0).sum())
    if not labelled:
        raise DataError(f"{cfg.dataset} has no labels (y_train); --model m2 needs some")
    if not bool((data.y_test >= 0).any()):
        raise DataError(f"{cfg.dataset} has no test labels (y_test); --model m2 measures its "
                        "accuracy on them: save y_test too")
    c = data.num_classes
    if cfg.num_classes not in (0, c):
        raise CheckpointError(f"the run has {cfg.num_classes} classes but the data {c}")
    cfg.num_classes = c
    if cfg.labels % c or cfg.labels > labelled:
        raise ConfigError(f"--labels {cfg.labels} must be a multiple of the {c} classes and at "
                          f"most the {labelled} labelled training images")
    choose_labelled(data.y_train, cfg.labels, c, cfg.seed)  # a class too small: DataError


def prepare(cfg, resume=False, overwrite=False):
    """Every check of a run, before anything is written: settings, run directory, data, the
    model's size, the data's support. Returns ``(device, data, vae)``; raises a UserError."""
    check_config(cfg)
    if cfg.model == "cvae":
        options = {k: getattr(cfg, k) for k in CVAE_OPTIONS}
        return prepare_run(cfg, resume, overwrite, outputs(cfg), build_cvae, options,
                           particles=cfg.num_particles)
    if cfg.model == "m2":
        options = {k: getattr(cfg, k) for k in M2_OPTIONS if k != "num_classes"}
        build = lambda shape, **o: build_m2(shape, **o, num_classes=cfg.num_classes)  # noqa
        return prepare_run(cfg, resume, overwrite, outputs(cfg), build, options,
                           check_data=lambda data: check_labels_for(cfg, data))
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
        cfg, resume_state, overwrite, prepare, outputs(cfg),
        "loss" if cfg.model == "m2" else "-ELBO")  # M2's: -ELBO + alpha x cross-entropy
    loss = make_elbo(cfg.elbo, cfg.num_particles, vae.max_plate_nesting)
    print(f"[{PROG}] {data.source}: {len(data.x_train)} train / {len(data.x_test)} test images, "
          f"device {device}, {sum(p.numel() for p in vae.parameters()):,} parameters")
    train, test, on_epoch = data.x_train, data.x_test, recorder
    if cfg.model == "m2":
        train, test, on_epoch = semi_supervised_data(cfg, data, vae, recorder, world)
    with training(recorder):
        fit(vae, loss, optimizer, train, test, epochs=cfg.epochs,
            batch_size=cfg.batch_size, binarize=cfg.binarize, generator=generator,
            start_epoch=start_epoch, on_epoch=on_epoch, progress=progress,
            kl_weight=kl_schedule(cfg.beta, cfg.kl_warmup), world=world,
            lr_at=lr_schedule(cfg.lr, cfg.lr_cooldown))
    try:
        summary = evaluate_and_draw(cfg, vae, data, recorder.history, world)
    except KeyboardInterrupt:
        raise interrupted_after_training(cfg.epochs, cfg.out) from None
    if world.is_main:
        finish_run(cfg.out)
    return summary


def semi_supervised_data(cfg, data, m2, recorder, world):
    """M2's training fields (the chosen labels kept, the labelled images repeated to about half
    of every batch), its test fields (no labels: the test loss is -U(x), a bound on -log p(x)),
    and the recorder given each epoch's test accuracy."""
    chosen = choose_labelled(data.y_train, cfg.labels, cfg.num_classes, cfg.seed)
    train = semi_supervised(data.x_train, data.y_train, chosen)
    test = {"x": data.x_test, "y": torch.full_like(data.y_test, -1)}
    print(f"[{PROG}] M2: {cfg.labels} labelled training images ({cfg.labels // cfg.num_classes} "
          f"per class), {len(data.y_train) - cfg.labels} unlabelled; the labelled repeated to "
          f"{len(train['y']) - len(data.y_train) + cfg.labels} of the {len(train['y'])} rows "
          "of an epoch")

    def on_epoch(row):  # rank 0 measures (an agreement: a failure there stops every rank)
        accuracy = {}
        world.on_main(lambda: accuracy.update(a=m2.accuracy(data.x_test, data.y_test)))
        recorder({**row, "test_accuracy": accuracy.get("a")})

    return train, test, on_epoch


def label_baseline(cfg, data, device):
    """The supervised baseline (pyro_vae.classifier.fit_classifier): M2's classifier net,
    fresh, trained with the same optimizer on the labelled images alone, its pixels binarized
    afresh every epoch as M2's are. Returns its accuracy on the labelled test images."""
    chosen = choose_labelled(data.y_train, cfg.labels, cfg.num_classes, cfg.seed)
    net = build_m2(data.image_shape, **{k: getattr(cfg, k) for k in M2_OPTIONS}).classifier
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    net, epochs = fit_classifier(net.to(device), data.x_train[chosen], data.y_train[chosen],
                                 lr=cfg.lr, generator=generator,
                                 binarize=cfg.binarize == "dynamic")
    keep = data.y_test >= 0
    with torch.no_grad():
        right = sum(int((net(xb).argmax(-1) == yb).sum())
                    for xb, yb in zip(data.x_test[keep].split(1000), data.y_test[keep].split(1000)))
    return right / int(keep.sum()), epochs


def m2_figures(m2, data, history, baseline):
    x = data.x_test[:8]
    classes = torch.arange(m2.num_classes, device=x.device)
    y = m2.classify(x).probs.argmax(-1)
    z = m2.style_posterior(x, y).mean  # (8, latent): each test digit's style
    rows = [torch.cat([x[i:i + 1], m2.decode_class(z[i].expand(len(classes), -1), classes)])
            for i in range(len(x))]
    accuracy = plot_curves(history, keys=("test_accuracy",), ylabel="test accuracy",
                           title="M2's classifier q(y|x) on the test digits")
    accuracy.axes[0].axhline(baseline, color="k", linestyle="--",
                             label=f"the classifier net on the labels alone ({baseline:.3f})")
    accuracy.axes[0].legend()
    styles = plot_image_rows(rows, [f"digit {i + 1}" for i in range(len(x))],
                             "Test digits (left) and their style z drawn as every class 0..9")
    return dict(zip(M2_FIGURES, (accuracy, styles)))


def completion_baseline(cfg, data, device, x_eval):
    """The CVAE's deterministic counterpart (pyro_vae.conditional.CompletionNet), trained by the
    autoencoders' loop for as many epochs on the same data. Returns it and its per-image
    log p(x_miss | x_obs) on ``x_eval``."""
    net = build_completion_net(data.image_shape,
                               **{k: getattr(cfg, k) for k in CVAE_OPTIONS}).to(device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    print(f"[{PROG}] training the deterministic completion network ({cfg.epochs} epochs) ...")
    try:
        fit_autoencoder(net, torch.optim.Adam(net.parameters(), lr=cfg.lr), data.x_train,
                        data.x_test, epochs=cfg.epochs, batch_size=cfg.batch_size,
                        binarize=cfg.binarize, generator=generator, progress=False,
                        lr_at=lr_schedule(cfg.lr, cfg.lr_cooldown))
    except NonFiniteLossError as e:  # the CVAE is trained and saved: say whose loss it was
        raise RunError(f"the deterministic completion network's {e}; the CVAE's training is "
                       f"complete in {cfg.out}: finish the run with --resume {cfg.out} --lr "
                       f"{cfg.lr / 10:g}") from None
    net.eval()
    with torch.no_grad():
        per_image = torch.cat([net(xb).log_prob(xb) for xb in x_eval.split(1000)])
    return net, per_image.cpu()


def cvae_figures(cvae, net, data, history):
    x = data.x_test[:10]
    shown = torch.where(cvae.observed, x, torch.full_like(x, 0.5))  # the hidden part grey
    rows = [shown, x, net.complete(x), *cvae.complete(x, 3)]
    return dict(zip(CVAE_FIGURES, (
        plot_curves(history, ylabel="-ELBO of the missing part (nats per image)"),
        plot_image_rows([x, cvae.reconstruct(x)], ["test image", "reconstruction"],
                        "Test images and their reconstructions through q(z|x)"),
        plot_image_rows(rows, ["observed", "truth", "network", "CVAE draw 1", "CVAE draw 2",
                               "CVAE draw 3"],
                        "Completions: the network's guess; CVAE draws z ~ p(z | x_obs)"),
        plot_latents(batched(cvae.encode, data.x_test), data.y_test,
                     "Posterior means E[z|x] of test images"),
    )))


def evaluate_and_draw(cfg, vae, data, history, world=None):
    """What a run does once trained: the test log p(x), summary.json, the figures. With a
    ``world`` of several processes, each estimates log p(x) on its share of the images and rank
    0 writes (the others return None)."""
    world = world or distributed.current()
    vae.eval()
    x_eval = data.x_test[: cfg.eval_images]
    print(f"[{PROG}] estimating {'log p(x_miss | x_obs)' if cfg.model == 'cvae' else 'log p(x)'} "
          f"on {len(x_eval)} test images with "
          f"{cfg.eval_samples} importance samples each ...")
    est = world.estimate(lambda x: log_likelihood(vae.model, vae.guide, x,
                                                  num_samples=cfg.eval_samples, batch_size=100),
                         x_eval)
    world.finish()
    if not world.is_main:
        return None
    summary = {f"test_loglik_{k}": v for k, v in est.summary().items()}
    summary.update(epochs=len(history), dataset_source=data.source)
    drawn = figures(vae, data, history) if cfg.model != "cvae" else {}
    if cfg.model == "cvae":
        net, base = completion_baseline(cfg, data, data.x_test.device, x_eval)
        summary.update(conditional="log p(x_miss | x_obs)",
                       observed_quadrants=cfg.observed_quadrants,
                       baseline_loglik_mean=base.mean().item(),
                       baseline_loglik_per_image=base.tolist())
        print(f"[{PROG}] test log p(x_miss | x_obs) of the deterministic network: "
              f"{base.mean():.2f}; the CVAE's IWAE bound on it below")
        drawn.update(cvae_figures(vae, net, data, history))
    if cfg.model == "m2":
        baseline, epochs = label_baseline(cfg, data, data.x_test.device)
        summary.update(test_accuracy=vae.accuracy(data.x_test, data.y_test),
                       baseline_accuracy=baseline, baseline_epochs=epochs, labels=cfg.labels)
        print(f"[{PROG}] test accuracy of q(y|x): {summary['test_accuracy']:.3f} with "
              f"{cfg.labels} labels; the classifier net trained on those labels alone: "
              f"{baseline:.3f}")
        drawn.update(m2_figures(vae, data, history, baseline))
    write_json(summary, os.path.join(cfg.out, "summary.json"))
    save_figures(drawn, cfg.out)
    unreliable = summary["test_loglik_frac_unreliable"]
    what = "log p(x_miss | x_obs)" if cfg.model == "cvae" else "log p(x)"
    print(f"[{PROG}] test {what} >= {est.mean:.2f} +- {est.stderr:.2f} nats per image "
          f"(IWAE, K={cfg.eval_samples}); ELBO {summary['test_loglik_elbo_mean']:.2f}; "
          + (f"{unreliable:.1%} of images with Pareto k-hat > {KHAT_THRESHOLD}"
             if unreliable is not None else "Pareto k-hat undefined (K < 21)"))
    print(f"[{PROG}] wrote {cfg.out}/: config.json metrics.csv metrics.json summary.json "
          f"checkpoint_last.pt checkpoint_best.pt {' '.join(drawn)}")
    return summary


def main(argv=None):
    args, explicit = parse_args(build_parser, argv)

    def body():
        cfg, resume_state, overwrite = config_from_args(Config, args, explicit, MODELS, PROG,
                                                        outputs)
        run(cfg, resume_state, progress=not args.quiet, overwrite=overwrite)

    return run_main(PROG, body, processes=True)


if __name__ == "__main__":
    sys.exit(main())
