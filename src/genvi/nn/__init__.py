"""Reusable torch building blocks: condition encoders and priors p(z | c)."""

from ._condition_encoder import ConditionEncoder
from ._kl import kl_to_prior
from ._priors import (
    PRIORS,
    ConditionalGaussianPrior,
    MixtureOfGaussiansPrior,
    StandardNormalPrior,
)

__all__ = [
    "PRIORS",
    "ConditionEncoder",
    "ConditionalGaussianPrior",
    "MixtureOfGaussiansPrior",
    "StandardNormalPrior",
    "kl_to_prior",
]
