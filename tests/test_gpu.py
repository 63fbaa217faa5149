"""Every model trained on a CUDA device against the same model trained on the CPU.

Marked ``gpu``: skipped without CUDA. ``GENVI_GPU_TESTS_ON_CPU=1`` runs the same checks with
the CPU standing in for the GPU (a dry run of the test logic on a machine without one).

Same seed on two devices gives different float kernels and so different weights: the checks
are "close, not equal" on what users read (loss reached, generated means, likelihoods,
counterfactual means), plus exact round trips of models saved on one device and loaded on the
other.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import scvi
import torch

import genvi
from conftest import quiet_train, stratified_split
from genvi.model import DisentVI, HybridVI, LatentDiffusion, LatentFlow, PriorVI

ON_CPU = os.environ.get("GENVI_GPU_TESTS_ON_CPU") == "1"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not (torch.cuda.is_available() or ON_CPU),
        reason="no CUDA device (set GENVI_GPU_TESTS_ON_CPU=1 for a dry run on the CPU)",
    ),
]
GPU = "cpu" if ON_CPU and not torch.cuda.is_available() else "gpu"
EPOCHS = 150
CONDITIONS = [
    {"cell_type": c, "treatment": t} for c in ("type_0", "type_1") for t in ("control", "treated")
]


@pytest.fixture(scope="module")
def data():
    sim = genvi.data.simulate(n_cells=1500, n_genes=120, n_cell_types=2, seed=3)
    labels = (sim.obs["cell_type"].astype(str) + "|" + sim.obs["treatment"].astype(str)).values
    train_idx, test_idx = stratified_split(labels)
    return sim[train_idx].copy(), sim[test_idx].copy()


def _fit(cls, train, accelerator: str, setup: dict, **train_kwargs):
    scvi.settings.seed = 0
    adata = train.copy()
    cls.setup_anndata(adata, **setup)
    model = cls(adata)
    quiet_train(model, max_epochs=EPOCHS, accelerator=accelerator, devices=1, **train_kwargs)
    return model


SETUPS = {
    "PriorVI": (PriorVI, {"condition_keys": ["cell_type", "treatment"]}),
    "DisentVI": (DisentVI, {"categorical_attributes": ["cell_type", "treatment"]}),
}


@pytest.fixture(scope="module")
def pairs(data):
    """Each count model trained on the CPU and on the device, same seed and data."""
    train, _ = data
    return {
        name: {acc: _fit(cls, train, acc, setup) for acc in ("cpu", GPU)}
        for name, (cls, setup) in SETUPS.items()
    }


def _device_type(model) -> str:
    return next(model.module.parameters()).device.type


def _gene_means(adata) -> np.ndarray:
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    lib = x.sum(1, keepdims=True).clip(1)
    return np.log1p(1e4 * x / lib).mean(0)


@pytest.mark.parametrize("name", list(SETUPS))
def test_training_on_the_device_reaches_the_cpu_loss(name, pairs):
    cpu, dev = pairs[name]["cpu"], pairs[name][GPU]
    assert _device_type(dev) == ("cuda" if GPU == "gpu" else "cpu")
    last_cpu = float(cpu.history["elbo_train"].iloc[-1, 0])
    last_dev = float(dev.history["elbo_train"].iloc[-1, 0])
    assert np.isfinite(last_dev)
    assert abs(last_dev - last_cpu) / abs(last_cpu) < 0.03, (last_cpu, last_dev)


@pytest.mark.parametrize("name", list(SETUPS))
def test_generation_likelihood_counterfactual_close_to_cpu(name, pairs, data):
    _, test = data
    cpu, dev = pairs[name]["cpu"], pairs[name][GPU]
    for cond in CONDITIONS:
        a = _gene_means(cpu.generate(cond, 400, seed=1))
        b = _gene_means(dev.generate(cond, 400, seed=1))
        assert np.corrcoef(a, b)[0, 1] > 0.95, cond
    ll_cpu = cpu.get_log_likelihood(test, n_samples=20)
    ll_dev = dev.get_log_likelihood(test, n_samples=20)
    assert ll_dev.shape == (test.n_obs,) and np.isfinite(ll_dev).all()
    assert abs(ll_dev.mean() - ll_cpu.mean()) / abs(ll_cpu.mean()) < 0.03
    assert np.corrcoef(ll_cpu, ll_dev)[0, 1] > 0.95
    ctrl = np.flatnonzero((test.obs["treatment"] == "control").to_numpy())
    new = {"treatment": "treated"}
    cf_cpu = cpu.predict_counterfactual(test, new, indices=ctrl, return_mean=True, seed=0)
    cf_dev = dev.predict_counterfactual(test, new, indices=ctrl, return_mean=True, seed=0)
    assert np.corrcoef(_gene_means(cf_cpu), _gene_means(cf_dev))[0, 1] > 0.95
    sampled = dev.predict_counterfactual(test, new, indices=ctrl, seed=0)
    assert sampled.n_obs == len(ctrl) and np.isfinite(_gene_means(sampled)).all()
    conf = dev.predict_with_confidence(CONDITIONS[0], n_samples=50, seed=0)
    assert np.isfinite(conf["mean"].to_numpy()).all()


@pytest.mark.parametrize("name", list(SETUPS))
def test_save_on_device_load_on_cpu_and_back(name, pairs, data, tmp_path):
    _, test = data
    cls = SETUPS[name][0]
    dev = pairs[name][GPU]
    dev.save(tmp_path / "m")
    on_cpu = cls.load(tmp_path / "m", adata=dev.adata, accelerator="cpu")
    assert _device_type(on_cpu) == "cpu"
    z_dev = dev.get_latent_representation(test)
    z_cpu = on_cpu.get_latent_representation(test)
    np.testing.assert_allclose(z_cpu, z_dev, atol=1e-4, rtol=1e-4)
    back = cls.load(tmp_path / "m", adata=dev.adata, accelerator=GPU)
    assert _device_type(back) == _device_type(dev)
    a, b = dev.generate(CONDITIONS[1], 50, seed=4), back.generate(CONDITIONS[1], 50, seed=4)
    assert (a.X != b.X).nnz == 0  # same device, same seed: the same cells


@pytest.mark.parametrize("prior_cls", [LatentFlow, LatentDiffusion])
def test_latent_priors_on_the_device(prior_cls, pairs, data, tmp_path):
    base = pairs["PriorVI"][GPU]
    _, test = data
    fitted = {}
    for acc, b in (("cpu", pairs["PriorVI"]["cpu"]), (GPU, base)):
        scvi.settings.seed = 0
        m = prior_cls.from_model(b, condition_keys=["cell_type", "treatment"], n_hidden=64)
        fitted[acc] = quiet_train(m, max_epochs=100, accelerator=acc, devices=1)
    cpu, dev = fitted["cpu"], fitted[GPU]
    assert _device_type(dev) == _device_type(base)
    for cond in CONDITIONS:
        a = _gene_means(cpu.generate(cond, 400, seed=2))
        b = _gene_means(dev.generate(cond, 400, seed=2))
        assert np.corrcoef(a, b)[0, 1] > 0.95, cond
    ctrl = np.flatnonzero((test.obs["treatment"] == "control").to_numpy())
    cf = dev.predict_counterfactual(test, {"treatment": "treated"}, indices=ctrl, seed=0)
    assert cf.n_obs == len(ctrl)
    if prior_cls is LatentFlow:  # the ODE log-density on the device
        lp = dev.get_latent_log_prob(test, indices=ctrl[:50], progress=False)
        assert lp.shape == (50,) and np.isfinite(lp).all()
    dev.save(tmp_path / "prior")
    loaded = prior_cls.load(tmp_path / "prior", adata=base.adata, accelerator=GPU)
    np.testing.assert_array_equal(
        loaded.sample_latent(CONDITIONS[0], 30, seed=5),
        dev.sample_latent(CONDITIONS[0], 30, seed=5),
    )


def test_hybridvi_on_the_device(data):
    train, test = data
    models = {}
    for acc in ("cpu", GPU):
        scvi.settings.seed = 0
        adata = train.copy()
        HybridVI.setup_anndata(adata, condition_keys=["cell_type", "treatment"])
        models[acc] = quiet_train(HybridVI(adata), max_epochs=EPOCHS, accelerator=acc, devices=1)
    cpu, dev = models["cpu"], models[GPU]
    for cond in CONDITIONS:
        a = _gene_means(cpu.generate(cond, 400, seed=1))
        b = _gene_means(dev.generate(cond, 400, seed=1))
        assert np.corrcoef(a, b)[0, 1] > 0.95, cond
    ll = dev.get_log_likelihood(test, n_samples=20)
    assert np.isfinite(ll).all()
