"""Assemble models from names: the one place where registries meet networks.

Scripts and checkpoint loaders call :func:`build_vae` / :func:`build_autoencoder` with the names
and sizes stored in a run's ``config.json``, so a trained model can always be rebuilt from its run
directory. Both use the same encoder/decoder net classes, so the VAE and its autoencoder baselines
differ only in what sits on top of the nets.
"""

from .autoencoders import Autoencoder, DenoisingAutoencoder
from .encoders import ENCODERS
from .errors import CheckpointError, lookup
from .likelihoods import LIKELIHOODS
from .nets import NETS
from .noise import make_noise
from .priors import PRIORS
from .vae import VAE

__all__ = [
    "AUTOENCODERS",
    "AUTOENCODER_OPTIONS",
    "VAE_OPTIONS",
    "autoencoder_from_checkpoint",
    "build_autoencoder",
    "build_vae",
    "vae_from_checkpoint",
]


# The keyword arguments of build_vae: the part of a run's config that fixes the model.
VAE_OPTIONS = ("arch", "latent_dim", "hidden_dim", "prior", "likelihood", "posterior")
# The keyword arguments of build_autoencoder.
AUTOENCODER_OPTIONS = ("model", "arch", "latent_dim", "hidden_dim", "likelihood", "noise",
                       "noise_level")
# The autoencoders build_autoencoder makes: deterministic, denoising.
AUTOENCODERS = ("ae", "dae")


def _likelihood(name, dec_net_cls, latent_dim, hidden_dim, image_shape):
    """The named p(x|z) on an ``arch`` decoder net: the one head of a VAE and an autoencoder."""
    return lookup(LIKELIHOODS, "likelihood", name)(dec_net_cls(latent_dim, hidden_dim, image_shape))


def build_vae(image_shape, *, arch="mlp", latent_dim=50, hidden_dim=400, prior="normal",
              likelihood="bernoulli", posterior="diagonal"):
    """A :class:`VAE` with ``arch`` encoder/decoder nets and the named components."""
    enc_net_cls, dec_net_cls = lookup(NETS, "architecture", arch)
    encoder_cls = lookup(ENCODERS, "posterior", posterior)
    prior_cls = lookup(PRIORS, "prior", prior)
    encoder = encoder_cls(
        enc_net_cls(image_shape, hidden_dim, encoder_cls.out_dim(latent_dim)), latent_dim
    )
    lik = _likelihood(likelihood, dec_net_cls, latent_dim, hidden_dim, image_shape)
    prior_module = prior_cls.build(latent_dim, encoder=encoder, image_shape=tuple(image_shape))
    return VAE(encoder, lik, prior_module)


def build_autoencoder(image_shape, *, model="ae", arch="mlp", latent_dim=50, hidden_dim=400,
                      likelihood="bernoulli", noise="gaussian", noise_level=0.5):
    """An :class:`Autoencoder` (``model="ae"``) or :class:`DenoisingAutoencoder` (``"dae"``, with
    the named noise at ``noise_level``) on the ``arch`` nets and the named likelihood head, as
    :func:`build_vae` builds them; the encoder net outputs the code."""
    lookup(AUTOENCODERS, "autoencoder", model)
    enc_net_cls, dec_net_cls = lookup(NETS, "architecture", arch)
    enc = enc_net_cls(image_shape, hidden_dim, latent_dim)
    lik = _likelihood(likelihood, dec_net_cls, latent_dim, hidden_dim, image_shape)
    if model == "dae":
        return DenoisingAutoencoder(enc, lik, make_noise(noise, noise_level))
    return Autoencoder(enc, lik)


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
    if state["config"].get("model", "vae") != "vae":
        raise CheckpointError(f"the checkpoint holds an autoencoder ({state['config']['model']!r}), "
                              "not a VAE; use a run of scripts/train_svi.py")
    options = {k: state["config"][k] for k in VAE_OPTIONS if k in state["config"]}
    return _load_strictly(build_vae(image_shape, **options), state, options)


def autoencoder_from_checkpoint(state, image_shape):
    """Rebuild the AE or DAE of a ``scripts/train_baselines.py`` checkpoint and load its weights."""
    if state["config"].get("model") not in AUTOENCODERS:
        raise CheckpointError("the checkpoint holds a VAE, not an autoencoder; use a run of "
                              "scripts/train_baselines.py")
    options = {k: state["config"][k] for k in AUTOENCODER_OPTIONS if k in state["config"]}
    return _load_strictly(build_autoencoder(image_shape, **options), state, options)
