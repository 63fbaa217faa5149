"""Membership inference: calibrated on known answers (copies flagged, independent cells not)."""

from __future__ import annotations

import json
import math

import anndata as ad
import numpy as np
import pytest
from scipy.stats import gaussian_kde

import genvi
from genvi.metrics import ReferenceSpace, evaluate, membership_inference, summarize
from genvi.metrics._membership import ATTACKS, GaussianKDE, TooFewCellsError

N_DONORS = 20


@pytest.fixture(scope="module")
def cells():
    """Three disjoint random thirds of one simulated population; 20 donors without effects."""
    sim = genvi.data.simulate(n_cells=3000, n_genes=100, n_cell_types=3, seed=0)
    rng = np.random.default_rng(0)
    sim.obs["donor id"] = rng.choice([f"d{i:02d}" for i in range(N_DONORS)], size=sim.n_obs)
    perm = rng.permutation(sim.n_obs)
    train, holdout, extra = (sim[np.sort(perm[i : i + 1000])].copy() for i in (0, 1000, 2000))
    return sim, train, holdout, extra


def _copies(train: ad.AnnData, n: int, seed: int) -> ad.AnnData:
    idx = np.random.default_rng(seed).choice(train.n_obs, size=n, replace=True)
    obs = train.obs.iloc[idx].reset_index(drop=True)
    obs.index = [f"copy_{i}" for i in range(n)]
    return ad.AnnData(X=train.X[idx], obs=obs, var=train.var.copy())


def _aurocs(result: dict) -> dict[str, float]:
    return {name: res["auroc"] for name, res in result["attacks"].items()}


def test_kde_is_scipys_estimator():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    query = rng.normal(size=(50, 4)) * 3
    expected = gaussian_kde(data.T).logpdf(query.T)
    np.testing.assert_allclose(GaussianKDE(data).logpdf(query), expected, rtol=1e-9)
    far = GaussianKDE(data).logpdf(np.full((1, 4), 1e3))
    assert np.isfinite(far).all() and far[0] < -1e4  # log-sum-exp: no underflow to -inf
    flat = np.column_stack([data[:, 0], data[:, 0]])  # singular covariance gets a ridge
    assert GaussianKDE(flat).ridge > 0


def test_copies_of_training_cells_are_flagged(cells):
    """Bootstrap copies of the training cells, 3x as many as there are training cells.

    A member absent from the bootstrap is exchangeable with a non-member, so no attack can
    exceed AUROC 0.5 + f / 2, f the fraction of members copied (1 - e^-3 = 0.95 here: at most
    0.975; a bootstrap of n_train cells copies 63% of them and caps the AUROC at 0.82).
    """
    _, train, holdout, _ = cells
    copies = _copies(train, 3 * train.n_obs, seed=1)
    result = membership_inference(copies, train, holdout)
    aurocs = _aurocs(result)
    assert set(aurocs) == set(ATTACKS)
    assert min(aurocs.values()) >= 0.9, aurocs
    fraction = 1 - math.exp(-3)
    assert aurocs["distance"] == pytest.approx(0.5 + fraction / 2, abs=0.02)
    assert result["risk"] == "high" and result["flagged"]
    assert result["auroc"] == max(aurocs.values())
    assert result["attacks"]["distance"]["tpr_at_fpr"] > 0.9
    assert result["verdict"].startswith("Risk: high. Members are identifiable")
    assert result["n_members"] == result["n_nonmembers"] == 1000
    assert result["donor_auroc"] is None and result["donor_skipped"] == "no donor_key given"
    json.dumps(result)  # plain values only


def test_independent_real_cells_are_not_flagged(cells):
    """Held-out cells of the same population used as "synthetic": every attack at chance."""
    _, train, holdout, extra = cells
    result = membership_inference(extra, train, holdout)
    for name, auroc in _aurocs(result).items():
        assert abs(auroc - 0.5) < 0.04, (name, auroc)
        assert not result["attacks"][name]["significant"]
        tpr = result["attacks"][name]["tpr_at_fpr"]
        assert tpr < 0.04, (name, tpr)
    assert result["risk"] == "none detected" and not result["flagged"]
    assert "evidence, not proof" in result["verdict"]


def test_space_fitted_on_training_cells_alone_would_bias_the_distance_attack(cells):
    """Why the audit fits its own space on members and non-members together."""
    _, train, holdout, extra = cells
    biased = membership_inference(
        extra, train, holdout, space=ReferenceSpace.fit(train, n_comps=20), attacks="distance"
    )
    assert biased["attacks"]["distance"]["auroc"] < 0.45
    fair = membership_inference(extra, train, holdout, attacks="distance")
    assert abs(fair["attacks"]["distance"]["auroc"] - 0.5) < 0.04
    assert fair["settings"]["space"].endswith("fitted on the scored members and non-members")


def test_a_few_exact_copies_barely_move_the_auroc_but_not_the_tpr(cells):
    """20% of the members copied among independent cells: AUROC ~0.6, TPR at 1% FPR ~0.2."""
    _, train, holdout, extra = cells
    leaked = train[np.random.default_rng(3).choice(train.n_obs, 200, replace=False)].copy()
    leaked.obs_names = [f"leak_{i}" for i in range(leaked.n_obs)]
    synthetic = ad.concat([extra[:800], leaked])
    result = membership_inference(synthetic, train, holdout, attacks=["distance", "domias"])
    distance = result["attacks"]["distance"]
    assert distance["auroc"] == pytest.approx(0.6, abs=0.03)
    assert distance["tpr_at_fpr"] == pytest.approx(0.2, abs=0.04)
    assert distance["significant"] and result["risk"] == "high"


@pytest.fixture(scope="module")
def donor_split(cells):
    """Members: donors 0-7; non-members: donors 8-15; donors 16-19 held back."""
    sim = cells[0]
    donor = sim.obs["donor id"].to_numpy()
    groups = [np.isin(donor, [f"d{i:02d}" for i in r]) for r in (range(8), range(8, 16))]
    return sim[groups[0]].copy(), sim[groups[1]].copy(), sim[~(groups[0] | groups[1])].copy()


def test_member_donors_of_copies_are_identified(donor_split):
    train, holdout, _ = donor_split
    copies = _copies(train, 3 * train.n_obs, seed=2)
    result = membership_inference(copies, train, holdout, donor_key="donor id")
    assert result["donor_skipped"] is None
    assert result["donor_auroc"] == 1.0
    assert result["n_member_donors"] == result["n_nonmember_donors"] == 8
    assert result["donor_min_p_value"] == pytest.approx(1 / math.comb(16, 8))
    assert result["donor_p_value"] == pytest.approx(1 / math.comb(16, 8))  # exact test
    assert result["settings"]["reference"] == "cross-fitted holdout, folds of whole donors"
    scores = result["attacks"]["domias"]["donor_scores"]
    assert sorted(scores) == [f"d{i:02d}" for i in range(16)]
    assert all(v["member"] == (int(k[1:]) < 8) for k, v in scores.items())
    assert "Member donors are identifiable" in result["verdict"]


@pytest.mark.parametrize("key", ["member", "score", "donor_auroc"])
def test_any_obs_column_can_name_donors(donor_split, key):
    train, holdout, _ = donor_split
    train, holdout = train.copy(), holdout.copy()
    train.obs[key] = train.obs["donor id"].astype(str).str.upper().to_numpy()
    holdout.obs[key] = holdout.obs["donor id"].astype(str).str.upper().to_numpy()
    copies = _copies(train, train.n_obs, seed=2)
    result = membership_inference(copies, train, holdout, donor_key=key, attacks="distance")
    assert result["donor_auroc"] == 1.0
    assert sorted(result["attacks"]["distance"]["donor_scores"])[0] == "D00"


def test_donors_without_effects_are_not_identified(donor_split):
    train, holdout, other_donors = donor_split
    result = membership_inference(other_donors, train, holdout, donor_key="donor id")
    assert result["risk"] == "none detected"
    assert not any(r["donor_significant"] for r in result["attacks"].values())
    assert result["donor_auroc"] is not None


def test_donor_level_needs_each_donor_on_one_side(cells, donor_split):
    _, train, holdout, extra = cells
    split_by_cells = membership_inference(extra, train, holdout, donor_key="donor id")
    assert split_by_cells["donor_auroc"] is None
    assert "both train and holdout" in split_by_cells["donor_skipped"]
    assert np.isfinite(split_by_cells["auroc"])
    members, nonmembers, rest = donor_split
    one = nonmembers[nonmembers.obs["donor id"] == "d08"].copy()
    few = membership_inference(rest, members, one, donor_key="donor id", attacks="distance")
    assert few["donor_skipped"].startswith("8 member and 1 non-member donors")


def test_bad_input_gets_clear_errors(cells):
    _, train, holdout, extra = cells
    with pytest.raises(ValueError, match="attacks"):
        membership_inference(extra, train, holdout, attacks=["distance", "loss"])
    with pytest.raises(ValueError, match=r"`synthetic` lacks 10 of the 100 genes"):
        membership_inference(extra[:, 10:].copy(), train, holdout)
    renamed = holdout.copy()
    renamed.var_names = [f"other_{g}" for g in renamed.var_names]
    with pytest.raises(ValueError, match="share 0 gene names"):
        membership_inference(extra, train, renamed)
    with pytest.raises(ValueError, match="share 1000 cell names"):
        membership_inference(extra, train, train)
    with pytest.raises(TooFewCellsError, match="`holdout` has 10 cells"):
        membership_inference(extra, train, holdout[:10].copy())
    with pytest.raises(TooFewCellsError, match="reference fold"):
        membership_inference(extra, train, holdout[:30].copy())
    with pytest.raises(KeyError, match="'patient' is not a column of `train.obs`"):
        membership_inference(extra, train, holdout, donor_key="patient")
    missing = holdout.copy()
    missing.obs["donor id"] = missing.obs["donor id"].where(np.arange(missing.n_obs) > 4)
    with pytest.raises(ValueError, match="missing for 5 cells"):
        membership_inference(extra, train, missing, donor_key="donor id")


def test_evaluate_reports_membership_next_to_dcr(cells):
    _, train, holdout, _ = cells
    copies = _copies(train, 3 * train.n_obs, seed=4)
    df = evaluate(
        holdout, copies, "cell_type", train=train, min_cells=20, n_comps=10, classifier="knn"
    )
    mia = df.attrs["membership"]
    assert mia["flagged"] and mia["auroc"] >= 0.9
    assert df.attrs["privacy_overall"]["memorised"] is True  # DCR, next to it
    summary = summarize(df)
    assert summary["membership_auroc"] == pytest.approx(mia["auroc"])
    assert np.isnan(summary["membership_donor_auroc"])
    small = evaluate(
        holdout[:15].copy(), copies, "cell_type", train=train, min_cells=5, classifier="knn"
    )
    assert "min_cells" in small.attrs["membership"]["skipped"]
    off = evaluate(
        holdout, copies, "cell_type", train=train, min_cells=20, classifier="knn", membership=False
    )
    assert "membership" not in off.attrs and "membership_auroc" not in summarize(off)


def test_calibration_on_real_kang_cells():
    path = genvi.data.dataset_path("kang_ctrl_8donors")
    if path is None:
        pytest.skip("kang_ctrl_8donors.h5ad not found (expected in ../shared/data)")
    kang = ad.read_h5ad(path)
    perm = np.random.default_rng(0).permutation(kang.n_obs)
    train, holdout, extra = (kang[np.sort(perm[i : i + 1500])].copy() for i in (0, 1500, 3000))
    copies = _copies(train, 3 * train.n_obs, seed=5)
    flagged = membership_inference(copies, train, holdout)
    assert min(_aurocs(flagged).values()) >= 0.9, _aurocs(flagged)
    assert flagged["risk"] == "high"
    null = membership_inference(extra, train, holdout)
    for name, auroc in _aurocs(null).items():
        assert abs(auroc - 0.5) < 0.04, (name, auroc)
    assert null["risk"] == "none detected"
