"""User-facing genvi models (scvi-tools ``BaseModelClass`` subclasses)."""

from ._priorvi import PriorVI

__all__ = ["PriorVI"]
