"""Plots render to PNG and draw one point per gene / condition."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: the tests write files only

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import genvi
from genvi.metrics import counterfactual_lfc

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sim():
    return genvi.data.simulate(n_cells=400, n_genes=40, n_cell_types=2, seed=0)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_mean_var_scatter(sim, tmp_path):
    real, synthetic = sim[:200], genvi.data.sample_truth(sim, {}, n_cells=150, seed=1)
    path = tmp_path / "mean_var.png"
    fig = genvi.pl.mean_var_scatter(real, synthetic, save=path)
    assert path.read_bytes()[:8] == PNG
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert sum(len(c.get_offsets()) for c in ax.collections) == sim.n_vars
        assert ax.get_xscale() == ax.get_yscale() == "log"
        assert len(ax.lines) == 1  # the identity line
        assert "normalised" in ax.get_xlabel()
    # a subset of genes, one condition, drawn into given axes
    _, axes = plt.subplots(1, 2)
    genes = list(sim.var_names[:10])
    out = genvi.pl.mean_var_scatter(
        real, synthetic, condition={"cell_type": "type_1"}, genes=genes, ax=axes
    )
    assert out is axes[0].figure
    assert sum(len(c.get_offsets()) for c in axes[1].collections) == 10
    with pytest.raises(ValueError, match="2 axes"):
        genvi.pl.mean_var_scatter(real, synthetic, ax=[axes[0]])


def test_mean_var_scatter_zero_genes_stay_on_the_plot(sim):
    real = sim[:100].copy()
    real.X = real.X.toarray()
    real.X[:, 0] = 0  # a gene never detected in the real cells
    fig = genvi.pl.mean_var_scatter(real, sim[100:200])
    detected, zero = fig.axes[0].collections
    assert len(detected.get_offsets()) == sim.n_vars - 1 and len(zero.get_offsets()) == 1
    assert np.isfinite(zero.get_offsets()).all()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "1 genes with zero mean (at the edge)" in labels


def test_counterfactual_scatter(sim, tmp_path):
    cells = sim[sim.obs["cell_type"] == "type_0"]
    control = cells[cells.obs["treatment"] == "control"]
    observed = cells[cells.obs["treatment"] == "treated"]
    predicted = genvi.data.sample_truth(
        sim, {"cell_type": "type_0", "treatment": "treated"}, n_cells=100, seed=2
    )
    genes = counterfactual_lfc(control, predicted, observed)
    path = tmp_path / "cf.png"
    ax = genvi.pl.counterfactual_scatter(genes, top_k=15, n_labels=5, save=path)
    assert path.read_bytes()[:8] == PNG
    assert len(ax.collections[0].get_offsets()) == sim.n_vars
    assert len(ax.collections[1].get_offsets()) == 15
    assert len(ax.texts) == 5
    with pytest.raises(KeyError, match="counterfactual_lfc"):
        genvi.pl.counterfactual_scatter(genes.drop(columns="deg_rank"))


def test_calibration_curve(tmp_path):
    levels = [0.5, 0.8, 0.9, 0.95]
    table = pd.DataFrame(
        {
            "genvi_condition": np.repeat(["a", "b", "c"], 4),
            "level": levels * 3,
            "coverage": [0.45, 0.75, 0.88, 0.93] * 2 + [np.nan] * 4,
            "skipped": [None] * 8 + ["3 real cells < min_cells=10"] * 4,
        }
    )
    path = tmp_path / "calibration.png"
    ax = genvi.pl.calibration_curve(table, save=path)
    assert path.read_bytes()[:8] == PNG
    # diagonal, one line per scored condition, the mean
    assert len(ax.lines) == 1 + 2 + 1
    np.testing.assert_allclose(ax.lines[-1].get_xdata(), levels)
    np.testing.assert_allclose(ax.lines[-1].get_ydata(), [0.45, 0.75, 0.88, 0.93])
    assert len(genvi.pl.calibration_curve(table, by_condition=False).lines) == 2
    with pytest.raises(ValueError, match="skipped"):
        genvi.pl.calibration_curve(table[table["genvi_condition"] == "c"])


def test_real_vs_generated_pca(sim, tmp_path):
    path = tmp_path / "pca.png"
    real, generated = sim[:100], sim[100:250]
    fig = genvi.pl.real_vs_generated(real, generated, ["cell_type"], basis="pca", save=path)
    assert path.read_bytes()[:8] == PNG
    source, by_real, by_generated = fig.axes
    # panel 1 draws every cell once, real and generated interleaved (neither hides the other)
    colors = source.collections[0].get_facecolors()
    assert len(colors) == 250
    is_generated = np.isclose(colors[:, 0], matplotlib.colors.to_rgba("#1a1a1a")[0])
    assert is_generated.sum() == 150 and not is_generated[:150].all()
    # conditions: the key in the titles, one shared colour per condition in both panels
    assert by_real.get_title() == "real cells by cell_type"
    assert by_generated.get_title() == "generated cells by cell_type"
    legend = {t.get_text() for t in by_generated.get_legend().get_texts()}
    assert legend == set(sim.obs["cell_type"].astype(str))
    real_colors = {tuple(c) for c in by_real.collections[1].get_facecolors()}
    generated_colors = {tuple(c) for c in by_generated.collections[1].get_facecolors()}
    assert real_colors == generated_colors and len(real_colors) == 2
    with pytest.raises(KeyError, match="donor"):
        genvi.pl.real_vs_generated(real, generated, ["donor"], basis="pca")
