"""Real and generated cells on one shared embedding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData

from genvi._threads import keep_torch_threads

# Source colours are greys and black, kept out of the condition palette (no colour means two
# things across panels).
REAL_COLOR, GENERATED_COLOR = "#b0b0b0", "#1a1a1a"


def _palette(n: int) -> list:
    """``n`` distinct colours without greys (tab20, then hsv for many conditions)."""
    import matplotlib.pyplot as plt

    tab = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (14, 15)]
    if n <= len(tab):
        return tab[:n]
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def real_vs_generated(
    real: AnnData,
    synthetic: AnnData,
    condition_keys: Sequence[str],
    space=None,
    basis: str = "umap",
    seed: int = 0,
    point_size: float | None = None,
    show: bool = False,
    save: str | None = None,
):
    """Real and generated cells on one shared embedding, in three panels.

    Both sets are projected into the same PCA space (a :class:`genvi.metrics.ReferenceSpace`,
    fitted on ``real`` if not given); for ``basis="umap"`` one UMAP is computed on the
    joint PCs, so distances between real and generated cells are comparable. Panels: (1) real
    (grey) and generated (black) cells, drawn in random order so that neither set hides the
    other; (2) real cells and (3) generated cells coloured by condition, with one colour per
    condition shared by both panels and the same axes.

    Parameters
    ----------
    real, synthetic
        AnnData with counts and the condition columns in ``obs``.
    condition_keys
        obs columns that define a condition (their values joined by ``"|"``).
    space
        Shared reference space; fitted on ``real`` when ``None``.
    basis
        ``"umap"`` or ``"pca"``.
    seed
        Seed of neighbours, UMAP and the drawing order.
    point_size
        Marker size; by default smaller for more cells.
    show
        Show the figure (``plt.show``).
    save
        Path to write the figure to.

    Returns
    -------
    The matplotlib figure (three panels).
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    from genvi.metrics import ReferenceSpace

    if basis not in ("umap", "pca"):
        raise ValueError(f"basis must be 'umap' or 'pca', got {basis!r}.")
    keys = list(condition_keys)
    missing = [k for a in (real, synthetic) for k in keys if k not in a.obs.columns]
    if missing:
        raise KeyError(f"Condition key(s) {sorted(set(missing))} missing from obs.")
    if space is None:
        space = ReferenceSpace.fit(real, seed=seed)
    pcs = np.vstack([space.transform(real), space.transform(synthetic)])
    if basis == "umap":
        joint = AnnData(np.zeros((len(pcs), 1), dtype=np.float32))
        joint.obsm["X_pca"] = pcs
        with keep_torch_threads():
            sc.pp.neighbors(joint, use_rep="X_pca", random_state=seed)
            sc.tl.umap(joint, random_state=seed)
        xy = joint.obsm["X_umap"]
    else:
        xy = pcs[:, :2]
    n_real = real.n_obs
    labels = np.concatenate(
        [a.obs[keys].astype(str).agg("|".join, axis=1).to_numpy() for a in (real, synthetic)]
    )
    is_generated = np.arange(len(xy)) >= n_real
    size = point_size or float(np.clip(4000 / len(xy), 2, 20))
    order = np.random.default_rng(seed).permutation(len(xy))
    axis_name = "UMAP" if basis == "umap" else "PC"

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5), sharex=True, sharey=True)
    colors = np.where(is_generated[order], GENERATED_COLOR, REAL_COLOR)
    axes[0].scatter(xy[order, 0], xy[order, 1], c=colors, s=size, linewidths=0)
    for color, name in ((REAL_COLOR, "real"), (GENERATED_COLOR, "generated")):
        n = int((is_generated == (name == "generated")).sum())
        axes[0].scatter([], [], c=color, s=30, label=f"{name} ({n} cells)")
    axes[0].legend(loc="best", fontsize=8, markerscale=1)
    axes[0].set_title("real vs generated cells")
    categories = sorted(set(labels))
    palette = dict(zip(categories, _palette(len(categories)), strict=True))
    key_name = " | ".join(keys)
    for ax, mask, what in (
        (axes[1], ~is_generated, "real"),
        (axes[2], is_generated, "generated"),
    ):
        idx = order[mask[order]]
        ax.scatter(xy[:, 0], xy[:, 1], c="#eeeeee", s=size, linewidths=0)  # all cells, faint
        ax.scatter(
            xy[idx, 0], xy[idx, 1], c=[palette[lab] for lab in labels[idx]], s=size, linewidths=0
        )
        ax.set_title(f"{what} cells by {key_name}")
    for label in categories:
        axes[2].scatter([], [], c=[palette[label]], s=30, label=label)
    axes[2].legend(
        loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title=key_name, frameon=False
    )
    for ax in axes:
        ax.set_xlabel(f"{axis_name} 1")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel(f"{axis_name} 2")
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=120, bbox_inches="tight")
    if show:
        plt.show()
    return fig
