"""What a model remembers of its training cells to generate realistic library sizes."""

from __future__ import annotations

import numpy as np


def draw_reference_cells(
    train_codes: np.ndarray,
    cat: np.ndarray,
    keep_cat: np.ndarray,
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices of training cells drawn uniformly among those matching a condition.

    Only the specified categorical keys (``keep_cat``) must match. When no training cell
    matches (an unseen combination), keys are relaxed from the last one until some do, so
    library sizes come from the closest observed population rather than from everywhere.

    Parameters
    ----------
    train_codes
        ``(n_train, n_categorical)`` codes of the training cells.
    cat, keep_cat
        Codes of the requested condition and which of them are specified.
    n
        Number of cells to draw.
    rng
        Random generator.
    """
    keys = list(np.flatnonzero(keep_cat))
    while True:
        if keys:
            match = np.all(train_codes[:, keys] == cat[keys], axis=1)
            idx = np.flatnonzero(match)
        else:
            idx = np.arange(train_codes.shape[0])
        if len(idx) > 0:
            return rng.choice(idx, size=n, replace=True)
        keys.pop()
