"""What a scverse user does on the first day: scvi-tools' own tools on genvi models, AnnData in
every documented form, and output a biologist can read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scvi.criticism import PosteriorPredictiveCheck

import genvi
from conftest import quiet_train
from genvi.model import DisentVI, LatentFlow, PriorVI


@pytest.fixture(scope="module")
def trained():
    adata = genvi.data.simulate(n_cells=240, n_genes=30, n_cell_types=2, seed=3)
    adata.X = adata.X.toarray()  # scvi.criticism reads dense counts only (its own limitation)
    adata.obs["sample_id"] = np.where(adata.obs["treatment"] == "control", "ctrl_1", "stim_1")
    adata.obs["n_counts"] = adata.X.sum(1)
    scvi.settings.seed = 0
    PriorVI.setup_anndata(adata, condition_keys=["cell_type", "treatment"])
    return quiet_train(PriorVI(adata, n_latent=4, n_hidden=32), max_epochs=20), adata


def test_posterior_predictive_check_of_scvi_criticism(trained):
    model, adata = trained
    samples = model.posterior_predictive_sample(adata, n_samples=3)
    assert samples.shape == (adata.n_obs, adata.n_vars, 3)
    ppc = PosteriorPredictiveCheck(adata, {"model1": model}, n_samples=3)
    ppc.coefficient_of_variation()
    ppc.zero_fraction()
    ppc.calibration_error()
    assert set(ppc.metrics) == {"cv_gene", "zero_fraction", "calibration"}
    assert np.isfinite(ppc.metrics["cv_gene"].to_numpy(dtype=float)).all()


def test_view_anndata_setup_prints(trained, capsys):
    model, _ = trained
    model.view_anndata_setup()
    assert "PriorVI.setup_anndata" in capsys.readouterr().out


def test_scvi_tools_refuses_a_genvi_file_by_name(trained, tmp_path):
    model, adata = trained
    model.save(tmp_path / "m", save_anndata=True)
    # with an AnnData passed or saved beside the model (without either, scvi-tools stops
    # earlier, on its own KeyError)
    for kwargs in ({"adata": adata.copy()}, {}):
        with pytest.raises(AttributeError, match=r"GENVI MODEL FILE.*genvi\.model\.PriorVI\.load"):
            scvi.model.SCVI.load(tmp_path / "m", **kwargs)
    # and genvi still reads it
    assert PriorVI.load(tmp_path / "m", adata=adata.copy()).is_trained_


def test_raw_is_refused_with_the_fix():
    adata = genvi.data.simulate(n_cells=50, n_genes=10, n_cell_types=2, seed=0)
    adata.raw = adata
    with pytest.raises(TypeError, match=r"adata\.raw\.to_adata\(\)"):
        PriorVI.setup_anndata(adata.raw, condition_keys=["cell_type"])


def test_same_genes_in_another_order_are_reordered(trained):
    model, adata = trained
    reversed_genes = adata[:, adata.var_names[::-1]].copy()
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="another order"):
        ll = model.get_log_likelihood(reversed_genes, n_samples=5)
    torch.manual_seed(0)
    expected = model.get_log_likelihood(adata, n_samples=5)
    np.testing.assert_allclose(ll, expected, rtol=1e-5)  # the same cells, read in model order
    assert list(reversed_genes.var_names) == list(adata.var_names[::-1])  # input unchanged
    fewer = adata[:, adata.var_names[:-1]].copy()
    with pytest.raises(ValueError, match="1 missing"):
        model.get_log_likelihood(fewer)


def test_counterfactual_cells_are_marked_and_qc_recomputed(trained):
    model, adata = trained
    ctrl = adata[adata.obs["treatment"] == "control"].copy()
    cf = model.predict_counterfactual(ctrl, {"treatment": "treated"}, seed=0)
    obs = cf.obs
    assert obs["genvi_counterfactual"].all()
    assert list(obs["genvi_source_cell"]) == list(ctrl.obs_names)
    assert (obs["treatment"] == "treated").all() and list(obs["cell_type"]) == list(
        ctrl.obs["cell_type"]
    )
    # QC of the new counts, provenance of the source cell, nothing stale under the old name
    np.testing.assert_allclose(obs["n_counts"], np.asarray(cf.X.sum(1)).ravel())
    assert "sample_id" not in obs and (obs["source_sample_id"] == "ctrl_1").all()
    means = model.predict_counterfactual(ctrl, {"treatment": "treated"}, return_mean=True)
    np.testing.assert_allclose(means.obs["n_counts"], means.X.sum(1), rtol=1e-5)


def test_a_latent_prior_on_a_registered_copy_of_the_base_data():
    """Issue case: SCVI on adata; LatentFlow set up on a copy, then from_model(base, adata=copy)."""
    adata = genvi.data.simulate(n_cells=200, n_genes=30, n_cell_types=2, seed=0)
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(adata)
    base = scvi.model.SCVI(adata, n_latent=3)
    base.train(max_epochs=2, enable_progress_bar=False)
    copy = adata.copy()
    LatentFlow.setup_anndata(copy, condition_keys=["cell_type"])
    prior = LatentFlow.from_model(base, adata=copy)
    assert prior._schema.keys == ["cell_type"]  # the user's registration is kept
    quiet_train(prior, max_epochs=2)
    assert prior.generate({"cell_type": "type_1"}, n_cells=4, n_steps=2).shape == (4, 30)
    assert prior.get_latent_representation(copy).shape == (200, 3)


def test_disentvi_counterfactual_keeps_missing_label_rows_readable():
    adata = genvi.data.simulate(n_cells=200, n_genes=20, n_cell_types=2, seed=2)
    adata.obs["ct"] = adata.obs["cell_type"].astype(object)
    adata.obs.loc[adata.obs_names[:10], "ct"] = np.nan
    scvi.settings.seed = 0
    DisentVI.setup_anndata(adata, categorical_attributes=["ct", "treatment"])
    model = quiet_train(DisentVI(adata, n_latent=3, n_hidden=16), max_epochs=3)
    cf = model.predict_counterfactual(adata[:20].copy(), {"treatment": "treated"}, seed=0)
    assert pd.isna(cf.obs["ct"].iloc[:10]).all()  # unknown labels stay unknown, not invented
    assert (cf.obs["treatment"] == "treated").all()
