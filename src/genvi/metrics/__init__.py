"""Evaluation of generated cells against real held-out cells.

Protocol: generated and real held-out cells are compared in a PCA space fitted on the real
*training* cells (highly variable genes, ``normalize_total`` + ``log1p``, centred with the
training mean) with the energy distance, RBF-MMD² (median-heuristic bandwidths, reported), a
classifier two-sample AUROC, and per-gene mean / variance agreement in log space. Each metric
comes with a noise floor: the same metric between two disjoint halves of the real cells.
"""

from ._compare import compare_conditions, summarize
from ._distances import c2st_auroc, energy_distance, median_heuristic_bandwidths, mmd_rbf
from ._expression import mean_var_agreement
from ._floor import noise_floor, split_halves
from ._space import ReferenceSpace

__all__ = [
    "ReferenceSpace",
    "c2st_auroc",
    "compare_conditions",
    "energy_distance",
    "mean_var_agreement",
    "median_heuristic_bandwidths",
    "mmd_rbf",
    "noise_floor",
    "split_halves",
    "summarize",
]
