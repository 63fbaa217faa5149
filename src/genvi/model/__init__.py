"""User-facing genvi models (scvi-tools ``BaseModelClass`` subclasses)."""

# scvi-tools' view_anndata_setup uses `rich.pretty` without importing it, and rich >= 14 no
# longer imports that submodule with the package: import it so the method works.
import rich.pretty  # noqa: F401

from ._additive_mean import AdditiveMeanModel
from ._disentvi import DisentVI
from ._hybridvi import HybridVI
from ._latent_diffusion import LatentDiffusion
from ._latent_flow import LatentFlow
from ._mean_predictor import MeanPredictorError
from ._mean_table import MeanTable
from ._priorvi import PriorVI

__all__ = [
    "AdditiveMeanModel",
    "DisentVI",
    "HybridVI",
    "LatentDiffusion",
    "LatentFlow",
    "MeanPredictorError",
    "MeanTable",
    "PriorVI",
]
