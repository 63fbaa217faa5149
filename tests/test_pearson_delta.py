"""Pearson delta (scPerturBench) against a hand computation, and its links to the other scores."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pytest

import genvi
from genvi.metrics import counterfactual_scores, pearson_delta


def _cells(x) -> ad.AnnData:
    x = np.asarray(x, dtype=np.float32)
    return ad.AnnData(X=x, var={"gene": [f"g{i}" for i in range(x.shape[1])]}).copy()


def _named(adata: ad.AnnData) -> ad.AnnData:
    adata.var_names = adata.var["gene"].astype(str).to_numpy()
    return adata


# every cell holds 10 counts, so with target_sum=10 the log-normalised value is log1p(count)
CONTROL = [[2, 3, 5], [4, 3, 3]]
OBSERVED = [[6, 1, 3], [8, 1, 1]]
PREDICTED = [[5, 2, 3], [5, 1, 4]]


def test_pearson_delta_matches_hand_computation():
    control, observed, predicted = (_named(_cells(x)) for x in (CONTROL, OBSERVED, PREDICTED))
    log = math.log1p
    mean_ctrl = [(log(2) + log(4)) / 2, log(3), (log(5) + log(3)) / 2]
    d_obs = [(log(6) + log(8)) / 2, log(1), (log(3) + log(1)) / 2]
    d_pred = [(log(5) + log(5)) / 2, (log(2) + log(1)) / 2, (log(3) + log(4)) / 2]
    d_obs = [o - c for o, c in zip(d_obs, mean_ctrl, strict=True)]
    d_pred = [p - c for p, c in zip(d_pred, mean_ctrl, strict=True)]
    mo, mp = sum(d_obs) / 3, sum(d_pred) / 3
    cov = sum((o - mo) * (p - mp) for o, p in zip(d_obs, d_pred, strict=True))
    var_o = sum((o - mo) ** 2 for o in d_obs)
    var_p = sum((p - mp) ** 2 for p in d_pred)
    expected = cov / math.sqrt(var_o * var_p)

    got = pearson_delta(control, predicted, observed, top_k=None, target_sum=10)
    assert got == pytest.approx(expected, rel=1e-12)
    # with 3 genes, top_k=3 is every gene
    assert pearson_delta(control, predicted, observed, top_k=3, target_sum=10) == pytest.approx(
        expected, rel=1e-12
    )
    # already log-normalised predictions give the same number
    pred_log = _named(_cells(np.log1p(np.asarray(PREDICTED, dtype=np.float64))))
    assert pearson_delta(
        control, pred_log, observed, top_k=None, target_sum=10, predicted_log_normalized=True
    ) == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def perturbation():
    sim = genvi.data.simulate(n_cells=800, n_genes=150, n_cell_types=2, seed=0)
    cells = sim[sim.obs["cell_type"] == "type_0"]
    control = cells[cells.obs["treatment"] == "control"].copy()
    observed = cells[cells.obs["treatment"] == "treated"].copy()
    return control, observed


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def _log_norm(adata: ad.AnnData) -> np.ndarray:
    x = _dense(adata.X)
    return np.log1p(x / x.sum(1, keepdims=True) * 1e4)


def test_pearson_delta_is_top100_lfc_pearson_and_known_answers(perturbation):
    control, observed = perturbation
    assert pearson_delta(control, observed, observed) == pytest.approx(1.0)
    noisy = observed.copy()
    noisy.X = np.random.default_rng(0).poisson(_dense(observed.X) + 0.5).astype(np.float32)
    scores = counterfactual_scores(control, noisy, observed)
    assert pearson_delta(control, noisy, observed) == pytest.approx(
        scores.loc["top100", "lfc_pearson"], rel=1e-12
    )
    assert 0 < pearson_delta(control, noisy, observed) < 1
    # the identity prediction has no change: the correlation is undefined
    assert np.isnan(pearson_delta(control, control, observed))


def test_pearson_delta_ignores_the_size_of_the_response(perturbation):
    """Half the observed change, in log space, still correlates perfectly (unlike mean R²)."""
    control, observed = perturbation
    ctrl_mean = _log_norm(control).mean(0)
    half = ctrl_mean + 0.5 * (_log_norm(observed).mean(0) - ctrl_mean)
    pred = ad.AnnData(X=np.tile(half, (5, 1)))
    pred.var_names = control.var_names
    assert pearson_delta(control, pred, observed, predicted_log_normalized=True) == pytest.approx(
        1.0, abs=1e-6
    )
    scores = counterfactual_scores(control, pred, observed, predicted_log_normalized=True)
    assert scores.loc["top100", "lfc_slope"] == pytest.approx(0.5, abs=1e-6)
    assert scores.loc["top100", "mean_r2"] < 0.99


def test_pearson_delta_checks_top_k(perturbation):
    control, observed = perturbation
    with pytest.raises(ValueError, match="top_k"):
        pearson_delta(control, observed, observed, top_k=1)


def test_log_space_predictions_may_be_negative(perturbation):
    """A Gaussian model in log space can predict below zero; such values are scored as given."""
    control, observed = perturbation
    pred_log = _log_norm(observed) - 0.05
    pred = ad.AnnData(X=pred_log)
    pred.var_names = control.var_names
    assert (pred_log < 0).any()
    scores = counterfactual_scores(control, pred, observed, predicted_log_normalized=True)
    assert scores.loc["top100", "lfc_pearson"] == pytest.approx(1.0, abs=1e-9)
    assert scores.loc["top20", "mean_r2"] < 1
    with pytest.raises(ValueError, match="negative"):
        counterfactual_scores(control, pred, observed)  # as counts: refused
