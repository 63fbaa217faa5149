"""Response transfer: counterfactuals of combinations never observed, from similar contexts."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scvi
from scipy import sparse

from conftest import quiet_train
from genvi.model import DisentVI
from genvi.model.base import stack_responses, transfer_response

N_GENES = 120
TYPES = ["a0", "a1", "a2", "b0", "b1", "b2"]
HELD_OUT = ("a0", "treated")


def test_ridge_transfer_recovers_a_response_linear_in_the_profile():
    rng = np.random.default_rng(0)
    profiles = rng.normal(size=(6, 40))
    slope = rng.normal(size=(40, 30))
    responses = profiles @ slope
    target = rng.normal(size=40) * 0.5 + profiles[:2].mean(0)
    fit = transfer_response(target, profiles, responses, method="ridge")
    # 6 points in 40 dimensions: the linear map is not identifiable, but the target lies in
    # the sources' span up to its own noise, so kernel ridge gets its response closely
    truth = target @ slope
    assert np.corrcoef(fit.response, truth)[0, 1] > 0.6
    mean_only = responses.mean(0)
    assert np.sum((fit.response - truth) ** 2) < np.sum((mean_only - truth) ** 2)
    assert np.isfinite(fit.ridge) and fit.method == "ridge"
    # a target equal to one source gets (nearly) that source's response at a small ridge
    exact = transfer_response(profiles[3], profiles, responses, "ridge", ridge_grid=(1e-8,))
    np.testing.assert_allclose(exact.response, responses[3], rtol=1e-4, atol=1e-4)
    # the mix of the sources' own responses (what the dispersion is mixed with) sums to one
    # and gives the same response as the weights of the centred ones
    for f in (fit, exact):
        assert f.mix.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(f.mix @ responses, f.response, rtol=1e-6, atol=1e-8)


def test_simplex_transfer_recovers_the_mix_of_sources():
    rng = np.random.default_rng(2)
    profiles = rng.normal(size=(5, 60))
    responses = rng.normal(size=(5, 25))
    mix = np.array([0.0, 0.6, 0.0, 0.25, 0.15])
    fit = transfer_response(mix @ profiles, profiles, responses)
    assert fit.method == "simplex" and np.isnan(fit.ridge)
    np.testing.assert_allclose(fit.weights, mix, atol=1e-5)
    np.testing.assert_allclose(fit.response, mix @ responses, atol=1e-4)
    np.testing.assert_array_equal(fit.mix, fit.weights)
    # a target beyond the sources (a stronger version of one plus noise) is not
    # extrapolated to: the weights stay a mix, most of it on the nearest source
    beyond = 2.0 * profiles[2] - profiles.mean(0) + rng.normal(0, 0.3, 60)
    far = transfer_response(beyond, profiles, responses)
    assert np.all(far.weights >= 0) and far.weights.sum() == pytest.approx(1.0)
    assert np.argmax(far.weights) == 2
    lo, hi = responses.min(0), responses.max(0)
    assert np.all((far.response >= lo - 1e-9) & (far.response <= hi + 1e-9))
    # the fit does not depend on the profiles' scale
    scaled = transfer_response(1e3 * (mix @ profiles), 1e3 * profiles, responses)
    np.testing.assert_allclose(scaled.weights, mix, atol=1e-5)
    with pytest.raises(ValueError, match="method must be one of"):
        transfer_response(profiles[0], profiles, responses, method="nearest")


def test_ridge_transfer_with_few_sources_is_the_mean_response():
    rng = np.random.default_rng(1)
    profiles, responses = rng.normal(size=(2, 5)), rng.normal(size=(2, 7))
    fit = transfer_response(rng.normal(size=5), profiles, responses, method="ridge")
    assert fit.ridge == np.inf
    np.testing.assert_allclose(fit.response, responses.mean(0))
    with pytest.raises(ValueError, match="one response per source profile"):
        transfer_response(np.zeros(5), profiles, responses[:1])


def test_decreases_transfer_as_fractions_of_the_target_level():
    """With levels, a source's decrease is the fraction of its own level it lost."""
    profiles = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    target = np.array([0.5, 0.5, 0.0])  # halfway: the simplex weighs both sources 0.5
    # gene 0 halves in both sources; gene 1 rises in one, halves in the other; gene 2 is
    # lost entirely in both
    responses = np.array([[-1.0, 0.6, -0.5], [-2.0, -0.5, -0.5]])
    levels = np.array([[2.0, 1.0, 0.5], [4.0, 1.0, 0.5]])
    target_level = np.array([1.0, 3.0, 0.2])
    shift = transfer_response(target, profiles, responses)
    fit = transfer_response(target, profiles, responses, levels=levels, target_level=target_level)
    np.testing.assert_allclose(fit.weights, [0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(fit.weights, shift.weights)
    # gene 0: half of the target's level (an absolute shift, -1.5, would fall below zero);
    # gene 1: the gain 0.5 x 0.6 plus 0.5 x (-half) of the target's 3.0; gene 2: all of it
    np.testing.assert_allclose(fit.response, [-0.5, 0.3 - 0.75, -0.2], atol=1e-6)
    np.testing.assert_allclose(shift.response, [-1.5, 0.05, -0.5], atol=1e-6)
    assert np.all(target_level + fit.response >= -1e-9)
    # the ridge's mix is applied the same way (two sources: the mean response)
    ridge = transfer_response(
        target, profiles, responses, "ridge", levels=levels, target_level=target_level
    )
    np.testing.assert_allclose(ridge.response, fit.response, atol=1e-6)
    with pytest.raises(ValueError, match="give both levels and target_level"):
        transfer_response(target, profiles, responses, levels=levels)
    with pytest.raises(ValueError, match="levels must have the responses' shape"):
        transfer_response(
            target, profiles, responses, levels=levels[:, :2], target_level=target_level
        )


def test_stacked_responses_take_the_gain_the_sources_show():
    """Where the log-of-mean scale is a fixed multiple of the mean-log one, the stack is the
    mean-log transfer times the gain that fits each source from the others (least squares
    over their largest responses): fitted on the sources alone, whatever the target does.
    """
    rng = np.random.default_rng(3)
    n, g = 5, 80
    profiles = rng.normal(size=(n, 30))
    responses = rng.gamma(1.0, 1.0, size=(n, g))  # gains only: the transfer is linear
    levels = rng.uniform(0.5, 2.0, size=(n, g))
    target, target_level = profiles[:2].mean(0) + 0.1, rng.uniform(0.5, 2.0, size=g)
    args = (target, profiles, responses, levels, target_level)
    fit, coef = stack_responses(*args, 2.0 * responses, 2.0 * levels, 2.0 * target_level)
    plain = transfer_response(target, profiles, responses, levels=levels, target_level=target_level)
    np.testing.assert_allclose(fit.weights, plain.weights)
    # the gain each source shows, left out in turn, on its own 100 largest responses (all 80)
    num = den = 0.0
    for s in range(n):
        rest = np.delete(np.arange(n), s)
        d = transfer_response(
            profiles[s],
            profiles[rest],
            responses[rest],
            levels=levels[rest],
            target_level=levels[s],
        ).response
        num, den = num + d @ responses[s], den + d @ d
    gain = num / den
    assert coef.min() >= 0 and abs(gain - 1.0) > 0.05  # a gain worth recovering
    np.testing.assert_allclose(coef[0] + 2.0 * coef[1], gain, rtol=1e-6)
    np.testing.assert_allclose(fit.response, gain * plain.response, rtol=1e-6, atol=1e-9)
    # one source: nothing to fit, the mean-log transfer
    one, coef = stack_responses(
        target,
        profiles[:1],
        responses[:1],
        levels[:1],
        target_level,
        2.0 * responses[:1],
        2.0 * levels[:1],
        2.0 * target_level,
    )
    np.testing.assert_array_equal(coef, [1.0, 0.0])
    np.testing.assert_allclose(one.response, responses[0])


def _families(
    seed: int = 0, n_per_group: int = 90, bursty: bool = False
) -> tuple[ad.AnnData, dict]:
    """Two families of three cell types; each family has its own treatment response.

    Types of a family share a profile (plus a small type-specific part), so a type's
    response is predictable from how its control profile resembles the others'. Counts are
    NB with inverse dispersion 10; ``bursty``: 0.3 instead for the held-out type's control
    cells on its family's responding genes (barely expressed, bursty), which are not bursty
    once treated.
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.0, N_GENES)
    family = {f: rng.normal(0.0, 1.2, N_GENES) for f in "ab"}
    response = {f: rng.normal(0.0, 1.0, N_GENES) * (rng.random(N_GENES) < 0.3) for f in "ab"}
    shared = rng.normal(0.0, 0.4, N_GENES) * (rng.random(N_GENES) < 0.2)
    logits = {}
    for t in TYPES:
        own = rng.normal(0.0, 0.3, N_GENES)
        ctrl = base + family[t[0]] + own
        logits[(t, "control")] = ctrl
        logits[(t, "treated")] = ctrl + shared + 1.5 * response[t[0]]
    rows, obs = [], []
    for (t, c), eta in logits.items():
        p = np.exp(eta - eta.max())
        p /= p.sum()
        lib = rng.lognormal(np.log(1500), 0.3, n_per_group)
        mu = lib[:, None] * p
        theta = np.full(N_GENES, 10.0)
        if bursty and (t, c) == (HELD_OUT[0], "control"):
            theta[response[t[0]] != 0] = 0.3
        rows.append(rng.poisson(rng.gamma(theta, mu / theta)))
        obs += [(t, c)] * n_per_group
    adata = ad.AnnData(
        X=sparse.csr_matrix(np.vstack(rows).astype(np.float32)),
        obs=pd.DataFrame(obs, columns=["cell type", "treatment"]),
    )
    adata.obs_names = [f"cell_{i}" for i in range(adata.n_obs)]
    adata.obs["cell type"] = pd.Categorical(adata.obs["cell type"], categories=TYPES)
    adata.obs["treatment"] = pd.Categorical(adata.obs["treatment"], ["control", "treated"])
    truth = {k: np.exp(v - v.max()) / np.exp(v - v.max()).sum() for k, v in logits.items()}
    if bursty:
        truth["responding"] = response[HELD_OUT[0][0]] != 0
    return adata, truth


@pytest.fixture(scope="module")
def family_model():
    adata, truth = _families()
    held = (adata.obs["cell type"] == HELD_OUT[0]) & (adata.obs["treatment"] == HELD_OUT[1])
    train = adata[~held.to_numpy()].copy()
    scvi.settings.seed = 0
    DisentVI.setup_anndata(train, categorical_attributes=["cell type", "treatment"])
    model = quiet_train(DisentVI(train, n_latent=5), max_epochs=60)
    return model, train, truth


def _lfc(x, own) -> np.ndarray:
    x = x.toarray() if sparse.issparse(x) else np.asarray(x)
    p = (x / x.sum(1, keepdims=True)).mean(0)
    return np.log(p + 1e-6) - own


def _log_normalised(x) -> np.ndarray:
    """Counts per cell scaled to 10,000, ``log1p`` (as scanpy and the metrics compare cells)."""
    x = x.toarray() if sparse.issparse(x) else np.asarray(x, dtype=float)
    return np.log1p(1e4 * x / np.maximum(x.sum(1, keepdims=True), 1))


def _mean_log(x) -> np.ndarray:
    return _log_normalised(x).mean(0)


def test_transfer_takes_the_response_of_the_similar_family(family_model, tmp_path):
    model, train, truth = family_model
    is_ctrl = (train.obs["cell type"] == HELD_OUT[0]) & (train.obs["treatment"] == "control")
    ctrl = train[is_ctrl.to_numpy()].copy()
    before = ctrl.copy()
    true_lfc = np.log(truth[HELD_OUT]) - np.log(truth[(HELD_OUT[0], "control")])
    own = np.log(truth[(HELD_OUT[0], "control")])
    moved = model.predict_counterfactual(ctrl, {"treatment": "treated"}, return_mean=True)
    decoded = model.predict_counterfactual(
        ctrl, {"treatment": "treated"}, return_mean=True, unseen="decode"
    )
    by_ridge = model.predict_counterfactual(
        ctrl, {"treatment": "treated"}, return_mean=True, transfer_method="ridge"
    )
    r_transfer = np.corrcoef(_lfc(moved.X, own), true_lfc)[0, 1]
    r_ridge = np.corrcoef(_lfc(by_ridge.X, own), true_lfc)[0, 1]
    r_decode = np.corrcoef(_lfc(decoded.X, own), true_lfc)[0, 1]
    # the additive oracle: the true control plus the mean true response of the other types
    others = [t for t in TYPES if t != HELD_OUT[0]]
    additive = np.mean(
        [np.log(truth[(t, "treated")]) - np.log(truth[(t, "control")]) for t in others], 0
    )
    r_additive = np.corrcoef(additive, true_lfc)[0, 1]
    # observed: simplex transfer 0.926, ridge 0.932, the decoder 0.919, the additive oracle 0.532
    for r in (r_transfer, r_ridge):
        assert r >= 0.9, (r_transfer, r_ridge, r_decode)
        assert r >= r_decode, (r_transfer, r_ridge, r_decode)
        assert r >= r_additive + 0.05, (r_transfer, r_ridge, r_additive)
    report = moved.uns["genvi"]["transfer"]["a0: control -> treated"]
    assert report["transferred"] and report["method"] == "simplex" and "ridge" not in report
    weights = dict(zip(report["sources"], report["weights"]))
    assert set(weights) == {"a1", "a2", "b0", "b1", "b2"}
    # the simplex puts (nearly) all of its weight on the held-out type's own family
    assert min(weights.values()) >= 0 and sum(weights.values()) == pytest.approx(1.0)
    assert weights["a1"] + weights["a2"] > 0.8, weights
    ridge_report = by_ridge.uns["genvi"]["transfer"]["a0: control -> treated"]
    assert ridge_report["method"] == "ridge" and np.isfinite(ridge_report["ridge"])
    w = dict(zip(ridge_report["sources"], ridge_report["weights"]))
    assert min(w["a1"], w["a2"]) > max(w[b] for b in ("b0", "b1", "b2"))
    assert moved.uns["genvi"]["unseen"] == "transfer"
    moved.write_h5ad(tmp_path / "moved.h5ad")  # the report is h5ad-safe
    back = ad.read_h5ad(tmp_path / "moved.h5ad")
    assert list(back.uns["genvi"]["transfer"]["a0: control -> treated"]["sources"]) == [
        "a1",
        "a2",
        "b0",
        "b1",
        "b2",
    ]
    # the caller's cells are unchanged; sampled counts are integers around the means
    assert (ctrl.X != before.X).nnz == 0 and ctrl.obs.equals(before.obs)
    sampled = model.predict_counterfactual(ctrl, {"treatment": "treated"}, seed=0)
    x = sampled.X.toarray()
    assert np.all(x == np.round(x)) and np.all(x >= 0)
    r_sampled = np.corrcoef(_lfc(x, own), true_lfc)[0, 1]
    assert r_sampled >= r_transfer - 0.1, (r_sampled, r_transfer)


def test_transferred_counts_take_the_sources_dispersion():
    """The held-out type is bursty on the responding genes only while they are off.

    Its own dispersion (``transfer_dispersion="own"``, the decoder's for the unseen
    combination) carries that burstiness into the treated state, where the genes are
    induced and no longer bursty; the sources' (the default) does not. Scored against
    fresh draws of the true treated cells: the per-gene variance of the log-normalised
    counts of the responding genes.
    """
    adata, truth = _families(seed=1, bursty=True)
    held = (adata.obs["cell type"] == HELD_OUT[0]) & (adata.obs["treatment"] == HELD_OUT[1])
    train = adata[~held.to_numpy()].copy()
    scvi.settings.seed = 0
    DisentVI.setup_anndata(train, categorical_attributes=["cell type", "treatment"])
    model = quiet_train(DisentVI(train, n_latent=5), max_epochs=60)
    is_ctrl = (train.obs["cell type"] == HELD_OUT[0]) & (train.obs["treatment"] == "control")
    ctrl = train[is_ctrl.to_numpy()].copy()
    # the truth: treated cells of the held-out type at the control cells' depths, NB(10)
    rng = np.random.default_rng(5)
    mu = np.asarray(ctrl.X.sum(1)).reshape(-1, 1) * truth[HELD_OUT]
    real = np.vstack([rng.poisson(rng.gamma(10.0, mu / 10.0)) for _ in range(4)])

    def log_var(x) -> np.ndarray:
        return _log_normalised(x).var(0)

    genes = truth["responding"] & (truth[HELD_OUT] * 1500 > 1)  # expressed once treated
    want = log_var(real)[genes]
    err = {}
    for dispersion in ("sources", "own"):
        pred = [
            model.predict_counterfactual(
                ctrl, {"treatment": "treated"}, seed=s, transfer_dispersion=dispersion
            ).X
            for s in range(4)
        ]
        got = log_var(sparse.vstack(pred))[genes]
        err[dispersion] = float(np.median(np.abs(got - want)))
        report = model.predict_counterfactual(
            ctrl[:5].copy(), {"treatment": "treated"}, transfer_dispersion=dispersion
        ).uns["genvi"]["transfer"]["a0: control -> treated"]
        assert report["dispersion"] == dispersion
    # observed: median |log-variance error| 0.061 with the sources' dispersion, 1.90 own
    assert err["sources"] < 0.5 * err["own"], err
    with pytest.raises(ValueError, match="transfer_dispersion must be one of"):
        model.predict_counterfactual(ctrl, {"treatment": "treated"}, transfer_dispersion="x")


def _data_transfer(train, ctrl, rep, level_of) -> tuple[np.ndarray, np.ndarray]:
    """The data's transferred response, from the training counts and a report's weights.

    On the scale ``level_of`` gives: the sources' gains plus their decreases as fractions of
    their own levels, taken of the control cells' level (``transfer_decrease="fraction"``),
    and the plain mix of their changes (``"shift"``).
    """
    gains, lost, shifted = 0.0, 0.0, 0.0
    t = (train.obs["treatment"] == "treated").to_numpy()
    for source, w in zip(rep["sources"], rep["weights"]):
        of = (train.obs["cell type"] == source).to_numpy()
        before = level_of(train.X[of & ~t])
        change = level_of(train.X[of & t]) - before
        gains = gains + w * np.maximum(change, 0.0)
        lost = lost + w * np.where(change < 0, change / np.maximum(before, 1e-12), 0.0)
        shifted = shifted + w * change
    return gains + np.clip(lost, -1.0, 0.0) * level_of(ctrl.X), shifted


def test_drawn_counts_move_by_the_data_response(family_model):
    """``transfer_space="data"``: the counts drawn sit at the control cells' own mean
    log-normalised counts plus the data's transferred response (built here from the
    training counts and the report's weights alone); ``"means"`` (the decoder's response
    added to its profile) does not aim there. Both are also scored against fresh draws of
    the true treated cells at the control cells' depths (every expressed gene).
    """
    model, train, truth = family_model
    is_ctrl = (train.obs["cell type"] == HELD_OUT[0]) & (train.obs["treatment"] == "control")
    ctrl = train[is_ctrl.to_numpy()].copy()
    rng = np.random.default_rng(7)
    mu = np.asarray(ctrl.X.sum(1)).reshape(-1, 1) * truth[HELD_OUT]
    real = _mean_log(np.vstack([rng.poisson(rng.gamma(10.0, mu / 10.0)) for _ in range(8)]))
    genes = truth[HELD_OUT] * 1500 > 0.5
    err, drawn = {}, {}
    for space in ("data", "means"):
        pred = [
            model.predict_counterfactual(
                ctrl, {"treatment": "treated"}, seed=s, transfer_space=space
            ).X
            for s in range(12)
        ]
        drawn[space] = _mean_log(sparse.vstack(pred))
        err[space] = float(np.median(np.abs(drawn[space] - real)[genes]))
    # the target the calibration aims at, from the data alone (simplex weights of the
    # report): the sources' gains, and their decreases as fractions of their own levels
    # taken of the control cells' level (``transfer_decrease="fraction"``, the default)
    report = model.predict_counterfactual(ctrl, {"treatment": "treated"}, seed=0).uns["genvi"]
    rep = report["transfer"]["a0: control -> treated"]
    assert rep["space"] == "data" and rep["decrease"] == "fraction"
    fractional, shifted = _data_transfer(train, ctrl, rep, _mean_log)
    own = _mean_log(ctrl.X)
    target = own + fractional
    assert np.all(target >= 0)
    gap = {k: float(np.median(np.abs(v - target)[genes])) for k, v in drawn.items()}
    # ``transfer_decrease="shift"`` aims at the additive construction instead
    by_shift = [
        model.predict_counterfactual(
            ctrl, {"treatment": "treated"}, seed=s, transfer_decrease="shift"
        ).X
        for s in range(12)
    ]
    additive = np.maximum(own + shifted, 0.0)
    drawn_shift = _mean_log(sparse.vstack(by_shift))
    falls = genes & (shifted < -0.1)
    gap_shift = float(np.median(np.abs(drawn_shift - additive)[genes]))
    assert gap_shift < 0.05, gap_shift
    # the two targets must differ where the sources' genes fall for the checks below to tell
    # them apart (above 0.05 where it was written, 0.04999 on other kernels: a margin)
    assert falls.sum() >= 5 and np.abs(target - additive)[falls].mean() > 0.04

    # where the sources' genes fall, each setting's draws sit at its own target, not the other's
    def off(x, aim) -> float:
        return float(np.abs(x - aim)[falls].mean())

    assert off(drawn["data"], target) < off(drawn["data"], additive), falls.sum()
    assert off(drawn_shift, additive) < off(drawn_shift, target), falls.sum()
    # observed: median |drawn - target| 0.029 (data) vs 0.075 (means); against the true
    # treated cells 0.072 vs 0.081 (the transfer's own error dominates there: the decoder is
    # well specified in this simulation, unlike on Kang)
    assert gap["data"] < 0.05 and gap["data"] < 0.6 * gap["means"], (gap, err)
    assert err["data"] < 0.1 and err["data"] <= err["means"] + 0.01, err
    with pytest.raises(ValueError, match="transfer_space must be one of"):
        model.predict_counterfactual(ctrl, {"treatment": "treated"}, transfer_space="x")
    with pytest.raises(ValueError, match="transfer_decrease must be one of"):
        model.predict_counterfactual(ctrl, {"treatment": "treated"}, transfer_decrease="x")


def test_stacked_scale_draws_sit_at_the_stacked_target(family_model):
    """``transfer_scale="stacked"``: the counts drawn sit at the control cells' own mean
    log-normalised counts plus the report's coefficients times the two transfers, each
    built here from the training counts and the report's weights alone.
    """
    model, train, truth = family_model
    is_ctrl = (train.obs["cell type"] == HELD_OUT[0]) & (train.obs["treatment"] == "control")
    ctrl = train[is_ctrl.to_numpy()].copy()
    pred = [
        model.predict_counterfactual(
            ctrl, {"treatment": "treated"}, seed=s, transfer_scale="stacked"
        )
        for s in range(12)
    ]
    rep = pred[0].uns["genvi"]["transfer"]["a0: control -> treated"]
    assert rep["scale"] == "stacked"
    coef = rep["stack_coefficients"]
    assert min(coef.values()) >= 0 and sum(coef.values()) > 0

    def log_mean(x) -> np.ndarray:
        x = x.toarray() if sparse.issparse(x) else np.asarray(x, dtype=float)
        return np.log1p(1e4 * (x / np.maximum(x.sum(1, keepdims=True), 1)).mean(0))

    def transferred(level_of) -> np.ndarray:
        return _data_transfer(train, ctrl, rep, level_of)[0]

    own = _mean_log(ctrl.X)
    target = (
        own + coef["mean_log"] * transferred(_mean_log) + coef["log_mean"] * transferred(log_mean)
    )
    drawn = _mean_log(sparse.vstack([p.X for p in pred]))
    genes = truth[HELD_OUT] * 1500 > 0.5
    default = model.predict_counterfactual(ctrl, {"treatment": "treated"}, seed=0)
    assert float(np.median(np.abs(drawn - target)[genes])) < 0.05
    # where the stacked target and the mean-log one differ, the draws sit at the stacked one
    plain = own + transferred(_mean_log)
    # (observed: 16 genes apart by more than 0.03; mean |drawn - target| 0.033 there, 0.061
    # from the mean-log target; the draws' own noise is about 0.03)
    differ = genes & (np.abs(target - plain) > 0.03)
    assert differ.sum() >= 10, differ.sum()
    assert np.abs(drawn - target)[differ].mean() < 0.7 * np.abs(drawn - plain)[differ].mean()
    assert default.uns["genvi"]["transfer"]["a0: control -> treated"]["scale"] == "mean_log"
    with pytest.raises(ValueError, match="transfer_scale must be one of"):
        model.predict_counterfactual(ctrl, {"treatment": "treated"}, transfer_scale="x")
    with pytest.raises(ValueError, match="needs transfer_space='data'"):
        model.predict_counterfactual(
            ctrl, {"treatment": "treated"}, transfer_scale="stacked", transfer_space="means"
        )


@pytest.mark.parametrize(
    ("kwargs", "same"),
    [({"dispersion": "gene"}, True), ({"gene_likelihood": "poisson"}, True), ({}, False)],
)
def test_sources_dispersion_only_matters_where_the_dispersion_sees_the_context(kwargs, same):
    """One dispersion per gene, or none (Poisson): both choices draw the same counts."""
    adata, _ = _families(seed=2, n_per_group=30)
    held = (adata.obs["cell type"] == HELD_OUT[0]) & (adata.obs["treatment"] == HELD_OUT[1])
    train = adata[~held.to_numpy()].copy()
    scvi.settings.seed = 0
    DisentVI.setup_anndata(train, categorical_attributes=["cell type", "treatment"])
    model = quiet_train(DisentVI(train, n_latent=3, **kwargs), max_epochs=2)
    is_ctrl = (train.obs["cell type"] == HELD_OUT[0]) & (train.obs["treatment"] == "control")
    ctrl = train[is_ctrl.to_numpy()].copy()
    x = {
        d: model.predict_counterfactual(
            ctrl, {"treatment": "treated"}, seed=0, transfer_dispersion=d
        ).X.toarray()
        for d in ("sources", "own")
    }
    assert np.array_equal(x["sources"], x["own"]) == same


def test_seen_combinations_are_decoded_as_before(family_model):
    model, train, _ = family_model
    cells = train[(train.obs["cell type"] == "b1").to_numpy()].copy()
    a = model.predict_counterfactual(cells, {"treatment": "treated"}, return_mean=True)
    b = model.predict_counterfactual(
        cells, {"treatment": "treated"}, return_mean=True, unseen="decode"
    )
    np.testing.assert_array_equal(a.X, b.X)
    assert a.uns["genvi"]["transfer"] == {}
    # a change of both attributes is always decoded
    both = {"treatment": "treated", "cell type": "a0"}
    c = model.predict_counterfactual(cells, both, return_mean=True)
    d = model.predict_counterfactual(cells, both, return_mean=True, unseen="decode")
    np.testing.assert_array_equal(c.X, d.X)
    with pytest.raises(ValueError, match="unseen must be 'transfer' or 'decode'"):
        model.predict_counterfactual(cells, {"treatment": "treated"}, unseen="nearest")
    with pytest.raises(ValueError, match="transfer_method must be one of"):
        model.predict_counterfactual(cells, {"treatment": "treated"}, transfer_method="knn")


def test_report_says_why_a_combination_was_not_transferred():
    """Decoded, with the reason in ``uns``, when there is no profile or no source."""
    rng = np.random.default_rng(3)
    groups = [("a", "ctrl"), ("b", "ctrl"), ("b", "stim"), ("c", "other")]
    x = rng.poisson(3.0, size=(40 * len(groups), 30)).astype(np.float32)
    obs = pd.DataFrame([g for g in groups for _ in range(40)], columns=["type", "cond"])
    obs["type"] = pd.Categorical(obs["type"])
    obs["cond"] = pd.Categorical(obs["cond"], ["ctrl", "stim", "other"])
    adata = ad.AnnData(X=sparse.csr_matrix(x), obs=obs)
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    scvi.settings.seed = 0
    DisentVI.setup_anndata(adata, categorical_attributes=["type", "cond"])
    model = quiet_train(DisentVI(adata, n_latent=3), max_epochs=3)
    query = adata[:80].copy()
    query.obs["type"] = pd.Categorical(["a"] * 80, ["a", "b", "c"])
    query.obs["cond"] = pd.Categorical(["ctrl"] * 40 + ["other"] * 40, ["ctrl", "stim", "other"])
    to_other = model.predict_counterfactual(query[:40].copy(), {"cond": "other"}, return_mean=True)
    report = to_other.uns["genvi"]["transfer"]["a: ctrl -> other"]
    assert not report["transferred"]
    assert report["reason"] == "no other context was observed with both cond values"
    to_stim = model.predict_counterfactual(query, {"cond": "stim"}, return_mean=True)
    report = to_stim.uns["genvi"]["transfer"]
    assert report["a: ctrl -> stim"]["transferred"]  # from b, the only source
    assert report["a: ctrl -> stim"]["weights"] == [1.0]
    assert report["a: other -> stim"] == {
        "transferred": False,
        "reason": "a was not observed with other in training",
    }
    # untransferred cells are the decoder's prediction
    decoded = model.predict_counterfactual(
        query, {"cond": "stim"}, return_mean=True, unseen="decode"
    )
    np.testing.assert_array_equal(to_stim.X[40:], decoded.X[40:])
