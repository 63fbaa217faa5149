"""Plots that take AnnData and return matplotlib figures."""

from ._embedding import real_vs_generated

__all__ = ["real_vs_generated"]
