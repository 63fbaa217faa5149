"""Per-gene mean and variance of real vs generated cells."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._utils import finish


def _select(adata: AnnData, condition: Mapping[str, Any] | None, name: str) -> AnnData:
    if not condition:
        return adata
    missing = [k for k in condition if k not in adata.obs.columns]
    if missing:
        raise KeyError(f"Condition key(s) {missing} not found in `{name}.obs`.")
    mask = np.ones(adata.n_obs, dtype=bool)
    for key, value in condition.items():
        mask &= (adata.obs[key].astype(str) == str(value)).to_numpy()
    if mask.sum() < 2:
        raise ValueError(f"`{name}` has {int(mask.sum())} cells of {dict(condition)}; need 2.")
    return adata[mask]


def _normalized_mean_var(
    adata: AnnData, genes: Sequence[str], layer: str | None = None, target_sum: float = 1e4
) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and variance (``ddof=1``) of counts scaled to ``target_sum`` per cell.

    Library sizes are totals over all genes of ``adata``; sparse input stays sparse.
    """
    from genvi.metrics._space import _get_counts

    counts = _get_counts(adata, layer)
    idx = adata.var_names.get_indexer(pd.Index(genes))
    if (idx < 0).any():
        raise ValueError(f"{int((idx < 0).sum())} genes are missing from the AnnData.")
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(
        target_sum, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0
    )
    n = counts.shape[0]
    if sp.issparse(counts):
        x = sp.csr_matrix(sp.diags(scale) @ sp.csr_matrix(counts)[:, idx].astype(np.float64))
        mean = np.asarray(x.mean(axis=0)).ravel()
        sq = np.asarray(x.multiply(x).mean(axis=0)).ravel()
        # E[x^2] - E[x]^2 keeps the matrix sparse; clip the tiny negative rounding errors.
        var = np.maximum(sq - mean**2, 0.0) * n / max(n - 1, 1)
        return mean, var
    x = np.asarray(counts, dtype=np.float64)[:, idx] * scale[:, None]
    return x.mean(axis=0), x.var(axis=0, ddof=1)


def _loglog_panel(
    ax: Axes, real: np.ndarray, gen: np.ndarray, what: str, unit: str, **kwargs: Any
) -> None:
    positive = np.concatenate([real[real > 0], gen[gen > 0]])
    # Genes with a zero statistic cannot sit on a log axis; draw them, hollow, at the lower edge.
    low = positive.min() / 2 if positive.size else 1e-3
    x, y = np.maximum(real, low), np.maximum(gen, low)
    zero = (real <= 0) | (gen <= 0)
    size, alpha = kwargs.pop("s", 8), kwargs.pop("alpha", 0.6)
    ax.scatter(x[~zero], y[~zero], s=size, alpha=alpha, **kwargs)
    if zero.any():
        ax.scatter(
            x[zero],
            y[zero],
            s=size,
            facecolors="none",
            edgecolors="tab:red",
            label=f"{int(zero.sum())} genes with zero {what} (at the edge)",
        )
    lims = [min(x.min(), y.min()) / 1.5, max(x.max(), y.max()) * 1.5]
    ax.plot(lims, lims, color="0.3", linestyle="--", linewidth=1, label="identity")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lims)
    ax.set_ylim(lims)
    both = ~zero
    r = np.corrcoef(np.log10(real[both]), np.log10(gen[both]))[0, 1] if both.sum() > 2 else np.nan
    ax.set_xlabel(f"real cells: {what} ({unit})")
    ax.set_ylabel(f"generated cells: {what} ({unit})")
    ax.set_title(f"per-gene {what} (log-log r = {r:.3f})")
    ax.legend(loc="upper left", fontsize=8)


def mean_var_scatter(
    real: AnnData,
    synthetic: AnnData,
    condition: Mapping[str, Any] | None = None,
    genes: Sequence[str] | None = None,
    *,
    layer: str | None = None,
    synthetic_layer: str | None = None,
    target_sum: float = 1e4,
    ax: Sequence[Axes] | None = None,
    show: bool = False,
    save: str | Path | None = None,
    **scatter_kwargs: Any,
) -> Figure:
    """Per-gene mean and variance of real vs generated cells, log-log, with the identity line.

    Each point is a gene; statistics are over cells of counts scaled to ``target_sum`` per cell
    (total over all genes), i.e. normalised expression, not raw counts. Points on the dashed
    identity line are reproduced exactly. Genes with a zero mean or variance in either set are
    drawn hollow at the lower edge of the axes and counted in the legend. Titles give the
    Pearson r of the log10 statistics over genes where both are positive.

    Parameters
    ----------
    real
        Real cells with counts in ``X`` (or ``layer``).
    synthetic
        Generated cells with counts in ``X`` (or ``synthetic_layer``).
    condition
        Restrict both sets to cells with these ``obs`` values, e.g. ``{"cell_type": "B"}``.
    genes
        Genes to show; default: the genes of ``synthetic`` (all must be in ``real``).
    layer
        Layer of ``real`` holding counts; ``None`` uses ``X``.
    synthetic_layer
        Layer of ``synthetic`` holding counts; ``None`` uses ``X``.
    target_sum
        Library size each cell is scaled to.
    ax
        Two axes to draw the mean and variance panels into; a new figure when ``None``.
    show
        Show the figure (``plt.show``).
    save
        Path to write the figure to.
    **scatter_kwargs
        Passed to ``Axes.scatter`` (e.g. ``s``, ``alpha``, ``color``).

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding the two panels; ``fig.axes[i].collections[0]`` has one point per gene.
    """
    import matplotlib.pyplot as plt

    real = _select(real, condition, "real")
    synthetic = _select(synthetic, condition, "synthetic")
    genes = list(synthetic.var_names if genes is None else genes)
    real_mean, real_var = _normalized_mean_var(real, genes, layer, target_sum)
    gen_mean, gen_var = _normalized_mean_var(synthetic, genes, synthetic_layer, target_sum)
    if ax is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    else:
        axes = list(ax)
        if len(axes) != 2:
            raise ValueError(f"`ax` must hold 2 axes (mean, variance), got {len(axes)}.")
        fig = axes[0].figure
    unit = f"counts per {target_sum:g}, normalised per cell"
    _loglog_panel(axes[0], real_mean, gen_mean, "mean", unit, **dict(scatter_kwargs))
    _loglog_panel(axes[1], real_var, gen_var, "variance", unit, **dict(scatter_kwargs))
    if condition:
        fig.suptitle(", ".join(f"{k} = {v}" for k, v in condition.items()))
    if ax is None:
        fig.tight_layout()
    finish(fig, show, save)
    return fig
