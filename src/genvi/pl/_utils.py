"""Shared finishing step of the plots: save and show, scanpy-style."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def finish(fig: Figure, show: bool, save: str | Path | None) -> None:
    """Write ``fig`` to ``save`` (if given) and show it (if ``show``)."""
    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        import matplotlib.pyplot as plt

        plt.show()
