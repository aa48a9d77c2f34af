"""Train a deterministic (ae) or denoising (dae) autoencoder on the VAE's nets and likelihood.

    python scripts/train_baselines.py --model ae                        # runs/ae
    python scripts/train_baselines.py --model dae --noise salt-pepper --noise-level 0.3
    python scripts/train_baselines.py --model ae --arch conv --epochs 20 --out runs/conv-ae
    torchrun --standalone --nproc_per_node=4 scripts/train_baselines.py --model dae

The flags shared with train_svi.py mean the same there and here (data, networks, likelihood,
epochs, batch size, learning rate, seed, run directory, --resume); the loss is the VAE's
reconstruction term at the code z = e(x), -log p(x | z = e(x)). The run directory receives
config.json, metrics.csv / metrics.json, checkpoint_last.pt / checkpoint_best.pt, summary.json
(test -log p(x | z = e(x)) and PSNR; for a DAE, PSNR of noisy and denoised test images) and PNG
figures: loss curves, reconstructions, decoded random codes z ~ N(0, I), the latent space, and
for a DAE noisy / clean / denoised test images.
"""

import _startup  # noqa: F401  (first: a quiet Ctrl-C and writable caches during the imports)

import os
import sys
from dataclasses import dataclass

import torch

from _cli import (
    add_data_args, add_net_args, add_output_args, add_training_args, check_common,
    config_from_args, finish_run, interrupted_after_training, make_parser, parse_args,
    prepare_run, run_main, save_figures, start_run, training,
)
from pyro_vae.build import AUTOENCODER_OPTIONS, AUTOENCODERS, build_autoencoder
from pyro_vae.errors import ConfigError, lookup
from pyro_vae.latents import batched
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.noise import NOISES, make_noise, psnr
from pyro_vae.plots import plot_curves, plot_image_grid, plot_image_rows, plot_latents
from pyro_vae.runs import RUN_FILES, write_json
from pyro_vae.train import fit_autoencoder, lr_schedule

PROG = "train_baselines.py"
FIGURES = ("loss_curves.png", "reconstructions.png", "random_samples.png", "latent_space.png")
DAE_FIGURES = ("denoising.png",)


@dataclass
class Config:
    model: str = "ae"  # ae (deterministic) | dae (denoising)
    dataset: str = "mnist"  # a name from pyro_vae.data.DATASETS, or an .npz path
    data_root: str = "data"  # folder of the IDX files (root/MNIST/raw, ...)
    download: bool = True  # try to download the dataset when it is not under data_root
    binarize: str = "dynamic"  # dynamic | static | none, as for the VAE
    arch: str = "mlp"  # encoder/decoder networks, from pyro_vae.nets.NETS
    latent_dim: int = 50  # size of the code z
    hidden_dim: int = 400  # width of the hidden layer(s)
    depth: int = 1  # hidden layers in each of encoder and decoder
    activation: str = "silu"  # from pyro_vae.nets.ACTIVATIONS
    likelihood: str = "auto"  # p(x|z) of the decoder, from LIKELIHOODS; auto: bernoulli for
    # binarized data, gaussian (fixed sigma 0.1: squared error, scaled) for grey levels
    noise: str = "gaussian"  # the DAE's corruption, from pyro_vae.noise.NOISES
    noise_level: float = 0.5  # sigma for gaussian, p for salt-pepper and mask
    epochs: int = 100  # passes over the training set
    batch_size: int = 100  # images per step
    lr: float = 5e-3  # Adam learning rate
    lr_cooldown: float = 0.2  # fraction of the last steps over which the rate falls to 0
    seed: int = 0  # seeds torch and the minibatch/noise stream
    device: str = "auto"  # auto | cpu | cuda
    out: str = ""  # the run directory; empty: runs/<model>


def build_parser():
    d = Config()
    p = make_parser(PROG, __doc__)
    add_data_args(p, d)
    g = p.add_argument_group("model")
    g.add_argument("--model", default=d.model, help="ae (deterministic) or dae (denoising) "
                   "(default: %(default)s)")
    add_net_args(g, d)
    g.add_argument("--likelihood", default=d.likelihood,
                   help=f"p(x|z), as for the VAE: {', '.join(LIKELIHOODS)}; the loss is "
                   "-log p(x | z = e(x)). auto: bernoulli (cross-entropy), or gaussian (squared "
                   "error / 0.02 + const) with --binarize none (default: %(default)s)")
    g.add_argument("--noise", default=d.noise, help=f"the DAE's corruption: {', '.join(NOISES)} "
                   "(default: %(default)s)")
    g.add_argument("--noise-level", type=float, default=d.noise_level,
                   help="sigma for gaussian, pixel probability for salt-pepper and mask "
                   "(default: %(default)s)")
    g = p.add_argument_group("training")
    add_training_args(g, d)
    add_output_args(p, d)
    return p


def check_config(cfg):
    lookup(AUTOENCODERS, "--model", cfg.model)
    check_common(cfg)
    lookup(("auto", *LIKELIHOODS), "--likelihood", cfg.likelihood)
    lookup(NOISES, "--noise", cfg.noise)
    try:
        make_noise(cfg.noise, cfg.noise_level)
    except ConfigError as e:
        raise ConfigError(f"--noise-level: {e}") from None
    if cfg.likelihood == "auto":
        cfg.likelihood = "gaussian" if cfg.binarize == "none" else "bernoulli"
    cfg.out = cfg.out or os.path.join("runs", cfg.model)


def outputs(cfg):
    """Every file the run writes in ``cfg.out``."""
    return RUN_FILES + FIGURES + (DAE_FIGURES if cfg.model == "dae" else ())


def figures(ae, data, history, cfg, device):
    """The run's figures, ``{file name: Figure}``."""
    x = data.x_test[:10]
    gen = torch.Generator(device=device).manual_seed(0)
    z = torch.randn(100, ae.latent_dim, generator=gen, device=device)
    out = {
        "loss_curves.png": plot_curves(
            history, ylabel=f"-log p(x | z = e(x)), {cfg.likelihood} (nats per image)",
            title=f"{cfg.model.upper()} training curves"),
        "reconstructions.png": plot_image_rows([x, ae.reconstruct(x)],
                                               ["test image", "reconstruction"],
                                               "Test images and reconstructions"),
        "random_samples.png": plot_image_grid(ae.decode(z),
                                              "Decoder outputs at random codes z ~ N(0, I)"),
        "latent_space.png": plot_latents(batched(ae.encode, data.x_test), data.y_test,
                                         "Codes of test images"),
    }
    if ae.noise is not None:
        noisy = ae.noise(x, gen)
        out["denoising.png"] = plot_image_rows([noisy, x, ae.reconstruct(noisy)],
                                               ["noisy", "clean", "denoised"],
                                               f"Denoising, {ae.noise!r}")
    return out


@torch.no_grad()
def summarize(ae, data, cfg, device):
    """Test reconstruction error of clean images; for a DAE, PSNR before and after denoising."""
    x = data.x_test
    rec = batched(ae.reconstruct, x)
    losses = batched(lambda xb: ae.reconstruction_loss(xb, xb), x)
    summary = {"test_reconstruction_loss": float(losses.mean()), "likelihood": cfg.likelihood,
               "test_mse_per_pixel": float((rec - x).square().mean()),
               "test_psnr_clean": float(psnr(rec, x).mean()), "dataset_source": data.source}
    if ae.noise is not None:
        noisy = ae.noise(x, torch.Generator(device=device).manual_seed(1))
        denoised = batched(ae.reconstruct, noisy)
        summary.update(noise=repr(ae.noise), test_psnr_noisy=float(psnr(noisy, x).mean()),
                       test_psnr_denoised=float(psnr(denoised, x).mean()))
    return summary


def prepare(cfg, resume=False, overwrite=False):
    """Every check of a run, before anything is written: settings, run directory, data, the
    model's size, the data's support. Returns ``(device, data, ae)``; raises a UserError."""
    check_config(cfg)
    options = {k: getattr(cfg, k) for k in AUTOENCODER_OPTIONS}
    return prepare_run(cfg, resume, overwrite, outputs(cfg), build_autoencoder, options)


def run(cfg, resume_state=None, *, progress=True, overwrite=False):
    """Train (or continue, from the checkpoint state ``resume_state``) the AE or DAE run that
    ``cfg`` describes and write its run directory; returns the summary dict. Settings, run
    directory, data and model are checked before anything is written, as in train_svi.py.
    Under torchrun, one run over its processes (see pyro_vae.distributed)."""
    world, device, data, ae, optimizer, generator, recorder, start_epoch = start_run(
        cfg, resume_state, overwrite, prepare, outputs(cfg), "-log p(x|z)")
    what = f"{cfg.model.upper()}" + (f" with {ae.noise!r}" if ae.noise is not None else "")
    print(f"[{PROG}] {what}; {data.source}: {len(data.x_train)} train / {len(data.x_test)} test "
          f"images, device {device}, {sum(p.numel() for p in ae.parameters()):,} parameters")
    with training(recorder):
        fit_autoencoder(ae, optimizer, data.x_train, data.x_test, epochs=cfg.epochs,
                        batch_size=cfg.batch_size, binarize=cfg.binarize, generator=generator,
                        start_epoch=start_epoch, on_epoch=recorder, progress=progress,
                        world=world, lr_at=lr_schedule(cfg.lr, cfg.lr_cooldown))
    world.finish()  # the rest is rank 0's alone
    if not world.is_main:
        return None
    try:
        summary = evaluate_and_draw(cfg, ae, data, recorder.history, device)
    except KeyboardInterrupt:
        raise interrupted_after_training(cfg.epochs, cfg.out) from None
    finish_run(cfg.out)
    return summary


def evaluate_and_draw(cfg, ae, data, history, device):
    """What a run does once trained: test reconstruction (and denoising), summary.json, the
    figures."""
    ae.eval()
    summary = summarize(ae, data, cfg, device)
    summary["epochs"] = len(history)
    write_json(summary, os.path.join(cfg.out, "summary.json"))
    save_figures(figures(ae, data, history, cfg, device), cfg.out)
    line = (f"[{PROG}] test -log p(x | z = e(x)), {cfg.likelihood}: "
            f"{summary['test_reconstruction_loss']:.2f} nats per image, "
            f"PSNR {summary['test_psnr_clean']:.1f} dB")
    if ae.noise is not None:
        line += (f"; denoising {summary['test_psnr_noisy']:.1f} dB (noisy) -> "
                 f"{summary['test_psnr_denoised']:.1f} dB")
    print(line)
    print(f"[{PROG}] wrote {cfg.out}/")
    return summary


def main(argv=None):
    args, explicit = parse_args(build_parser, argv)

    def body():
        cfg, resume_state, overwrite = config_from_args(Config, args, explicit, AUTOENCODERS,
                                                        PROG, outputs)
        run(cfg, resume_state, progress=not args.quiet, overwrite=overwrite)

    return run_main(PROG, body, processes=True)


if __name__ == "__main__":
    sys.exit(main())
