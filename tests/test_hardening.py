"""Property-based input hardening: any AnnData either works or raises a clear ValueError.

Inputs vary the matrix format (dense / CSR / CSC), dtype (float / int), empty cells,
all-zero genes, categorical vs string condition columns, unused categories and missing
values. Whatever happens, the user's AnnData is not modified (beyond scvi-tools'
documented ``_scvi_*`` registration columns) and no error escapes from inside torch.
"""

from __future__ import annotations

import os
import traceback

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import sparse

from conftest import quiet_train
from genvi.model import PriorVI

FORMATS = {"dense": np.asarray, "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}


@st.composite
def anndatas(draw) -> tuple[ad.AnnData, dict]:
    n_cells = draw(st.integers(4, 40))
    n_genes = draw(st.integers(3, 12))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    X = rng.poisson(draw(st.sampled_from([0.3, 2.0, 20.0])), (n_cells, n_genes))
    empty_cells = draw(st.integers(0, min(3, n_cells - 1)))
    X[:empty_cells] = 0
    zero_genes = draw(st.integers(0, n_genes - 1))
    X[:, :zero_genes] = 0
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
    fmt = draw(st.sampled_from(list(FORMATS)))
    X = FORMATS[fmt](X.astype(dtype))
    labels = rng.choice(["a", "b", "c"], n_cells).astype(object)
    as_category = draw(st.booleans())
    n_missing = draw(st.sampled_from([0, 0, 0, 1]))
    if n_missing:
        labels[rng.integers(n_cells)] = np.nan
    cond = pd.Categorical(labels, categories=["a", "b", "c", "unused"]) if as_category else labels
    obs = pd.DataFrame(
        {"cond": cond, "age": rng.normal(50, 10, n_cells)},
        index=[f"c{i}" for i in range(n_cells)],
    )
    if draw(st.sampled_from([False, False, False, True])):
        obs.loc[obs.index[0], "age"] = np.nan
    adata = ad.AnnData(X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    meta = {
        "fmt": fmt,
        "dtype": np.dtype(dtype).name,
        "empty_cells": empty_cells,
        "zero_genes": zero_genes,
        "as_category": as_category,
        "n_missing": n_missing,
    }
    return adata, meta


def _snapshot(adata: ad.AnnData):
    X = adata.X.copy()
    return type(adata.X), X, adata.obs.copy(), adata.obs.dtypes.copy()


def _assert_unchanged(adata: ad.AnnData, snap) -> None:
    kind, X, obs, dtypes = snap
    assert type(adata.X) is kind
    assert adata.X.dtype == X.dtype
    diff = adata.X != X
    assert (diff.nnz if sparse.issparse(diff) else np.count_nonzero(diff)) == 0
    pd.testing.assert_frame_equal(adata.obs[obs.columns], obs)
    assert (adata.obs[obs.columns].dtypes == dtypes).all()
    assert all(c.startswith("_scvi") for c in set(adata.obs.columns) - set(obs.columns))


def _raised_inside_torch(err: BaseException) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and f"{os.sep}torch{os.sep}" in frames[-1].filename


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=anndatas(), use_age=st.booleans())
def test_any_anndata_works_or_raises_a_clear_value_error(case, use_age):
    adata, meta = case
    snap = _snapshot(adata)
    error = gen = None
    try:
        PriorVI.setup_anndata(
            adata, condition_keys=["cond"], continuous_condition_keys=["age"] if use_age else None
        )
        model = PriorVI(adata, n_latent=2, n_hidden=8)
        quiet_train(model, max_epochs=1, batch_size=16)
        gen = model.generate({"cond": str(adata.obs["cond"].dropna().iloc[0])}, 3, seed=0)
    except ValueError as err:
        error = err
    event(f"{'ValueError' if error else 'trained'}: {meta['fmt']} {meta['dtype']}")
    event(f"empty cells: {meta['empty_cells'] > 0}, all-zero genes: {meta['zero_genes'] > 0}")
    if error is not None:
        assert not _raised_inside_torch(error), (meta, error)
        assert len(str(error)) > 20, (meta, error)
        # only the documented refusals happen: NaN in a condition column
        assert meta["n_missing"] or (use_age and np.isnan(adata.obs["age"]).any()), (meta, error)
    else:
        assert not meta["n_missing"], meta
        assert gen.shape == (3, adata.n_vars)
        assert np.isfinite(gen.X.toarray()).all()
        # training categories: declared ones (unused included) or the observed strings
        expected = (
            ["a", "b", "c", "unused"]
            if meta["as_category"]
            else sorted(set(adata.obs["cond"].astype(str)))
        )
        assert list(gen.obs["cond"].cat.categories) == expected
    _assert_unchanged(adata, snap)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_float_non_integer_values_are_refused_for_counts(fmt):
    X = FORMATS[fmt](np.full((6, 4), 0.5, dtype=np.float32))
    adata = ad.AnnData(X, obs=pd.DataFrame({"cond": list("aabbcc")}, index=list("uvwxyz")))
    PriorVI.setup_anndata(adata, condition_keys=["cond"])
    with pytest.raises(ValueError, match="non-integer"):
        PriorVI(adata)
