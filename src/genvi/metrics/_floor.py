"""Noise floor: a metric between two disjoint halves of the same real sample."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def split_halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random disjoint halves of ``range(n)`` (of size ``n // 2``; one index is left out if odd).

    Parameters
    ----------
    n
        Number of items, at least 2.
    rng
        Random generator.

    Returns
    -------
    tuple of numpy.ndarray
        Two index arrays.
    """
    if n < 2:
        raise ValueError(f"Need at least 2 items to split, got {n}.")
    perm = rng.permutation(n)
    half = n // 2
    return perm[:half], perm[half : 2 * half]


def noise_floor(
    real: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], Any],
    n_repeats: int = 1,
    seed: int = 0,
) -> float:
    """Value of ``metric`` between two random disjoint halves of ``real``.

    This is what a perfect generator would score against ``real`` at half the sample size,
    i.e. the level below which differences are sampling noise.

    Parameters
    ----------
    real
        Real cells, shape ``(n_cells, d)`` (rows are split).
    metric
        ``metric(a, b)`` returning a float, or a tuple whose first element is the value (as
        :func:`~genvi.metrics.mmd_rbf` does). Use :func:`functools.partial` to fix options.
    n_repeats
        Number of random splits; the values are averaged.
    seed
        Seed of the splits.

    Returns
    -------
    float
        Mean metric value over the splits.
    """
    real = np.asarray(real)
    if n_repeats < 1:
        raise ValueError("`n_repeats` must be at least 1.")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_repeats):
        a, b = split_halves(real.shape[0], rng)
        value = metric(real[a], real[b])
        values.append(float(value[0] if isinstance(value, tuple) else value))
    return float(np.mean(values))
