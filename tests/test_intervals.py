"""Randomised (continuous-extension) predictive intervals for discrete counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import genvi
from genvi._transforms import count_step, jittered_expression, transform_expression
from genvi.metrics import calibration, interval_coverage
from genvi.model.base._confidence import predictive_summary


def test_coverage_of_the_continuous_extension_known_answers():
    # a count 0 stands for [0, 1): the interval [0, 0.25] holds a quarter of it
    assert float(interval_coverage(np.array([0.0]), 0.0, 0.25, step=1.0)) == 0.25
    # strictly inside: fully covered; outside: not at all; straddling the upper end: partly
    values = np.array([[2.0], [5.0], [9.0]])
    cov = interval_coverage(values, 1.5, 9.5, step=np.array([[1.0], [1.0], [2.0]]))
    assert float(cov[0]) == pytest.approx((1 + 1 + 0.25) / 3)
    # normalised counts: one count spans target_sum / total
    x = np.array([[1.0, 3.0], [0.0, 10.0]])
    np.testing.assert_allclose(count_step(x, "normalized", 100.0), [[25.0], [10.0]])
    np.testing.assert_allclose(count_step(x, "counts"), [[1.0], [1.0]])
    jit = jittered_expression(x, "normalized", 100.0, np.random.default_rng(0))
    low = transform_expression(x, "normalized", 100.0)
    assert np.all((jit >= low) & (jit < low + count_step(x, "normalized", 100.0)))
    with pytest.raises(ValueError, match="step"):
        interval_coverage(values, 1.0, 2.0, step=0.0)


class TruthModel:
    """Intervals from the simulator's true p(x | c), randomised or closed."""

    def __init__(self, sim, interval):
        self.sim, self.interval = sim, interval

    def predict_with_confidence(
        self, conditions, n_samples=1000, ci=0.95, transform="normalized", target_sum=1e4, seed=0
    ):
        cells = genvi.data.sample_truth(self.sim, conditions, n_samples, seed=seed)
        return predictive_summary(
            cells.X.toarray(),
            ci,
            transform,
            target_sum,
            randomize=self.interval == "randomized",
            rng=np.random.default_rng(seed),
            index=pd.Index(self.sim.var_names, name="gene"),
        )


@pytest.mark.parametrize("transform", ["normalized", "log1p"])
def test_true_model_randomized_intervals_are_calibrated_for_genes_of_every_depth(transform):
    # shallow cells (~5 counts per gene): many zeros and ties
    sim = genvi.data.simulate(
        n_cells=300, n_genes=60, n_cell_types=2, library_size_mean=300, seed=0
    )
    real = genvi.data.sample_truth(sim, {}, n_cells=1000, seed=11)
    levels = (0.5, 0.8, 0.95)
    kwargs = dict(levels=levels, n_samples=3000, transform=transform)  # every gene kept
    rand = calibration(TruthModel(sim, "randomized"), real, "cell_type", **kwargs)
    closed = calibration(TruthModel(sim, "closed"), real, "cell_type", **kwargs)
    assert (rand["interval"] == "randomized").all() and (closed["interval"] == "closed").all()
    np.testing.assert_allclose(rand["coverage"], rand["level"], atol=0.02)
    # closed intervals of the same true model over-cover: zeros on the endpoint 0 count fully
    # (measured: 0.69 / 0.88 / 0.97 at nominal 0.5 / 0.8 / 0.95)
    assert (closed["coverage"] - rand["coverage"]).min() > 0.015
    assert (closed["coverage"] - closed["level"])[closed["level"] <= 0.8].min() > 0.05


def test_predict_with_confidence_interval_option(model_gaussian):
    cond = {"cell_type": "type_0", "treatment": "control"}
    rand = model_gaussian.predict_with_confidence(cond, n_samples=500, ci=0.8)
    closed = model_gaussian.predict_with_confidence(cond, n_samples=500, ci=0.8, interval="closed")
    assert rand.attrs["interval"] == "randomized" and closed.attrs["interval"] == "closed"
    # same sampled cells: same mean; the jitter moves quantiles up by less than one count
    np.testing.assert_allclose(rand["mean"], closed["mean"])
    assert np.all(rand["lower"] >= closed["lower"]) and np.all(rand["upper"] >= closed["upper"])
    assert (rand["upper"] > closed["upper"]).mean() > 0.5
    both = model_gaussian.predict_with_confidence(
        [cond, {"cell_type": "type_1", "treatment": "control"}], n_samples=200
    )
    assert both.attrs["interval"] == "randomized"
    with pytest.raises(ValueError, match="interval"):
        model_gaussian.predict_with_confidence(cond, interval="open")


def test_randomized_intervals_cover_held_out_cells_at_the_nominal_rate(sim_split, model_gaussian):
    # every gene, lowly expressed ones included; measured (300 epochs): randomized 0.528 /
    # 0.824 / 0.959, closed 0.570 / 0.859 / 0.973 at nominal 0.5 / 0.8 / 0.95
    _, test = sim_split
    table = calibration(model_gaussian, test, levels=(0.5, 0.8, 0.95), n_samples=1000)
    assert (table["interval"] == "randomized").all() and table["skipped"].isna().all()
    coverage = table.groupby("level")["coverage"].mean()
    np.testing.assert_allclose(coverage.to_numpy(), coverage.index.to_numpy(), atol=0.03)
