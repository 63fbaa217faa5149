"""genvi: generative models for single-cell expression counts, built on scvi-tools.

Subpackages are imported on first use (``genvi.model``, ``genvi.metrics``...), so that light
entry points such as ``genvi --help`` do not pay for importing torch and scanpy.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("genvi")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["data", "metrics", "model", "module", "nn", "pl"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
