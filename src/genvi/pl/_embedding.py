"""Real and generated cells on one shared embedding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from genvi._threads import keep_torch_threads


def real_vs_generated(
    real: AnnData,
    synthetic: AnnData,
    condition_keys: Sequence[str],
    space=None,
    basis: str = "umap",
    seed: int = 0,
    show: bool = False,
    save: str | None = None,
):
    """Plot real and generated cells on one embedding, coloured by source and by condition.

    Both sets are projected into the same PCA space (a :class:`genvi.metrics.ReferenceSpace`,
    fitted on ``real`` if not given); for ``basis="umap"`` one UMAP is computed on the
    joint PCs, so distances between real and generated cells are comparable.

    Parameters
    ----------
    real, synthetic
        AnnData with counts and the condition columns in ``obs``.
    condition_keys
        obs columns that define a condition.
    space
        Shared reference space; fitted on ``real`` when ``None``.
    basis
        ``"umap"`` or ``"pca"``.
    seed
        Seed of neighbours and UMAP.
    show
        Show the figure (``plt.show``).
    save
        Path to write the figure to.

    Returns
    -------
    The matplotlib figure (two panels).
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    from genvi.metrics import ReferenceSpace

    if basis not in ("umap", "pca"):
        raise ValueError(f"basis must be 'umap' or 'pca', got {basis!r}.")
    keys = list(condition_keys)
    if space is None:
        space = ReferenceSpace.fit(real, seed=seed)
    pcs = np.vstack([space.transform(real), space.transform(synthetic)])
    labels = [list(a.obs[keys].astype(str).agg("|".join, axis=1)) for a in (real, synthetic)]
    obs = pd.DataFrame(
        {
            "source": pd.Categorical(
                ["real"] * real.n_obs + ["generated"] * synthetic.n_obs,
                categories=["real", "generated"],
            ),
            "condition": pd.Categorical(labels[0] + labels[1]),
        }
    )
    obs.index = obs.index.astype(str)
    joint = AnnData(np.zeros((len(obs), 1), dtype=np.float32), obs=obs)
    joint.obsm["X_pca"] = pcs
    if basis == "umap":
        with keep_torch_threads():
            sc.pp.neighbors(joint, use_rep="X_pca", random_state=seed)
            sc.tl.umap(joint, random_state=seed)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    plot = sc.pl.umap if basis == "umap" else sc.pl.pca
    plot(joint, color="source", ax=axes[0], show=False, title="real vs generated")
    plot(joint, color="condition", ax=axes[1], show=False, title="condition")
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=120)
    if show:
        plt.show()
    return fig
