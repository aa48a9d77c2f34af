"""Matplotlib figures of a run: curves, image grids, latent scatter, bounds, diagnostics.

Each function draws and returns a :class:`matplotlib.figure.Figure`; saving it, and choosing a
backend, is the caller's business (the scripts write PNGs, a notebook shows the figure it gets
back). Figures are made with ``Figure()``, not pyplot, so that nothing here needs a backend or
keeps figures alive; a function that draws one panel also accepts ``ax=`` (e.g. one panel of a
notebook's ``plt.subplots``) and then returns that panel's figure.

Images are tensors ``(N, C, H, W)`` in [0, 1]; the grids are drawn with ``torchvision.utils``.
"""

import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

__all__ = [
    "plot_bound_curve",
    "plot_comparison",
    "plot_curves",
    "plot_image_grid",
    "plot_image_rows",
    "plot_inference_gaps",
    "plot_khat",
    "plot_kl_per_dimension",
    "plot_latents",
    "plot_psnr",
    "plot_sandwich",
]


def _axes(ax, figsize):
    """``(figure, ax)``: the given panel and its figure, or a new figure of one panel."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="tight")
    return fig, fig.subplots()


def _grid(images, nrow):
    # (N, C, H, W) -> (H', W', C) numpy for imshow; single channel shown in grey
    grid = make_grid(images.detach().cpu().float().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    return grid.permute(1, 2, 0).numpy()


def plot_curves(history, keys=("train_loss", "test_loss"), ylabel="-ELBO (nats per image)",
                title="Training curves", ax=None):
    """One line per key of the per-epoch ``history`` rows, against the epoch."""
    fig, ax = _axes(ax, (6, 4))
    epochs = [row["epoch"] for row in history]
    for key in keys:
        ax.plot(epochs, [row[key] for row in history], marker="o", label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_image_grid(images, title="", nrow=10, ax=None):
    """A grid of images, ``nrow`` to a row, with a title."""
    fig, ax = _axes(ax, (nrow * 0.6 + 1, (len(images) + nrow - 1) // nrow * 0.6 + 1))
    ax.imshow(_grid(images, nrow), cmap="gray", interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
    return fig


def plot_image_rows(rows, labels, title=""):
    """Equal-length batches of images shown as labelled rows (e.g. originals over reconstructions)."""
    n = len(rows[0])
    fig = Figure(figsize=(n * 0.6 + 1.5, len(rows) * 0.8 + 0.6), layout="tight")
    axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
    for ax, images, label in zip(axes, rows, labels):
        ax.imshow(_grid(images, n), cmap="gray", interpolation="nearest")
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_title(title)
    return fig


def plot_latents(codes, labels, title="Test latent means", ax=None):
    """Scatter of codes ``(N, D)`` coloured by label; for D > 2, the first two principal axes."""
    codes = codes.detach().cpu().float()
    if codes.shape[1] > 2:
        centred = codes - codes.mean(0)
        _, s, v = torch.linalg.svd(centred, full_matrices=False)
        xy = centred @ v[:2].T
        explained = (s[:2] ** 2 / (s**2).sum()).tolist()
        axis = [f"PC{i + 1} ({e:.0%} of variance)" for i, e in enumerate(explained)]
    else:
        xy = codes if codes.shape[1] == 2 else torch.cat([codes, torch.zeros_like(codes)], 1)
        axis = ["z1", "z2"]
    fig, ax = _axes(ax, (6, 5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels.cpu(), cmap="tab10", s=6, alpha=0.8)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="label")
    ax.set_xlabel(axis[0])
    ax.set_ylabel(axis[1])
    ax.set_title(title)
    return fig


def plot_bound_curve(curve, exact=None, title="Importance-weighted bounds",
                     label="mean IWAE$_K$ (K=1: ELBO)", ax=None):
    """Mean IWAE_K against K (log axis), with standard errors over images; ``curve`` maps K to an
    :class:`~pyro_vae.estimators.Estimate`. K = 1 is the ELBO. ``exact``: a reference line.
    Several curves go on one panel by passing the same ``ax`` with different ``label``."""
    ks = sorted(curve)
    means = [curve[k].mean for k in ks]
    errs = [curve[k].stderr for k in ks]
    fig, ax = _axes(ax, (6, 4))
    ax.errorbar(ks, means, yerr=errs, marker="o", capsize=3, label=label)
    if exact is not None:
        ax.axhline(exact, color="k", linestyle="--", label="exact log p(x)")
    ax.set_xscale("log")
    ax.set_xlabel("K (importance samples per image)")
    ax.set_ylabel("nats per image")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def plot_khat(khat, threshold=0.7, title="Pareto k-hat of the importance weights", ax=None):
    """ArviZ's k-hat plot: one point per image, bands at 0.5 / 0.7 / 1."""
    import warnings

    import arviz as az

    fig, ax = _axes(ax, (6, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's notices about its own refactor
        az.plot_khat(khat.detach().cpu().numpy(), show_bins=True, ax=ax)
    ax.set_xlabel("test image")
    ax.set_title(f"{title}: {float((khat > threshold).float().mean()):.0%} above {threshold}")
    return fig


def plot_kl_per_dimension(kl, activity, threshold=0.01, ax=None):
    """Bars of E_x KL(q(z_d|x) || p(z_d)) per dimension, sorted, active units highlighted."""
    order = torch.argsort(kl, descending=True)
    active = (activity > threshold)[order]
    fig, ax = _axes(ax, (max(6, len(kl) * 0.15), 4))
    colours = ["tab:blue" if a else "tab:grey" for a in active.tolist()]
    ax.bar(range(len(kl)), kl[order].numpy(), color=colours)
    ax.set_xlabel("latent dimension (sorted by KL)")
    ax.set_ylabel("KL (nats)")
    ax.set_title(f"KL per latent dimension: {int(active.sum())} of {len(kl)} active "
                 f"(Cov_x E[z_d|x] > {threshold})")
    return fig


def plot_psnr(results, title="Denoising: PSNR against noise level"):
    """One panel per noise model: mean PSNR (dB) against the noise level, one line per method.

    ``results[noise][method]`` is a list of ``(level, psnr)`` pairs; ``method`` "noisy input" is
    the corrupted image itself, the baseline every denoiser must beat.
    """
    fig = Figure(figsize=(4.2 * len(results), 3.6), layout="tight")
    axes = fig.subplots(1, len(results), squeeze=False)
    for ax, (noise, methods) in zip(axes[0], results.items()):
        for method, points in methods.items():
            levels, values = zip(*points)
            style = {"color": "k", "linestyle": "--"} if method == "noisy input" else {}
            ax.plot(levels, values, marker="o", label=method, **style)
        ax.set_title(noise)
        ax.set_xlabel("noise level")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(title)
    return fig


def plot_sandwich(curve=None, ais=None, bdmc=None, title="Bounds on log p(x)"):
    """Two panels of mean bounds in nats per image. Every estimate on a panel is over the same
    images, so their differences are paired: no error bars (the spread over images would hide
    them).

    Left, test images, against gradient or likelihood evaluations per image: the IWAE_K curve
    (``curve``: K -> Estimate; K = 1 is the ELBO) and AIS (``ais``: steps -> AISEstimate), both
    lower bounds. Right, images simulated from the model, against AIS steps: BDMC's lower and
    upper bounds (``bdmc``: steps -> BDMCResult), between which log p(x) lies.
    """
    fig = Figure(figsize=(11, 4), layout="tight")
    left, right = fig.subplots(1, 2)
    if curve:
        ks = sorted(curve)
        left.plot(ks, [curve[k].mean for k in ks], marker="o", label="IWAE$_K$ (x: K; K=1: ELBO)")
    if ais:
        steps = sorted(ais)
        left.plot([ais[t].evaluations for t in steps], [ais[t].mean for t in steps], marker="s",
                  label="AIS (x: gradient evaluations)")
        for t in steps:
            left.annotate(f"{t} steps", (ais[t].evaluations, ais[t].mean), fontsize=7,
                          textcoords="offset points", xytext=(4, -10))
    left.set_xscale("log")
    left.set_xlabel("evaluations of log p(x, z) per image")
    left.set_ylabel("mean lower bound (nats per image)")
    n = next(iter(ais.values())).per_image.numel() if ais else None
    left.set_title(f"{n} test images" if n else "test images")
    if bdmc:
        steps = sorted(bdmc)
        lower = [bdmc[t].lower.mean().item() for t in steps]
        upper = [bdmc[t].upper.mean().item() for t in steps]
        right.plot(steps, lower, marker="o", label="forward AIS (lower)")
        right.plot(steps, upper, marker="v", label="reverse AIS (upper)")
        right.fill_between(steps, lower, upper, alpha=0.2, label="log p(x) lies here")
        right.set_xscale("log")
        right.set_xticks(steps, [str(t) for t in steps])
        right.minorticks_off()
        gap = bdmc[steps[-1]].gap.mean().item()
        right.set_title(f"{bdmc[steps[-1]].lower.numel()} simulated images: BDMC gap "
                        f"{gap:.2f} nats at {steps[-1]} steps")
    right.set_xlabel("AIS steps")
    right.set_ylabel("mean bound (nats per image)")
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def plot_inference_gaps(gap, title="Where the ELBO loses", ax=None):
    """Per image (sorted by the total log p(x) - ELBO[q]), its two parts side by side: the
    approximation gap log p(x) - ELBO[q*] and the amortization gap ELBO[q*] - ELBO[q], with the
    total marked; ``gap`` is an :class:`~pyro_vae.inference_gap.InferenceGap`. (A part below 0
    means noise, too few AIS steps, or a q* family that does not hold the guide's.)"""
    order = torch.argsort(gap.log_px - gap.elbo_amortized)
    approx = gap.approximation_gap[order].cpu().numpy()
    amort = gap.amortization_gap[order].cpu().numpy()
    fig, ax = _axes(ax, (max(6, len(order) * 0.25), 4))
    x = torch.arange(len(order)).numpy()
    ax.bar(x - 0.2, approx, width=0.4, color="tab:blue",
           label=f"approximation gap (mean {approx.mean():.2f} nats)")
    ax.bar(x + 0.2, amort, width=0.4, color="tab:orange",
           label=f"amortization gap (mean {amort.mean():.2f} nats)")
    ax.scatter(x, approx + amort, marker="_", color="k", s=150, label="log p(x) - ELBO[q]")
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xlabel("image (sorted by log p(x) - ELBO[q])")
    ax.set_ylabel("nats")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return fig


def plot_comparison(pairs, title="Paired differences between runs", ax=None):
    """Each pair's mean per-image difference b - a (``pairs``: the entries of comparison.json,
    with ``a``, ``b``, ``estimator`` and ``difference``), with 95% intervals from the paired
    standard error (thick) and from the unpaired one (thin): where the thin bar crosses 0 and
    the thick one does not, only pairing the images tells the runs apart."""
    fig, ax = _axes(ax, (7, 1.2 + 0.5 * max(len(pairs), 1)))
    for i, p in enumerate(pairs):
        d = p["difference"]
        for se, width, color in ((d["stderr_unpaired"], 1.2, "0.6"),
                                 (d["stderr_paired"], 4, "tab:blue")):
            if se is not None:
                ax.plot([d["mean"] - 1.96 * se, d["mean"] + 1.96 * se], [i, i], color=color,
                        linewidth=width, solid_capstyle="butt")
        ax.plot([d["mean"]], [i], "o", color="k")
    ax.set_yticks(range(len(pairs)))
    ax.set_yticklabels([f"{p['b']} - {p['a']} ({p['estimator'].upper()})" for p in pairs])
    ax.axvline(0, color="k", linewidth=0.8)
    ax.set_xlabel("mean difference of log p(x) estimates, nats per image "
                  "(thick: paired 95%, thin: unpaired)")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="x")
    ax.invert_yaxis()
    return fig
