"""Privacy: copies of training cells are flagged, genuinely new cells are not."""

from __future__ import annotations

import numpy as np
import pytest

import genvi
from genvi.metrics import ReferenceSpace, close_limit, distance_to_closest_record, privacy


@pytest.fixture(scope="module")
def split():
    sim = genvi.data.simulate(n_cells=600, n_genes=40, n_cell_types=2, seed=0)
    perm = np.random.default_rng(0).permutation(sim.n_obs)
    train, holdout = sim[np.sort(perm[:400])].copy(), sim[np.sort(perm[400:])].copy()
    return sim, train, holdout


@pytest.fixture(scope="module")
def space(split):
    return ReferenceSpace.fit(split[1], n_comps=20)


def test_distance_to_closest_record():
    reference = np.array([[0.0, 0.0], [10.0, 0.0]])
    query = np.array([[0.0, 0.0], [7.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(distance_to_closest_record(query, reference), [0.0, 3.0, 5.0])
    with pytest.raises(ValueError, match="dimension"):
        distance_to_closest_record(query, np.zeros((3, 3)))


def test_close_limit_is_twice_expected_or_three_standard_errors():
    assert close_limit(0.05, 10_000) == pytest.approx(0.10)
    assert close_limit(0.05, 50) == pytest.approx(0.05 + 3 * np.sqrt(0.05 * 0.95 / 50))


def test_copies_of_training_cells_are_flagged(split, space):
    _, train, holdout = split
    rng = np.random.default_rng(1)
    copies = train[rng.choice(train.n_obs, size=holdout.n_obs, replace=True)].copy()
    copies.obs_names_make_unique()
    df = privacy(train, holdout, copies, space, condition_keys="cell_type", min_cells=20)
    assert list(df.index) == ["type_0", "type_1", "(all)"]
    assert df["skipped"].isna().all()
    assert df["memorised"].all()
    assert (df["dcr_synthetic"] == 0).all()
    assert (df["dcr_ratio"] < 0.01).all()
    assert (df["close_fraction"] == 1.0).all()


@pytest.mark.parametrize("source", ["sample_truth", "holdout"])
def test_new_cells_are_not_flagged(split, space, source):
    sim, train, holdout = split
    if source == "sample_truth":
        new = genvi.data.sample_truth(sim, {}, n_cells=200, seed=5)
        reference = holdout
    else:  # one half of the held-out cells against the other half
        new, reference = holdout[:100].copy(), holdout[100:].copy()
    df = privacy(train, reference, new, space, condition_keys=["cell_type"], min_cells=20)
    assert not df["memorised"].any()
    overall = df.loc["(all)"]
    assert 0.85 < overall["dcr_ratio"] < 1.15
    assert overall["close_fraction"] < overall["close_limit"]
    assert overall["close_expected"] == 0.05


def test_skips_and_pooled_only(split, space):
    _, train, holdout = split
    df = privacy(train, holdout, holdout[:1].copy(), space, condition_keys="cell_type")
    assert df["skipped"].str.contains("synthetic cells").all()
    assert df["memorised"].isna().all() and df["dcr_ratio"].isna().all()
    few = privacy(train, holdout, holdout, space, condition_keys="cell_type", min_cells=150)
    assert few.loc["type_0", "skipped"].startswith(f"{few.loc['type_0', 'n_holdout']} held-out")
    assert few.loc["(all)", "skipped"] is None
    pooled = privacy(train, holdout, holdout, space)
    assert list(pooled.index) == ["(all)"]
    # held-out cells against themselves: exactly the expected close fraction, ratio 1
    assert pooled.loc["(all)", "dcr_ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="quantile"):
        privacy(train, holdout, holdout, space, quantile=0.0)
