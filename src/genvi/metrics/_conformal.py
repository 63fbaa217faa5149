"""Conformal p-values for outlier scores and Benjamini-Hochberg false-discovery control.

Any outlier score (higher = more outlying) becomes a p-value by ranking it among the scores of
*reference* cells: cells of the populations the model knows that it did **not** train on (a
held-out split of the training data). If a query cell is exchangeable with the reference cells
(drawn from the same distribution, e.g. a typical cell of a known type), its conformal p-value

    p = (1 + #{reference scores >= score}) / (n_reference + 1)

is super-uniform, ``P(p <= alpha) <= alpha`` for every ``alpha``, with no assumption on the
score or the model (Vovk et al. 2005; Laxhammar & Falkman 2015). Conformal p-values of many
query cells computed against the same reference are positively dependent (PRDS), so the
Benjamini-Hochberg procedure on them controls the false-discovery rate (Bates, Candès, Lei,
Romano & Sesia 2023, "Testing for outliers with conformal p-values", Ann. Statist.).

Guarantees hold for the reference you pass: cells the model trained on score lower (more
typical) than new cells, which makes p-values of new typical cells too small. Use cells held
out of training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_scores(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional, got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` holds {int((~np.isfinite(arr)).sum())} non-finite values.")
    return arr


def conformal_pvalues(
    scores: Sequence[float] | np.ndarray,
    reference_scores: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    reference_groups: Sequence | np.ndarray | None = None,
    randomize: bool = False,
    seed: int | None = 0,
) -> np.ndarray:
    """Conformal p-values of outlier scores against reference cells (higher score = outlier).

    Parameters
    ----------
    scores
        Scores of the query cells, shape ``(n,)``.
    reference_scores
        Scores of reference cells of the known populations that the model did **not** train on
        (e.g. a held-out 10 % of the training data), shape ``(m,)``. The smallest possible
        p-value is ``1 / (m + 1)``: use a few hundred reference cells or more for small
        ``alpha``.
    groups, reference_groups
        Optional labels (e.g. depth bins, batches): each query cell is then ranked only among
        the reference cells of its own group (Mondrian conformal), so the guarantee holds
        within every group. A group without reference cells gets p-value 1.
    randomize
        Break ties (and the ``1 / (m + 1)`` grid) with a uniform draw, which makes p-values of
        exchangeable cells exactly uniform instead of super-uniform:
        ``(#{ref > s} + U * (1 + #{ref == s})) / (m + 1)``.
    seed
        Seed of the tie-breaking draw.

    Returns
    -------
    numpy.ndarray
        p-values in ``(0, 1]``, shape ``(n,)``: small means "unlike the reference cells".

    Examples
    --------
    >>> calib = model.adata[model.validation_indices]  # cells the model did not train on
    >>> scores = model.score_outliers(anndata.concat([calib, query]))  # one call, one space
    >>> ref, s = scores[: calib.n_obs], scores[calib.n_obs :]
    >>> p = genvi.metrics.conformal_pvalues(s, ref)
    >>> flagged = genvi.metrics.flag_outliers(p, fdr=0.1, pvalues=True)
    """
    scores = _as_scores(scores, "scores")
    reference = _as_scores(reference_scores, "reference_scores")
    if reference.size == 0:
        raise ValueError("`reference_scores` is empty: conformal p-values need reference cells.")
    rng = np.random.default_rng(seed)
    if (groups is None) != (reference_groups is None):
        raise ValueError("Pass both `groups` and `reference_groups`, or neither.")
    if groups is None:
        return _pvalues(scores, reference, randomize, rng)
    groups = np.asarray(groups)
    reference_groups = np.asarray(reference_groups)
    if groups.shape != scores.shape or reference_groups.shape != reference.shape:
        raise ValueError("`groups` / `reference_groups` must match the scores' shapes.")
    out = np.ones_like(scores)
    for g in np.unique(groups):
        q = groups == g
        r = reference[reference_groups == g]
        if r.size:
            out[q] = _pvalues(scores[q], r, randomize, rng)
    return out


def _pvalues(scores: np.ndarray, reference: np.ndarray, randomize: bool, rng) -> np.ndarray:
    ref = np.sort(reference)
    m = ref.size
    n_greater = m - np.searchsorted(ref, scores, side="right")  # #{ref > s}
    n_equal = np.searchsorted(ref, scores, side="right") - np.searchsorted(ref, scores, "left")
    if randomize:
        u = rng.uniform(size=scores.shape)
        return (n_greater + u * (1 + n_equal)) / (m + 1)
    return (1 + n_greater + n_equal) / (m + 1)


def benjamini_hochberg(pvalues: Sequence[float] | np.ndarray, fdr: float = 0.1) -> np.ndarray:
    """Benjamini-Hochberg rejections at false-discovery rate ``fdr`` (boolean mask)."""
    p = _as_scores(pvalues, "pvalues")
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must lie in (0, 1), got {fdr}.")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1].")
    n = p.size
    if n == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    below = p[order] <= fdr * np.arange(1, n + 1) / n
    flags = np.zeros(n, dtype=bool)
    if below.any():
        k = int(np.flatnonzero(below).max())
        flags[order[: k + 1]] = True
    return flags


def flag_outliers(
    scores: Sequence[float] | np.ndarray,
    reference_scores: Sequence[float] | np.ndarray | None = None,
    fdr: float = 0.1,
    *,
    pvalues: bool = False,
    groups: Sequence | np.ndarray | None = None,
    reference_groups: Sequence | np.ndarray | None = None,
) -> np.ndarray:
    """Flag outliers with the false-discovery rate controlled at ``fdr``.

    Turns the scores into conformal p-values against ``reference_scores``
    (:func:`conformal_pvalues`) and applies Benjamini-Hochberg: among the flagged cells, the
    expected fraction of cells that are in fact exchangeable with the reference (typical) is
    at most ``fdr``.

    Parameters
    ----------
    scores
        Outlier scores of the query cells (higher = more outlying), or p-values with
        ``pvalues=True``.
    reference_scores
        Scores of reference cells the model did not train on (not needed with ``pvalues``).
    fdr
        Target false-discovery rate in (0, 1).
    pvalues
        ``scores`` are already p-values.
    groups, reference_groups
        Mondrian groups, see :func:`conformal_pvalues`.

    Returns
    -------
    numpy.ndarray
        Boolean mask of flagged cells, shape ``(n,)``.
    """
    if pvalues:
        if reference_scores is not None:
            raise ValueError("Pass reference_scores or pvalues=True, not both.")
        p = _as_scores(scores, "scores")
    else:
        if reference_scores is None:
            raise ValueError("reference_scores are needed to turn scores into p-values.")
        p = conformal_pvalues(scores, reference_scores, groups, reference_groups)
    return benjamini_hochberg(p, fdr)
