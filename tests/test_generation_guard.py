"""Regression guard on real data: PriorVI's generation fidelity on pbmc3k (issue #20).

Trains PriorVI (genvi defaults, Gaussian prior, 100 epochs, batch 128, seed 0, one torch
thread) on 80% of ``pbmc3k_labeled.h5ad`` (split stratified by ``cell_type_coarse``, the 2,000
most variable genes of the training cells, seurat_v3), generates as many cells per cell type
as were held out and scores them against the held-out cells with
:func:`genvi.metrics.compare_conditions` (means over the 6 types with >= 30 held-out cells).
Skipped, with the reason, when the file is not in ``../shared/data`` (or ``GENVI_DATA_DIR``).
About 45 s of training on one core; marked ``slow``.

Measured on the development machine (energy distance / classifier AUROC / variance R²; noise
floors -0.06 / 0.46 / 0.65):

=====================================  ======================  ======================
dispersion learning rate               seed 0                  seed 1
=====================================  ======================  ======================
10x (PriorVI's default since #20)      0.041 / 0.551 / 0.733   0.138 / 0.642 / 0.738
1x (scvi-tools', the earlier default)  0.196 / 0.653 / 0.646   0.280 / 0.726 / 0.626
=====================================  ======================  ======================

PriorVI ends training with a moving average of its weights (``ema_decay=0.99``, issue #20) in
runs of at least 4,000 optimizer steps; this guard's 100 epochs are 1,500 steps, so it checks
the last step's weights. On a second machine, seed 0 / seed 1: with the average forced
(``ema_decay=0.99``) 0.066 / 0.585 / 0.735 and 0.100 / 0.596 / 0.734; the last step's weights
0.074 / 0.611 / 0.729 and 0.078 / 0.574 / 0.727.

The variance R² separates the two dispersion settings at both seeds (0.73-0.74 vs 0.63-0.65),
so its floor (0.69) guards the fix; energy and AUROC move as much with the seed as with the
fix, so their bounds only catch breakage.

The conditions also in the decoder (``fit_and_score(seed, {"decode_conditions": True})``)
against the default, both measured on a second machine (issue #20; not guarded):

=====================================  ======================  ======================
decoder                                seed 0                  seed 1
=====================================  ======================  ======================
z only (default)                       0.008 / 0.551 / 0.735   0.166 / 0.622 / 0.726
z and the cell type                    0.090 / 0.596 / 0.734   0.200 / 0.626 / 0.722
=====================================  ======================  ======================
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

import genvi
from conftest import one_torch_thread, real_data_path, stratified_split

FILENAME = "pbmc3k_labeled.h5ad"
KEY = "cell_type_coarse"
EPOCHS = 100
BOUNDS = {"var_r2": (">", 0.69), "energy": ("<", 0.20), "c2st_auroc": ("<", 0.68)}


def pbmc3k_path() -> Path | None:
    """The file from genvi's data folders or ``../shared/data`` beside this checkout."""
    return real_data_path("pbmc3k", FILENAME)


def fit_and_score(
    seed: int = 0, model_kwargs: dict | None = None, **plan_kwargs
) -> dict[str, float]:
    """Train PriorVI on the training split, generate, return the means of the scores."""
    import anndata as ad
    import scanpy as sc
    import scvi

    adata = ad.read_h5ad(pbmc3k_path())
    adata.obs[KEY] = adata.obs[KEY].astype(str).astype("category")
    train_idx, test_idx = stratified_split(adata.obs[KEY].to_numpy(), 0.2, seed=0)
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    hvg = sc.pp.highly_variable_genes(train, n_top_genes=2000, flavor="seurat_v3", inplace=False)
    keep = hvg["highly_variable"].to_numpy()
    train, test = train[:, keep].copy(), test[:, keep].copy()
    space = genvi.metrics.ReferenceSpace.fit(train, n_top_genes=2000, n_comps=50, seed=0)

    scvi.settings.seed = seed
    genvi.model.PriorVI.setup_anndata(train, condition_keys=[KEY])
    model = genvi.model.PriorVI(train, **(model_kwargs or {}))
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(
            max_epochs=EPOCHS, batch_size=128, enable_progress_bar=False, plan_kwargs=plan_kwargs
        )
    counts = test.obs[KEY].value_counts()
    types = [t for t in counts.index if counts[t] >= 30]
    synthetic = model.generate(
        [{KEY: t} for t in types], n_cells=[int(counts[t]) for t in types], seed=seed
    )
    scores = genvi.metrics.compare_conditions(test, synthetic, [KEY], space, min_cells=30, seed=0)
    summary = genvi.metrics.summarize(scores)
    return {k: float(summary[k]) for k in ("var_r2", "energy", "c2st_auroc", "var_r2_floor")}


@pytest.mark.slow
@pytest.mark.skipif(
    pbmc3k_path() is None,
    reason=f"real-data guard: {FILENAME} not found in ../shared/data or GENVI_DATA_DIR",
)
def test_priorvi_pbmc3k_generation_guard():
    with one_torch_thread():
        got = fit_and_score(seed=0)
    failed = {
        k: (round(got[k], 3), op, bound)
        for k, (op, bound) in BOUNDS.items()
        if not (got[k] > bound if op == ">" else got[k] < bound)
    }
    assert not failed, f"outside the bounds (value, op, bound): {failed}; all: {got}"
    assert np.isfinite(list(got.values())).all()
