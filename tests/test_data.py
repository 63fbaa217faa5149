import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score

from genvi.data import DATASETS, load_dataset, pbmc68k, sample_truth, simulate, true_means
from genvi.data._pbmc68k import _check_integer_counts, _recover_counts

# ------------------------------------------------------------------------------------------------
# pbmc68k
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pbmc():
    return pbmc68k()


@pytest.fixture(scope="module")
def pbmc_source():
    import scanpy as sc

    return sc.datasets.pbmc68k_reduced()


def _is_integer_csr(x) -> bool:
    return (
        sp.issparse(x)
        and x.format == "csr"
        and x.dtype == np.float32
        and bool(np.all(x.data >= 0))
        and bool(np.all(x.data == np.round(x.data)))
    )


def test_pbmc68k_counts(pbmc):
    assert pbmc.shape == (700, 765)
    assert _is_integer_csr(pbmc.X)
    assert np.all(pbmc.X.data >= 1)  # no explicit zeros
    assert _is_integer_csr(pbmc.layers["counts"])
    assert (pbmc.layers["counts"] != pbmc.X).nnz == 0
    assert pbmc.layers["counts"] is not pbmc.X
    assert pbmc.obs_names.is_unique
    assert pbmc.var_names.is_unique


def test_pbmc68k_obs_and_uns(pbmc):
    obs = pbmc.obs
    assert isinstance(obs["cell_type"].dtype, pd.CategoricalDtype)
    assert len(obs["cell_type"].cat.categories) == 10
    assert list(obs["phase"].cat.categories) == ["G1", "G2M", "S"]
    row_sums = np.asarray(pbmc.X.sum(axis=1)).ravel()
    np.testing.assert_array_equal(obs["n_counts"].to_numpy(), row_sums)
    # only 765 of the genes were kept, so the original totals are larger
    assert np.all(obs["n_counts_original"].to_numpy() > row_sums)
    assert "percent_mito" in obs
    assert pbmc.uns["genvi_dataset"]["name"] == "pbmc68k_reduced"
    assert set(pbmc.uns) == {"genvi_dataset"}
    assert not pbmc.obsm


def test_pbmc68k_matches_scanpy_raw(pbmc, pbmc_source):
    counts = pbmc.X.toarray().astype(np.float64)
    totals = pbmc.obs["n_counts_original"].to_numpy(np.float64)[:, None]
    renormalized = np.log1p(counts / totals * 1e4)
    np.testing.assert_allclose(renormalized, pbmc_source.raw.X.toarray(), atol=1e-3)
    assert list(pbmc.var_names) == list(pbmc_source.raw.var_names)
    assert list(pbmc.obs_names) == list(pbmc_source.obs_names)
    np.testing.assert_array_equal(
        pbmc.obs["cell_type"].astype(str), pbmc_source.obs["bulk_labels"].astype(str)
    )


def test_pbmc68k_deterministic(pbmc):
    again = pbmc68k()
    assert (again.X != pbmc.X).nnz == 0
    pd.testing.assert_frame_equal(again.obs, pbmc.obs)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (np.array([1.0, 2.0, 3.3]), "max |c - round(c)|"),  # far from an integer
        (np.array([1.0, 50.2, 3.0]), "relative deviation"),  # close in absolute, not relative
        (np.array([1.0, 0.1, 3.0]), "round to a count < 1"),  # a stored nonzero vanishes
        (np.array([1.0, np.nan]), "non-finite"),
    ],
)
def test_integer_check_rejects(values, message):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        _check_integer_counts(values)


def test_integer_check_accepts_rounding_noise():
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 300, size=1000).astype(np.float64)
    _check_integer_counts(counts * (1 + rng.uniform(-4e-4, 4e-4, size=counts.shape)))


def test_recover_counts_guards_corrupted_input(pbmc, pbmc_source):
    totals = pbmc.obs["n_counts_original"].to_numpy(np.float64)
    recovered = _recover_counts(pbmc_source.raw.X, totals)
    assert (recovered != pbmc.X).nnz == 0
    with pytest.raises(RuntimeError, match="count recovery failed"):
        _recover_counts(pbmc_source.raw.X * 1.05, totals)
    with pytest.raises(RuntimeError, match="count recovery failed"):
        _recover_counts(pbmc_source.raw.X, totals * 1.3)


# ------------------------------------------------------------------------------------------------
# simulate
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sim():
    return simulate(n_cells=3000, n_genes=200, seed=0)


@pytest.fixture(scope="module")
def sim_full():
    return simulate(n_cells=1500, n_genes=150, n_substates=3, continuous_covariate=True, seed=3)


def test_simulate_layout(sim):
    assert sim.shape == (3000, 200)
    assert _is_integer_csr(sim.X)
    assert (sim.layers["counts"] != sim.X).nnz == 0
    assert list(sim.var_names[:2]) == ["gene_0", "gene_1"]
    assert list(sim.obs["cell_type"].cat.categories) == ["type_0", "type_1", "type_2", "type_3"]
    assert list(sim.obs["treatment"].cat.categories) == ["control", "treated"]
    assert "age" not in sim.obs
    assert "substate" not in sim.obs
    assert sim.obsm["hidden_factors"].shape == (3000, 2)
    assert np.all(sim.obs["true_library"] > 0)
    # roughly balanced random assignment
    assert sim.obs["cell_type"].value_counts().min() > 0.8 * 3000 / 4
    assert sim.obs["treatment"].value_counts().min() > 0.8 * 3000 / 2


def test_simulate_options(sim_full):
    obs = sim_full.obs
    assert obs["age"].dtype == np.float64
    assert obs["age"].between(20, 80).all()
    assert list(obs["substate"].cat.categories) == ["substate_0", "substate_1", "substate_2"]
    truth = sim_full.uns["simulation"]
    assert truth["substate_programs"].shape == (4, 3, 150)
    np.testing.assert_allclose(truth["substate_proportions"].sum(axis=1), 1.0)
    assert np.any(truth["age_effect"] != 0)

    three = simulate(n_cells=50, n_treatments=3, n_hidden_factors=0, seed=1)
    assert list(three.obs["treatment"].cat.categories) == ["control", "treated_1", "treated_2"]
    assert three.obsm["hidden_factors"].shape == (50, 0)


def test_simulate_reproducible(sim):
    same = simulate(n_cells=3000, n_genes=200, seed=0)
    assert (same.X != sim.X).nnz == 0
    pd.testing.assert_frame_equal(same.obs, sim.obs)
    other = simulate(n_cells=3000, n_genes=200, seed=1)
    assert (other.X != sim.X).nnz > 0
    assert not np.allclose(other.uns["simulation"]["base"], sim.uns["simulation"]["base"])
    # the truth does not depend on the number of cells
    smaller = simulate(n_cells=10, n_genes=200, seed=0)
    np.testing.assert_array_equal(
        smaller.uns["simulation"]["treatment_effects"], sim.uns["simulation"]["treatment_effects"]
    )
    # switching on the optional parts leaves the shared parameters unchanged
    richer = simulate(n_cells=10, continuous_covariate=True, n_substates=3, seed=0)
    for key in ("base", "theta", "celltype_effects", "treatment_effects", "library_log_mean"):
        np.testing.assert_array_equal(richer.uns["simulation"][key], sim.uns["simulation"][key])


def test_simulate_library_sizes():
    adata = simulate(n_cells=2000, library_size_mean=5000.0, seed=2)
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    assert abs(np.median(totals) / 5000.0 - 1) < 0.3
    log_sd = np.std(np.log(adata.obs["true_library"]))
    assert 0.3 < log_sd < 0.6


def test_simulate_overdispersed(sim):
    mask = ((sim.obs["cell_type"] == "type_0") & (sim.obs["treatment"] == "control")).to_numpy()
    counts = sim.X[mask].toarray()
    mean, var = counts.mean(axis=0), counts.var(axis=0)
    high = np.argsort(mean)[-20:]
    assert np.all(mean[high] > 10)
    assert np.all(var[high] > 1.5 * mean[high])


def test_treatment_effect_is_cell_type_specific(sim):
    truth = sim.uns["simulation"]
    effects = truth["treatment_effects"]
    np.testing.assert_array_equal(effects[0], 0.0)  # control has no effect
    assert not np.allclose(effects[1, 0], effects[1, 1])

    # empirical log fold changes recover each cell type's own effect best
    obs = sim.obs
    counts = sim.X.toarray()
    lfc = []
    for cell_type in obs["cell_type"].cat.categories:
        means = []
        for treatment in ("control", "treated"):
            mask = ((obs["cell_type"] == cell_type) & (obs["treatment"] == treatment)).to_numpy()
            pooled = counts[mask].sum(axis=0) + 1
            means.append(np.log(pooled / pooled.sum()))
        lfc.append(means[1] - means[0])
    corr = np.corrcoef(np.vstack([lfc, effects[1]]))[:4, 4:]
    assert np.all(np.argmax(corr, axis=1) == np.arange(4))
    assert np.all(np.diag(corr) > 0.8)


def test_sample_truth_layout(sim_full):
    draws = sample_truth(
        sim_full, {"cell_type": "type_1", "treatment": "treated", "age": 40.0}, 100, seed=5
    )
    assert draws.shape == (100, 150)
    assert _is_integer_csr(draws.X)
    assert set(draws.obs.columns) == set(sim_full.obs.columns)
    assert (draws.obs["cell_type"] == "type_1").all()
    assert (draws.obs["treatment"] == "treated").all()
    assert (draws.obs["age"] == 40.0).all()
    assert list(draws.obs["cell_type"].cat.categories) == list(
        sim_full.obs["cell_type"].cat.categories
    )
    assert draws.obsm["hidden_factors"].shape == (100, 2)
    assert list(draws.var_names) == list(sim_full.var_names)
    # left-out conditions are drawn from the design distribution
    mixed = sample_truth(sim_full, {"treatment": "control"}, 400, seed=5)
    assert mixed.obs["cell_type"].nunique() == 4
    assert mixed.obs["age"].between(20, 80).all()
    assert (mixed.obs["age"].std()) > 10


@pytest.mark.parametrize(
    "conditions",
    [
        {"cell_type": "type_1", "treatment": "treated"},
        {"cell_type": "type_2", "treatment": "control", "age": 70.0},
        {"cell_type": "type_0", "treatment": "treated"},  # age averaged over its distribution
    ],
)
def test_sample_truth_matches_true_means(sim_full, conditions):
    draws = sample_truth(sim_full, conditions, 5000, seed=11)
    counts = draws.X.toarray()
    empirical = (counts / counts.sum(axis=1, keepdims=True)).mean(axis=0)
    expected = true_means(sim_full, conditions)
    assert expected.shape == (150,)
    np.testing.assert_allclose(expected.sum(), 1.0)
    assert np.corrcoef(np.log(empirical), np.log(expected))[0, 1] > 0.99


def test_true_means_table(sim_full):
    table = true_means(sim_full, n_mc=2000)
    assert isinstance(table, pd.DataFrame)
    assert table.index.names == ["cell_type", "treatment"]
    assert len(table) == 4 * 2
    assert list(table.columns) == list(sim_full.var_names)
    np.testing.assert_allclose(table.sum(axis=1), 1.0)
    row = true_means(sim_full, {"cell_type": "type_3", "treatment": "treated"}, n_mc=2000)
    np.testing.assert_allclose(table.loc[("type_3", "treated")].to_numpy(), row)
    # a left-out treatment is the uniform mixture over treatments
    mixture = true_means(sim_full, {"cell_type": "type_3"}, n_mc=2000)
    np.testing.assert_allclose(mixture, table.loc["type_3"].mean(axis=0).to_numpy())


def test_true_means_age_effect(sim_full):
    young = true_means(sim_full, {"cell_type": "type_0", "treatment": "control", "age": 20.0})
    old = true_means(sim_full, {"cell_type": "type_0", "treatment": "control", "age": 80.0})
    age_effect = sim_full.uns["simulation"]["age_effect"]
    affected = age_effect != 0
    assert np.corrcoef(np.log(old / young)[affected], age_effect[affected])[0, 1] > 0.95


def test_true_means_exact_without_hidden_factors():
    adata = simulate(n_cells=10, n_genes=30, n_hidden_factors=0, n_substates=2, seed=4)
    truth = adata.uns["simulation"]
    eta = (
        truth["base"]
        + truth["celltype_effects"][2]
        + truth["treatment_effects"][1, 2]
        + truth["substate_programs"][2]
    )
    rho = np.exp(eta) / np.exp(eta).sum(axis=1, keepdims=True)
    expected = truth["substate_proportions"][2] @ rho
    result = true_means(adata, {"cell_type": "type_2", "treatment": "treated"}, n_mc=5, seed=9)
    np.testing.assert_allclose(result, expected, rtol=1e-12)


def test_substates_are_multimodal():
    adata = simulate(n_cells=2500, n_genes=200, n_substates=3, seed=0)
    obs = adata.obs
    mask = ((obs["cell_type"] == "type_0") & (obs["treatment"] == "control")).to_numpy()
    counts = adata.X[mask].toarray()
    lognorm = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    pcs = PCA(n_components=10, random_state=0).fit_transform(lognorm)
    labels = KMeans(n_clusters=3, n_init=10, random_state=0).fit_predict(pcs)
    assert obs["substate"][mask].value_counts().min() > 30
    assert adjusted_rand_score(obs["substate"][mask], labels) > 0.8


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"cell_type": "type_9"}, "known categories: \\['type_0'"),
        ({"treatment": "drug"}, "known categories: \\['control', 'treated'\\]"),
        ({"batch": "b1"}, "known keys: \\['cell_type', 'treatment'\\]"),
        ({"age": 40.0}, "unknown condition key"),  # no covariate in this simulation
        ({"substate": "substate_0"}, "unknown condition key"),  # hidden, not a condition
    ],
)
def test_unknown_conditions_raise(sim, conditions, message):
    with pytest.raises(ValueError, match=message):
        sample_truth(sim, conditions, 10)
    with pytest.raises(ValueError, match=message):
        true_means(sim, conditions, n_mc=10)


def test_bad_age_raises(sim_full):
    with pytest.raises(ValueError, match="age must be"):
        sample_truth(sim_full, {"age": "old"}, 10)
    with pytest.raises(ValueError, match="age must be finite"):
        true_means(sim_full, {"age": float("nan")}, n_mc=10)


def test_not_a_simulation_raises(pbmc):
    with pytest.raises(ValueError, match="simulate"):
        true_means(pbmc)


def test_write_h5ad_roundtrip(sim_full, tmp_path):
    path = tmp_path / "sim.h5ad"
    sim_full.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert (back.X != sim_full.X).nnz == 0
    conditions = {"cell_type": "type_2", "treatment": "treated", "age": 33.0}
    np.testing.assert_allclose(
        true_means(back, conditions, n_mc=500), true_means(sim_full, conditions, n_mc=500)
    )
    draws_back = sample_truth(back, conditions, 50, seed=3)
    draws = sample_truth(sim_full, conditions, 50, seed=3)
    assert (draws_back.X != draws.X).nnz == 0
    # also without hidden factors: an empty (0, n_genes) loadings array must survive
    no_factors = simulate(n_cells=20, n_genes=10, n_hidden_factors=0, seed=0)
    no_factors.write_h5ad(tmp_path / "nf.h5ad")
    back_nf = ad.read_h5ad(tmp_path / "nf.h5ad")
    np.testing.assert_allclose(
        true_means(back_nf, {"cell_type": "type_0", "treatment": "treated"}),
        true_means(no_factors, {"cell_type": "type_0", "treatment": "treated"}),
    )


def test_load_dataset_finds_local_files_or_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("GENVI_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="GENVI_DATA_DIR"):
        load_dataset("kang_ifnb")
    with pytest.raises(ValueError, match="Unknown dataset"):
        load_dataset("nope")
    small = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    small.write_h5ad(tmp_path / DATASETS["kang_ifnb"])
    loaded = load_dataset("kang_ifnb")
    assert loaded.shape == (3, 2)
