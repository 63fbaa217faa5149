"""Evaluation of generated cells against real held-out cells.

Protocol: generated and real held-out cells are compared in a PCA space fitted on the real
*training* cells (highly variable genes, ``normalize_total`` + ``log1p``, centred with the
training mean) with the energy distance, RBF-MMD² (median-heuristic bandwidths, reported), a
classifier two-sample AUROC, per-gene mean / variance agreement in log space, gene-gene
correlation, zero-fraction and library-size distances, and a classifier AUROC on per-cell count
profiles (:func:`count_profile`: depth, detected genes, repeated counts). Each metric comes with
a noise floor: the same metric between two disjoint halves of the real cells. :func:`evaluate`
runs it all, with privacy (:func:`privacy`, distance to the closest training record, and
:func:`membership_inference`, attacks at cell and donor level) when the training cells are
given; :func:`calibration` checks predictive intervals (:class:`ConformalIntervals`
recalibrates them on held-out cells), :func:`counterfactual_scores` (with
:func:`pearson_delta`) perturbation predictions, and :func:`conformal_pvalues` /
:func:`flag_outliers` turn outlier scores into p-values with false-discovery control.
"""

from ._calibration import calibration, interval_coverage
from ._compare import compare_conditions, summarize
from ._conformal import benjamini_hochberg, conformal_pvalues, flag_outliers
from ._conformal_intervals import ConformalIntervals
from ._counterfactual import counterfactual_lfc, counterfactual_scores, pearson_delta, rank_degs
from ._distances import c2st_auroc, energy_distance, median_heuristic_bandwidths, mmd_rbf
from ._evaluate import evaluate
from ._expression import mean_var_agreement
from ._floor import noise_floor, split_halves
from ._membership import membership_inference
from ._privacy import close_limit, distance_to_closest_record, privacy
from ._space import ReferenceSpace
from ._structure import (
    correlation_distance,
    count_profile,
    library_size_distance,
    zero_fraction_distance,
)

__all__ = [
    "ConformalIntervals",
    "ReferenceSpace",
    "benjamini_hochberg",
    "c2st_auroc",
    "calibration",
    "close_limit",
    "compare_conditions",
    "conformal_pvalues",
    "correlation_distance",
    "count_profile",
    "counterfactual_lfc",
    "counterfactual_scores",
    "distance_to_closest_record",
    "energy_distance",
    "evaluate",
    "flag_outliers",
    "interval_coverage",
    "library_size_distance",
    "mean_var_agreement",
    "membership_inference",
    "median_heuristic_bandwidths",
    "mmd_rbf",
    "noise_floor",
    "pearson_delta",
    "privacy",
    "rank_degs",
    "split_halves",
    "summarize",
    "zero_fraction_distance",
]
