"""Code paths the model tests do not reach otherwise: batches, size factors, conditioned decoders,
dispersion variants. Each test checks what the path is for, not only that it runs."""

from __future__ import annotations

import numpy as np
import pytest
import scvi

import genvi
from conftest import quiet_train
from genvi.model import DisentVI, LatentFlow, PriorVI

SPEC = {"cell_type": "type_0", "treatment": "control"}


@pytest.fixture(scope="module")
def batched():
    """Simulated counts with a strong batch effect: batch b1 has 4x the counts of genes 0-9."""
    adata = genvi.data.simulate(n_cells=600, n_genes=40, n_cell_types=2, seed=5)
    rng = np.random.default_rng(0)
    adata.obs["batch"] = np.where(rng.random(adata.n_obs) < 0.5, "b0", "b1")
    X = adata.X.toarray()
    b1 = (adata.obs["batch"] == "b1").to_numpy()
    X[np.ix_(b1, np.arange(10))] *= 4
    adata.X = X
    return adata


def _marker_fraction(adata) -> float:
    """Mean share of genes 0-9 in the cells' counts."""
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    return float((X[:, :10].sum(1) / np.maximum(X.sum(1), 1)).mean())


def test_gene_batch_dispersion_and_generation_in_a_batch(batched):
    scvi.settings.seed = 0
    adata = batched.copy()
    PriorVI.setup_anndata(adata, condition_keys=["cell_type", "treatment"], batch_key="batch")
    model = quiet_train(PriorVI(adata, dispersion="gene-batch", n_latent=4), max_epochs=60)
    assert tuple(model.module.px_r.shape) == (40, 2)
    b0 = model.generate(SPEC, n_cells=300, batch="b0", seed=0)
    b1 = model.generate(SPEC, n_cells=300, batch="b1", seed=0)
    assert (b0.obs["batch"] == "b0").all() and (b1.obs["batch"] == "b1").all()
    assert list(b1.obs["batch"].cat.categories) == ["b0", "b1"]
    real = adata[(adata.obs["cell_type"] == "type_0") & (adata.obs["treatment"] == "control")]
    real0, real1 = (real[real.obs["batch"] == b] for b in ("b0", "b1"))
    # the decoder reproduces each batch's marker share (real: ~4x more in b1)
    assert _marker_fraction(b1) / _marker_fraction(b0) > 2.0
    assert _marker_fraction(b1) == pytest.approx(_marker_fraction(real1), rel=0.2)
    assert _marker_fraction(b0) == pytest.approx(_marker_fraction(real0), rel=0.2)
    # without batch=, batches are drawn with library sizes from matched training cells
    mixed = model.generate(SPEC, n_cells=400, seed=1)
    assert 0.3 < (mixed.obs["batch"] == "b1").mean() < 0.7
    with pytest.raises(ValueError, match=r"Unknown batch 'b7'. Known batches: \['b0', 'b1'\]"):
        model.generate(SPEC, n_cells=5, batch="b7")


def test_latent_flow_on_scvi_decodes_in_the_requested_batch(batched):
    scvi.settings.seed = 0
    adata = batched.copy()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    base = scvi.model.SCVI(adata, n_latent=4)
    base.train(max_epochs=40, enable_progress_bar=False)
    flow = LatentFlow.from_model(base, condition_keys=["cell_type", "treatment"])
    quiet_train(flow, max_epochs=20)
    assert flow.batch_key_ == "batch"
    b0 = flow.generate(SPEC, n_cells=300, batch="b0", seed=0, n_steps=5)
    b1 = flow.generate(SPEC, n_cells=300, batch="b1", seed=0, n_steps=5)
    assert (b1.obs["batch"] == "b1").all()
    # scVI's encoder does not see the batch, so z keeps part of it: a smaller gap than
    # PriorVI's, but a decoder ignoring the batch would give a ratio of 1
    assert _marker_fraction(b1) / _marker_fraction(b0) > 1.3
    with pytest.raises(ValueError, match="Unknown batch"):
        flow.generate(SPEC, n_cells=5, batch="b7")


def test_size_factors_are_used_unclipped(tiny):
    totals = np.asarray(tiny.X.sum(1)).ravel()
    tiny.obs["sf"] = totals / np.median(totals)  # DESeq-style: half of them below 1
    assert (tiny.obs["sf"] < 1).sum() > 50
    scvi.settings.seed = 0
    PriorVI.setup_anndata(tiny, condition_keys=["cell_type"], size_factor_key="sf")
    model = quiet_train(PriorVI(tiny, n_latent=4, n_hidden=32), max_epochs=5)
    assert model.module.use_size_factor_key
    np.testing.assert_allclose(model.train_library_, tiny.obs["sf"].to_numpy())
    gen = model.generate({"cell_type": "type_0"}, n_cells=200, seed=0)
    of_type = tiny.obs.loc[tiny.obs["cell_type"] == "type_0", "sf"].to_numpy()
    assert np.isin(gen.obs["library_size"].to_numpy(), of_type).all()
    assert np.isfinite(model.get_log_likelihood(n_samples=5)).all()


@pytest.mark.slow
def test_conditioned_decoder_counterfactual_follows_the_true_effect():
    sim = genvi.data.simulate(n_cells=1200, n_genes=60, n_cell_types=2, seed=2, effect_size=1.5)
    scvi.settings.seed = 0
    adata = sim.copy()
    PriorVI.setup_anndata(adata, condition_keys=["cell_type", "treatment"])
    model = quiet_train(
        PriorVI(adata, prior="normal", decode_conditions=True, n_latent=4), max_epochs=80
    )
    ctrl = adata[(adata.obs["treatment"] == "control") & (adata.obs["cell_type"] == "type_0")]
    swapped = model.predict_counterfactual(
        ctrl.copy(), {"treatment": "treated"}, transport=False, return_mean=True
    )
    same = model.predict_counterfactual(
        ctrl.copy(), {"treatment": "control"}, transport=False, return_mean=True
    )
    pred = np.log(swapped.X.mean(0) / swapped.X.sum(1).mean()) - np.log(
        same.X.mean(0) / same.X.sum(1).mean()
    )
    truth = true_lfc(sim, "type_0")
    assert np.corrcoef(pred, truth)[0, 1] > 0.8
    assert (swapped.obs["treatment"] == "treated").all()
    # with decode_conditions=False the same call must go through the prior
    gaussian = PriorVI(adata, n_latent=4)
    with pytest.raises(ValueError, match="transport=True"):
        gaussian.predict_counterfactual(ctrl.copy(), {"treatment": "treated"}, transport=False)


def true_lfc(sim, cell_type: str) -> np.ndarray:
    """True log-fold change of expected proportions, treated vs control, for one type."""
    treated = genvi.data.true_means(sim, {"cell_type": cell_type, "treatment": "treated"})
    control = genvi.data.true_means(sim, {"cell_type": cell_type, "treatment": "control"})
    return np.log(treated) - np.log(control)


@pytest.mark.parametrize(
    ("model_cls", "setup", "dispersion"),
    [
        (PriorVI, {"condition_keys": ["cell_type"]}, "gene-cell"),
        (PriorVI, {"condition_keys": ["cell_type"], "batch_key": "batch"}, "gene-batch"),
        (DisentVI, {"categorical_attributes": ["cell_type"], "batch_key": "batch"}, "gene-batch"),
        (DisentVI, {"categorical_attributes": ["cell_type"]}, "gene-cell"),
    ],
)
def test_dispersion_variants_fit_overdispersion(tiny, model_cls, setup, dispersion):
    """Each dispersion model trains and beats an untrained copy's likelihood on held cells."""
    tiny.obs["batch"] = np.where(np.arange(tiny.n_obs) % 2, "b0", "b1")
    scvi.settings.seed = 0
    model_cls.setup_anndata(tiny, **setup)
    untrained = model_cls(tiny, n_latent=4, n_hidden=32, dispersion=dispersion)
    before = untrained.get_log_likelihood(n_samples=5).mean()
    scvi.settings.seed = 0
    model = quiet_train(
        model_cls(tiny, n_latent=4, n_hidden=32, dispersion=dispersion), max_epochs=40
    )
    after = model.get_log_likelihood(n_samples=5)
    assert np.isfinite(after).all()
    assert after.mean() > before + 10
    gen = model.generate({"cell_type": "type_1"}, n_cells=20, seed=0)
    assert gen.shape == (20, tiny.n_vars)


def test_decode_latents_uses_the_given_latents(tiny):
    scvi.settings.seed = 0
    PriorVI.setup_anndata(tiny, condition_keys=["cell_type"])
    model = quiet_train(PriorVI(tiny, n_latent=4, n_hidden=32), max_epochs=5)
    spec = {"cell_type": "type_0"}
    gen = model.generate(spec, n_cells=300, seed=3)
    again = model.decode_latents(gen.obsm["X_genvi_latent"], spec, seed=3)
    np.testing.assert_array_equal(again.obsm["X_genvi_latent"], gen.obsm["X_genvi_latent"])
    # the same reference cells (library sizes) for the same seed; only count noise differs
    np.testing.assert_array_equal(again.obs["library_size"], gen.obs["library_size"])
    # the decoder follows the given latents: the same latents reproduce the gene means up to
    # count noise, shifted latents do not
    shifted = model.decode_latents(gen.obsm["X_genvi_latent"] + 3, spec, seed=3)

    def log_means(a):
        return np.log1p(np.asarray(a.X.mean(0)).ravel())

    same_gap = np.abs(log_means(again) - log_means(gen)).mean()
    shifted_gap = np.abs(log_means(shifted) - log_means(gen)).mean()
    assert same_gap < 0.15
    assert shifted_gap > 3 * same_gap
    repeat = model.decode_latents(gen.obsm["X_genvi_latent"], spec, seed=3)
    np.testing.assert_array_equal(repeat.X.toarray(), again.X.toarray())
    assert again.uns["genvi"]["latents"] == "given (decode_latents)"
    with pytest.raises(ValueError, match=r"shape \(n_cells, 4\)"):
        model.decode_latents(np.zeros((5, 3)), spec)
    with pytest.raises(ValueError, match="sums to 4"):
        model.decode_latents(np.zeros((5, 4)), [spec, spec], n_cells=[2, 2])
