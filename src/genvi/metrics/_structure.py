"""Distribution-shape distances: correlations, zero fractions, library sizes, count profiles."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.stats import wasserstein_distance

from ._expression import _as_expression


def _correlation_matrix(x: np.ndarray) -> np.ndarray:
    """Pearson correlation between columns; pairs involving a constant column count as 0."""
    centred = x - x.mean(axis=0)
    norms = np.sqrt((centred * centred).sum(axis=0))
    # A gene that never varies in one set (e.g. never detected) has no defined correlation;
    # 0 ("unrelated") keeps the distance finite and penalises a generator that loses the signal.
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    unit = centred * scale
    return unit.T @ unit


def correlation_distance(
    real_log: np.ndarray | sp.spmatrix | sp.sparray,
    gen_log: np.ndarray | sp.spmatrix | sp.sparray,
) -> float:
    """Root-mean-square difference of the gene-gene Pearson correlation matrices.

    ``sqrt(sum_{i != j} (C_real[i, j] - C_gen[i, j])^2 / (g (g - 1)))``, i.e. the Frobenius norm
    of the difference divided by the square root of the number of off-diagonal entries, so that
    the value reads as a typical error of one correlation coefficient (0 to 2; 0 for
    identical correlation structure). Correlations of a gene that is constant in one set are
    taken as 0.

    Parameters
    ----------
    real_log
        Real cells, shape ``(n_real, g)``, log-normalised expression of the chosen genes
        (e.g. the 200 most expressed genes of a :class:`~genvi.metrics.ReferenceSpace`).
    gen_log
        Generated cells, shape ``(n_gen, g)``, same genes in the same order.

    Returns
    -------
    float
        The distance; NaN with fewer than 2 genes.
    """
    real = _as_expression(real_log, "real_log")
    gen = _as_expression(gen_log, "gen_log")
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f"Different numbers of genes: {real.shape[1]} vs {gen.shape[1]}.")
    g = real.shape[1]
    if g < 2:
        return float("nan")
    diff = _correlation_matrix(real) - _correlation_matrix(gen)
    np.fill_diagonal(diff, 0.0)
    return float(np.sqrt((diff * diff).sum() / (g * (g - 1))))


def _zero_fractions(x: np.ndarray | sp.spmatrix | sp.sparray) -> np.ndarray:
    n = x.shape[0]
    if sp.issparse(x):
        # `!= 0` rather than the stored entries: explicitly stored zeros are zeros too.
        nonzero = np.asarray((x != 0).sum(axis=0), dtype=np.float64).ravel()
        return (n - nonzero) / n
    return (np.asarray(x) == 0).sum(axis=0) / n


def zero_fraction_distance(
    real: np.ndarray | sp.spmatrix | sp.sparray,
    gen: np.ndarray | sp.spmatrix | sp.sparray,
) -> float:
    """Mean absolute difference of the per-gene fractions of zero entries.

    Counts and their ``log1p``-normalised values have the same zeros, so either can be
    passed.

    Parameters
    ----------
    real
        Real cells, shape ``(n_real, n_genes)``.
    gen
        Generated cells, shape ``(n_gen, n_genes)``, same genes in the same order.

    Returns
    -------
    float
        ``mean_g |zero_frac_real[g] - zero_frac_gen[g]|``, between 0 and 1.
    """
    if real.ndim != 2 or gen.ndim != 2:
        raise ValueError("`real` and `gen` must be 2-D arrays (cells x genes).")
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f"Different numbers of genes: {real.shape[1]} vs {gen.shape[1]}.")
    if real.shape[0] < 1 or gen.shape[0] < 1:
        raise ValueError("`real` and `gen` need at least one cell each.")
    return float(np.abs(_zero_fractions(real) - _zero_fractions(gen)).mean())


def library_size_distance(real_library: np.ndarray, gen_library: np.ndarray) -> float:
    """1-D Wasserstein (earth mover's) distance between ``log1p`` library sizes.

    On the log scale a value of ``d`` means library sizes off by a factor of about ``e^d``;
    ``log1p`` keeps empty cells finite.

    Parameters
    ----------
    real_library
        Total counts per real cell, shape ``(n_real,)``.
    gen_library
        Total counts per generated cell, shape ``(n_gen,)``.

    Returns
    -------
    float
        The distance (0 for identical distributions).
    """
    real = np.asarray(real_library, dtype=np.float64).ravel()
    gen = np.asarray(gen_library, dtype=np.float64).ravel()
    if real.size < 1 or gen.size < 1:
        raise ValueError("Need at least one library size on each side.")
    if (
        np.any(real < 0)
        or np.any(gen < 0)
        or not (np.isfinite(real).all() and np.isfinite(gen).all())
    ):
        raise ValueError("Library sizes must be finite and non-negative.")
    return float(wasserstein_distance(np.log1p(real), np.log1p(gen)))


#: names of the columns of :func:`count_profile`
COUNT_PROFILE_FEATURES = ("log_library", "log_detected", "multi_count_fraction")


def count_profile(
    counts: np.ndarray | sp.spmatrix | sp.sparray, library: np.ndarray | None = None
) -> np.ndarray:
    """Per-cell summary of the shape of a count vector, ``(n_cells, 3)``.

    Columns (names in ``COUNT_PROFILE_FEATURES``): ``log1p`` of the library size, ``log1p`` of the
    number of detected (non-zero) genes, and the fraction of detected genes with at least two
    counts. Why: at a given depth, how a cell's counts split into singletons and repeated counts
    is set by the count noise (Poisson vs negative binomial, the dispersion), which the
    log-normalised PCA space barely sees. On pbmc3k the fraction alone (over all genes) told the
    default PriorVI's generated cells from held-out cells with AUROC 0.87, while the 50-PC
    classifier gave 0.60 (issue #20).

    Parameters
    ----------
    counts
        Counts, shape ``(n_cells, n_genes)``, dense or sparse; entries of at least 2 count as
        repeated (values are not rounded).
    library
        Library size per cell; ``None`` uses the row sums of ``counts``.

    Returns
    -------
    numpy.ndarray
        Float64 array of shape ``(n_cells, 3)``; a cell without detected genes has fraction 0.
    """
    if counts.ndim != 2:
        raise ValueError("`counts` must be a 2-D array (cells x genes).")
    if library is not None:
        totals = np.asarray(library, dtype=np.float64).ravel()
        if totals.shape[0] != counts.shape[0]:
            raise ValueError(
                f"`library` has {totals.shape[0]} entries for {counts.shape[0]} cells."
            )
    x = sp.csr_matrix(counts) if sp.issparse(counts) else np.asarray(counts)
    detected = np.asarray((x != 0).sum(axis=1), dtype=np.float64).ravel()
    repeated = np.asarray((x >= 2).sum(axis=1), dtype=np.float64).ravel()
    if library is None:  # row sums only when the caller has no library sizes
        totals = np.asarray(x.sum(axis=1, dtype=np.float64)).ravel()
    fraction = np.divide(repeated, detected, out=np.zeros_like(detected), where=detected > 0)
    return np.column_stack([np.log1p(totals), np.log1p(detected), fraction])
