"""Datasets: embedded PBMC counts, local real datasets and a simulator with known ``p(x | c)``."""

from ._datasets import DATASETS, dataset_path, load_dataset
from ._pbmc68k import pbmc68k
from ._simulate import sample_truth, simulate, true_means

__all__ = [
    "DATASETS",
    "dataset_path",
    "load_dataset",
    "pbmc68k",
    "sample_truth",
    "simulate",
    "true_means",
]
