"""Assemble a VAE from names: the one place where registries meet networks.

Scripts and checkpoint loaders call :func:`build_vae` with the names and sizes stored in a run's
``config.json``, so a trained model can always be rebuilt from its run directory.
"""

from .encoders import ENCODERS
from .likelihoods import LIKELIHOODS
from .nets import NETS
from .priors import PRIORS
from .vae import VAE

__all__ = ["VAE_OPTIONS", "build_vae", "vae_from_checkpoint"]


def _lookup(registry, kind, name):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {', '.join(registry)}")
    return registry[name]


# The keyword arguments of build_vae: the part of a run's config that fixes the model.
VAE_OPTIONS = ("arch", "latent_dim", "hidden_dim", "prior", "likelihood", "posterior")


def build_vae(image_shape, *, arch="mlp", latent_dim=50, hidden_dim=400, prior="normal",
              likelihood="bernoulli", posterior="diagonal"):
    """A :class:`VAE` with ``arch`` encoder/decoder nets and the named components."""
    enc_net_cls, dec_net_cls = _lookup(NETS, "architecture", arch)
    encoder_cls = _lookup(ENCODERS, "posterior", posterior)
    likelihood_cls = _lookup(LIKELIHOODS, "likelihood", likelihood)
    prior_cls = _lookup(PRIORS, "prior", prior)
    encoder = encoder_cls(
        enc_net_cls(image_shape, hidden_dim, encoder_cls.out_dim(latent_dim)), latent_dim
    )
    lik = likelihood_cls(dec_net_cls(latent_dim, hidden_dim, image_shape))
    prior_module = prior_cls.build(latent_dim, encoder=encoder, image_shape=tuple(image_shape))
    return VAE(encoder, lik, prior_module)


def vae_from_checkpoint(state, image_shape):
    """Rebuild the VAE a checkpoint was trained as, and load its weights (strictly).

    Raises :class:`~pyro_vae.checkpoint.CheckpointError` naming the mismatch when the weights do
    not fit the model its config describes.
    """
    from .checkpoint import CheckpointError

    options = {k: state["config"][k] for k in VAE_OPTIONS if k in state["config"]}
    vae = build_vae(image_shape, **options)
    try:
        vae.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split("\n\t")[1:2]).strip() or str(e).splitlines()[0]
        raise CheckpointError(f"the checkpoint's weights do not fit the model its config "
                              f"describes ({options}): {detail}") from None
    return vae
