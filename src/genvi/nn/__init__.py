"""Reusable torch building blocks: condition encoders, priors p(z | c), denoisers, schedules."""

from ._adversary import AttributeHeads, reverse_gradient
from ._condition_encoder import ConditionEncoder, ConditionInputs
from ._denoiser import ConditionalDenoiser, SinusoidalTimeEmbedding
from ._flow_prior import ConditionalFlowPrior
from ._kl import kl_to_prior
from ._log_mgf import log_mgf_linear
from ._prior_base import PRIORS, Prior, build_prior, prior_options, register_prior
from ._priors import ConditionalGaussianPrior, MixtureOfGaussiansPrior, StandardNormalPrior
from ._schedules import CosineSchedule
from ._vamp_prior import VampPrior

__all__ = [
    "PRIORS",
    "AttributeHeads",
    "ConditionEncoder",
    "ConditionInputs",
    "ConditionalDenoiser",
    "CosineSchedule",
    "ConditionalFlowPrior",
    "ConditionalGaussianPrior",
    "MixtureOfGaussiansPrior",
    "Prior",
    "SinusoidalTimeEmbedding",
    "StandardNormalPrior",
    "VampPrior",
    "build_prior",
    "kl_to_prior",
    "log_mgf_linear",
    "prior_options",
    "register_prior",
    "reverse_gradient",
]
