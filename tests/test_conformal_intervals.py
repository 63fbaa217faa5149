"""Predictive intervals recalibrated on held-out cells (genvi.metrics.ConformalIntervals)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import genvi
from genvi._transforms import count_step, transform_expression
from genvi.metrics import ConformalIntervals, calibration, interval_coverage
from genvi.model.base._confidence import predictive_draws

LEVELS = (0.5, 0.8, 0.95)


class _Schema:
    """The two methods and one attribute of a model's condition schema the wrapper reads."""

    categorical = {"cell_type": None}

    @staticmethod
    def parse(conditions):
        return [conditions] if isinstance(conditions, dict) else list(conditions)

    @staticmethod
    def label(spec):
        return "|".join(map(str, spec.values()))


class DistortedTruth:
    """Samples of the simulator's true p(x | c), made too wide or too narrow on purpose.

    ``"wide"``: each count is redrawn as Poisson(x * G), G ~ Gamma(2, 1/2) (extra dispersion);
    ``"narrow"``: the rounded mean of two true cells (too little). Either way the model's own
    randomised intervals miss the nominal rate, most for deeply expressed genes.
    """

    def __init__(self, sim, kind: str):
        self.sim, self.kind, self._schema = sim, kind, _Schema()
        self.var_names_ = sim.var_names

    def _samples_counts(self) -> bool:
        return True

    def _iter_confidence_draws(self, specs, counts, transform, target_sum, seed, batch_size, rnd):
        rng = np.random.default_rng(seed)
        for spec, n in zip(specs, counts):
            draw_seed = int(rng.integers(2**31))
            if self.kind == "wide":
                x = genvi.data.sample_truth(self.sim, spec, n, seed=draw_seed).X.toarray()
                x = rng.poisson(x * rng.gamma(2.0, 0.5, size=x.shape)).astype(float)
            else:
                x = genvi.data.sample_truth(self.sim, spec, 2 * n, seed=draw_seed).X.toarray()
                x = np.round(x.reshape(n, 2, -1).mean(1))
            yield (spec, x, *predictive_draws(x, transform, target_sum, rnd, rng))

    def predict_with_confidence(self, conditions, n_samples=1000, ci=0.95, **kwargs):
        from genvi.model.base._confidence import summarize_draws

        ((_, _, values, spread),) = self._iter_confidence_draws(
            self._schema.parse(conditions), [n_samples], "normalized", 1e4, 0, 0, True
        )
        return summarize_draws(values, spread, ci, True, pd.Index(self.var_names_))


@pytest.fixture(scope="module")
def truth():
    sim = genvi.data.simulate(n_cells=300, n_genes=60, n_cell_types=2, seed=0)
    reference = genvi.data.sample_truth(sim, {}, n_cells=400, seed=11)
    scored = genvi.data.sample_truth(sim, {}, n_cells=1500, seed=12)
    return sim, reference, scored


def _coverage_by_depth(intervals, scored, level: float) -> tuple[float, float]:
    """Mean coverage of the scored cells for the shallower and the deeper half of the genes."""
    shallow, deep = [], []
    for cell_type in sorted(scored.obs["cell_type"].unique()):
        cells = scored[scored.obs["cell_type"] == cell_type].X.toarray().astype(float)
        pred = intervals.predict_with_confidence({"cell_type": cell_type}, ci=level)
        values = transform_expression(cells, "normalized")
        step = count_step(cells, "normalized")
        lower, upper = pred["lower"].to_numpy(), pred["upper"].to_numpy()
        cov = interval_coverage(values, lower, upper, step=step)
        is_deep = cells.mean(0) > np.median(cells.mean(0))
        shallow.append(cov[~is_deep].mean())
        deep.append(cov[is_deep].mean())
    return float(np.mean(shallow)), float(np.mean(deep))


@pytest.mark.parametrize("by", ["depth", "gene"])
@pytest.mark.parametrize("kind", ["wide", "narrow"])
def test_recalibrated_intervals_hold_the_nominal_rate_where_the_model_misses_it(truth, kind, by):
    sim, reference, scored = truth
    model = DistortedTruth(sim, kind)
    raw = calibration(model, scored, "cell_type", levels=LEVELS)
    conformal = ConformalIntervals(model, reference, "cell_type", by=by)
    fixed = calibration(conformal, scored, "cell_type", levels=LEVELS)
    assert (fixed["interval"] == "conformal").all()
    raw_cov = raw.groupby("level")["coverage"].mean()
    fixed_cov = fixed.groupby("level")["coverage"].mean()
    miss = raw_cov - raw_cov.index.to_numpy()
    # the distorted model misses the 50 % level by more than 5 points, in the expected direction
    assert (miss[0.5] > 0.05) if kind == "wide" else (miss[0.5] < -0.05)
    # recalibrated: within 2 points at every level (the guarantee: >= level, < level + 2/401).
    # Measured at 0.5 / 0.8 / 0.95: wide 0.690 / 0.939 / 0.992 -> 0.506 / 0.803 / 0.950,
    # narrow 0.378 / 0.654 / 0.855 -> 0.506 / 0.801 / 0.950; deep genes (wide) 0.721 -> 0.513
    np.testing.assert_allclose(fixed_cov.to_numpy(), fixed_cov.index.to_numpy(), atol=0.02)
    # and for shallow and deep genes alike, where the raw intervals miss most for deep genes
    for level in LEVELS:
        raw_shallow, raw_deep = _coverage_by_depth(_Raw(model), scored, level)
        shallow, deep = _coverage_by_depth(conformal, scored, level)
        assert abs(shallow - level) < 0.03 and abs(deep - level) < 0.03
        assert abs(raw_deep - level) > abs(deep - level)


class _Raw:
    """The distorted model's own randomised intervals, in the wrapper's call form."""

    def __init__(self, model):
        self.model = model

    def predict_with_confidence(self, conditions, ci):
        return self.model.predict_with_confidence(conditions, ci=ci)


def test_levels_of_a_calibrated_model_are_the_nominal_ones(truth):
    sim, reference, _ = truth

    class Exact(DistortedTruth):
        def _iter_confidence_draws(self, specs, counts, transform, target_sum, seed, bs, rnd):
            rng = np.random.default_rng(seed)
            for spec, n in zip(specs, counts):
                x = genvi.data.sample_truth(self.sim, spec, n, seed=int(rng.integers(2**31)))
                x = x.X.toarray()
                yield (spec, x, *predictive_draws(x, transform, target_sum, rnd, rng))

    per_gene = ConformalIntervals(Exact(sim, "exact"), reference, "cell_type", by="gene")
    assert per_gene.n_reference_ == reference.n_obs
    assert len(per_gene.groups_) == 60 and (per_gene.groups_["n_pits"] == 400).all()
    assert per_gene.conditions_["n_cells"].sum() == reference.n_obs
    assert per_gene.conditions_.index.names == ["cell_type"]
    levels = per_gene.levels(0.8)
    # true model: reference PITs are uniform, so the levels sit near 0.1 and 0.9 for every gene
    assert abs(levels["lower"].median() - 0.1) < 0.02 and abs(levels["upper"].median() - 0.9) < 0.02
    assert levels["lower"].between(0.03, 0.2).all() and levels["upper"].between(0.8, 0.97).all()
    by_depth = ConformalIntervals(Exact(sim, "exact"), reference, "cell_type", min_group=2000)
    groups = by_depth.groups_
    # 400 cells x 60 genes in depth groups of >= 2,000 PITs, ordered and contiguous
    assert len(groups) >= 3 and groups["n_pits"].sum() == 400 * 60
    assert (groups["n_pits"] >= 2000).all()
    assert (groups["min_depth"].to_numpy()[1:] == groups["max_depth"].to_numpy()[:-1]).all()
    levels = by_depth.levels(0.8)
    assert levels["lower"].between(0.08, 0.12).all() and levels["upper"].between(0.88, 0.92).all()
    with pytest.raises(ValueError, match="by must be"):
        ConformalIntervals(Exact(sim, "exact"), reference, "cell_type", by="cell")


@pytest.fixture(scope="module")
def halves(sim_split):
    from genvi._demo import _split

    test = sim_split[1]
    labels = test.obs["cell_type"].astype(str) + "|" + test.obs["treatment"].astype(str)
    cal_idx, eval_idx = _split(labels.reset_index(drop=True), 0.5, 1)
    return test[cal_idx].copy(), test[eval_idx].copy()


def test_priorvi_recalibrated_intervals(model_gaussian, halves):
    reference, scored = halves
    before = reference.copy()
    conformal = ConformalIntervals(model_gaussian, reference, n_samples=500)
    # the reference is not modified
    assert (reference.X != before.X).nnz == 0 and reference.obs.equals(before.obs)
    # measured: 0.503 / 0.801 / 0.951 (the model's own intervals 0.496 / 0.795 / 0.946)
    table = calibration(conformal, scored, levels=LEVELS, n_samples=500)
    assert (table["interval"] == "conformal").all() and table["skipped"].isna().all()
    coverage = table.groupby("level")["coverage"].mean()
    np.testing.assert_allclose(coverage.to_numpy(), coverage.index.to_numpy(), atol=0.03)

    cond = {"cell_type": "type_0", "treatment": "control"}
    narrow, wide = (conformal.predict_with_confidence(cond, ci=c) for c in (0.5, 0.95))
    assert (narrow["lower"] >= wide["lower"]).all() and (narrow["upper"] <= wide["upper"]).all()
    # the same draws as the model's own intervals: same mean
    own = model_gaussian.predict_with_confidence(cond, n_samples=500, seed=0)
    np.testing.assert_allclose(narrow["mean"], own["mean"])
    logged = conformal.predict_with_confidence(cond, ci=0.5, transform="log1p")
    np.testing.assert_allclose(logged["upper"], np.log1p(narrow["upper"]))
    both = conformal.predict_with_confidence([cond, {"cell_type": "type_1"}], ci=0.5)
    assert both.index.nlevels == 2 and both.attrs["interval"] == "conformal"

    with pytest.raises(ValueError, match="orders cells differently"):
        conformal.predict_with_confidence(cond, transform="counts")
    with pytest.raises(ValueError, match="target_sum"):
        conformal.predict_with_confidence(cond, target_sum=1e6)
    with pytest.raises(ValueError, match="missing from `reference`"):
        ConformalIntervals(model_gaussian, reference[:, :-3])
    with pytest.raises(TypeError, match="genvi model"):
        ConformalIntervals(object(), reference)


def test_a_condition_key_named_like_the_table_columns_works(truth):
    sim, reference, scored = truth

    class KeyedNCells(DistortedTruth):
        """The simulator's cell type registered under the obs column name "n_cells"."""

        def _iter_confidence_draws(self, specs, counts, transform, target_sum, seed, bs, rnd):
            renamed = [{"cell_type": spec["n_cells"]} for spec in specs]
            for spec, out in zip(
                specs,
                super()._iter_confidence_draws(
                    renamed, counts, transform, target_sum, seed, bs, rnd
                ),
            ):
                yield (spec, *out[1:])

    model = KeyedNCells(sim, "wide")
    model._schema = type("S", (_Schema,), {"categorical": {"n_cells": None}})()
    reference, scored = reference.copy(), scored.copy()
    reference.obs["n_cells"] = reference.obs["cell_type"]
    scored.obs["n_cells"] = scored.obs["cell_type"]
    conformal = ConformalIntervals(model, reference)
    assert conformal.condition_keys == ["n_cells"]
    assert conformal.conditions_.index.names == ["n_cells"]
    assert conformal.conditions_["n_cells"].sum() == reference.n_obs
    table = calibration(conformal, scored, levels=(0.5,))
    np.testing.assert_allclose(table["coverage"], 0.5, atol=0.03)
