"""The refitted base-decoder dispersion is kept only where cells unseen by the base prefer it.

Issue #20: after scVI's default 400 epochs on pbmc3k, a maximum-likelihood refit on the cells
the base model trained on set rare genes near Poisson (the decoder had memorised those cells'
counts) and lowered the held-out likelihood. These tests simulate both situations with a
decoder whose means are known, so the right choice is known per gene.
"""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch
from scipy import sparse
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

from conftest import quiet_train
from genvi.model import LatentFlow
from genvi.model.base._dispersion import (
    checked_dispersion,
    checked_mean_scale,
    fit_dispersion,
    fit_mean_scale,
)

N_GENES, N_CELLS = 60, 1200


class KnownMeanAdapter:
    """A frozen decoder with known per-gene means (z ignored) and a given own dispersion."""

    gene_likelihood = "nb"
    device = torch.device("cpu")

    def __init__(self, rate: np.ndarray, own_theta: np.ndarray):
        self.rate = torch.as_tensor(rate, dtype=torch.float32)
        self.log_dispersion = torch.log(torch.as_tensor(own_theta, dtype=torch.float32))[:, None]

    def decode(self, z, log_library, inputs):
        mu = torch.exp(log_library) * self.rate.expand(z.shape[0], -1)
        return NegativeBinomial(mu=mu, theta=torch.ones_like(mu))


def _cells(rng, rate, theta, n, library=2000.0):
    mu = library * rate
    lam = rng.gamma(theta, mu / theta, size=(n, len(rate)))
    return rng.poisson(lam)


def _inputs(rate, own, counts_fit, counts_held):
    counts = sparse.csr_matrix(np.vstack([counts_fit, counts_held]).astype(np.float32))
    n = counts.shape[0]
    held_out = np.arange(n) >= len(counts_fit)
    loc, scale = np.zeros((n, 2), np.float32), np.full((n, 2), 0.1, np.float32)
    library = np.full(n, 2000.0)
    inputs = {"batch": np.zeros(n, np.int64)}
    return KnownMeanAdapter(rate, own), loc, scale, counts, library, inputs, held_out


@pytest.fixture(scope="module")
def genes():
    rng = np.random.default_rng(0)
    rate = rng.lognormal(-7, 1.5, N_GENES)  # 0.002-2 counts per cell at 2,000 counts
    return rate / rate.sum() * 0.5, rng


def test_check_keeps_refit_where_the_base_dispersion_is_stale(genes):
    """Own dispersion at a random start, every cell from the true one: the refit is kept and
    recovers the truth."""
    rate, rng = genes
    truth = np.full(N_GENES, 2.0)
    own = np.exp(np.random.default_rng(1).normal(0, 1, N_GENES)) * 20  # far from the truth
    args = _inputs(rate, own, _cells(rng, rate, truth, 900), _cells(rng, rate, truth, 300))
    theta, report = checked_dispersion(*args, n_bins=5, seed=0)
    assert theta is not None and theta.shape == (N_GENES, 1)
    expressed = args[3].mean(0).A1 > 0.5
    assert all(report["refitted"][-2:]), report  # the expressed genes' bins
    err_refit = np.abs(np.log(theta[expressed, 0] / 2.0)).mean()
    err_own = np.abs(np.log(own[expressed] / 2.0)).mean()
    assert err_refit < 0.3 * err_own, (err_refit, err_own)


def test_check_rejects_refit_of_memorised_cells(genes):
    """Trained cells look near Poisson given their latents (memorised), unseen cells are
    overdispersed as the base's own dispersion says: the check keeps the base's own."""
    rate, rng = genes
    own = np.full(N_GENES, 2.0)
    args = _inputs(
        rate, own, _cells(rng, rate, np.full(N_GENES, 1e3), 900), _cells(rng, rate, own, 300)
    )
    theta, report = checked_dispersion(*args, n_bins=5, seed=0)
    assert theta is None, report  # no bin kept the refit: decode with the base's own
    assert all(g < 0 for g in report["gain_per_cell"][-2:]), report
    assert report["n_held_out_cells"] == 300


def test_without_validation_cells_every_gene_is_refitted_with_a_warning():
    """A base model trained on all its cells leaves nothing to check the refit against."""
    import genvi

    adata = genvi.data.simulate(n_cells=300, n_genes=40, seed=0)
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(adata)
    base = quiet_train(scvi.model.SCVI(adata, n_latent=4), max_epochs=5, train_size=1.0)
    model = LatentFlow.from_model(base, condition_keys=["cell_type"], n_hidden=16)
    with pytest.warns(UserWarning, match="refit_dispersion=False"):
        model.train(max_epochs=1, enable_progress_bar=False, refit_dispersion="checked")
    assert model.dispersion_ is not None and model.dispersion_check_ is None
    assert model.mean_scale_ is not None and model.mean_scale_.shape == (40,)
    with pytest.raises(ValueError, match="'checked'"):
        model.train(max_epochs=1, enable_progress_bar=False, refit_dispersion="yes")


class SoftmaxZINBAdapter:
    """A frozen ZINB decoder that errs as scVI's did on pbmc3k: its means sum to the library
    size, the rare genes' are inflated to make up for their zero inflation, so the abundant
    genes' means fall short of their counts by ``shortfall``."""

    gene_likelihood = "zinb"
    device = torch.device("cpu")

    def __init__(self, rate: np.ndarray, rare: np.ndarray, pi: float, own_theta: np.ndarray):
        decoded = np.where(rare, rate / (1 - pi), rate)
        abundant_share = 1 - decoded[rare].sum()
        decoded[~rare] *= abundant_share / rate[~rare].sum()  # the softmax's fixed sum
        self.shortfall = abundant_share / rate[~rare].sum()
        self.rate = torch.as_tensor(decoded, dtype=torch.float32)
        logit = float(np.log(pi / (1 - pi)))
        self.zi = torch.as_tensor(np.where(rare, logit, -30.0), dtype=torch.float32)
        self.log_dispersion = torch.log(torch.as_tensor(own_theta, dtype=torch.float32))[:, None]

    def decode(self, z, log_library, inputs):
        mu = torch.exp(log_library) * self.rate.expand(z.shape[0], -1)
        return ZeroInflatedNegativeBinomial(
            mu=mu, theta=torch.ones_like(mu), zi_logits=self.zi.expand_as(mu)
        )


@pytest.fixture(scope="module")
def softmax_world():
    """Counts from NB(true rate, theta 5); the decoder above with half the genes rare."""
    rng = np.random.default_rng(3)
    rate = rng.lognormal(-7, 1.5, N_GENES)
    rate = rate / rate.sum()
    rare = rate < np.median(rate)
    adapter = SoftmaxZINBAdapter(rate, rare, pi=0.8, own_theta=np.full(N_GENES, 5.0))
    counts = _cells(rng, rate, np.full(N_GENES, 5.0), N_CELLS)
    args = _inputs(rate, np.full(N_GENES, 5.0), counts[:900], counts[900:])
    return adapter, rate, rare, args


def test_mean_scale_recovers_the_abundant_genes_shortfall(softmax_world):
    """Issue #20: the factor on the decoded means restores the abundant genes' totals, leaves
    the genes decoded right near 1, and only then does the dispersion refit find the truth
    (fitted around means that are too low it calls the genes more overdispersed)."""
    adapter, rate, rare, (_, loc, scale, counts, library, inputs, _) = softmax_world
    assert adapter.shortfall < 0.9  # the decoder errs
    factor = fit_mean_scale(adapter, loc, scale, counts, library, inputs, seed=0)
    deep = ~rare & (rate * 2000 > 1)  # over one count per cell: their totals are precise
    np.testing.assert_allclose(factor[deep], 1 / adapter.shortfall, rtol=0.08)
    assert np.abs(np.log(factor[rare])).max() < 0.1
    err = {}
    for name, f in (("own means", None), ("calibrated", factor)):
        theta = fit_dispersion(adapter, loc, scale, counts, library, inputs, mean_scale=f)
        err[name] = np.abs(np.log(theta[deep, 0] / 5.0)).mean()
    assert err["calibrated"] < 0.15 < err["own means"], err


def test_checked_mean_scale_is_kept_where_held_out_cells_prefer_it(softmax_world):
    """Fitted on the trained-on cells, scored on the held-out ones: the bins of the abundant
    genes gain and keep the factors."""
    adapter, rate, rare, args = softmax_world
    factor, report = checked_mean_scale(adapter, *args[1:], n_bins=5, seed=0)
    assert factor is not None and factor.shape == (N_GENES,)
    assert all(report["refitted"][-2:]) and min(report["gain_per_cell"][-2:]) > 0, report
    deep = ~rare & (rate * 2000 > 1)
    np.testing.assert_allclose(factor[deep], 1 / adapter.shortfall, rtol=0.08)


def test_train_options_of_the_mean_factors():
    """``"checked"`` with validation cells checks the factors too and reports it;
    ``calibrate_mean=False`` decodes with the base's own means."""
    import genvi

    adata = genvi.data.simulate(n_cells=400, n_genes=40, seed=1)
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(adata)
    base = quiet_train(scvi.model.SCVI(adata, n_latent=4), max_epochs=5, train_size=0.7)
    model = LatentFlow.from_model(base, condition_keys=["cell_type"], n_hidden=16)
    model.train(max_epochs=1, enable_progress_bar=False, refit_dispersion="checked")
    report = model.dispersion_check_["mean_scale"]
    assert report["n_held_out_cells"] == 120 and len(report["refitted"]) == 10
    # this world keeps the factors in some bins and drops them in others, so the merge is tested
    assert 0 < sum(report["refitted"]) < 10, report
    assert model.mean_scale_ is not None
    # 4 genes per bin: the bins that did not keep the factors decode with 1
    n_dropped = 4 * (10 - sum(report["refitted"]))
    assert int((model.mean_scale_ == 1.0).sum()) == n_dropped, report
    model.train(max_epochs=1, enable_progress_bar=False, calibrate_mean=False)
    assert model.mean_scale_ is None and model.dispersion_ is not None
    model.train(max_epochs=1, enable_progress_bar=False, refit_dispersion=False)
    assert model.mean_scale_ is None and model.dispersion_ is None
