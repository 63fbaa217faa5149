"""Reusable torch building blocks: condition encoders, priors p(z | c), denoisers, schedules."""

from ._adversary import AttributeHeads, reverse_gradient
from ._condition_encoder import ConditionEncoder
from ._denoiser import ConditionalDenoiser, SinusoidalTimeEmbedding
from ._flow_prior import ConditionalFlowPrior
from ._kl import kl_to_prior
from ._priors import ConditionalGaussianPrior, MixtureOfGaussiansPrior, StandardNormalPrior
from ._registry import PRIORS
from ._schedules import CosineSchedule
from ._vamp_prior import VampPrior

__all__ = [
    "PRIORS",
    "AttributeHeads",
    "ConditionEncoder",
    "ConditionalDenoiser",
    "CosineSchedule",
    "ConditionalFlowPrior",
    "ConditionalGaussianPrior",
    "MixtureOfGaussiansPrior",
    "SinusoidalTimeEmbedding",
    "StandardNormalPrior",
    "VampPrior",
    "kl_to_prior",
    "reverse_gradient",
]
