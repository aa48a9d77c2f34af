"""Compare an AE, a DAE and a VAE of equal size on the same data; write a Markdown report with figures.

    python scripts/compare.py                                  # trains all three, ~4 minutes
    python scripts/compare.py --vae runs/svi --ae runs/ae --dae runs/dae   # loads trained runs
    python scripts/compare.py --epochs 20 --arch conv --out runs/compare-conv

Models not given as run directories are trained here with train_svi.py / train_baselines.py and
the flags below (their run directories go under --out). The report (--out/report.md) measures:
reconstruction of test images; denoising PSNR for each noise model at several levels; digits
generated from random codes (AE and DAE: z ~ N(0, I) and z from a Gaussian fitted to the training
codes; VAE: z ~ p(z)), scored by a small digit classifier trained here (confidence, class entropy,
Frechet distance to held-out digits); and interpolations between test images in each latent space.
"""

import _startup  # noqa: F401  (first: a quiet Ctrl-C and writable caches during the imports)

import dataclasses
import os
import sys
from dataclasses import dataclass

import torch

import train_baselines
import train_svi
from _cli import (
    Interrupted, add_data_args, add_net_args, add_training_args, check_common, check_positive,
    make_parser, run_main, save_figures,
)
from pyro_vae.autoencoders import fit_code_distribution
from pyro_vae.build import EARLIER_OPTIONS, autoencoder_from_checkpoint, vae_from_checkpoint
from pyro_vae.checkpoint import find_checkpoint, load_checkpoint
from pyro_vae.classifier import score_samples, train_classifier
from pyro_vae.data import load_dataset
from pyro_vae.errors import ConfigError, NonFiniteLossError, RunError, lookup
from pyro_vae.files import atomic_write
from pyro_vae.latents import batched, class_pairs, interpolate
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.noise import NOISES, make_noise, psnr
from pyro_vae.plots import plot_image_rows, plot_psnr
from pyro_vae.runs import check_out, prepare_run_dir, resolve_device, write_json

PROG = "compare.py"
# model -> (the script that trains it, its settings beyond those it shares by name with this
# script's Config, the loader of its checkpoints)
METHODS = {
    "ae": (train_baselines, {"model": "ae"}, autoencoder_from_checkpoint),
    "dae": (train_baselines, {"model": "dae"}, autoencoder_from_checkpoint),
    "vae": (train_svi, {"eval_samples": 100}, vae_from_checkpoint),
}
MODELS = tuple(METHODS)
# noise model -> levels at which denoising is measured
NOISE_LEVELS = {"gaussian": (0.25, 0.5, 0.75), "salt-pepper": (0.1, 0.2, 0.4),
                "mask": (0.25, 0.5, 0.75)}
# settings a loaded run must share with the others for the comparison to be fair
SHARED = ("dataset", "binarize", "arch", "latent_dim", "hidden_dim", "depth", "activation",
          "likelihood")
FIGURES = ("reconstructions.png", "denoising_psnr.png", "denoising.png", "samples.png",
           "interpolations.png")
REPORT_FILES = ("report.md", "comparison.json", *FIGURES)
# the report splits the test set in two halves (Frechet reference, scored real digits), and a
# Frechet distance needs two images on each side
MIN_TEST_IMAGES = 4


@dataclass
class Config:
    ae: str = ""  # run directory of a trained AE; empty: train one
    dae: str = ""  # run directory of a trained DAE; empty: train one
    vae: str = ""  # run directory of a trained VAE; empty: train one
    dataset: str = "mnist"  # data for models trained here (loaded runs bring their own)
    data_root: str = "data"
    download: bool = True
    binarize: str = "dynamic"
    arch: str = "mlp"
    latent_dim: int = 50
    hidden_dim: int = 400
    depth: int = 1
    activation: str = "silu"
    likelihood: str = "bernoulli"  # p(x|z) of all three: the VAE's, and the AEs' loss
    noise: str = "gaussian"  # the DAE's training noise, when trained here
    noise_level: float = 0.5
    epochs: int = 100  # for each model trained here
    batch_size: int = 100
    lr: float = 5e-3
    lr_cooldown: float = 0.2
    seed: int = 0
    device: str = "auto"
    classifier_epochs: int = 10  # epochs of the digit classifier that scores generated images
    out: str = "runs/compare"  # report.md, comparison.json, PNGs, and the runs trained here


def build_parser():
    d = Config()
    p = make_parser(PROG, __doc__)
    g = p.add_argument_group("trained runs to load (each optional)")
    for m in MODELS:
        g.add_argument(f"--{m}", default="", metavar="RUN_DIR", help=f"a {m.upper()} run directory")
    add_data_args(p, d)
    g = p.add_argument_group("models trained here")
    add_net_args(g, d)
    g.add_argument("--likelihood", default=d.likelihood,
                   help=f"p(x|z) of all three models: {', '.join(LIKELIHOODS)} "
                   "(default: %(default)s)")
    g.add_argument("--noise", default=d.noise, help="the DAE's training noise (default: %(default)s)")
    g.add_argument("--noise-level", type=float, default=d.noise_level, help="default: %(default)s")
    add_training_args(g, d)
    g = p.add_argument_group("report")
    g.add_argument("--classifier-epochs", type=int, default=d.classifier_epochs,
                   help="training epochs of the scoring classifier (default: %(default)s)")
    g.add_argument("--out", default=d.out, help="report directory (default: %(default)s)")
    g.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def sub_config(cfg, m):
    """The config of model ``m`` trained here: the settings its script shares with ``cfg``,
    those of :data:`METHODS`, and its folder under ``cfg.out``."""
    script, settings, _ = METHODS[m]
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(script.Config)
              if hasattr(cfg, f.name)}
    return script.Config(**{**shared, **settings, "out": os.path.join(cfg.out, m)})


def outputs(cfg):
    """Every file the comparison writes under ``cfg.out``: the report, and the run of each model
    trained here."""
    files = REPORT_FILES
    for m, (script, _, _) in METHODS.items():
        if not getattr(cfg, m):
            files += tuple(os.path.join(m, f) for f in script.outputs(sub_config(cfg, m)))
    return files


def load_given_runs(cfg):
    """The checkpoint states of the runs given as --ae / --dae / --vae, checked: each a run of
    its own model, and all, with the settings of the models to be trained here, alike in
    data and network size."""
    states = {}
    for m, (script, _, _) in METHODS.items():
        folder = getattr(cfg, m)
        if not folder:
            continue
        if not os.path.isdir(folder):
            raise RunError(f"--{m} {folder} is not a directory; pass a run directory written by "
                           f"{script.PROG}")
        states[m] = load_checkpoint(find_checkpoint(folder))
        kind = states[m]["config"].get("model", "vae")
        if kind != m:
            raise RunError(f"--{m} {folder} holds a run of model {kind!r}, not {m!r}; pass the "
                           "run directory of each model to its own flag")
    for key in SHARED:
        values = {m: states[m]["config"].get(key, EARLIER_OPTIONS.get(key)) if m in states
                  else getattr(cfg, key)
                  for m in MODELS}
        if len(set(map(str, values.values()))) > 1:
            listed = ", ".join(f"{m} {v}" for m, v in values.items())
            raise RunError(f"the runs differ in --{key.replace('_', '-')} ({listed}); compare "
                           "models trained on the same data with networks of the same size")
    return states


def report_data(dataset, binarize, cfg, device):
    """The data the report is measured on (as the models saw it, and in grey levels for the
    classifier), refused if the report cannot use them: no labels, too few test images."""
    data = load_dataset(dataset, cfg.data_root, download=cfg.download, binarize=binarize,
                        device=device)
    grey = load_dataset(dataset, cfg.data_root, download=cfg.download, binarize="none",
                        device=device)
    unlabelled = int((grey.y_train < 0).sum())
    if unlabelled == len(grey.y_train):
        raise RunError(f"{dataset} has no labels (y_train); the scoring classifier needs them")
    if len(grey.x_test) < MIN_TEST_IMAGES:
        raise RunError(f"{dataset} has {len(grey.x_test)} test images; the report needs at least "
                       f"{MIN_TEST_IMAGES} (half of them are the reference of its Frechet "
                       "distance)")
    if unlabelled or bool((grey.y_test < 0).any()):
        raise RunError(f"{dataset} has images without a label (-1 in y_train or y_test); the "
                       "scoring classifier needs a label for every image")
    return data, grey


def train_missing(cfg, progress, overwrite):
    """Train each model that no run directory was given for, with the script that trains it and
    the settings it shares with ``cfg``; returns {model: run_dir}."""
    runs = {}
    for m, (script, _, _) in METHODS.items():
        runs[m] = getattr(cfg, m) or os.path.join(cfg.out, m)
        if getattr(cfg, m):
            continue
        print(f"[{PROG}] training the {m.upper()} into {runs[m]}", flush=True)
        then = (f"(with {script.PROG}); then give the run to {PROG} with --{m} {runs[m]}")
        try:
            script.run(sub_config(cfg, m), progress=progress, overwrite=overwrite)
        except (RunError, Interrupted) as e:  # their "--resume" is the training script's
            raise type(e)(f"{e} {then}") from None
        except NonFiniteLossError as e:
            e.saved = f"{e.saved} {then}"
            raise
    return runs


def load_models(runs, data, device):
    """The three models, from their run directories."""
    states = {m: load_checkpoint(find_checkpoint(folder)) for m, folder in runs.items()}
    models = {m: load(states[m], data.image_shape).to(device).eval()
              for m, (_, _, load) in METHODS.items()}
    return models, {m: s["config"] for m, s in states.items()}


@torch.no_grad()
def reconstruction_table(models, x):
    """Per model: mean per-image cross-entropy (nats, for binary x), MSE per pixel, PSNR."""
    rows = {}
    for m, model in models.items():
        rec = batched(model.reconstruct, x)
        p = rec.clamp(1e-6, 1 - 1e-6)
        bce = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(-1)
        rows[m] = {"bce": float(bce.mean()), "mse": float((rec - x).square().mean()),
                   "psnr": float(psnr(rec, x).mean())}
    return rows


@torch.no_grad()
def denoising_table(models, x, device):
    """PSNR of the noisy input and of each model's reconstruction of it, per noise and level."""
    results, examples = {}, {}
    for i, (name, levels) in enumerate(NOISE_LEVELS.items()):
        results[name] = {"noisy input": []} | {m.upper(): [] for m in models}
        for level in levels:
            gen = torch.Generator(device=device).manual_seed(100 + i)
            noisy = make_noise(name, level)(x, gen)
            results[name]["noisy input"].append((level, float(psnr(noisy, x).mean())))
            outputs = {m: batched(model.reconstruct, noisy) for m, model in models.items()}
            for m, out in outputs.items():
                results[name][m.upper()].append((level, float(psnr(out, x).mean())))
            if level == levels[1]:
                examples[f"{name} {level}"] = (noisy[:8], {m: o[:8] for m, o in outputs.items()})
    return results, examples


@torch.no_grad()
def generation_table(models, data, grey, classifier, device, seed, binarize):
    """Classifier scores of decoded random codes, against held-out real digits.

    The grey test set is split in two: its first half is the reference of the Frechet distance,
    its second half is scored like a model ("real digits"), which calibrates every column."""
    half = len(grey.x_test) // 2
    reference, real = grey.x_test[:half], grey.x_test[half : 2 * half]
    n = len(real)
    gen = torch.Generator(device=device).manual_seed(seed)
    train = data.x_train[:5000]  # codes of (up to) 5,000 training images, as the AEs saw them
    if binarize == "dynamic":
        train = torch.bernoulli(train, generator=gen)
    samples = {"real digits (held out)": real}
    torch.manual_seed(seed)
    for m in ("ae", "dae"):
        ae = models[m]
        samples[f"{m.upper()}, z ~ N(0, I)"] = ae.decode(torch.randn(n, ae.latent_dim, device=device))
        fitted = fit_code_distribution(batched(ae.encode, train))
        samples[f"{m.upper()}, z ~ Gaussian fitted to codes"] = ae.decode(fitted.sample((n,)))
    samples["VAE, z ~ p(z)"] = models["vae"].generate(n)
    scores = {name: score_samples(classifier, x, reference) for name, x in samples.items()}
    return scores, samples


def interpolations(models, x, y, steps=9):
    """Decoded codes along straight lines between pairs of test images of different classes,
    one row per pair and model, and the rows' labels."""
    rows, names = [], []
    for i, j in class_pairs(y):
        for m, model in models.items():
            rows.append(interpolate(model, x[i], x[j], steps))
            names.append(f"{m.upper()} {int(y[i])}->{int(y[j])}")
    return rows, names


def theory_checks(recon, denoise, scores):
    """What theory predicts of the three models, each checked against the measurements: a list
    of (holds, statement, what it means when it does not hold)."""
    vae, ae_normal = scores["VAE, z ~ p(z)"], scores["AE, z ~ N(0, I)"]
    ae_fitted = scores["AE, z ~ Gaussian fitted to codes"]
    # (AE PSNR, DAE PSNR) at every noise and level
    pairs = [(a, d) for m in denoise.values() for (_, a), (_, d) in zip(m["AE"], m["DAE"])]
    dae_wins, levels = sum(d > a for a, d in pairs), len(pairs)
    return [
        (vae.frechet < ae_normal.frechet and vae.confidence > ae_normal.confidence,
         "VAE samples from its prior score better than AE samples from N(0, I) (lower Frechet "
         "distance, higher confidence): the KL term makes p(z) the distribution the decoder was "
         "trained on, and nothing tells an AE's codes where to lie.",
         "the VAE is undertrained or its KL term has collapsed; check its active units with "
         "scripts/evaluate.py."),
        (recon["ae"]["bce"] <= min(recon["dae"]["bce"], recon["vae"]["bce"]),
         "The AE reconstructs clean images best: it spends its whole code on reconstruction, "
         "the VAE pays for information in its code (KL) and the DAE learned to discard detail.",
         "the AE is undertrained or overfits; compare train and test losses in its metrics."),
        (dae_wins == levels,
         f"The DAE beats the AE on noisy inputs at every noise and level ({dae_wins} of "
         f"{levels}), including noises it was not trained on.",
         "noise far from the DAE's training noise can defeat it; train it on the noise you test."),
        (ae_fitted.frechet < vae.frechet,
         "An AE with a Gaussian fitted to its codes after training generates samples closer to "
         "the data than the VAE's prior samples (ex-post density estimation, Ghosh et al., 2020).",
         "a fitted Gaussian is a cruder density than the VAE's prior; the VAE's prior and decoder "
         "were trained together, so it wins here."),
    ]


def write_report(cfg, runs, recon, accuracy, denoise, scores, out):
    lines = ["# AE vs DAE vs VAE", "",
             f"Models: AE `{runs['ae']}`, DAE `{runs['dae']}`, VAE `{runs['vae']}` (same data, "
             "same encoder/decoder networks; the VAE's encoder has a second output head for the "
             "scale). Written by `scripts/compare.py`.", "",
             "## Reconstruction of clean test images", "",
             "| model | cross-entropy (nats/image) | MSE per pixel | PSNR (dB) |",
             "| --- | --- | --- | --- |"]
    for m, r in recon.items():
        lines.append(f"| {m.upper()} | {r['bce']:.2f} | {r['mse']:.4f} | {r['psnr']:.2f} |")
    lines += ["", "![reconstructions](reconstructions.png)", "",
              "## Denoising: mean PSNR (dB) against the clean test image", "",
              "| noise | level | noisy input | AE | DAE | VAE |", "| --- | --- | --- | --- | --- | --- |"]
    for noise, methods in denoise.items():
        for k, (level, noisy) in enumerate(methods["noisy input"]):
            vals = " | ".join(f"{methods[m.upper()][k][1]:.2f}" for m in MODELS)
            lines.append(f"| {noise} | {level} | {noisy:.2f} | {vals} |")
    lines += ["", "![PSNR against noise level](denoising_psnr.png)", "",
              "![noisy inputs and each model's output](denoising.png)", "",
              "## Generation from random latent vectors", "",
              f"Scored by a digit classifier trained here on the training images (test accuracy "
              f"{accuracy:.1%}): mean confidence max_c p(c|x), entropy of the predicted-class "
              "histogram (log 10 = 2.30 when all classes are equally frequent), Frechet distance "
              "of classifier features to held-out real digits (lower is closer).", "",
              "| samples | confidence | class entropy (nats) | Frechet distance |",
              "| --- | --- | --- | --- |"]
    for name, s in scores.items():
        lines.append(f"| {name} | {s.confidence:.3f} | {s.class_entropy:.3f} | {s.frechet:.2f} |")
    lines += ["", "![decoded random codes](samples.png)", "",
              "## Interpolations between test images", "",
              "![latent interpolations](interpolations.png)", "",
              "## What theory predicts, checked", ""]
    for holds, statement, otherwise in theory_checks(recon, denoise, scores):
        lines.append(f"- **{'holds' if holds else 'does not hold'}**: {statement}"
                     + ("" if holds else f" Here it does not: {otherwise}"))
    lines.append("")
    with atomic_write(os.path.join(out, "report.md")) as f:
        f.write("\n".join(lines))


def check_config(cfg):
    check_common(cfg)
    lookup(LIKELIHOODS, "--likelihood", cfg.likelihood)
    lookup(NOISES, "--noise", cfg.noise)
    try:
        make_noise(cfg.noise, cfg.noise_level)
    except ConfigError as e:
        raise ConfigError(f"--noise-level: {e}") from None
    check_positive(cfg, ("classifier_epochs",))


def run(cfg, *, progress=True, overwrite=False):
    """Train the models ``cfg`` gives no run directory for, load all three, and write the report
    and its figures to ``cfg.out``; settings and run directories are checked first."""
    check_config(cfg)
    device = resolve_device(cfg.device)
    check_out(cfg.out, outputs(cfg), overwrite, what="a report")
    states = load_given_runs(cfg)
    given = next(iter(states.values()), None)
    dataset, binarize = ((given["config"]["dataset"], given["config"]["binarize"]) if given
                         else (cfg.dataset, cfg.binarize))
    data, grey = report_data(dataset, binarize, cfg, device)
    for m, (script, _, _) in METHODS.items():  # every check of the runs to train, first
        if not getattr(cfg, m):
            script.prepare(sub_config(cfg, m), overwrite=overwrite)
    runs = train_missing(cfg, progress, overwrite)
    models, configs = load_models(runs, data, device)
    prepare_run_dir(cfg.out, outputs(cfg), overwrite=True)  # checked above
    x = data.x_test

    print(f"[{PROG}] reconstruction and denoising on {len(x)} test images ...", flush=True)
    recon = reconstruction_table(models, x)
    denoise, examples = denoising_table(models, x, device)
    rows, names = [], []
    for setting, (noisy, denoised) in examples.items():
        rows += [x[:8], noisy] + [denoised[m] for m in MODELS]
        names += ["clean", setting] + [m.upper() for m in MODELS]
    figures = {
        "reconstructions.png": plot_image_rows(
            [x[:10]] + [models[m].reconstruct(x[:10]) for m in MODELS],
            ["test image", *[m.upper() for m in MODELS]], "Reconstructions of test images"),
        "denoising_psnr.png": plot_psnr(denoise),
        "denoising.png": plot_image_rows(rows, names, "Clean, noisy, and each model's output"),
    }

    print(f"[{PROG}] training the scoring classifier ({cfg.classifier_epochs} epochs) ...",
          flush=True)
    clf = train_classifier(grey.x_train, grey.y_train, epochs=cfg.classifier_epochs,
                           seed=cfg.seed, progress=progress)
    accuracy = float((batched(clf, grey.x_test).argmax(-1) == grey.y_test).float().mean())
    scores, samples = generation_table(models, data, grey, clf, device, cfg.seed,
                                       configs["vae"]["binarize"])
    figures["samples.png"] = plot_image_rows([s[:10] for s in samples.values()], list(samples),
                                             "Decoded random codes")
    figures["interpolations.png"] = plot_image_rows(
        *interpolations(models, x, data.y_test),
        "Straight lines between the codes of two test images")
    save_figures(figures, cfg.out)

    result = {"runs": runs, "configs": configs, "reconstruction": recon,
              "denoising": denoise, "classifier_test_accuracy": accuracy,
              "generation": {k: dataclasses.asdict(v) for k, v in scores.items()}}
    write_json(result, os.path.join(cfg.out, "comparison.json"))
    write_report(cfg, runs, recon, accuracy, denoise, scores, cfg.out)
    print(f"[{PROG}] generation (confidence / class entropy / Frechet distance):")
    for name, s in scores.items():
        print(f"    {name:40s} {s.confidence:6.3f} {s.class_entropy:6.3f} {s.frechet:9.2f}")
    print(f"[{PROG}] wrote {cfg.out}/report.md, comparison.json and figures")


def main(argv=None):
    args = build_parser().parse_args(argv)

    def body():
        cfg = Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})
        run(cfg, progress=not args.quiet, overwrite=args.overwrite)

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
