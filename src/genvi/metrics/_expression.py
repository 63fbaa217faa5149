"""Agreement of per-gene expression statistics between real and generated cells."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.metrics import r2_score


def _as_expression(x: np.ndarray | sp.spmatrix | sp.sparray, name: str) -> np.ndarray:
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    x = x.astype(np.float64, copy=False)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D array (cells x genes), got shape {x.shape}.")
    if x.shape[0] < 2:
        raise ValueError(f"`{name}` needs at least 2 cells to estimate variances.")
    return x


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    # Undefined when one side is constant; NaN rather than a warning or a misleading 0.
    return float(a @ b / denom) if denom > 0 else float("nan")


def mean_var_agreement(
    real_log: np.ndarray | sp.spmatrix | sp.sparray,
    gen_log: np.ndarray | sp.spmatrix | sp.sparray,
) -> dict[str, float]:
    """Agreement of per-gene means and variances of log-normalised expression.

    For each gene the mean and the (``ddof=1``) variance over cells are computed in both sets;
    the agreement across genes is measured by R² (``sklearn.metrics.r2_score`` with the *real*
    statistics as ``y_true``; it can be negative) and by the Pearson correlation.

    Parameters
    ----------
    real_log
        Real cells, shape ``(n_real, n_genes)``, e.g. from
        :meth:`~genvi.metrics.ReferenceSpace.log_normalize`.
    gen_log
        Generated cells, shape ``(n_gen, n_genes)``, same genes in the same order.

    Returns
    -------
    dict
        ``mean_r2``, ``var_r2``, ``mean_pearson``, ``var_pearson`` (floats; Pearson is NaN when
        one side is constant across genes).
    """
    real = _as_expression(real_log, "real_log")
    gen = _as_expression(gen_log, "gen_log")
    if real.shape[1] != gen.shape[1]:
        raise ValueError(f"Different numbers of genes: {real.shape[1]} vs {gen.shape[1]}.")
    real_mean, gen_mean = real.mean(axis=0), gen.mean(axis=0)
    real_var, gen_var = real.var(axis=0, ddof=1), gen.var(axis=0, ddof=1)
    return {
        "mean_r2": float(r2_score(real_mean, gen_mean)),
        "var_r2": float(r2_score(real_var, gen_var)),
        "mean_pearson": _pearson(real_mean, gen_mean),
        "var_pearson": _pearson(real_var, gen_var),
    }
