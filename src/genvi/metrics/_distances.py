"""Two-sample distances between point clouds (cells x dims)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.spatial.distance import cdist, pdist
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

DEFAULT_BANDWIDTH_SCALES: tuple[float, ...] = (0.5, 1.0, 2.0)


def _as_points(x: np.ndarray, name: str, min_rows: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (cells x dims), got shape {x.shape}.")
    if x.shape[0] < min_rows:
        raise ValueError(f"`{name}` needs at least {min_rows} rows, got {x.shape[0]}.")
    if not np.isfinite(x).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return x


def _as_pair(x: np.ndarray, y: np.ndarray, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    x = _as_points(x, "x", min_rows)
    y = _as_points(y, "y", min_rows)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"`x` and `y` differ in dimension: {x.shape[1]} vs {y.shape[1]}.")
    return x, y


def _subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` rows of ``x``, drawn without replacement; ``x`` itself if it is small."""
    if x.shape[0] <= n:
        return x
    return x[rng.choice(x.shape[0], size=n, replace=False)]


def energy_distance(x: np.ndarray, y: np.ndarray, max_cells: int = 2000, seed: int = 0) -> float:
    """Energy distance between two samples, ``2E|X-Y| - E|X-X'| - E|Y-Y'|``.

    Euclidean distances; the within-sample terms are U-statistics (mean over distinct pairs), so
    the estimate is unbiased: it is about 0 for two samples of one distribution and may be
    slightly negative.

    Parameters
    ----------
    x, y
        Samples of shape ``(n_x, d)`` and ``(n_y, d)``, at least 2 rows each.
    max_cells
        Each side is randomly subsampled to at most this many rows, for speed.
    seed
        Seed of the subsampling.

    Returns
    -------
    float
        The energy distance (in the units of the inputs).
    """
    x, y = _as_pair(x, y)
    rng = np.random.default_rng(seed)
    x, y = _subsample(x, max_cells, rng), _subsample(y, max_cells, rng)
    cross = cdist(x, y).mean()
    return float(2.0 * cross - pdist(x).mean() - pdist(y).mean())


def median_heuristic_bandwidths(
    *samples: np.ndarray,
    scales: Sequence[float] = DEFAULT_BANDWIDTH_SCALES,
    max_cells: int = 2000,
    seed: int = 0,
) -> list[float]:
    """RBF bandwidths from the median pairwise Euclidean distance of the pooled samples.

    Parameters
    ----------
    *samples
        One or more arrays of shape ``(n_i, d)``; each is subsampled to ``max_cells`` rows and
        all are pooled.
    scales
        Multipliers of the median distance.
    max_cells
        Subsampling cap per sample.
    seed
        Seed of the subsampling.

    Returns
    -------
    list of float
        ``median * scale`` for each scale.
    """
    if not samples:
        raise ValueError("Pass at least one sample.")
    rng = np.random.default_rng(seed)
    pooled = np.vstack(
        [
            _subsample(_as_points(s, f"samples[{i}]", 1), max_cells, rng)
            for i, s in enumerate(samples)
        ]
    )
    if pooled.shape[0] < 2:
        raise ValueError("Need at least 2 points in total to compute pairwise distances.")
    dists = pdist(pooled)
    median = float(np.median(dists))
    if median <= 0:
        # Many duplicated points: fall back to the typical non-zero distance (or 1) so the
        # kernel stays defined.
        positive = dists[dists > 0]
        median = float(np.median(positive)) if positive.size else 1.0
    return [median * float(s) for s in scales]


def _rbf_sum(sq_dists: np.ndarray, bandwidths: Sequence[float]) -> np.ndarray:
    return sum(np.exp(-sq_dists / (2.0 * s**2)) for s in bandwidths)


def mmd_rbf(
    x: np.ndarray,
    y: np.ndarray,
    bandwidths: Sequence[float] | None = None,
    max_cells: int = 2000,
    seed: int = 0,
) -> tuple[float, list[float]]:
    """Unbiased squared MMD with a sum of RBF kernels.

    The kernel is ``k(a, b) = sum_s exp(-|a - b|^2 / (2 s^2))`` over the bandwidths ``s``.
    Within-sample terms exclude the diagonal (U-statistic), so the estimate is about 0 for two
    samples of one distribution and may be slightly negative; its maximum is
    ``2 * len(bandwidths)``.

    Parameters
    ----------
    x, y
        Samples of shape ``(n_x, d)`` and ``(n_y, d)``, at least 2 rows each.
    bandwidths
        Kernel bandwidths. ``None`` uses :func:`median_heuristic_bandwidths` of the pooled
        (subsampled) ``x`` and ``y``, scales ``(0.5, 1, 2)``. Pass fixed bandwidths to compare
        values across calls.
    max_cells
        Each side is randomly subsampled to at most this many rows, for speed.
    seed
        Seed of the subsampling.

    Returns
    -------
    mmd2
        The squared MMD estimate.
    bandwidths
        The bandwidths used, to be reported alongside the value.
    """
    x, y = _as_pair(x, y)
    rng = np.random.default_rng(seed)
    x, y = _subsample(x, max_cells, rng), _subsample(y, max_cells, rng)
    if bandwidths is None:
        bandwidths = median_heuristic_bandwidths(x, y, max_cells=max_cells, seed=seed)
    bandwidths = [float(s) for s in bandwidths]
    if not bandwidths or min(bandwidths) <= 0:
        raise ValueError(f"Bandwidths must be positive, got {bandwidths}.")
    kxx = _rbf_sum(pdist(x, "sqeuclidean"), bandwidths).mean()
    kyy = _rbf_sum(pdist(y, "sqeuclidean"), bandwidths).mean()
    kxy = _rbf_sum(cdist(x, y, "sqeuclidean"), bandwidths).mean()
    return float(kxx + kyy - 2.0 * kxy), bandwidths


def _make_classifier(classifier: str, n_train: int, n_neighbors: int) -> BaseEstimator:
    if classifier == "logistic":
        # PCs have very different variances; scaling keeps the L2 penalty even across them.
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    if classifier == "knn":
        # No scaling: Euclidean distance in PC space is the geometry the other metrics use.
        return KNeighborsClassifier(n_neighbors=max(1, min(n_neighbors, n_train - 1)))
    raise ValueError(f"`classifier` must be 'logistic' or 'knn', got {classifier!r}.")


def c2st_auroc(
    x: np.ndarray,
    y: np.ndarray,
    n_folds: int = 5,
    seed: int = 0,
    classifier: Literal["logistic", "knn"] = "logistic",
    max_cells: int = 2000,
    n_neighbors: int = 15,
) -> float:
    """Classifier two-sample test: cross-validated AUROC of telling ``x`` from ``y``.

    The larger sample is subsampled so that both classes have the same size (at most
    ``max_cells``); the AUROC is averaged over stratified folds. 0.5 means indistinguishable,
    1.0 perfectly separable (values below 0.5 are chance fluctuations).

    Parameters
    ----------
    x, y
        Samples of shape ``(n_x, d)`` and ``(n_y, d)``, at least 2 rows each.
    n_folds
        Number of cross-validation folds, capped at the per-class sample size.
    seed
        Seed of the subsampling and of the fold assignment.
    classifier
        ``"logistic"`` (standardised features + L2 logistic regression) or ``"knn"``
        (k-nearest neighbours on the raw coordinates).
    max_cells
        Cap on the number of rows per class.
    n_neighbors
        Neighbours for ``"knn"``.

    Returns
    -------
    float
        Mean held-out AUROC.
    """
    x, y = _as_pair(x, y)
    if n_folds < 2:
        raise ValueError("`n_folds` must be at least 2.")
    rng = np.random.default_rng(seed)
    n = min(x.shape[0], y.shape[0], max_cells)
    x, y = _subsample(x, n, rng), _subsample(y, n, rng)
    data = np.vstack([x, y])
    labels = np.repeat([0, 1], n)
    folds = StratifiedKFold(n_splits=min(n_folds, n), shuffle=True, random_state=seed)
    aucs = []
    for train, test in folds.split(data, labels):
        model = _make_classifier(classifier, len(train), n_neighbors)
        model.fit(data[train], labels[train])
        aucs.append(roc_auc_score(labels[test], model.predict_proba(data[test])[:, 1]))
    return float(np.mean(aucs))
