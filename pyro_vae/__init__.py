"""pyro_vae: autoencoders as probabilistic programs.

The VAE is a Pyro model/guide pair built from components that return distributions; the
deterministic and denoising autoencoders sit on the same networks; the estimators give per-image
marginal log-likelihood bounds for any Pyro model and guide.
"""

from .autoencoders import Autoencoder, DenoisingAutoencoder, fit_code_distribution
from .build import (
    autoencoder_from_checkpoint,
    build_autoencoder,
    build_vae,
    vae_from_checkpoint,
)
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .classifier import DigitClassifier, frechet_distance, score_samples, train_classifier
from .data import (
    BINARIZATIONS,
    DATASETS,
    ImageData,
    batches,
    load_dataset,
    load_npz,
)
from .diagnostics import active_units, kl_per_dimension
from .encoders import ENCODERS, DiagonalNormalEncoder, FlowEncoder, FullCovarianceEncoder
from .errors import CheckpointError, ConfigError, DataError, RunError, UserError, lookup
from .ais import AISEstimate, ais_log_likelihood, linear_schedule, sigmoid_schedule
from .bdmc import BDMCResult, bdmc, simulate
from .estimators import Estimate, bound_curve, elbo, log_likelihood, log_weights, pareto_khat
from .inference_gap import InferenceGap, LocalGaussianGuide, fit_local_guide, inference_gap
from .latents import batched, class_pairs, interpolate
from .likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    BetaLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    LaplaceLikelihood,
)
from .nets import ACTIVATIONS, NETS, ConvDecoderNet, ConvEncoderNet, MLPDecoderNet, MLPEncoderNet, mlp
from .noise import NOISES, GaussianNoise, MaskingNoise, SaltAndPepperNoise, make_noise, psnr
from .objectives import IWAE
from .priors import (
    PRIORS,
    FlowPrior,
    LearnedNormalPrior,
    MixturePrior,
    StandardNormalPrior,
    VampPrior,
)
from .train import (
    ELBOS,
    NonFiniteLossError,
    fit,
    fit_autoencoder,
    kl_schedule,
    lr_schedule,
    make_elbo,
)
from .hierarchical import TwoLayerVAE
from .vae import VAE

__all__ = [
    # the model
    "VAE",
    "TwoLayerVAE",
    "build_vae",
    "vae_from_checkpoint",
    # the baselines, on the same nets
    "Autoencoder",
    "DenoisingAutoencoder",
    "build_autoencoder",
    "autoencoder_from_checkpoint",
    "fit_code_distribution",
    "NOISES",
    "GaussianNoise",
    "SaltAndPepperNoise",
    "MaskingNoise",
    "make_noise",
    "psnr",
    # components and their registries
    "PRIORS",
    "StandardNormalPrior",
    "LearnedNormalPrior",
    "MixturePrior",
    "VampPrior",
    "FlowPrior",
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "GaussianLikelihood",
    "LaplaceLikelihood",
    "BetaLikelihood",
    "ENCODERS",
    "DiagonalNormalEncoder",
    "FullCovarianceEncoder",
    "FlowEncoder",
    "NETS",
    "ACTIVATIONS",
    "mlp",
    "MLPEncoderNet",
    "MLPDecoderNet",
    "ConvEncoderNet",
    "ConvDecoderNet",
    # data
    "DATASETS",
    "BINARIZATIONS",
    "ImageData",
    "load_dataset",
    "load_npz",
    "batches",
    # training and checkpoints
    "ELBOS",
    "IWAE",
    "make_elbo",
    "kl_schedule",
    "lr_schedule",
    "fit",
    "fit_autoencoder",
    "NonFiniteLossError",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    # estimators
    "Estimate",
    "log_likelihood",
    "elbo",
    "log_weights",
    "bound_curve",
    "pareto_khat",
    # annealed importance sampling, BDMC sandwich bounds, the inference gaps
    "AISEstimate",
    "ais_log_likelihood",
    "sigmoid_schedule",
    "linear_schedule",
    "BDMCResult",
    "bdmc",
    "simulate",
    "InferenceGap",
    "LocalGaussianGuide",
    "fit_local_guide",
    "inference_gap",
    "active_units",
    "kl_per_dimension",
    # the latent space of any model
    "batched",
    "class_pairs",
    "interpolate",
    # what a user can get wrong, and the lookup of names
    "UserError",
    "ConfigError",
    "DataError",
    "RunError",
    "CheckpointError",
    "lookup",
    # scoring generated images
    "DigitClassifier",
    "train_classifier",
    "score_samples",
    "frechet_distance",
]
