"""Shared fixtures: one small simulated dataset with known truth and models trained on it."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import scvi
import torch

import genvi

# the test models are small: one thread is as fast and avoids oversubscribing 2-core CI machines
torch.set_num_threads(1)

# fewer epochs leave the predictive distribution measurably too wide (over-coverage)
N_EPOCHS = 300

# Fixtures that train for tens of seconds on 2 cores ("module::name" where the name is not
# unique): every test that uses one joins the `slow` lane, so `pytest -m "not slow"` never
# builds them. Tests that train as long inline carry @pytest.mark.slow themselves.
SLOW_FIXTURES = frozenset(
    {
        "model_gaussian",
        "model_normal",
        "test_latent_priors::priors",
        "test_latent_priors::scvi_base",
        "test_disentvi::trained",
        "test_hybridvi::hybrid_true",
        "test_conformal::scored_cells",
        "test_cli::demo_run",
        "test_expressive_priors::gaussian_result",
        "test_gpu::pairs",
        "test_paths::batched",
    }
)


def pytest_collection_modifyitems(config, items):
    """Mark every test that needs a :data:`SLOW_FIXTURES` fixture as ``slow``."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        names = set(getattr(item, "fixturenames", ()))
        needed = names | {f"{module}::{n}" for n in names}
        if needed & SLOW_FIXTURES:
            item.add_marker(pytest.mark.slow)


def thin_counts(adata, p: float, rng: np.random.Generator):
    """Binomial thinning of the counts: the same cells sequenced ``p`` times as deep (a copy)."""
    from scipy import sparse

    out = adata.copy()
    X = sparse.csr_matrix(out.X)
    X.data = rng.binomial(X.data.astype(np.int64), p).astype(np.float32)
    X.eliminate_zeros()
    out.X = X
    return out


def quiet_train(model, **kwargs):
    """Train without progress bars or Lightning's chatter."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs.setdefault("enable_progress_bar", False)
        model.train(**kwargs)
    return model


def real_data_path(name: str, filename: str) -> Path | None:
    """A real dataset from genvi's data folders or ``../shared/data`` beside this checkout."""
    path = genvi.data.dataset_path(name)
    if path is None:
        beside = Path(__file__).resolve().parents[2] / "shared" / "data" / filename
        path = beside if beside.is_file() else None
    return path


@contextlib.contextmanager
def one_torch_thread():
    """Run the block on one torch thread (the real-data guards' measured setting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def stratified_split(labels, test_fraction: float = 0.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    train, test = [], []
    for value in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == value))
        n_test = int(round(len(idx) * test_fraction))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(train), np.sort(test)


@pytest.fixture(scope="session")
def sim():
    """4 cell types x 2 treatments, 150 genes, NB counts with hidden factors."""
    return genvi.data.simulate(n_cells=2000, n_genes=150, seed=0)


@pytest.fixture(scope="session")
def sim_split(sim):
    labels = (sim.obs["cell_type"].astype(str) + "|" + sim.obs["treatment"].astype(str)).values
    train_idx, test_idx = stratified_split(labels)
    return sim[train_idx].copy(), sim[test_idx].copy()


def _train_prior(train, prior: str):
    scvi.settings.seed = 0
    adata = train.copy()
    genvi.model.PriorVI.setup_anndata(adata, condition_keys=["cell_type", "treatment"])
    model = genvi.model.PriorVI(adata, prior=prior)
    return quiet_train(model, max_epochs=N_EPOCHS)


@pytest.fixture(scope="session")
def model_gaussian(sim_split):
    return _train_prior(sim_split[0], "gaussian")


@pytest.fixture(scope="session")
def model_normal(sim_split):
    return _train_prior(sim_split[0], "normal")


@pytest.fixture
def tiny():
    """A 200-cell dataset for fast contract and error tests."""
    return genvi.data.simulate(n_cells=200, n_genes=40, n_cell_types=2, seed=1)
