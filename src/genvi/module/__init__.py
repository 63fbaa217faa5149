"""torch modules (``BaseModuleClass`` subclasses) behind the genvi models."""

from ._diffusion_samplers import SAMPLERS, DiffusionSampler
from ._disentvae import DisentVAE
from ._hybridvae import HybridVAE
from ._latent_diffusion import LatentDiffusionModule
from ._latent_flow import LatentFlowModule
from ._latent_prior import LatentPriorModule
from ._ode import ODE_METHODS, ODEMethod
from ._priorvae import PriorVAE

__all__ = [
    "ODE_METHODS",
    "SAMPLERS",
    "DiffusionSampler",
    "DisentVAE",
    "HybridVAE",
    "LatentDiffusionModule",
    "LatentFlowModule",
    "LatentPriorModule",
    "ODEMethod",
    "PriorVAE",
]
