"""Embedded default dataset: integer counts recovered from scanpy's ``pbmc68k_reduced``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

_TARGET_SUM = 1e4
# Thresholds on the distance of recovered counts to the nearest integer. The bundled
# log-normalised values were stored rounded (float32, 3 decimals), so the recovered counts
# are off by at most ~0.08 absolute and ~8e-4 relative; a wrong recipe (other target sum,
# other totals, no log) is off by far more than these bounds.
_MAX_ABS_DEVIATION = 0.25
_MAX_REL_DEVIATION = 2e-3


def _check_integer_counts(values: np.ndarray) -> None:
    """Check that recovered (float) counts are integers up to storage rounding.

    Parameters
    ----------
    values
        The recovered values of the *stored nonzero* entries (any shape), in float64.

    Raises
    ------
    RuntimeError
        If any value is far from an integer (absolutely or relatively), if a stored nonzero
        would round to a count below 1, or if a value is not finite.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise RuntimeError("count recovery failed: non-finite recovered counts")
    rounded = np.round(values)
    # checked first: a vanishing nonzero would otherwise be reported as a relative deviation
    n_below_one = int((rounded < 1.0).sum())
    if n_below_one:
        raise RuntimeError(
            f"count recovery failed: {n_below_one} stored nonzero entries round to a count < 1"
        )
    deviation = np.abs(values - rounded)
    max_abs = float(deviation.max())
    if max_abs >= _MAX_ABS_DEVIATION:
        raise RuntimeError(
            "count recovery failed: recovered counts are not integers "
            f"(max |c - round(c)| = {max_abs:.3g} >= {_MAX_ABS_DEVIATION})"
        )
    max_rel = float((deviation / np.maximum(rounded, 1.0)).max())
    if max_rel >= _MAX_REL_DEVIATION:
        raise RuntimeError(
            "count recovery failed: recovered counts are not integers "
            f"(max relative deviation {max_rel:.3g} >= {_MAX_REL_DEVIATION})"
        )


def _recover_counts(
    log_normalized: sp.spmatrix | np.ndarray,
    totals: np.ndarray,
    target_sum: float = _TARGET_SUM,
) -> sp.csr_matrix:
    """Invert ``log1p(counts / totals * target_sum)`` back to integer counts.

    Parameters
    ----------
    log_normalized
        Cells × genes matrix of ``log1p`` normalised expression.
    totals
        Per-cell totals that were used for the normalisation (length ``n_cells``).
    target_sum
        The per-cell target sum of the normalisation.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32 CSR matrix with integer values, sorted indices and no explicit zeros.

    Raises
    ------
    RuntimeError
        If the recovered values are not integer counts (see :func:`_check_integer_counts`).
    """
    matrix = sp.csr_matrix(log_normalized, dtype=np.float64, copy=True)
    matrix.eliminate_zeros()
    totals = np.asarray(totals, dtype=np.float64).ravel()
    if totals.shape[0] != matrix.shape[0]:
        raise ValueError(f"got {totals.shape[0]} totals for {matrix.shape[0]} cells")
    # float64 throughout: float32 expm1 of values up to ~7 loses the precision the check needs
    row_of_entry = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    values = np.expm1(matrix.data) * totals[row_of_entry] / target_sum
    _check_integer_counts(values)
    matrix.data = np.round(values)
    counts = matrix.astype(np.float32)
    counts.sort_indices()
    return counts


def pbmc68k() -> ad.AnnData:
    """700 PBMCs × 765 genes with integer counts, recovered from ``pbmc68k_reduced``.

    scanpy bundles :func:`scanpy.datasets.pbmc68k_reduced`, whose ``.raw.X`` holds
    ``log1p(counts / n_counts * 1e4)`` with ``n_counts`` the cell's total over the *full*
    gene set. The counts are recovered as ``round(expm1(raw.X) * n_counts / 1e4)`` and
    checked to be integers. Because only 765 genes are kept, the row sums of the recovered
    matrix are smaller than the original totals.

    Returns
    -------
    anndata.AnnData
        ``X`` and ``layers["counts"]``: float32 CSR count matrices (independent copies).
        ``obs`` columns: ``cell_type`` (categorical, the bulk sorting labels, 10 categories),
        ``phase`` (categorical cell-cycle phase), ``n_counts_original`` (the cell's total
        over all genes of the original matrix), ``n_counts`` (row sums of the recovered
        counts) and ``percent_mito``. ``uns["genvi_dataset"]`` describes the source.

    Raises
    ------
    RuntimeError
        If the recovered values are not integer counts (e.g. a changed upstream file).
    """
    # scanpy is heavy to import; keep ``import genvi.data`` cheap for simulate() users
    import scanpy as sc

    source = sc.datasets.pbmc68k_reduced()
    if source.raw is None:
        raise RuntimeError("scanpy's pbmc68k_reduced has no .raw; cannot recover counts")
    original_totals = source.obs["n_counts"].to_numpy(dtype=np.float64)
    counts = _recover_counts(source.raw.X, original_totals)

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(source.obs["bulk_labels"]),
            "phase": pd.Categorical(source.obs["phase"]),
            "n_counts_original": original_totals.astype(np.float32),
            "n_counts": np.asarray(counts.sum(axis=1)).ravel().astype(np.float32),
            "percent_mito": source.obs["percent_mito"].to_numpy(dtype=np.float32),
        },
        index=pd.Index(np.asarray(source.obs_names, dtype=str)),
    )
    var = pd.DataFrame(index=pd.Index(np.asarray(source.raw.var_names, dtype=str)))
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    # a separate copy so in-place normalisation of X (e.g. sc.pp.normalize_total) keeps counts
    adata.layers["counts"] = counts.copy()
    adata.uns["genvi_dataset"] = {
        "name": "pbmc68k_reduced",
        "source": "scanpy.datasets.pbmc68k_reduced, counts recovered from raw.X and obs n_counts",
    }
    return adata
