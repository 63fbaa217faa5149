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
