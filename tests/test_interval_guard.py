"""Regression guard on real data: predictive intervals on pbmc68k (issue #15).

The setting of ``benchmarks/intervals.py --datasets pbmc68k`` (seed 0): genvi's embedded
pbmc68k (exact counts, all 765 genes), 80/20 split per cell type, a conditional PriorVI (genvi
defaults, 300 epochs, one torch thread). The held-out cells are halved by cell type (seed 1,
the benchmark's first halving); each half recalibrates ``ConformalIntervals`` for the other,
and coverage is the mean over the two directions of the mean over cell types with at least 10
scored cells and over genes: all genes, and the deep ones (at least 10 counts per cell in the
type's training cells, about 30 gene-type pairs). No ``../shared`` needed; about 35 s on the
2-core development machine; ``slow``.

Measured at nominal 0.5 / 0.8 / 0.9 / 0.95 (Dec 6 2026, the per-cell dispersion, PriorVI's
default since then): all genes, conformal 0.502 / 0.805 / 0.903 / 0.950, the model's randomised
intervals 0.502 / 0.805 / 0.903 / 0.951, closed intervals 0.794 / 0.915 / 0.957 / 0.978; deep
genes conformal 0.513 / 0.813 / 0.904 / 0.958 (randomised 0.485 / 0.793 / 0.888 / 0.944). With
the per-gene dispersion (the default before): all genes conformal 0.502 / 0.804 / 0.904 /
0.950, randomised 0.505 / 0.806 / 0.904 / 0.951; deep genes conformal 0.521 / 0.832 / 0.918 /
0.969, randomised 0.487 / 0.817 / 0.905 / 0.957. The tolerances fail intervals that lose their
randomisation (closed ones over-cover the 50 % level by 30 points), a recalibration that picks
the wrong order statistics or groups, and a model whose own intervals drift by more than 2
points overall. The deep-gene tolerance (5 points) only catches gross breakage: about 30
gene-type pairs of 10-24 cells move by about 3 points (bootstrap SE) from one halving to the
next, and on pbmc68k the model's own deep intervals are within it too (on pbmc3k they miss by
11 points; that benchmark takes minutes).
"""

from __future__ import annotations

import numpy as np
import pytest

import genvi
from conftest import one_torch_thread

LEVELS = (0.5, 0.8, 0.9, 0.95)
EPOCHS = 300
MIN_CELLS = 10
DEEP = 10.0  # mean counts per cell in the cell type's training cells


def coverages() -> dict[str, np.ndarray]:
    """Coverage per level: conformal / randomised / closed, all genes and deep genes."""
    import scvi

    from genvi._demo import _select_genes, _split
    from genvi._transforms import count_step, transform_expression
    from genvi.metrics import ConformalIntervals, interval_coverage

    adata = genvi.data.pbmc68k()
    labels = adata.obs["cell_type"].astype(str)
    train_idx, test_idx = _split(labels, 0.2, 0)
    genes, _ = _select_genes(adata[train_idx], 2000, 0)
    train = adata[train_idx][:, genes].copy()
    test = adata[test_idx][:, genes].copy()
    scvi.settings.seed = 0
    genvi.model.PriorVI.setup_anndata(train, condition_keys=["cell_type"])
    model = genvi.model.PriorVI(train)
    model.train(max_epochs=EPOCHS, enable_progress_bar=False)
    test_labels = labels.iloc[test_idx].reset_index(drop=True)
    train_labels = labels.iloc[train_idx].to_numpy()
    halves = _split(test_labels, 0.5, 1)
    out: dict[str, list] = {}
    for cal_idx, eval_idx in (halves, halves[::-1]):
        conformal = ConformalIntervals(model, test[cal_idx])
        scored, scored_labels = test[eval_idx], test_labels.to_numpy()[eval_idx]
        per_type: dict[str, list] = {}
        for label in sorted(set(scored_labels)):
            cells = np.flatnonzero(scored_labels == label)
            if len(cells) < MIN_CELLS:
                continue
            real = scored.X[cells].toarray().astype(np.float64)
            values = transform_expression(real, "normalized")
            step = count_step(real, "normalized")
            deep = train.X[train_labels == label].toarray().mean(0) >= DEEP
            spec = {"cell_type": label}
            for level in LEVELS:
                preds = {
                    "conformal": conformal.predict_with_confidence(spec, ci=level),
                    "randomized": model.predict_with_confidence(
                        spec, n_samples=1000, ci=level, seed=0
                    ),
                    "closed": model.predict_with_confidence(
                        spec, n_samples=1000, ci=level, seed=0, interval="closed"
                    ),
                }
                for name, pred in preds.items():
                    cov = interval_coverage(
                        values,
                        pred["lower"].to_numpy(),
                        pred["upper"].to_numpy(),
                        step=None if name == "closed" else step,
                    )
                    per_type.setdefault(name, []).append(cov.mean())
                    per_type.setdefault(f"{name}_deep", []).append(cov[deep].mean())
        for name, values_ in per_type.items():
            # (types x levels) -> mean over types per level
            out.setdefault(name, []).append(np.reshape(values_, (-1, len(LEVELS))).mean(0))
    return {name: np.mean(runs, axis=0) for name, runs in out.items()}


@pytest.mark.slow
def test_pbmc68k_intervals_hold_the_nominal_rate():
    with one_torch_thread():
        cov = coverages()
    nominal = np.asarray(LEVELS)
    np.testing.assert_allclose(cov["conformal"], nominal, atol=0.015)
    np.testing.assert_allclose(cov["randomized"], nominal, atol=0.02)
    np.testing.assert_allclose(cov["conformal_deep"], nominal, atol=0.05)
    # closed intervals of discrete counts over-cover (their endpoints count as inside)
    assert cov["closed"][0] > 0.7
