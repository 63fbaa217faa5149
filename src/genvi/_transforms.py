"""Expression transforms shared by the models and the metrics (no torch, no model imports)."""

from __future__ import annotations

import numpy as np

TRANSFORMS = ("counts", "normalized", "log1p")


def transform_expression(x: np.ndarray, transform: str, target_sum: float = 1e4) -> np.ndarray:
    """Counts to ``"counts"``, ``"normalized"`` (to ``target_sum`` per cell) or ``"log1p"``.

    Parameters
    ----------
    x
        Dense counts, cells x genes.
    transform
        One of :data:`TRANSFORMS`.
    target_sum
        Total per cell after normalisation.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {list(TRANSFORMS)}, got {transform!r}.")
    if transform == "counts":
        return x
    totals = np.maximum(x.sum(1, keepdims=True), 1.0)
    x = x / totals * target_sum
    return np.log1p(x) if transform == "log1p" else x


def jittered_expression(
    x: np.ndarray,
    transform: str,
    target_sum: float = 1e4,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """``transform`` of the continuous extension of counts, ``x + U`` with ``U ~ U[0, 1)``.

    Each count is spread uniformly over ``[x, x + 1)``; normalisation divides by the cell's
    un-jittered total, so one count spans :func:`count_step` on the ``"normalized"`` scale.
    Quantiles of these values are the randomised predictive intervals of discrete counts.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {list(TRANSFORMS)}, got {transform!r}.")
    rng = np.random.default_rng() if rng is None else rng
    x = np.asarray(x, dtype=np.float64)
    jittered = x + rng.uniform(size=x.shape)
    if transform == "counts":
        return jittered
    totals = np.maximum(x.sum(1, keepdims=True), 1.0)
    v = jittered / totals * target_sum
    return np.log1p(v) if transform == "log1p" else v


def count_step(x: np.ndarray, transform: str, target_sum: float = 1e4) -> np.ndarray:
    """Width of one count per cell, shape ``(n_cells, 1)``.

    1 for ``"counts"``, else ``target_sum / total`` (on the linear ``"normalized"`` scale, also
    for ``"log1p"``).
    """
    x = np.asarray(x, dtype=np.float64)
    if transform == "counts":
        return np.ones((x.shape[0], 1))
    return target_sum / np.maximum(x.sum(1, keepdims=True), 1.0)
