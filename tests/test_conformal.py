"""Conformal p-values and Benjamini-Hochberg flags: validity with known answers."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import stats

from genvi.metrics import benjamini_hochberg, conformal_pvalues, flag_outliers


def ks_pvalue_against_uniform(p: np.ndarray, n_reference: int) -> float:
    """KS test of p-values against U(0, 1) when all were computed against one reference set.

    Given a fixed reference of m cells, the p-values of n query cells follow the reference's
    empirical CDF, which is itself off U(0, 1) by O(1 / sqrt(m)); the statistic is then the
    two-sample KS statistic of queries vs reference, with effective size n m / (n + m).
    """
    n = len(p)
    d = stats.kstest(p, "uniform").statistic
    return float(stats.kstwo.sf(d, int(round(n * n_reference / (n + n_reference)))))


@pytest.mark.parametrize("randomize", [False, True])
def test_pvalues_of_exchangeable_cells_are_uniform(randomize):
    rng = np.random.default_rng(0)
    # marginally (a fresh reference for every query): uniform
    p_marginal = np.array(
        [
            conformal_pvalues(rng.gamma(2.0, size=1), rng.gamma(2.0, size=99), randomize=randomize)[
                0
            ]
            for _ in range(2000)
        ]
    )
    assert stats.kstest(p_marginal, "uniform").pvalue > 0.01
    # one reference for many query cells (the practical case)
    reference = rng.gamma(2.0, size=500)  # any score distribution
    query = rng.gamma(2.0, size=3000)
    p = conformal_pvalues(query, reference, randomize=randomize)
    assert p.shape == query.shape and np.all((p > 0) & (p <= 1))
    assert ks_pvalue_against_uniform(p, len(reference)) > 0.01
    for alpha in (0.05, 0.1, 0.2):
        # false-positive rate at or under alpha, up to the reference's sampling error (DKW,
        # 99 %: sqrt(log(2 / 0.01) / (2 m))) and the queries' binomial error (3 sd)
        slack = np.sqrt(np.log(200) / 1000) + 3 * np.sqrt(alpha * (1 - alpha) / 3000)
        assert (p <= alpha).mean() <= alpha + slack
    assert (p_marginal <= 0.1).mean() <= 0.1 + 3 * np.sqrt(0.09 / 2000)


def test_pvalues_fail_uniformity_when_the_reference_is_the_training_data():
    # the validity needs reference cells the model did not train on: training cells score
    # lower (more typical), so new typical cells get too many small p-values
    rng = np.random.default_rng(1)
    reference = rng.gamma(2.0, size=500) * 0.8
    p = conformal_pvalues(rng.gamma(2.0, size=3000), reference)
    assert ks_pvalue_against_uniform(p, len(reference)) < 1e-6
    assert (p <= 0.1).mean() > 0.15


def test_pvalue_formula_and_ties():
    reference = np.array([1.0, 2.0, 2.0, 3.0])
    p = conformal_pvalues([0.0, 2.0, 2.5, 10.0], reference)
    np.testing.assert_allclose(p, [5 / 5, 4 / 5, 2 / 5, 1 / 5])
    rand = conformal_pvalues(np.full(4000, 2.0), reference, randomize=True, seed=3)
    # #{ref > 2} = 1, #{ref == 2} = 2: uniform on [1/5, 4/5]
    assert rand.min() >= 0.2 and rand.max() <= 0.8
    assert abs(rand.mean() - 0.5) < 0.01


def test_mondrian_groups_rank_within_their_group():
    reference = np.array([0.0, 1.0, 10.0, 11.0])
    ref_groups = np.array(["shallow", "shallow", "deep", "deep"])
    p = conformal_pvalues([5.0, 5.0, 1.0], reference, ["shallow", "deep", "none"], ref_groups)
    np.testing.assert_allclose(p, [1 / 3, 1.0, 1.0])
    with pytest.raises(ValueError, match="both"):
        conformal_pvalues([1.0], reference, groups=["a"])


def test_benjamini_hochberg_controls_the_false_discovery_rate():
    rng = np.random.default_rng(2)
    fdps, powers = [], []
    for _ in range(200):
        reference = rng.normal(size=300)
        typical = rng.normal(size=180)
        novel = rng.normal(3.0, 1.0, size=20)
        flags = flag_outliers(np.concatenate([typical, novel]), reference, fdr=0.1)
        fdps.append(flags[:180].sum() / max(flags.sum(), 1))
        powers.append(flags[180:].mean())
    # mean false-discovery proportion at or under the target (BH on conformal p-values,
    # Bates et al. 2023), with Monte Carlo slack; and the novel cells are found
    assert np.mean(fdps) <= 0.1 + 0.02
    assert np.mean(powers) > 0.5


def test_benjamini_hochberg_step_up():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    # BH at 0.05 with 10 tests: largest k with p_(k) <= 0.005 k is k = 2
    np.testing.assert_array_equal(benjamini_hochberg(p, 0.05), [True, True] + [False] * 8)
    assert not benjamini_hochberg(np.array([0.5, 0.9]), 0.1).any()
    assert flag_outliers([0.001, 0.5], fdr=0.1, pvalues=True).tolist() == [True, False]


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        conformal_pvalues([1.0], [])
    with pytest.raises(ValueError, match="non-finite"):
        conformal_pvalues([np.nan], [1.0])
    with pytest.raises(ValueError, match="fdr"):
        benjamini_hochberg([0.1], 1.5)
    with pytest.raises(ValueError, match="reference_scores"):
        flag_outliers([1.0])
    with pytest.raises(ValueError, match="not both"):
        flag_outliers([0.1], [1.0], pvalues=True)


@pytest.fixture(scope="module")
def scored_cells():
    """Outlier scores of a PriorVI on held-out known cells (reference, test) and novel cells.

    The model is trained without labels on 3/5 of four simulated cell types; 1/5 is the
    conformal reference, 1/5 the typical test cells. Novel cells: the test cells with their
    genes permuted (the same permutation for every cell), a population with the known cells'
    depths and an expression profile the model never saw.
    """
    import scvi

    import genvi
    from conftest import quiet_train

    sim = genvi.data.simulate(n_cells=1200, n_genes=100, n_cell_types=4, seed=3)
    part = np.random.default_rng(0).permutation(sim.n_obs) % 5
    train = sim[part < 3].copy()
    scvi.settings.seed = 0
    genvi.model.PriorVI.setup_anndata(train)
    model = quiet_train(genvi.model.PriorVI(train), max_epochs=100)
    test = sim[part == 4].copy()
    novel = test.copy()
    novel.X = novel.X[:, np.random.default_rng(1).permutation(novel.n_vars)]
    novel.obs_names = [f"novel_{i}" for i in range(novel.n_obs)]
    parts = {"reference": sim[part == 3].copy(), "test": test, "novel": novel}
    # scored in one call, as documented: the default (joint) space is fitted with the scored
    # cells, and reference and query cells must share it to be exchangeable
    scores = model.score_outliers(ad.concat(list(parts.values())))
    bounds = np.cumsum([0] + [cells.n_obs for cells in parts.values()])
    return {name: scores[a:b] for name, a, b in zip(parts, bounds[:-1], bounds[1:])}


def test_model_scores_of_held_out_typical_cells_give_valid_pvalues(scored_cells):
    reference, test = scored_cells["reference"], scored_cells["test"]
    p = conformal_pvalues(test, reference)
    assert ks_pvalue_against_uniform(p, len(reference)) > 0.01
    for alpha in (0.05, 0.1, 0.2):
        # at or under nominal, up to the reference's (DKW, 99 %) and the test cells' sampling error
        slack = np.sqrt(np.log(200) / (2 * len(reference))) + 3 * np.sqrt(
            alpha * (1 - alpha) / len(test)
        )
        assert (p <= alpha).mean() <= alpha + slack


def test_model_scores_flag_novel_cells_with_few_false_discoveries(scored_cells):
    reference, test, novel = (scored_cells[k] for k in ("reference", "test", "novel"))
    flags = flag_outliers(np.r_[test, novel], reference, fdr=0.1)
    false, found = flags[: len(test)], flags[len(test) :]
    assert found.mean() > 0.25  # the novel cells are found ...
    assert found.mean() > 5 * false.mean()
    # ... and few flags are false: one realisation of a proportion whose expectation is <= 0.1
    assert false.sum() / max(flags.sum(), 1) <= 0.2
