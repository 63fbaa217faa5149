"""genvi: generative models for single-cell expression counts, built on scvi-tools."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("genvi")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
