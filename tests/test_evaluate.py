"""`genvi.metrics.evaluate`: every metric, floors, baseline scores and privacy in one table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import genvi
from genvi.metrics import ReferenceSpace, evaluate, summarize
from genvi.metrics._compare import FLOOR_COLUMNS, MODEL_COLUMNS, SCORE_COLUMNS
from genvi.metrics._privacy import PRIVACY_COLUMNS


@pytest.fixture(scope="module")
def data():
    """Train / held-out real cells, fresh cells from the truth, and a wrong generator."""
    sim = genvi.data.simulate(n_cells=600, n_genes=40, n_cell_types=2, seed=0)
    perm = np.random.default_rng(0).permutation(sim.n_obs)
    train, real = sim[np.sort(perm[:400])].copy(), sim[np.sort(perm[400:])].copy()
    good = genvi.data.sample_truth(sim, {}, n_cells=200, seed=5)
    wrong = good.copy()  # every cell labelled with the other cell type
    swap = {"type_0": "type_1", "type_1": "type_0"}
    wrong.obs["cell_type"] = pd.Categorical(wrong.obs["cell_type"].astype(str).map(swap))
    return train, real, good, wrong


def test_every_metric_with_floor_baseline_and_privacy(data):
    train, real, good, wrong = data
    df = evaluate(real, good, ["cell_type"], train=train, baseline=wrong, min_cells=20, n_comps=10)
    assert list(df.index) == ["type_0", "type_1"]
    expected = MODEL_COLUMNS + FLOOR_COLUMNS + SCORE_COLUMNS + PRIVACY_COLUMNS
    assert set(expected) <= set(df.columns)
    for new in ("corr_dist", "zero_frac_dist", "library_dist"):
        assert f"{new}_floor" in df.columns and f"{new}_score" in df.columns
    assert df["skipped"].isna().all()
    assert np.isfinite(df[MODEL_COLUMNS + FLOOR_COLUMNS].to_numpy()).all()
    # the truth is near the floor; swapping cell types is far for the distances that see it
    for metric in ("energy", "mmd", "c2st_auroc", "zero_frac_dist", "library_dist"):
        assert (df[metric] < df[f"baseline_{metric}"]).all(), metric
        assert (df[f"{metric}_score"] < 0.5).all(), metric
    assert (df["mean_r2_score"].abs() < 0.5).all()
    assert (~df["memorised"]).all()
    assert df.attrs["space_fitted_on"] == "train"
    assert df.attrs["n_corr_genes"] == 40
    overall = df.attrs["privacy_overall"]
    assert overall["memorised"] is False and 0.85 < overall["dcr_ratio"] < 1.15

    summary = summarize(df)
    assert summary["n_conditions"] == 2
    assert summary["dcr_ratio"] == pytest.approx(overall["dcr_ratio"])
    assert summary["memorised"] == 0.0
    assert np.isfinite(summary[["corr_dist", "corr_dist_floor", "library_dist_score"]]).all()


def test_copies_are_flagged_and_space_choice_is_recorded(data):
    train, real, _, _ = data
    rng = np.random.default_rng(2)
    copies = train[rng.choice(train.n_obs, size=real.n_obs, replace=True)].copy()
    copies.obs_names_make_unique()
    df = evaluate(real, copies, "cell_type", train=train, min_cells=20, n_comps=10)
    assert df["memorised"].all()
    assert df.attrs["privacy_overall"]["memorised"] is True
    assert summarize(df)["memorised"] == 1.0
    no_train = evaluate(real, copies, "cell_type", min_cells=20, classifier="knn")
    assert no_train.attrs["space_fitted_on"] == "real"
    assert not set(PRIVACY_COLUMNS) & set(no_train.columns)
    assert "privacy_overall" not in no_train.attrs
    assert "dcr_ratio" not in summarize(no_train)
    space = ReferenceSpace.fit(train, n_comps=10)
    given = evaluate(real, copies, "cell_type", space=space, min_cells=20, classifier="knn")
    assert given.attrs["space_fitted_on"] == "given"
    assert given.attrs["n_comps"] == 10


def test_small_and_missing_conditions_are_skipped_not_fatal(data):
    train, real, good, _ = data
    keys = ["cell_type", "treatment"]
    only_control = good[good.obs["treatment"] == "control"].copy()
    df = evaluate(real, only_control, keys, train=train, min_cells=40, n_comps=10)
    assert len(df) == 4
    treated = df[df["treatment"] == "treated"]
    assert treated["skipped"].notna().all()
    assert treated[["energy", "corr_dist", "dcr_ratio"]].isna().all().all()
    assert treated["memorised"].isna().all()
    counts = real.obs.groupby(keys, observed=True).size()
    for label, row in df[df["treatment"] == "control"].iterrows():
        if counts[tuple(label.split("|"))] < 40:
            assert "min_cells" in row["skipped"]
        else:
            assert row["skipped"] is None and np.isfinite(row["dcr_ratio"])
