"""Reusable torch building blocks: condition encoders and priors p(z | c)."""

from ._condition_encoder import ConditionEncoder
from ._flow_prior import ConditionalFlowPrior
from ._kl import kl_to_prior
from ._priors import ConditionalGaussianPrior, MixtureOfGaussiansPrior, StandardNormalPrior
from ._registry import PRIORS
from ._vamp_prior import VampPrior

__all__ = [
    "PRIORS",
    "ConditionEncoder",
    "ConditionalFlowPrior",
    "ConditionalGaussianPrior",
    "MixtureOfGaussiansPrior",
    "StandardNormalPrior",
    "VampPrior",
    "kl_to_prior",
]
