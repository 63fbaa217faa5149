"""Mixins and helpers shared by genvi models."""

from ._conditions import ConditionSchema
from ._generation import GenerativeMixin, transform_expression
from ._io import LoadMixin, ModelFileError
from ._training import GenviTrainingPlan, NonFiniteLossError, default_kl_warmup

__all__ = [
    "ConditionSchema",
    "GenerativeMixin",
    "GenviTrainingPlan",
    "LoadMixin",
    "ModelFileError",
    "NonFiniteLossError",
    "default_kl_warmup",
    "transform_expression",
]
