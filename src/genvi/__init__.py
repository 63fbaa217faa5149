"""genvi: generative models for single-cell expression counts, built on scvi-tools."""

from importlib.metadata import PackageNotFoundError, version

from . import data, metrics, model, module, nn, pl

try:
    __version__ = version("genvi")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["data", "metrics", "model", "module", "nn", "pl"]
