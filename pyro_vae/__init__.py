"""pyro_vae: autoencoders as probabilistic programs.

The VAE is a Pyro model/guide pair built from components that return distributions; the
estimators give per-image marginal log-likelihood bounds for any Pyro model and guide.
"""

from .build import build_vae
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import BINARIZATIONS, DATASETS, DataError, ImageData, batches, load_dataset
from .encoders import ENCODERS, DiagonalNormalEncoder
from .estimators import Estimate, elbo, log_likelihood, log_weights, pareto_khat
from .likelihoods import LIKELIHOODS, BernoulliLikelihood
from .nets import NETS, ConvDecoderNet, ConvEncoderNet, MLPDecoderNet, MLPEncoderNet
from .priors import PRIORS, StandardNormalPrior
from .train import ELBOS, NonFiniteLossError, fit, make_elbo
from .vae import VAE

__all__ = [
    # the model
    "VAE",
    "build_vae",
    # components and their registries
    "PRIORS",
    "StandardNormalPrior",
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "ENCODERS",
    "DiagonalNormalEncoder",
    "NETS",
    "MLPEncoderNet",
    "MLPDecoderNet",
    "ConvEncoderNet",
    "ConvDecoderNet",
    # data
    "DATASETS",
    "BINARIZATIONS",
    "DataError",
    "ImageData",
    "load_dataset",
    "batches",
    # training and checkpoints
    "ELBOS",
    "make_elbo",
    "fit",
    "NonFiniteLossError",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
    # estimators
    "Estimate",
    "log_likelihood",
    "elbo",
    "log_weights",
    "pareto_khat",
]
