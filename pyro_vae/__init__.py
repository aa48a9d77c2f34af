"""pyro_vae: autoencoders as probabilistic programs.

The VAE is a Pyro model/guide pair built from components that return distributions; the
deterministic and denoising autoencoders sit on the same networks; the estimators give per-image
marginal log-likelihood bounds for any Pyro model and guide, after checking that model and
guide fit (discrete sites marked for enumeration are summed out exactly).

Two kinds of module: the **core** (components, models, the model protocol, estimators, AIS,
BDMC, the gap split, plots), which imports nothing of the **run infrastructure** (data, train,
distributed, launch, runs, checkpoint, resources, files, evaluation); ``errors`` is shared.
``tests/test_layout.py`` holds the line, and that no module imports itself through others.
"""

from .autoencoders import Autoencoder, DenoisingAutoencoder, fit_code_distribution
from .build import (
    autoencoder_from_checkpoint,
    build_autoencoder,
    build_completion_net,
    build_cvae,
    build_m2,
    build_vae,
    vae_from_checkpoint,
)
from .conditional import CompletionNet, ConditionalVAE, MaskedPixels
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .classifier import (
    DigitClassifier,
    fit_classifier,
    frechet_distance,
    score_samples,
    train_classifier,
)
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
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    RunError,
    UserError,
    lookup,
)
from .ais import AISEstimate, ais_log_likelihood, linear_schedule, sigmoid_schedule
from .annealing import AnnealingTarget
from .bdmc import BDMCResult, bdmc, simulate
from .estimators import Estimate, bound_curve, elbo, log_likelihood, log_weights, pareto_khat
from .evaluation import paired_difference
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
from .program import Program, check_program
from .protocol import CodeViews, check_model
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
from .semisupervised import SemiSupervisedVAE
from .vae import VAE

__all__ = [
    # the model, and what any model offers (pyro_vae.protocol)
    "VAE",
    "TwoLayerVAE",
    "CodeViews",
    "check_model",
    # structured models: semi-supervised (M2) and conditional (image completion)
    "SemiSupervisedVAE",
    "build_m2",
    "ConditionalVAE",
    "CompletionNet",
    "MaskedPixels",
    "build_cvae",
    "build_completion_net",
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
    # estimators, and their check of a model/guide pair
    "check_program",
    "Program",
    "Estimate",
    "log_likelihood",
    "elbo",
    "log_weights",
    "bound_curve",
    "pareto_khat",
    # annealed importance sampling, BDMC sandwich bounds, the inference gaps
    "AISEstimate",
    "ais_log_likelihood",
    "AnnealingTarget",
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
    "paired_difference",
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
    "ModelError",
    "lookup",
    # scoring generated images
    "DigitClassifier",
    "train_classifier",
    "fit_classifier",
    "score_samples",
    "frechet_distance",
]
