"""Calibration: interval coverage with known answers, and the model-based reliability table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scvi
from scipy.stats import norm

import genvi
from conftest import quiet_train
from genvi._transforms import transform_expression
from genvi.metrics import calibration, interval_coverage

LEVELS = (0.5, 0.8, 0.9, 0.95)


@pytest.mark.parametrize("level", LEVELS)
def test_exact_gaussian_intervals_have_nominal_coverage(level):
    values = np.random.default_rng(0).normal(loc=2.0, scale=3.0, size=(20_000, 5))
    half = norm.ppf(0.5 + level / 2) * 3.0
    coverage = interval_coverage(values, np.full(5, 2.0 - half), np.full(5, 2.0 + half))
    assert coverage.shape == (5,)
    np.testing.assert_allclose(coverage, level, atol=0.02)


def test_interval_coverage_shapes_and_errors():
    values = np.array([0.0, 1.0, 2.0, 3.0])
    assert float(interval_coverage(values, 1.0, 2.0)) == 0.5  # closed interval
    per_obs = interval_coverage(values[:, None], values[:, None] - 0.1, values[:, None] + 0.1)
    np.testing.assert_array_equal(per_obs, [1.0])
    with pytest.raises(ValueError, match="lower"):
        interval_coverage(values, 2.0, 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        interval_coverage(np.zeros((4, 3)), np.zeros(2), np.ones(2))


class TruthModel:
    """Predictive intervals from the simulator's true p(x | c): calibrated by construction."""

    def __init__(self, sim):
        self.sim = sim

    def predict_with_confidence(
        self, conditions, n_samples=1000, ci=0.95, transform="normalized", target_sum=1e4, seed=0
    ):
        cells = genvi.data.sample_truth(self.sim, conditions, n_samples, seed=seed)
        x = transform_expression(cells.X.toarray(), transform, target_sum)
        alpha = (1 - ci) / 2
        return pd.DataFrame(
            {
                "mean": x.mean(0),
                "lower": np.quantile(x, alpha, axis=0),
                "upper": np.quantile(x, 1 - alpha, axis=0),
            },
            index=pd.Index(self.sim.var_names, name="gene"),
        )


def test_true_model_is_calibrated():
    sim = genvi.data.simulate(n_cells=300, n_genes=40, n_cell_types=2, seed=0)
    real = genvi.data.sample_truth(sim, {}, n_cells=1000, seed=11)
    table = calibration(TruthModel(sim), real, "cell_type", n_samples=2000, min_mean=10)
    assert len(table) == 2 * len(LEVELS)
    assert table["skipped"].isna().all()
    np.testing.assert_allclose(table["coverage"], table["level"], atol=0.03)


class RenamedKeys(TruthModel):
    """The truth model, asked with the keys of a user whose obs columns clash with the table."""

    names = {"condition": "cell_type", "level": "treatment"}

    def predict_with_confidence(self, conditions, **kwargs):
        return super().predict_with_confidence(
            {self.names[k]: v for k, v in conditions.items()}, **kwargs
        )


def test_any_obs_column_name_works_as_a_condition_key(tmp_path):
    """Keys named like the table's own columns ("condition", "level") work (demo crash)."""
    sim = genvi.data.simulate(n_cells=300, n_genes=40, n_cell_types=2, seed=0)
    real = genvi.data.sample_truth(sim, {}, n_cells=400, seed=3)
    real.obs["condition"] = real.obs["cell_type"]
    real.obs["level"] = real.obs["treatment"]
    table = calibration(
        RenamedKeys(sim), real, ["condition", "level"], levels=(0.5, 0.9), n_samples=300
    )
    assert table.attrs["key_columns"] == {"condition": "condition", "level": "level (condition)"}
    assert set(table["condition"]) == set(real.obs["condition"].astype(str))
    assert set(table["level (condition)"]) == set(real.obs["level"].astype(str))
    assert sorted(table["level"].unique()) == [0.5, 0.9]
    assert table["skipped"].isna().all()
    ax = genvi.pl.calibration_curve(table, save=tmp_path / "c.png")
    assert len(ax.lines) == 1 + table["genvi_condition"].nunique() + 1


@pytest.fixture(scope="module")
def tiny_model():
    sim = genvi.data.simulate(n_cells=300, n_genes=40, n_cell_types=2, seed=0)
    perm = np.random.default_rng(0).permutation(sim.n_obs)
    train, holdout = sim[np.sort(perm[:240])].copy(), sim[np.sort(perm[240:])].copy()
    scvi.settings.seed = 0
    genvi.model.PriorVI.setup_anndata(train, condition_keys=["cell_type", "treatment"])
    model = quiet_train(genvi.model.PriorVI(train, n_latent=4, n_hidden=32), max_epochs=20)
    return model, holdout


def test_model_reliability_table(tiny_model):
    model, holdout = tiny_model
    table = calibration(model, holdout, levels=(0.5, 0.9), n_samples=100, min_cells=5)
    n_conditions = len(holdout.obs[["cell_type", "treatment"]].drop_duplicates())
    assert len(table) == 2 * n_conditions
    assert list(table.columns) == [
        "genvi_condition",
        "cell_type",
        "treatment",
        "level",
        "coverage",
        "coverage_sd",
        "n_cells",
        "n_genes",
        "interval",
        "skipped",
    ]
    assert table["skipped"].isna().all()
    assert (table["n_genes"] == holdout.n_vars).all()
    # each coverage is the fraction of real values inside the model's interval, recomputed
    row = table.iloc[-1]
    spec = {"cell_type": row["cell_type"], "treatment": row["treatment"]}
    pred = model.predict_with_confidence(spec, n_samples=100, ci=row["level"], seed=0)
    cells = holdout[
        (holdout.obs["cell_type"] == spec["cell_type"]).to_numpy()
        & (holdout.obs["treatment"] == spec["treatment"]).to_numpy()
    ]
    counts = cells.X.toarray().astype(np.float64)
    values = transform_expression(counts, "normalized")
    # randomised intervals (the default): a count covers the fraction of [x, x + 1) inside
    assert (table["interval"] == "randomized").all() and pred.attrs["interval"] == "randomized"
    step = 1e4 / counts.sum(1, keepdims=True)
    lower, upper = pred["lower"].to_numpy(), pred["upper"].to_numpy()
    inside = np.clip(np.minimum(values + step, upper) - np.maximum(values, lower), 0, None) / step
    assert row["coverage"] == pytest.approx(inside.mean(0).mean())
    assert row["coverage_sd"] == pytest.approx(inside.mean(0).std())
    # one seed for every level: the 90% intervals contain the 50% ones
    wide = table.pivot(index="genvi_condition", columns="level", values="coverage")
    assert (wide[0.9] >= wide[0.5]).all()

    # about half the genes are above the median predicted mean of one condition
    spec = {"cell_type": "type_0", "treatment": "control"}
    cut = float(model.predict_with_confidence(spec, n_samples=100)["mean"].median())
    strict = calibration(model, holdout, levels=(0.9,), n_samples=100, min_cells=5, min_mean=cut)
    assert strict["n_genes"].between(1, holdout.n_vars - 1).all()
    none = calibration(model, holdout, levels=(0.9,), n_samples=50, min_cells=5, min_mean=1e9)
    assert none["skipped"].str.contains("min_mean").all() and none["coverage"].isna().all()
    few = calibration(model, holdout, "cell_type", levels=(0.9,), n_samples=50, min_cells=1000)
    assert few["skipped"].str.contains("min_cells").all()


def test_calibration_rejects_models_without_intervals(tiny_model):
    _, holdout = tiny_model
    with pytest.raises(TypeError, match="predict_with_confidence"):
        calibration(object(), holdout, "cell_type")
    with pytest.raises(ValueError, match="levels"):
        calibration(tiny_model[0], holdout, levels=(0.5, 1.0))
