"""Predicted vs observed log-fold changes of a counterfactual."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from ._utils import finish


def counterfactual_scatter(
    genes: pd.DataFrame,
    top_k: int = 20,
    n_labels: int = 10,
    *,
    ax: Axes | None = None,
    show: bool = False,
    save: str | Path | None = None,
    **scatter_kwargs: Any,
) -> Axes:
    """Predicted vs observed log-fold change per gene, top DEGs highlighted.

    Parameters
    ----------
    genes
        Per-gene table of :func:`genvi.metrics.counterfactual_lfc` (columns ``lfc_observed``,
        ``lfc_predicted``, ``deg_rank``).
    top_k
        Highlight the ``top_k`` DEGs (Wilcoxon rank between real control and stimulated cells).
    n_labels
        Write the names of the ``n_labels`` top DEGs next to their points.
    ax
        Axes to draw into; a new figure when ``None``.
    show
        Show the figure (``plt.show``).
    save
        Path to write the figure to.
    **scatter_kwargs
        Passed to ``Axes.scatter`` of the all-genes layer.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax.collections[0]`` holds every gene, ``ax.collections[1]`` the top DEGs. The title
        gives the least-squares slope of predicted on observed LFC over all genes (1 = full
        response, 0 = none).
    """
    import matplotlib.pyplot as plt

    missing = {"lfc_observed", "lfc_predicted", "deg_rank"} - set(genes.columns)
    if missing:
        raise KeyError(
            f"`genes` lacks columns {sorted(missing)}; pass genvi.metrics.counterfactual_lfc(...)."
        )
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    x = genes["lfc_observed"].to_numpy(dtype=np.float64)
    y = genes["lfc_predicted"].to_numpy(dtype=np.float64)
    top = genes["deg_rank"].to_numpy() < top_k
    ax.scatter(
        x,
        y,
        s=scatter_kwargs.pop("s", 8),
        color=scatter_kwargs.pop("color", "0.6"),
        alpha=scatter_kwargs.pop("alpha", 0.6),
        label="all genes",
        **scatter_kwargs,
    )
    ax.scatter(x[top], y[top], s=18, color="tab:red", label=f"top {int(top.sum())} DEGs")
    for name in genes.index[genes["deg_rank"].to_numpy() < n_labels]:
        ax.annotate(
            str(name),
            (genes.at[name, "lfc_observed"], genes.at[name, "lfc_predicted"]),
            fontsize=7,
            xytext=(2, 2),
            textcoords="offset points",
        )
    span = max(np.abs(x).max(initial=0.0), np.abs(y).max(initial=0.0)) * 1.1 or 1.0
    ax.plot([-span, span], [-span, span], color="0.3", linestyle="--", linewidth=1)
    ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=0)
    ax.axvline(0.0, color="0.8", linewidth=0.8, zorder=0)
    centred = x - x.mean()
    denom = centred @ centred
    slope = centred @ (y - y.mean()) / denom if denom > 0 else np.nan
    ax.set_xlabel("observed log-fold change")
    ax.set_ylabel("predicted log-fold change")
    ax.set_title(f"counterfactual response (slope {slope:.2f})")
    ax.legend(loc="upper left", fontsize=8)
    finish(ax.figure, show, save)
    return ax
