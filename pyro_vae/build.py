"""Assemble models from names: the one place where registries meet networks.

Scripts and checkpoint loaders call :func:`build_vae` / :func:`build_autoencoder` with the names
and sizes stored in a run's ``config.json``, so a trained model can always be rebuilt from its run
directory. Both use the same encoder/decoder net classes, so the VAE and its autoencoder baselines
differ only in what sits on top of the nets.
"""

from .autoencoders import Autoencoder, DenoisingAutoencoder
from .conditional import CompletionNet, ConditionalVAE, quadrant_mask
from .encoders import ENCODERS, DiagonalNormalEncoder
from .errors import CheckpointError, ConfigError, lookup
from .hierarchical import TwoLayerVAE
from .likelihoods import LIKELIHOODS
from .nets import NETS, mlp
from .noise import make_noise
from .priors import PRIORS, StandardNormalPrior
from .semisupervised import SemiSupervisedVAE
from .vae import VAE

__all__ = [
    "AUTOENCODERS",
    "AUTOENCODER_OPTIONS",
    "CVAE_OPTIONS",
    "EARLIER_OPTIONS",
    "STOCHASTIC_LAYERS",
    "VAE_MODELS",
    "VAE_OPTIONS",
    "autoencoder_from_checkpoint",
    "M2_OPTIONS",
    "build_autoencoder",
    "build_completion_net",
    "build_cvae",
    "build_m2",
    "build_vae",
    "fill_earlier",
    "vae_from_checkpoint",
]


# The keyword arguments of build_vae: the part of a run's config that fixes the model.
VAE_OPTIONS = ("arch", "latent_dim", "hidden_dim", "depth", "activation", "prior", "likelihood",
               "posterior", "stochastic_layers")
# The keyword arguments of build_m2.
M2_OPTIONS = ("arch", "latent_dim", "hidden_dim", "depth", "activation", "likelihood",
              "num_classes", "alpha")
# The keyword arguments of build_cvae (and build_completion_net).
CVAE_OPTIONS = ("arch", "latent_dim", "hidden_dim", "depth", "activation", "likelihood",
                "observed_quadrants")
# The keyword arguments of build_autoencoder.
AUTOENCODER_OPTIONS = ("model", "arch", "latent_dim", "hidden_dim", "depth", "activation",
                       "likelihood", "noise", "noise_level")
# What a run's config lacking an option (a run from before it existed) was built with.
EARLIER_OPTIONS = {"depth": 1, "activation": "relu", "stochastic_layers": 1}
# How many stochastic layers build_vae can stack: VAE, TwoLayerVAE.
STOCHASTIC_LAYERS = (1, 2)
# The autoencoders build_autoencoder makes: deterministic, denoising.
AUTOENCODERS = ("ae", "dae")


def _likelihood(name, dec_net_cls, latent_dim, hidden_dim, image_shape, layers):
    """The named p(x|z) on an ``arch`` decoder net: the one head of a VAE and an autoencoder."""
    return lookup(LIKELIHOODS, "likelihood", name)(
        dec_net_cls(latent_dim, hidden_dim, image_shape, **layers))


def build_vae(image_shape, *, arch="mlp", latent_dim=50, hidden_dim=400, depth=1,
              activation="silu", prior="normal", likelihood="bernoulli", posterior="diagonal",
              stochastic_layers=1):
    """A VAE with ``arch`` encoder/decoder nets (``depth`` hidden layers of ``hidden_dim``
    units, ``activation``) and the named components.

    ``stochastic_layers=1`` gives a :class:`VAE` over z (``latent_dim``). ``stochastic_layers=2``
    gives a :class:`~pyro_vae.hierarchical.TwoLayerVAE` as in Burda et al. (2016): z1 of size
    ``2 * latent_dim`` next to the image (the ``arch`` nets, the named posterior and
    likelihood), z2 of size ``latent_dim`` on top (the named prior), and diagonal Gaussians
    q(z2|z1), p(z1|z2) on MLPs of ``depth`` hidden layers of ``hidden_dim // 2`` units: at
    latent 50, hidden 200, depth 2 and tanh, the paper's 784-200-200-100-100-100-50.
    """
    if stochastic_layers not in STOCHASTIC_LAYERS:
        raise ConfigError(f"stochastic_layers must be 1 or 2, got {stochastic_layers!r}")
    enc_net_cls, dec_net_cls = lookup(NETS, "architecture", arch)
    encoder_cls = lookup(ENCODERS, "posterior", posterior)
    prior_cls = lookup(PRIORS, "prior", prior)
    layers = {"depth": depth, "activation": activation}
    # the layer next to the image: z of a VAE, z1 of a two-layer VAE
    z_dim = latent_dim * stochastic_layers
    encoder = encoder_cls(enc_net_cls(image_shape, hidden_dim, encoder_cls.out_dim(z_dim),
                                      **layers), z_dim)
    lik = _likelihood(likelihood, dec_net_cls, z_dim, hidden_dim, image_shape, layers)
    if stochastic_layers == 1:
        prior_module = prior_cls.build(latent_dim, encoder=encoder, image_shape=tuple(image_shape))
        return VAE(encoder, lik, prior_module)
    if prior == "vamp":
        raise ConfigError("the VampPrior is a mixture of a one-layer encoder's q(z|u); with two "
                          "stochastic layers use --prior normal, learned-normal, mixture or flow")
    width = max(hidden_dim // 2, 1)
    upper = DiagonalNormalEncoder(mlp(z_dim, width, 2 * latent_dim, depth, activation),
                                  latent_dim)
    transition = DiagonalNormalEncoder(mlp(latent_dim, width, 2 * z_dim, depth, activation),
                                       z_dim)
    prior_module = prior_cls.build(latent_dim, encoder=None, image_shape=tuple(image_shape))
    return TwoLayerVAE(encoder, upper, transition, lik, prior_module)


def build_m2(image_shape, *, arch="mlp", latent_dim=50, hidden_dim=400, depth=1,
             activation="silu", likelihood="bernoulli", num_classes=10, alpha=50.0):
    """The semi-supervised VAE M2 (:class:`~pyro_vae.semisupervised.SemiSupervisedVAE`) on the
    ``arch`` nets: one encoder net for q(y|x), one for the image's features of q(z|x, y), a
    decoder net over [z, one-hot y] under the named likelihood, and p(z) = N(0, I)."""
    enc_net_cls, dec_net_cls = lookup(NETS, "architecture", arch)
    layers = {"depth": depth, "activation": activation}
    classifier = enc_net_cls(image_shape, hidden_dim, num_classes, **layers)
    features = enc_net_cls(image_shape, hidden_dim, hidden_dim, **layers)
    lik = _likelihood(likelihood, dec_net_cls, latent_dim + num_classes, hidden_dim,
                      image_shape, layers)
    return SemiSupervisedVAE(classifier, features, lik, StandardNormalPrior(latent_dim),
                             num_classes=num_classes, latent_dim=latent_dim,
                             hidden_dim=hidden_dim, activation=activation, alpha=alpha)


def build_cvae(image_shape, *, arch="mlp", latent_dim=50, hidden_dim=400, depth=1,
               activation="silu", likelihood="bernoulli", observed_quadrants=1):
    """The conditional VAE of image completion (:class:`~pyro_vae.conditional.ConditionalVAE`)
    on the ``arch`` nets: diagonal Gaussians p(z | x_o) and q(z | x) on encoder nets, the named
    likelihood on a decoder net, the first ``observed_quadrants`` quadrants observed."""
    enc_net_cls, dec_net_cls = lookup(NETS, "architecture", arch)
    layers = {"depth": depth, "activation": activation}
    gaussian = lambda: DiagonalNormalEncoder(  # noqa: E731
        enc_net_cls(image_shape, hidden_dim, 2 * latent_dim, **layers), latent_dim)
    lik = _likelihood(likelihood, dec_net_cls, latent_dim, hidden_dim, image_shape, layers)
    return ConditionalVAE(gaussian(), gaussian(), lik,
                          quadrant_mask(tuple(image_shape), observed_quadrants))


def build_completion_net(image_shape, *, arch="mlp", latent_dim=50, hidden_dim=400, depth=1,
                         activation="silu", likelihood="bernoulli", observed_quadrants=1):
    """The CVAE's deterministic counterpart (:class:`~pyro_vae.conditional.CompletionNet`):
    an encoder net to a code of ``latent_dim`` and the likelihood head, as an autoencoder's."""
    enc_net_cls, dec_net_cls = lookup(NETS, "architecture", arch)
    layers = {"depth": depth, "activation": activation}
    lik = _likelihood(likelihood, dec_net_cls, latent_dim, hidden_dim, image_shape, layers)
    return CompletionNet(enc_net_cls(image_shape, hidden_dim, latent_dim, **layers), lik,
                         quadrant_mask(tuple(image_shape), observed_quadrants))


def build_autoencoder(image_shape, *, model="ae", arch="mlp", latent_dim=50, hidden_dim=400,
                      depth=1, activation="silu", likelihood="bernoulli", noise="gaussian",
                      noise_level=0.5):
    """An :class:`Autoencoder` (``model="ae"``) or :class:`DenoisingAutoencoder` (``"dae"``, with
    the named noise at ``noise_level``) on the ``arch`` nets and the named likelihood head, as
    :func:`build_vae` builds them; the encoder net outputs the code."""
    lookup(AUTOENCODERS, "autoencoder", model)
    enc_net_cls, dec_net_cls = lookup(NETS, "architecture", arch)
    layers = {"depth": depth, "activation": activation}
    enc = enc_net_cls(image_shape, hidden_dim, latent_dim, **layers)
    lik = _likelihood(likelihood, dec_net_cls, latent_dim, hidden_dim, image_shape, layers)
    if model == "dae":
        return DenoisingAutoencoder(enc, lik, make_noise(noise, noise_level))
    return Autoencoder(enc, lik)


# --model of train_svi.py -> its builder and the config fields that are its keyword arguments
VAE_MODELS = {"vae": (build_vae, VAE_OPTIONS), "m2": (build_m2, M2_OPTIONS),
              "cvae": (build_cvae, CVAE_OPTIONS)}


def fill_earlier(config, earlier=EARLIER_OPTIONS):
    """``config`` with the options of ``earlier`` it lacks set to what runs made before they
    existed were built with, if it lacks them all; a config with some of them but not all was
    edited: :class:`CheckpointError` naming the first missing one."""
    missing = [k for k in earlier if k not in config]
    if missing and len(missing) < len(earlier):
        raise CheckpointError(f"the run's config has no {missing[0]!r} though it has "
                              f"{next(k for k in earlier if k in config)!r}; it was edited: "
                              "train the run again")
    return {**earlier, **config} if missing else dict(config)


def _options(config, names):
    """The builder's keyword arguments from a run's config (see :func:`fill_earlier`)."""
    config = fill_earlier(config, {k: v for k, v in EARLIER_OPTIONS.items() if k in names})
    return {k: config[k] for k in names if k in config}


def _load_strictly(module, state, options):
    try:
        module.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split("\n\t")[1:2]).strip() or str(e).splitlines()[0]
        raise CheckpointError(f"the checkpoint's weights do not fit the model its config "
                              f"describes ({options}): {detail}") from None
    return module


def vae_from_checkpoint(state, image_shape):
    """Rebuild the VAE a checkpoint was trained as, and load its weights (strictly).

    Raises :class:`~pyro_vae.checkpoint.CheckpointError` naming the mismatch when the weights do
    not fit the model its config describes.
    """
    kind = state["config"].get("model", "vae")
    if kind not in VAE_MODELS:
        raise CheckpointError(f"the checkpoint holds an autoencoder ({kind!r}), "
                              "not a VAE; use a run of scripts/train_svi.py")
    builder, names = VAE_MODELS[kind]
    options = _options(state["config"], names)
    return _load_strictly(builder(image_shape, **options), state, options)


def autoencoder_from_checkpoint(state, image_shape):
    """Rebuild the AE or DAE of a ``scripts/train_baselines.py`` checkpoint and load its weights."""
    if state["config"].get("model") not in AUTOENCODERS:
        raise CheckpointError("the checkpoint holds a VAE, not an autoencoder; use a run of "
                              "scripts/train_baselines.py")
    options = _options(state["config"], AUTOENCODER_OPTIONS)
    return _load_strictly(build_autoencoder(image_shape, **options), state, options)
