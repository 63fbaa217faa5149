"""Mixins and helpers shared by genvi models (one job per file)."""

from ._conditioned import ConditionedModelMixin
from ._conditions import ConditionSchema
from ._confidence import ConfidenceMixin
from ._count_model import CountModelBase
from ._counterfactual import CounterfactualMixin
from ._generation import GenerationMixin
from ._io import LoadMixin, ModelFileError
from ._likelihood import LikelihoodMixin
from ._novelty import NoveltyMixin
from ._reference import TrainingReferenceMixin
from ._response_transfer import (
    TRANSFER_DECREASES,
    TRANSFER_DISPERSIONS,
    TRANSFER_METHODS,
    TRANSFER_SCALES,
    TRANSFER_SPACES,
    ResponseTransferMixin,
    stack_responses,
    transfer_response,
)
from ._seeding import seeded
from ._setup import as_key_list, setup_condition_fields
from ._training import (
    GenviTrainingPlan,
    LatentPriorTrainingPlan,
    NonFiniteLossError,
    default_kl_warmup,
)
from ._training_mixin import KLWarmupTrainingMixin
from ._weight_average import WeightEMA

__all__ = [
    "ConditionSchema",
    "ConditionedModelMixin",
    "ConfidenceMixin",
    "CountModelBase",
    "CounterfactualMixin",
    "GenerationMixin",
    "GenviTrainingPlan",
    "KLWarmupTrainingMixin",
    "LatentPriorTrainingPlan",
    "LikelihoodMixin",
    "LoadMixin",
    "ModelFileError",
    "NonFiniteLossError",
    "NoveltyMixin",
    "ResponseTransferMixin",
    "TRANSFER_DECREASES",
    "TRANSFER_SCALES",
    "TRANSFER_DISPERSIONS",
    "TRANSFER_SPACES",
    "TRANSFER_METHODS",
    "TrainingReferenceMixin",
    "WeightEMA",
    "as_key_list",
    "default_kl_warmup",
    "setup_condition_fields",
    "seeded",
    "stack_responses",
    "transfer_response",
]
