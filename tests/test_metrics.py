from functools import partial

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import genvi
from genvi.metrics import (
    ReferenceSpace,
    c2st_auroc,
    compare_conditions,
    correlation_distance,
    count_profile,
    counterfactual_scores,
    energy_distance,
    library_size_distance,
    mean_var_agreement,
    median_heuristic_bandwidths,
    mmd_rbf,
    noise_floor,
    rank_degs,
    summarize,
    zero_fraction_distance,
)

N_GENES = 500
N_MARKERS = 60


def _group_means(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.lognormal(mean=0.0, sigma=1.2, size=N_GENES)
    b_means = base.copy()
    b_means[:N_MARKERS] *= 6.0  # group B up-regulates the first genes
    c_means = base.copy()
    c_means[N_MARKERS : 2 * N_MARKERS] *= 6.0
    d_means = base.copy()
    d_means[2 * N_MARKERS : 3 * N_MARKERS] *= 6.0
    return {"A": base, "B": b_means, "C": c_means, "D": d_means}


def _nb_counts(
    mu: np.ndarray, n_cells: int, rng: np.random.Generator, theta: float = 5.0
) -> np.ndarray:
    library = rng.lognormal(mean=0.0, sigma=0.3, size=(n_cells, 1))
    rate = mu[None, :] * library
    return rng.negative_binomial(theta, theta / (theta + rate)).astype(np.float32)


def make_adata(
    sizes: dict[str, int], seed: int, sparse: bool = False, theta: float = 5.0
) -> ad.AnnData:
    """NB counts (inverse dispersion ``theta``), one block of cells per group; group means
    shared across seeds."""
    means = _group_means()
    rng = np.random.default_rng(seed)
    blocks = [_nb_counts(means[g], n, rng, theta) for g, n in sizes.items()]
    x = np.vstack(blocks)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.repeat(list(sizes), list(sizes.values()))),
            "treatment": np.tile(["ctrl", "stim"], x.shape[0] // 2 + 1)[: x.shape[0]],
        },
        index=[f"cell{seed}_{i}" for i in range(x.shape[0])],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(N_GENES)])
    return ad.AnnData(X=sp.csr_matrix(x) if sparse else x, obs=obs, var=var)


@pytest.fixture(scope="module")
def train() -> ad.AnnData:
    return make_adata({"A": 150, "B": 150}, seed=1, sparse=True)


@pytest.fixture(scope="module")
def space(train: ad.AnnData) -> ReferenceSpace:
    return ReferenceSpace.fit(train, n_top_genes=200, n_comps=20)


def gaussian(n: int, shift: float = 0.0, seed: int = 0, dim: int = 10) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim))
    x[:, 0] += shift
    return x


# --- distances -----------------------------------------------------------------------------


def test_identical_and_same_distribution_are_near_zero():
    x = gaussian(400, seed=0)
    y = gaussian(400, seed=1)
    assert abs(energy_distance(x, x.copy())) < 0.05
    assert abs(energy_distance(x, y)) < 0.1
    mmd, bandwidths = mmd_rbf(x, y)
    assert abs(mmd) < 0.02
    assert len(bandwidths) == 3
    assert bandwidths[0] == pytest.approx(bandwidths[1] / 2)
    assert bandwidths[2] == pytest.approx(bandwidths[1] * 2)
    for classifier in ("logistic", "knn"):
        assert abs(c2st_auroc(x, y, classifier=classifier) - 0.5) < 0.1


def test_energy_matches_closed_form_in_one_dimension():
    # For two point masses at 0 and d, energy = 2d (within-sample distances vanish).
    x = np.zeros((5, 1))
    y = np.full((7, 1), 3.0)
    assert energy_distance(x, y) == pytest.approx(6.0)


def test_distances_increase_with_shift():
    shifts = [0.0, 0.5, 1.0, 2.0]
    x = gaussian(300, seed=0)
    ys = [gaussian(300, shift=s, seed=1) for s in shifts]
    # Fixed bandwidths so that the MMD values share one kernel.
    bandwidths = median_heuristic_bandwidths(x)
    energies = [energy_distance(x, y) for y in ys]
    mmds = [mmd_rbf(x, y, bandwidths=bandwidths)[0] for y in ys]
    aucs = [c2st_auroc(x, y) for y in ys]
    assert np.all(np.diff(energies) > 0)
    assert np.all(np.diff(mmds) > 0)
    assert aucs[-1] > 0.8 > aucs[0]


def test_c2st_separable_and_balanced():
    x = gaussian(500, seed=0)
    y = gaussian(80, shift=6.0, seed=1)
    assert c2st_auroc(x, y) > 0.99
    assert c2st_auroc(x, y, classifier="knn") > 0.99


def test_subsampling_is_seeded():
    x, y = gaussian(300, seed=0), gaussian(300, shift=1.0, seed=1)
    assert energy_distance(x, y, max_cells=100, seed=3) == energy_distance(
        x, y, max_cells=100, seed=3
    )
    assert mmd_rbf(x, y, max_cells=100, seed=3) == mmd_rbf(x, y, max_cells=100, seed=3)


def test_input_validation():
    with pytest.raises(ValueError, match="dimension"):
        energy_distance(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="classifier"):
        c2st_auroc(gaussian(20), gaussian(20, seed=1), classifier="svm")
    with pytest.raises(ValueError, match="positive"):
        mmd_rbf(gaussian(20), gaussian(20, seed=1), bandwidths=[0.0])


def test_noise_floor_below_wrong_generator():
    real = gaussian(400, seed=0)
    wrong = gaussian(400, shift=1.5, seed=1)
    assert noise_floor(real, energy_distance, n_repeats=3) < energy_distance(real, wrong)
    bandwidths = median_heuristic_bandwidths(real)
    mmd = partial(mmd_rbf, bandwidths=bandwidths)
    assert noise_floor(real, mmd) < mmd(real, wrong)[0]
    assert abs(noise_floor(real, c2st_auroc) - 0.5) < 0.1


# --- expression statistics -----------------------------------------------------------------


def test_mean_var_agreement():
    x = np.log1p(np.random.default_rng(0).poisson(3.0, size=(100, 50)).astype(float))
    same = mean_var_agreement(x, x.copy())
    assert same == pytest.approx(
        {"mean_r2": 1.0, "var_r2": 1.0, "mean_pearson": 1.0, "var_pearson": 1.0}
    )
    shuffled = mean_var_agreement(x, x[:, ::-1])
    assert shuffled["mean_r2"] < 0.5
    with pytest.raises(ValueError, match="genes"):
        mean_var_agreement(x, x[:, :10])


# --- reference space -----------------------------------------------------------------------


def test_reference_space_shapes_and_centring(train, space):
    assert space.n_genes == 200
    assert space.n_comps == 20
    assert space.hvg_flavor == "seurat_v3"
    # The planted marker genes are the most variable ones, so they must be selected.
    assert set(train.var_names[:N_MARKERS]) <= set(space.genes)
    pcs = space.transform(train)
    assert pcs.shape == (train.n_obs, 20)
    np.testing.assert_allclose(pcs.mean(axis=0), 0.0, atol=1e-8)
    log_expr = space.log_normalize(train)
    assert log_expr.shape == (train.n_obs, 200)
    np.testing.assert_allclose(space.project(log_expr), pcs)


def test_log_normalize_uses_totals_over_all_genes(train, space):
    counts = train.X.toarray()
    gene_idx = train.var_names.get_indexer(space.genes)
    expected = np.log1p(counts[:, gene_idx] / counts.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(space.log_normalize(train), expected, rtol=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
def test_reference_space_does_not_mutate_input(sparse):
    adata = make_adata({"A": 60, "B": 60}, seed=5, sparse=sparse)
    before = adata.copy()
    space = ReferenceSpace.fit(adata, n_top_genes=100, n_comps=10)
    space.transform(adata)
    if sparse:
        assert type(adata.X) is type(before.X)
        assert (adata.X != before.X).nnz == 0
    else:
        np.testing.assert_array_equal(adata.X, before.X)
    assert list(adata.var.columns) == list(before.var.columns)
    assert list(adata.obs.columns) == list(before.obs.columns)
    assert adata.uns.keys() == before.uns.keys()


def test_reference_space_layer_and_caps():
    adata = make_adata({"A": 20, "B": 20}, seed=6)
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X)
    space = ReferenceSpace.fit(adata, n_top_genes=5000, n_comps=100, layer="counts")
    assert space.hvg_flavor == "all"
    assert space.n_genes == N_GENES
    assert space.n_comps == adata.n_obs - 1
    assert space.transform(adata, layer="counts").shape == (adata.n_obs, adata.n_obs - 1)


def test_totals_over_reference_genes(train):
    space = ReferenceSpace.fit(train, n_top_genes=100, n_comps=10, totals_over="reference")
    genes_only = train[:, space.genes[::-1]].copy()
    np.testing.assert_allclose(space.transform(genes_only), space.transform(train))
    np.testing.assert_allclose(space.transform(train).mean(axis=0), 0.0, atol=1e-8)
    # With the default, dropping the other genes shrinks totals and moves the cells.
    default = ReferenceSpace.fit(train, n_top_genes=100, n_comps=10)
    assert not np.allclose(default.transform(genes_only), default.transform(train))


def test_reference_space_without_scikit_misc(monkeypatch):
    monkeypatch.setattr("genvi.metrics._space._has_skmisc", lambda: False)
    adata = make_adata({"A": 60, "B": 60}, seed=7, sparse=True)
    space = ReferenceSpace.fit(adata, n_top_genes=100, n_comps=10)
    assert space.hvg_flavor == "seurat"
    assert space.n_genes == 100
    assert set(adata.var_names[:N_MARKERS]) & set(space.genes)
    np.testing.assert_allclose(space.transform(adata).mean(axis=0), 0.0, atol=1e-8)


def test_missing_genes_raise(train, space):
    dropped = space.genes[:3]
    subset = train[:, ~train.var_names.isin(dropped)]
    with pytest.raises(ValueError, match=str(dropped[0])):
        space.transform(subset)


def test_gene_order_does_not_matter(train, space):
    perm = np.random.default_rng(0).permutation(train.n_vars)
    permuted = train[:, perm].copy()
    np.testing.assert_allclose(space.transform(permuted), space.transform(train))
    dense = permuted.copy()
    dense.X = dense.X.toarray()
    np.testing.assert_allclose(space.transform(dense), space.transform(train))
    as_array = permuted.copy()
    as_array.X = sp.csr_array(as_array.X)
    np.testing.assert_allclose(space.transform(as_array), space.transform(train))


def test_reference_space_accepts_views_and_sparse_arrays(train):
    view = train[:200]
    view_space = ReferenceSpace.fit(view, n_top_genes=100, n_comps=10)
    arrays = view.copy()
    arrays.X = sp.csr_array(arrays.X.astype(np.int64))
    array_space = ReferenceSpace.fit(arrays, n_top_genes=100, n_comps=10)
    assert list(view_space.genes) == list(array_space.genes)
    np.testing.assert_allclose(view_space.transform(view), array_space.transform(arrays))


# --- per-condition comparison --------------------------------------------------------------


@pytest.fixture(scope="module")
def held_out() -> ad.AnnData:
    return make_adata({"A": 120, "B": 120, "C": 10}, seed=2)


def _relabel(adata: ad.AnnData, mapping: dict[str, str]) -> ad.AnnData:
    out = adata.copy()
    out.obs["cell_type"] = pd.Categorical(out.obs["cell_type"].astype(str).replace(mapping))
    return out


def test_compare_conditions_ranks_generators(space, held_out):
    good = make_adata({"A": 100, "B": 100, "D": 20}, seed=3)  # D: extra, ignored
    wrong = _relabel(make_adata({"A": 100, "B": 100}, seed=4), {"A": "B", "B": "A"})
    df = compare_conditions(held_out, good, "cell_type", space, baseline=wrong)

    assert list(df.index) == ["A", "B", "C"]
    assert df.loc["A", "n_real"] == 120
    assert df.loc["A", "n_synthetic"] == 100
    assert df.loc["C", "n_synthetic"] == 0
    assert "real cells" in df.loc["C", "skipped"]
    assert df.loc["C", ["energy", "mmd", "c2st_auroc"]].isna().all()
    scored = df.loc[["A", "B"]]
    assert scored["skipped"].isna().all()
    assert (scored["energy"] < scored["baseline_energy"]).all()
    assert (scored["mmd"] < scored["baseline_mmd"]).all()
    assert (scored["c2st_auroc"] < scored["baseline_c2st_auroc"]).all()
    assert (scored["mean_r2"] > scored["baseline_mean_r2"]).all()
    assert (scored["energy_floor"] < scored["baseline_energy"]).all()
    # The good generator is near the floor, the wrong one defines the scale (score 1).
    assert (scored["energy_score"].abs() < 0.2).all()
    assert (scored["mmd_score"].abs() < 0.2).all()
    assert ((scored["c2st_floor"] - 0.5).abs() < 0.15).all()
    assert len(scored["mmd_bandwidths"].iloc[0]) == 3
    assert set(df.attrs["mmd_bandwidths"]) == {"A", "B"}

    summary = summarize(df)
    assert summary["n_conditions"] == 2
    assert summary["n_skipped"] == 1
    assert summary["energy"] == pytest.approx(scored["energy"].mean())
    assert np.isfinite(summary[["energy", "mmd", "energy_score", "mean_r2_floor"]]).all()


def test_summarize_median_over_scored_conditions():
    # Three scored conditions, one skipped: the median ignores the skipped row and an outlier.
    df = pd.DataFrame(
        {
            "energy": [0.1, 0.2, 3.0, np.nan],
            "c2st_auroc": [0.5, 0.6, 0.9, np.nan],
            "skipped": [None, None, None, "too few cells"],
        },
        index=["A", "B", "C", "D"],
    )
    median = summarize(df, statistic="median")
    assert median.name == "median" and median["n_conditions"] == 3 and median["n_skipped"] == 1
    assert median["energy"] == pytest.approx(0.2)
    assert median["c2st_auroc"] == pytest.approx(0.6)
    assert summarize(df)["energy"] == pytest.approx(3.3 / 3)
    with pytest.raises(ValueError, match="statistic must be"):
        summarize(df, statistic="max")


def test_compare_conditions_wrong_group_is_farther(space, held_out):
    right = make_adata({"A": 100, "B": 100}, seed=3)
    wrong = _relabel(right, {"A": "B", "B": "A"})
    df_right = compare_conditions(held_out, right, "cell_type", space)
    df_wrong = compare_conditions(held_out, wrong, "cell_type", space)
    for group in ("A", "B"):
        assert df_right.loc[group, "energy"] < df_wrong.loc[group, "energy"]
    assert "baseline_energy" not in df_right.columns
    # Bandwidths depend only on the real cells, so the two MMD values are comparable.
    assert df_right.attrs["mmd_bandwidths"] == df_wrong.attrs["mmd_bandwidths"]


def test_compare_conditions_several_keys_and_missing_conditions(space, held_out):
    synthetic = make_adata({"A": 100, "B": 100}, seed=3)
    synthetic = synthetic[synthetic.obs["treatment"] == "ctrl"].copy()
    df = compare_conditions(held_out, synthetic, ["cell_type", "treatment"], space, min_cells=20)
    assert "A|stim" in df.index
    assert list(df.columns[:2]) == ["cell_type", "treatment"]
    assert df.loc["A|ctrl", "treatment"] == "ctrl"
    assert np.isfinite(df.loc["A|ctrl", "energy"])
    assert "synthetic" in df.loc["A|stim", "skipped"]
    assert np.isnan(df.loc["A|stim", "energy"])


def test_compare_conditions_unknown_key(space, held_out):
    with pytest.raises(KeyError, match="donor"):
        compare_conditions(held_out, held_out, "donor", space)


def test_compare_conditions_new_distances_see_a_wrong_generator(space, held_out):
    right = make_adata({"A": 100, "B": 100}, seed=4)
    wrong = _relabel(right, {"A": "B", "B": "A"})
    opts = {"n_corr_genes": 50, "classifier": "knn"}
    df = compare_conditions(held_out, wrong, "cell_type", space, **opts)
    ok = compare_conditions(held_out, right, "cell_type", space, **opts)
    for metric in ("zero_frac_dist", "library_dist"):
        for group in ("A", "B"):
            assert df.loc[group, metric] > 1.5 * df.loc[group, f"{metric}_floor"], metric
            assert ok.loc[group, metric] < df.loc[group, metric], metric
    assert df.attrs["n_corr_genes"] == 50


def test_count_profile_known_values_dense_sparse_and_errors():
    x = np.array([[0, 1, 2, 5], [0, 0, 0, 0], [1, 1, 0, 3]], dtype=np.float32)
    expected = np.column_stack(
        [np.log1p([8.0, 0.0, 5.0]), np.log1p([3.0, 0.0, 3.0]), [2 / 3, 0.0, 1 / 3]]
    )
    np.testing.assert_allclose(count_profile(x), expected)
    np.testing.assert_allclose(count_profile(sp.csr_matrix(x)), expected)
    # the library the space normalised by (e.g. totals over all genes) replaces the row sums
    given = count_profile(x, library=np.array([80.0, 10.0, 50.0]))
    np.testing.assert_allclose(given[:, 0], np.log1p([80.0, 10.0, 50.0]))
    np.testing.assert_allclose(given[:, 1:], expected[:, 1:])
    with pytest.raises(ValueError, match="2-D"):
        count_profile(x[0])
    with pytest.raises(ValueError, match="2 entries for 3 cells"):
        count_profile(x, library=np.ones(2))


def test_count_shape_auroc_sees_overdispersed_counts(space, held_out):
    """Same means, wider dispersion: the count profile tells it, fresh cells stay at chance."""
    fresh = make_adata({"A": 120, "B": 120}, seed=7)
    wide = make_adata({"A": 120, "B": 120}, seed=7, theta=0.5)
    ok = compare_conditions(held_out, fresh, "cell_type", space, min_cells=20)
    bad = compare_conditions(held_out, wide, "cell_type", space, min_cells=20)
    for group in ("A", "B"):
        assert ok.loc[group, "count_shape_auroc"] < 0.65
        assert abs(ok.loc[group, "count_shape_auroc_floor"] - 0.5) < 0.15
        assert bad.loc[group, "count_shape_auroc"] > 0.9
    summary = summarize(bad)
    assert summary["count_shape_auroc"] > summary["count_shape_auroc_floor"] + 0.3


# --- correlation, zero-fraction and library-size distances --------------------------------


def _correlated(n: int, rho: float, seed: int, dim: int = 20) -> np.ndarray:
    cov = np.full((dim, dim), rho) + (1 - rho) * np.eye(dim)
    return np.random.default_rng(seed).multivariate_normal(np.zeros(dim), cov, size=n)


def test_structure_distances_are_zero_for_identical_samples():
    x = _correlated(300, 0.5, seed=0)
    assert correlation_distance(x, x.copy()) == pytest.approx(0.0, abs=1e-12)
    counts = np.random.default_rng(0).poisson(0.7, size=(200, 30))
    assert zero_fraction_distance(counts, counts.copy()) == 0.0
    assert zero_fraction_distance(sp.csr_matrix(counts), counts) == 0.0
    library = counts.sum(axis=1)
    assert library_size_distance(library, library.copy()) == 0.0


def test_structure_distances_known_values():
    # independent vs perfectly correlated genes: every off-diagonal entry differs by 1
    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 1))
    assert correlation_distance(np.hstack([base, base]), np.hstack([base, -base])) == (
        pytest.approx(2.0)
    )
    # a gene that is never detected has no correlation (0), not NaN
    constant = np.hstack([base, np.zeros((500, 1))])
    assert correlation_distance(np.hstack([base, base]), constant) == pytest.approx(1.0)
    # all zeros vs no zeros in every gene
    assert zero_fraction_distance(np.zeros((5, 3)), np.ones((4, 3))) == 1.0
    # library sizes scaled by e: log1p shifts by ~1 for large libraries
    lib = rng.lognormal(8, 0.3, size=400)
    assert library_size_distance(lib, lib * np.e) == pytest.approx(1.0, abs=0.01)


def test_structure_floors_below_wrong_generator():
    real = _correlated(400, 0.6, seed=0)
    assert noise_floor(real, correlation_distance, n_repeats=3) < correlation_distance(
        real, _correlated(400, 0.0, seed=1)
    )
    rng = np.random.default_rng(0)
    real_counts = rng.poisson(1.0, size=(400, 50))
    sparser = rng.poisson(0.3, size=(400, 50))
    assert noise_floor(real_counts, zero_fraction_distance) < zero_fraction_distance(
        real_counts, sparser
    )
    lib = rng.lognormal(8, 0.3, size=400)
    assert noise_floor(lib, library_size_distance) < library_size_distance(lib, lib * 2)


# --- counterfactuals -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def perturbation():
    """Real control and stimulated cells of one cell type, plus fresh stimulated cells."""
    sim = genvi.data.simulate(n_cells=800, n_genes=100, n_cell_types=2, seed=0)
    cells = sim[sim.obs["cell_type"] == "type_0"]
    control = cells[cells.obs["treatment"] == "control"].copy()
    observed = cells[cells.obs["treatment"] == "treated"].copy()
    fresh = genvi.data.sample_truth(
        sim, {"cell_type": "type_0", "treatment": "treated"}, n_cells=300, seed=3
    )
    return control, observed, fresh


def test_rank_degs_finds_the_true_effects(perturbation):
    control, observed, _ = perturbation
    degs = rank_degs(control, observed)
    assert list(degs.index) == list(control.var_names)
    assert sorted(degs["rank"]) == list(range(control.n_vars))
    truth = genvi.data.simulate(n_cells=1, n_genes=100, n_cell_types=2, seed=0).uns
    effects = np.abs(np.asarray(truth["simulation"]["treatment_effects"])[1, 0])
    top = degs.sort_values("rank").index[:10]
    # the top Wilcoxon genes carry the largest true treatment effects
    assert effects[control.var_names.get_indexer(top)].mean() > 3 * effects.mean()


def test_counterfactual_scores_known_answers(perturbation):
    control, observed, fresh = perturbation
    perfect = counterfactual_scores(control, observed, observed)
    assert list(perfect.index) == ["top20", "top50", "top100", "all"]
    assert list(perfect["n_genes"]) == [20, 50, 100, 100]
    for col in ("mean_r2", "var_r2", "lfc_slope", "lfc_pearson", "sign_agreement"):
        np.testing.assert_allclose(perfect[col], 1.0, err_msg=col)

    identity = counterfactual_scores(control, control, observed)
    np.testing.assert_allclose(identity["lfc_slope"], 0.0, atol=1e-12)
    assert (identity["sign_agreement"] == 0).all()
    # the response is concentrated in the top DEGs, where ignoring it costs most
    assert identity.loc["top20", "mean_r2"] < identity.loc["all", "mean_r2"] < 1

    new = counterfactual_scores(control, fresh, observed, top_k=(20,))
    assert list(new.index) == ["top20", "all"]
    assert (new["lfc_slope"] > 0.8).all() and (new["mean_r2"] > 0.9).all()
    assert new.loc["top20", "sign_agreement"] >= 0.9


def test_scanpy_backed_metrics_keep_torch_thread_count():
    """numba's OpenMP layer resets torch's threads; genvi's metrics must put them back."""
    import torch

    sim = genvi.data.simulate(n_cells=300, n_genes=60, n_cell_types=2, seed=0)
    ctrl = sim[(sim.obs["treatment"] == "control").to_numpy()].copy()
    stim = sim[(sim.obs["treatment"] == "treated").to_numpy()].copy()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        genvi.metrics.rank_degs(ctrl, stim)
        assert torch.get_num_threads() == 1
        genvi.metrics.ReferenceSpace.fit(sim, n_top_genes=30, n_comps=5)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_reference_space_on_very_sparse_counts():
    # a few hundred counts over thousands of genes: scanpy's seurat_v3 loess is singular at its
    # default span (and at 0.5) on these data; the space widens the span instead of failing
    rng = np.random.default_rng(0)
    X = rng.poisson(0.002, (300, 3000)).astype(np.float32)
    # two groups of cells, each with 25 markers
    X[:150, :25] = rng.poisson(4.0, (150, 25))
    X[150:, 25:50] = rng.poisson(4.0, (150, 25))
    adata = ad.AnnData(sp.csr_matrix(X))
    space = ReferenceSpace.fit(adata, n_top_genes=100, n_comps=5)
    assert space.hvg_flavor == "seurat_v3 (span 1.0)"
    assert space.n_genes == 100
    # the first component separates the groups
    pc1 = space.transform(adata)[:, 0]
    assert abs(pc1[:150].mean() - pc1[150:].mean()) > 3 * (pc1[:150].std() + pc1[150:].std())


def test_reference_space_falls_back_when_loess_fails(monkeypatch):
    import scanpy as sc

    real = sc.pp.highly_variable_genes

    def singular(adata, flavor="seurat", **kwargs):
        if flavor == "seurat_v3":
            raise ValueError("b'There are other near singularities as well. 0.09'")
        return real(adata, flavor=flavor, **kwargs)

    monkeypatch.setattr(sc.pp, "highly_variable_genes", singular)
    adata = make_adata({"A": 60, "B": 60}, seed=7, sparse=True)
    space = ReferenceSpace.fit(adata, n_top_genes=100, n_comps=10)
    assert space.hvg_flavor == "seurat"
    assert set(adata.var_names[:N_MARKERS]) & set(space.genes)


def test_reference_space_keeps_other_gene_selection_errors(monkeypatch):
    import scanpy as sc

    def broken(adata, flavor="seurat", **kwargs):
        raise ValueError("something else")

    monkeypatch.setattr(sc.pp, "highly_variable_genes", broken)
    with pytest.raises(ValueError, match="something else"):
        ReferenceSpace.fit(make_adata({"A": 60, "B": 60}, seed=7), n_top_genes=100, n_comps=10)
