"""score_outliers: one signature and one default (expression k-NN) on every model."""

import inspect

import anndata as ad
import numpy as np
import pytest
import scvi
from scipy import sparse
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

import genvi
from conftest import quiet_train, thin_counts
from genvi.metrics import ReferenceSpace
from genvi.model import DisentVI, LatentDiffusion, LatentFlow, PriorVI


@pytest.fixture(scope="module")
def depth_split():
    """Known types at ~3,000 counts per cell; an unseen type at 4x and at 1/4 that depth.

    Subtle types (``effect_size=1``); the training and known held-out cells are thinned to a
    quarter of the simulated depth, the unseen type's cells are kept deep or thinned to 1/16.
    """
    sim = genvi.data.simulate(
        n_cells=2000, n_genes=150, effect_size=1.0, library_size_mean=12000, seed=0
    )
    rng = np.random.default_rng(0)
    seen = (sim.obs["cell_type"] != "type_3").to_numpy()
    perm = rng.permutation(np.flatnonzero(seen))
    n_train = int(0.8 * len(perm))
    train = thin_counts(sim[np.sort(perm[:n_train])], 0.25, rng)
    known = thin_counts(sim[np.sort(perm[n_train:])], 0.25, rng)
    novel = sim[~seen][:100]
    regimes = {"deep": novel.copy(), "shallow": thin_counts(novel, 1 / 16, rng)}
    return train, known, regimes


@pytest.fixture(scope="module")
def unlabelled_priorvi(depth_split):
    train = depth_split[0].copy()
    scvi.settings.seed = 0
    PriorVI.setup_anndata(train)  # no condition labels: a user does not know a novel cell's
    return quiet_train(PriorVI(train), max_epochs=200)


def _aurocs(model, known, regimes, **kwargs) -> dict[str, float]:
    out = {}
    for name, novel in regimes.items():
        cells = ad.concat([known, novel])
        is_novel = np.r_[np.zeros(known.n_obs), np.ones(novel.n_obs)]
        out[name] = roc_auc_score(is_novel, model.score_outliers(cells, **kwargs))
    return out


@pytest.mark.slow
def test_default_score_flags_unseen_type_at_any_depth(depth_split, unlabelled_priorvi):
    _, known, regimes = depth_split
    default = _aurocs(unlabelled_priorvi, known, regimes)
    knn = _aurocs(unlabelled_priorvi, known, regimes, kind="knn")
    per_count = _aurocs(unlabelled_priorvi, known, regimes, kind="per_count", n_samples=20)
    # measured (one torch thread): expression 0.927 (deep) / 0.964 (shallow); latent k-NN
    # 0.970 / 0.959; per count 0.028 / 0.992
    assert min(default.values()) > 0.9, default
    assert min(knn.values()) > 0.9, knn
    # the per-count likelihood ranks deep novel cells as the most typical: depth, not novelty
    assert default["deep"] > per_count["deep"] + 0.3, (default, per_count)


@pytest.mark.slow
def test_disentvi_and_latent_diffusion_default_scores(depth_split, unlabelled_priorvi):
    train, known, regimes = depth_split
    adata = train.copy()
    DisentVI.setup_anndata(adata, categorical_attributes=["treatment"])
    scvi.settings.seed = 0
    disent = quiet_train(DisentVI(adata), max_epochs=200)
    # measured: expression 0.927 / 0.964 (the same training cells); latent k-NN 0.923 / 0.915
    assert min(_aurocs(disent, known, regimes).values()) > 0.85
    assert min(_aurocs(disent, known, regimes, kind="knn").values()) > 0.85
    # cells whose attribute labels are unknown (column absent) are scored all the same
    unlabelled = regimes["deep"].copy()
    del unlabelled.obs["treatment"]
    np.testing.assert_allclose(
        disent.score_outliers(unlabelled), disent.score_outliers(regimes["deep"]), rtol=1e-5
    )
    scvi.settings.seed = 0
    diffusion = quiet_train(LatentDiffusion.from_model(unlabelled_priorvi), max_epochs=100)
    # the cells the prior trained on, in expression and in the base model's latent space
    assert min(_aurocs(diffusion, known, regimes).values()) > 0.9  # measured 0.928 / 0.964
    assert min(_aurocs(diffusion, known, regimes, kind="knn").values()) > 0.9  # 0.967 / 0.957


def _coordinates(model, kind, train_idx, known, space="training"):
    """Training and known cells where each k-NN score measures distances, computed here."""
    if kind == "knn":
        return model.get_latent_representation(indices=train_idx), model.get_latent_representation(
            known
        )
    train = model.adata[train_idx]
    fitted_on = train if space == "training" else ad.concat([train, known])
    space = ReferenceSpace.fit(fitted_on, n_top_genes=2000, n_comps=10, seed=0)
    return space.transform(train), space.transform(known)


@pytest.mark.parametrize(
    ("kind", "space"), [("expression", "joint"), ("expression", "training"), ("knn", "joint")]
)
def test_knn_scores_are_mean_distances_to_other_training_cells(
    depth_split, unlabelled_priorvi, kind, space
):
    model, known = unlabelled_priorvi, depth_split[1]
    before = known.copy()
    train_idx = np.sort(model.train_indices)
    z_train, z_known = _coordinates(model, kind, train_idx, known, space)
    dist, _ = NearestNeighbors(n_neighbors=5).fit(z_train).kneighbors(z_known)
    kw = {"kind": kind, "n_neighbors": 5, "space": space, "enrichment": False}
    kw["match_depth"] = False
    np.testing.assert_allclose(
        model.score_outliers(known, **kw), dist.mean(1), rtol=1e-5, atol=1e-6
    )
    if kind == "expression":  # reads the data only (the latent goes through scvi's setup)
        assert (known.X != before.X).nnz == 0 and known.obs.equals(before.obs)
        assert known.var.equals(before.var) and known.uns.keys() == before.uns.keys()
    # a training cell is not its own neighbour, whether scored in the model's AnnData or a
    # copy; scored alone, training cells add nothing to a joint space (the training space)
    own = model.score_outliers(indices=train_idx[:20], **kw)
    copy = model.score_outliers(model.adata[train_idx[:20]].copy(), **kw)
    np.testing.assert_allclose(own, copy, rtol=1e-5, atol=1e-6)
    z_train, _ = _coordinates(model, kind, train_idx, known, "training")
    dist, _ = NearestNeighbors(n_neighbors=6).fit(z_train).kneighbors(z_train[:20])
    np.testing.assert_allclose(own, dist[:, 1:].mean(1), rtol=1e-5, atol=1e-6)
    assert np.all(own > 0)
    # no new cell among the scored ones: the enrichment leaves the distances as they are
    enriched = model.score_outliers(indices=train_idx[:20], **{**kw, "enrichment": True})
    np.testing.assert_allclose(enriched, own, rtol=1e-12)
    # a new cell that only shares its name with a training cell is not taken for it
    renamed = known.copy()
    renamed.obs_names = model.adata.obs_names[train_idx[: known.n_obs]]
    np.testing.assert_allclose(
        model.score_outliers(renamed, **kw), model.score_outliers(known, **kw), rtol=1e-6
    )
    # validation cells are not in the reference: calibration cells for flag_outliers
    val = model.score_outliers(indices=model.validation_indices, **kw)
    assert np.all(val > 0) and np.isfinite(val).all()


def test_joint_space_finds_a_type_that_differs_where_training_cells_do_not_vary():
    """An unseen type that differs only in genes flat among the training cells.

    Three known types differ in genes 0-29; the unseen type is type 0 with genes 60-89
    raised 3x, genes in which no training cell varies beyond Poisson noise. The training
    cells' 10 components span their type differences and noise, so the unseen cells barely
    move in them; fitted with the scored cells, one component follows the new genes.
    """
    rng = np.random.default_rng(0)
    n_genes, depth = 120, 1500
    base = rng.gamma(2.0, 1.0, size=n_genes)
    profiles = np.tile(base, (4, 1))
    for t in range(3):
        profiles[t, 10 * t : 10 * t + 10] *= 6.0  # known types: genes 0-29
    profiles[3] = profiles[0]
    profiles[3, 60:90] *= 3.0  # the unseen type: type 0, genes 60-89 raised
    profiles /= profiles.sum(1, keepdims=True)

    def cells(types, prefix):
        x = rng.poisson(depth * profiles[types]).astype(np.float32)
        out = ad.AnnData(sparse.csr_matrix(x))
        out.obs_names = [f"{prefix}{i}" for i in range(len(types))]
        out.var_names = [f"g{j}" for j in range(n_genes)]
        return out

    train = cells(np.repeat([0, 1, 2], 200), "train")
    query = cells(np.r_[np.repeat([0, 1, 2], 60), np.full(40, 3)], "query")
    is_novel = np.r_[np.zeros(180), np.ones(40)]
    scvi.settings.seed = 0
    PriorVI.setup_anndata(train)
    model = quiet_train(PriorVI(train), max_epochs=2)  # the expression score reads no weights
    joint, training = (
        roc_auc_score(is_novel, model.score_outliers(query, space=space, enrichment=False))
        for space in ("joint", "training")
    )
    assert joint > 0.95, (joint, training)
    assert joint > training + 0.15, (joint, training)


def test_expression_score_on_log_scale_data():
    """gene_likelihood="normal": the data are used as they are (no second log-normalisation)."""
    sim = genvi.data.simulate(n_cells=900, n_genes=60, n_cell_types=3, effect_size=3.0, seed=2)
    log_data = sim.copy()
    counts = np.asarray(sim.X.toarray() if sparse.issparse(sim.X) else sim.X, dtype=np.float64)
    log_data.X = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)  # log-normalised
    seen = (log_data.obs["cell_type"] != "type_2").to_numpy()
    train = log_data[seen][:450].copy()
    scvi.settings.seed = 0
    PriorVI.setup_anndata(train)
    model = quiet_train(PriorVI(train, gene_likelihood="normal"), max_epochs=30)
    query = ad.concat([log_data[seen][450:], log_data[~seen]])
    is_novel = (query.obs["cell_type"] == "type_2").to_numpy()
    # the same distance as in a PCA of the centred log data, computed here
    from sklearn.decomposition import PCA

    ref = np.asarray(train.X, dtype=np.float64)[np.sort(model.train_indices)]
    q = np.asarray(query.X, dtype=np.float64)
    for space, fitted_on in {"training": ref, "joint": np.vstack([ref, q])}.items():
        scores = model.score_outliers(query, space=space, enrichment=False)
        assert roc_auc_score(is_novel, scores) > 0.95, space  # measured 0.999
        # log-scale data are not counts: nothing to thin
        unmatched = model.score_outliers(query, space=space, enrichment=False, match_depth=False)
        np.testing.assert_array_equal(scores, unmatched)
        centre = fitted_on.mean(0)
        pca = PCA(n_components=10, random_state=0).fit(fitted_on - centre)
        dist, _ = (
            NearestNeighbors(n_neighbors=10)
            .fit(pca.transform(ref - centre))
            .kneighbors(pca.transform(q - centre))
        )
        np.testing.assert_allclose(scores, dist.mean(1), rtol=1e-4, atol=1e-5)


def test_bad_arguments_get_clear_errors(depth_split, unlabelled_priorvi):
    model, known = unlabelled_priorvi, depth_split[1]
    with pytest.raises(ValueError, match="kind='latent'.*'expression', 'knn', 'per_count'"):
        model.score_outliers(known, kind="latent")
    with pytest.raises(ValueError, match="n_neighbors must lie in"):
        model.score_outliers(known, n_neighbors=0)
    with pytest.raises(TypeError, match="n_neighbors must be an integer"):
        model.score_outliers(known, n_neighbors=2.5)
    with pytest.raises(ValueError, match=r"space must be one of \['joint', 'training'\]"):
        model.score_outliers(known, space="query")
    with pytest.raises(TypeError, match="enrichment must be True or False"):
        model.score_outliers(known, enrichment="yes")
    with pytest.raises(TypeError, match="match_depth must be True or False"):
        model.score_outliers(known, match_depth=1)
    untrained = known.copy()
    PriorVI.setup_anndata(untrained)
    with pytest.raises(RuntimeError, match="call train"):
        PriorVI(untrained).score_outliers()


def test_one_signature_everywhere():
    models = [PriorVI, DisentVI, genvi.model.HybridVI, LatentFlow, LatentDiffusion]
    signatures = {m.__name__: inspect.signature(m.score_outliers) for m in models}
    assert len(set(map(str, signatures.values()))) == 1, signatures
    assert list(signatures["PriorVI"].parameters)[1:] == [
        "adata",
        "indices",
        "n_samples",
        "batch_size",
        "kind",
        "n_neighbors",
        "space",
        "enrichment",
        "match_depth",
    ]
    assert signatures["LatentFlow"].parameters["kind"].default == "expression"
    assert signatures["LatentFlow"].parameters["space"].default == "joint"
    assert signatures["LatentFlow"].parameters["enrichment"].default is True
    assert signatures["LatentFlow"].parameters["match_depth"].default is True


def test_expression_score_reads_the_registered_layer():
    """Counts registered in a layer: the layer is read, not X; a query without it is refused."""
    sim = genvi.data.simulate(n_cells=400, n_genes=50, seed=1)
    train = sim.copy()
    train.X = np.ones(train.shape, dtype=np.float32)  # not the counts
    scvi.settings.seed = 0
    PriorVI.setup_anndata(train, layer="counts")
    model = quiet_train(PriorVI(train), max_epochs=3)
    query = genvi.data.simulate(n_cells=60, n_genes=50, seed=2)
    query.obs_names = [f"new_{i}" for i in range(query.n_obs)]
    query.X = np.ones(query.shape, dtype=np.float32)
    ref = train[np.sort(model.train_indices)]
    for space, fitted_on in {"training": ref, "joint": ad.concat([ref, query])}.items():
        fitted = ReferenceSpace.fit(fitted_on, layer="counts", n_top_genes=2000, n_comps=10, seed=0)
        dist, _ = (
            NearestNeighbors(n_neighbors=10)
            .fit(fitted.transform(ref, layer="counts"))
            .kneighbors(fitted.transform(query, layer="counts"))
        )
        np.testing.assert_allclose(
            model.score_outliers(query, space=space, enrichment=False, match_depth=False),
            dist.mean(1),
            rtol=1e-5,
            atol=1e-6,
        )
    del query.layers["counts"]
    with pytest.raises(ValueError, match="Layer 'counts' not found"):
        model.score_outliers(query)


@pytest.mark.parametrize("kind", ["expression", "knn"])
def test_enrichment_is_the_local_share_of_scored_cells(depth_split, unlabelled_priorvi, kind):
    """The distance times (s + 1/k) / (n_new / n_pool + 1/k), computed here by hand.

    ``s``: the share of new scored cells among the cell's 50 nearest cells of the pool
    (training cells and new scored cells), the cell itself excluded. Scored: known cells,
    deep unseen cells and training cells; training cells count once in the pool.
    """
    model, (_, known, regimes) = unlabelled_priorvi, depth_split
    train_idx = np.sort(model.train_indices)
    training_rows = model.adata[train_idx[:30]].copy()
    cells = ad.concat([known, regimes["deep"], training_rows])
    n_new = known.n_obs + regimes["deep"].n_obs
    kw = {"kind": kind, "n_neighbors": 5, "match_depth": False}
    distance = model.score_outliers(cells, enrichment=False, **kw)
    if kind == "expression":  # the joint space of the training cells and the new cells
        fitted = ReferenceSpace.fit(
            ad.concat([model.adata[train_idx], cells[:n_new]]), n_top_genes=2000, n_comps=10
        )
        z_train, z_cells = fitted.transform(model.adata[train_idx]), fitted.transform(cells)
    else:
        z_train = model.get_latent_representation(indices=train_idx)
        z_cells = model.get_latent_representation(cells)
    pool = np.vstack([z_train, z_cells[:n_new]])
    own = np.r_[len(z_train) + np.arange(n_new), np.arange(30)]  # training rows come first
    _, nbr = NearestNeighbors(n_neighbors=51).fit(pool).kneighbors(z_cells)
    share = np.array([np.mean(row[row != i][:50] >= len(z_train)) for row, i in zip(nbr, own)])
    factor = (share + 1 / 50) / (n_new / len(pool) + 1 / 50)
    np.testing.assert_allclose(
        model.score_outliers(cells, **kw), distance * factor, rtol=1e-5, atol=1e-6
    )
    # unseen cells crowd each other out of the training cells' neighbourhoods
    novel = slice(known.n_obs, n_new)
    assert factor[novel].mean() > 2 * factor[: known.n_obs].mean()


def test_enrichment_finds_a_close_but_unseen_cluster():
    """An unseen type close to a known one, which the distance alone ranks poorly.

    Two known types; the unseen one is known type 0 with ten type-free genes raised 3x, at a
    depth where that shift is about the size of a shallow cell's noise: its cells are about as
    far from their nearest training cells as known cells are (distance AUROC 0.72), but among
    the pooled neighbours they meet mostly each other (measured 0.85 with the enrichment).
    """
    rng = np.random.default_rng(1)
    n_genes, depth = 100, 800
    base = rng.gamma(2.0, 1.0, size=n_genes)
    profiles = np.tile(base, (3, 1))
    profiles[0, :10] *= 4.0
    profiles[1, 10:20] *= 4.0
    profiles[2] = profiles[0]
    profiles[2, 40:50] *= 3.0  # unseen: type 0 with genes 40-49 raised
    profiles /= profiles.sum(1, keepdims=True)

    def cells(types, prefix):
        x = rng.poisson(depth * profiles[types]).astype(np.float32)
        out = ad.AnnData(sparse.csr_matrix(x))
        out.obs_names = [f"{prefix}{i}" for i in range(len(types))]
        out.var_names = [f"g{j}" for j in range(n_genes)]
        return out

    train = cells(np.repeat([0, 1], 400), "train")
    query = cells(np.r_[np.repeat([0, 1], 150), np.full(60, 2)], "query")
    is_novel = np.r_[np.zeros(300), np.ones(60)]
    scvi.settings.seed = 0
    PriorVI.setup_anndata(train)
    model = quiet_train(PriorVI(train), max_epochs=2)  # the expression score reads no weights
    enriched = roc_auc_score(is_novel, model.score_outliers(query))
    distance = roc_auc_score(is_novel, model.score_outliers(query, enrichment=False))
    assert enriched > 0.8, (enriched, distance)
    assert enriched > distance + 0.08, (enriched, distance)
    # one unseen cell alone has no unseen neighbour: it is scored by its distance (a constant
    # factor), whatever the other cells
    single = model.score_outliers(query[-1:])
    alone = model.score_outliers(query[-1:], enrichment=False)
    np.testing.assert_allclose(
        single / alone, (1 / 50) / (1 / (len(model.train_indices) + 1) + 1 / 50)
    )


def test_thinning_to_a_common_depth():
    """Cells deeper than the new scored cells' DEPTH_QUANTILE are thinned to it, the rest kept."""
    from genvi.model.base._novelty import DEPTH_QUANTILE, _thin_to_common_depth

    rng = np.random.default_rng(0)
    train = sparse.csr_matrix(rng.poisson(rng.uniform(1, 20, (400, 1)) * np.ones((1, 50))))
    scored = np.r_[rng.poisson(2.0, (60, 50)), train[:20].toarray()].astype(np.float64)
    train_pos = np.r_[np.full(60, -1), np.arange(20)]
    before_train, before_scored = train.copy(), scored.copy()
    thin_train, thin_scored = _thin_to_common_depth(train, scored, train_pos)
    target = np.quantile(scored[:60].sum(1), DEPTH_QUANTILE)
    for orig, thin in ((train.toarray(), thin_train.toarray()), (scored, thin_scored.toarray())):
        deep = orig.sum(1) > target
        np.testing.assert_array_equal(thin[~deep], orig[~deep])  # shallower cells kept
        assert np.all(thin <= orig) and np.all(thin == np.round(thin))  # molecules removed
        # thinned to the target in expectation (binomial: sd about sqrt(target) per cell)
        assert abs(thin[deep].sum(1).mean() - target) < 3 * np.sqrt(target / deep.sum())
    # a scored training cell gets its training copy's counts; nothing given is changed
    np.testing.assert_array_equal(thin_scored.toarray()[60:], thin_train.toarray()[:20])
    assert (train != before_train).nnz == 0 and np.array_equal(scored, before_scored)
    again = _thin_to_common_depth(train, scored, train_pos)
    assert (again[0] != thin_train).nnz == 0 and (again[1] != thin_scored).nnz == 0


def test_match_depth_keeps_shallower_known_cells_typical(depth_split, unlabelled_priorvi):
    """Known cells thinned to a quarter of their counts, scored beside their originals.

    Without depth matching the thinned copies sit farther from the training cells and look
    new; with it (the default) every cell is compared at the depth of the shallower ones.
    """
    model, (_, known, regimes) = unlabelled_priorvi, depth_split
    rng = np.random.default_rng(5)
    half = np.sort(rng.permutation(known.n_obs)[: known.n_obs // 2])
    thinned = thin_counts(known[half], 0.25, rng)
    thinned.obs_names = [f"{n}-thinned" for n in thinned.obs_names]
    cells = ad.concat([known, thinned, regimes["deep"]])
    before = cells.copy()
    is_thinned = np.r_[np.zeros(known.n_obs), np.ones(len(half)), np.zeros(regimes["deep"].n_obs)]
    is_novel = np.r_[np.zeros(known.n_obs + len(half)), np.ones(regimes["deep"].n_obs)]
    pair = np.r_[np.isin(np.arange(known.n_obs), half), np.ones(len(half), bool)]
    pair = np.r_[pair, np.zeros(regimes["deep"].n_obs, bool)]
    aurocs = {}
    for match in (True, False):
        scores = model.score_outliers(cells, match_depth=match)
        aurocs[match] = (
            roc_auc_score(is_thinned[pair], scores[pair]),
            roc_auc_score(is_novel, scores),
        )
    # measured (one torch thread): thinned vs originals 0.530 matched, 0.934 not; unseen type
    # 0.999 matched, 0.986 not
    assert aurocs[True][0] < 0.62, aurocs
    assert aurocs[False][0] > 0.85, aurocs
    assert aurocs[True][1] > 0.95, aurocs
    assert (cells.X != before.X).nnz == 0  # the user's counts are not thinned in place
