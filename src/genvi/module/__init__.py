"""torch modules (``BaseModuleClass`` subclasses) behind the genvi models."""

from ._priorvae import PriorVAE

__all__ = ["PriorVAE"]
