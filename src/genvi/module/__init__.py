"""torch modules (``BaseModuleClass`` subclasses) behind the genvi models."""

from ._disentvae import DisentVAE
from ._latent_diffusion import LatentDiffusionModule
from ._latent_flow import LatentFlowModule
from ._latent_prior import LatentPriorModule
from ._priorvae import PriorVAE

__all__ = [
    "DisentVAE",
    "LatentDiffusionModule",
    "LatentFlowModule",
    "LatentPriorModule",
    "PriorVAE",
]
