"""``generate(temperature=...)``: the prior's noise scaled through its noise map."""

from __future__ import annotations

import numpy as np
import pytest
import scvi

from conftest import quiet_train
from genvi.model import PriorVI

COND = {"cell_type": "type_1", "treatment": "treated"}


def _latents(model, temperature: float, n: int = 1500, seed: int = 7) -> np.ndarray:
    # one batch: the count draws after each batch use up the generator unevenly (gamma
    # rejection sampling), so later batches' noise differs between temperatures
    gen = model.generate(COND, n_cells=n, seed=seed, temperature=temperature, batch_size=n)
    return gen.obsm["X_genvi_latent"]


def test_temperature_one_is_the_default_draw(model_gaussian):
    plain = model_gaussian.generate(COND, n_cells=200, seed=3)
    one = model_gaussian.generate(COND, n_cells=200, seed=3, temperature=1.0)
    assert (plain.X != one.X).nnz == 0
    np.testing.assert_array_equal(plain.obsm["X_genvi_latent"], one.obsm["X_genvi_latent"])
    assert one.uns["genvi"]["temperature"] == 1.0


def test_gaussian_latents_scale_with_temperature_around_the_prior_mean(model_gaussian):
    # z = mu(c) + t * sigma(c) * u with the same u at the same seed: z is affine in t
    z = {t: _latents(model_gaussian, t) for t in (0.25, 0.5, 0.75)}
    noise_a = (z[0.5] - z[0.25]) / 0.25  # sigma(c) * u, twice over
    noise_b = (z[0.75] - z[0.5]) / 0.25
    np.testing.assert_allclose(noise_a, noise_b, atol=1e-4)
    # sigma(c) * u is centred: the zero-noise point is the prior's mean, not elsewhere
    se = noise_a.std(0) / np.sqrt(len(noise_a))
    assert np.all(np.abs(noise_a.mean(0)) < 5 * se)
    # and it has the spread of p(z | c) itself (temperature 1, another seed)
    full = _latents(model_gaussian, 1.0, seed=11)
    ratio = noise_a.std(0) / full.std(0)
    assert np.all((ratio > 0.9) & (ratio < 1.1)), ratio
    # the draws at 0.5 spread half as far as p(z | c)'s
    half = z[0.5].std(0) / full.std(0)
    assert np.all((half > 0.45) & (half < 0.55)), half
    gen = model_gaussian.generate(COND, n_cells=10, seed=3, temperature=0.5)
    assert gen.uns["genvi"]["temperature"] == 0.5


def test_low_temperature_counts_are_less_diverse(model_gaussian):
    def spread(t):
        x = model_gaussian.generate(COND, n_cells=1500, seed=5, temperature=t).X.toarray()
        p = np.log1p(1e4 * x / np.maximum(x.sum(1, keepdims=True), 1))
        return p.var(0).sum()

    # measured 91.6 vs 111.5 (per-cell dispersion; 89.8 vs 110.7 per gene); draws at t = 1
    # from two seeds differ by about 0.1-1.5
    assert spread(0.3) < 0.9 * spread(1.0)


def test_temperature_errors(model_gaussian):
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive finite"):
            model_gaussian.generate(COND, n_cells=5, temperature=bad)
    for bad in ("0.5", True, None):
        with pytest.raises(TypeError, match="must be a number"):
            model_gaussian.generate(COND, n_cells=5, temperature=bad)


def test_temperature_needs_a_noise_map_and_works_through_a_flow(tiny):
    scvi.settings.seed = 0
    adata = tiny.copy()
    PriorVI.setup_anndata(adata, condition_keys=["cell_type", "treatment"])
    cond = {"cell_type": "type_0", "treatment": "treated"}
    mog = quiet_train(PriorVI(adata, prior="mog"), max_epochs=2)
    mog.generate(cond, n_cells=5, seed=0)  # temperature 1 needs no noise map
    with pytest.raises(ValueError, match="noise map"):
        mog.generate(cond, n_cells=5, seed=0, temperature=0.8)
    flow = quiet_train(PriorVI(adata, prior="flow"), max_epochs=2)
    z = {
        t: flow.generate(cond, n_cells=400, seed=1, temperature=t).obsm["X_genvi_latent"]
        for t in (0.1, 1.0)
    }
    assert np.all(np.isfinite(z[0.1]))
    assert np.all(z[0.1].std(0) < 0.5 * z[1.0].std(0))


def test_hybridvi_refuses_a_temperature_its_centring_does_not_hold_at(tiny):
    from genvi.model import HybridVI

    HybridVI.setup_anndata(tiny, condition_keys=["cell_type", "treatment"])
    model = quiet_train(HybridVI(tiny, n_latent=3, n_hidden=16), max_epochs=2)
    cond = {"cell_type": "type_0", "treatment": "treated"}
    model.generate(cond, n_cells=5, seed=0, temperature=1.0)
    with pytest.raises(ValueError, match="centred under the prior"):
        model.generate(cond, n_cells=5, seed=0, temperature=0.5)


def test_disentvi_scales_its_unknown_latent(tiny):
    from genvi.model import DisentVI

    scvi.settings.seed = 0
    DisentVI.setup_anndata(tiny, categorical_attributes=["cell_type", "treatment"])
    model = quiet_train(DisentVI(tiny), max_epochs=2)
    cond = {"cell_type": "type_1", "treatment": "control"}
    z = {
        t: model.generate(cond, n_cells=800, seed=0, temperature=t, batch_size=800).obsm[
            "X_genvi_latent"
        ]
        for t in (1.0, 0.5)
    }
    ratio = z[0.5].std(0) / z[1.0].std(0)
    assert np.all((ratio > 0.4) & (ratio < 0.6)), ratio
