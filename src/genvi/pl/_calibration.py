"""Reliability diagram of predictive intervals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes

from genvi.metrics._calibration import LABEL_COLUMN

from ._utils import finish


def calibration_curve(
    table: pd.DataFrame,
    by_condition: bool = True,
    *,
    ax: Axes | None = None,
    show: bool = False,
    save: str | Path | None = None,
) -> Axes:
    """Observed vs nominal coverage of predictive intervals, with the diagonal.

    Points below the diagonal mean intervals too narrow (over-confident: real cells fall
    outside more often than the level says), above too wide (under-confident).

    Parameters
    ----------
    table
        Reliability table of :func:`genvi.metrics.calibration` (columns ``genvi_condition``,
        ``level``, ``coverage``, ``skipped``).
    by_condition
        Also draw one thin line per condition behind the mean over conditions.
    ax
        Axes to draw into; a new figure when ``None``.
    show
        Show the figure (``plt.show``).
    save
        Path to write the figure to.

    Returns
    -------
    matplotlib.axes.Axes
        ``ax.lines``: the diagonal, then one line per scored condition (if ``by_condition``),
        then the mean over conditions (with markers).
    """
    import matplotlib.pyplot as plt

    missing = {LABEL_COLUMN, "level", "coverage"} - set(table.columns)
    if missing:
        raise KeyError(
            f"`table` lacks columns {sorted(missing)}; pass genvi.metrics.calibration(...)."
        )
    scored = table[table["coverage"].notna()]
    if "skipped" in scored.columns:
        scored = scored[scored["skipped"].isna()]
    if scored.empty:
        raise ValueError("No scored condition in `table` (all skipped).")
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.3", linestyle="--", linewidth=1, label="calibrated")
    if by_condition:
        for _, group in scored.groupby(LABEL_COLUMN, sort=False):
            group = group.sort_values("level")
            ax.plot(group["level"], group["coverage"], color="tab:blue", alpha=0.25, linewidth=1)
    mean = scored.groupby("level")["coverage"].mean()
    n_cond = scored[LABEL_COLUMN].nunique()
    ax.plot(
        mean.index,
        mean.to_numpy(),
        color="tab:blue",
        marker="o",
        linewidth=2,
        label=f"mean over {n_cond} condition{'s' if n_cond != 1 else ''}",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(sorted(mean.index))
    ax.set_aspect("equal")
    ax.set_xlabel("nominal coverage (interval level)")
    ax.set_ylabel("observed coverage of held-out cells")
    ax.set_title("calibration of predictive intervals")
    kw = {"transform": ax.transAxes, "fontsize": 8, "color": "0.35"}
    ax.text(0.97, 0.05, "below the diagonal:\nintervals too narrow", ha="right", **kw)
    ax.text(0.03, 0.97 - 0.12, "above: too wide", ha="left", va="top", **kw)
    ax.legend(loc="upper left", fontsize=8)
    finish(ax.figure, show, save)
    return ax
