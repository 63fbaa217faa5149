"""User-facing genvi models (scvi-tools ``BaseModelClass`` subclasses)."""

from ._disentvi import DisentVI
from ._latent_diffusion import LatentDiffusion
from ._latent_flow import LatentFlow
from ._priorvi import PriorVI

__all__ = ["DisentVI", "LatentDiffusion", "LatentFlow", "PriorVI"]
