"""User-facing genvi models (scvi-tools ``BaseModelClass`` subclasses)."""

# scvi-tools' view_anndata_setup uses `rich.pretty` without importing it, and rich >= 14 no
# longer imports that submodule with the package: import it so the method works.
import rich.pretty  # noqa: F401

from ._disentvi import DisentVI
from ._latent_diffusion import LatentDiffusion
from ._latent_flow import LatentFlow
from ._priorvi import PriorVI

__all__ = ["DisentVI", "LatentDiffusion", "LatentFlow", "PriorVI"]
