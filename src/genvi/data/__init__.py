"""Datasets: the embedded PBMC counts and a ground-truth simulator with known ``p(x | c)``."""

from ._pbmc68k import pbmc68k
from ._simulate import sample_truth, simulate, true_means

__all__ = ["pbmc68k", "sample_truth", "simulate", "true_means"]
