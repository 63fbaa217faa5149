"""Bad input fails early with a ValueError that names the problem; user data is not mutated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from conftest import quiet_train
from genvi.model import PriorVI


def _setup(adata, **kwargs):
    kwargs.setdefault("condition_keys", ["cell_type", "treatment"])
    PriorVI.setup_anndata(adata, **kwargs)
    return adata


@pytest.fixture
def trained(tiny):
    _setup(tiny)
    return quiet_train(PriorVI(tiny), max_epochs=2)


def test_non_integer_counts_rejected_for_count_likelihood(tiny):
    tiny.X = tiny.X * 1.5
    _setup(tiny)
    with pytest.raises(ValueError, match="non-integer"):
        PriorVI(tiny)
    PriorVI(tiny, gene_likelihood="normal")  # fine for a Normal likelihood


def test_negative_values_rejected(tiny):
    X = tiny.X.toarray()
    X[0, 0] = -1
    tiny.X = sparse.csr_matrix(X)
    _setup(tiny)
    with pytest.raises(ValueError, match="negative"):
        PriorVI(tiny)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_expression_rejected(tiny, bad):
    X = tiny.X.toarray()
    X[3, 2] = bad
    tiny.X = X
    with pytest.raises(ValueError, match="NaN or infinite"):
        _setup(tiny)


def test_non_finite_continuous_condition_rejected(tiny):
    tiny.obs["age"] = np.linspace(20, 80, tiny.n_obs)
    tiny.obs.loc[tiny.obs_names[5], "age"] = np.nan
    with pytest.raises(ValueError, match="age"):
        _setup(tiny, continuous_condition_keys=["age"])


def test_missing_condition_key_rejected(tiny):
    with pytest.raises(ValueError, match="not columns of adata.obs"):
        _setup(tiny, condition_keys=["cell_type", "donor"])


def test_nan_category_rejected(tiny):
    tiny.obs["cell_type"] = tiny.obs["cell_type"].astype(object)
    tiny.obs.loc[tiny.obs_names[0], "cell_type"] = np.nan
    with pytest.raises(ValueError, match="missing"):
        _setup(tiny)


def test_key_used_twice_rejected(tiny):
    with pytest.raises(ValueError, match="more than once"):
        _setup(tiny, batch_key="cell_type")


def test_unknown_category_or_key_in_generate(trained):
    with pytest.raises(ValueError, match=r"Known categories: \['type_0', 'type_1'\]"):
        trained.generate({"cell_type": "type_9"}, n_cells=5)
    with pytest.raises(ValueError, match="Unknown condition key"):
        trained.generate({"tissue": "lung"}, n_cells=5)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_bad_n_cells(trained, n):
    with pytest.raises(ValueError, match="n_cells"):
        trained.generate({"cell_type": "type_0"}, n_cells=n)


def test_genes_must_match_the_model(trained, tiny):
    # the same genes in another order are reordered (tests/test_interop.py); fewer genes are not
    with pytest.raises(ValueError, match="do not match"):
        trained.get_latent_representation(tiny[:, :10].copy())


def test_unseen_category_in_new_data(trained, tiny):
    new = tiny.copy()
    new.obs["cell_type"] = pd.Categorical(["type_7"] * new.n_obs)
    with pytest.raises(ValueError, match="unseen in training"):
        trained.get_log_likelihood(new)


def test_user_data_not_mutated(tiny):
    before_X = tiny.X.copy()
    before_obs = tiny.obs.copy()
    _setup(tiny)
    model = quiet_train(PriorVI(tiny), max_epochs=1)
    model.generate({"cell_type": "type_0"}, n_cells=5)
    model.predict_counterfactual(tiny, {"treatment": "treated"})
    assert (tiny.X != before_X).nnz == 0
    pd.testing.assert_frame_equal(tiny.obs[before_obs.columns], before_obs)
    # setup_anndata only adds scvi-tools' documented registration columns
    assert all(c.startswith("_scvi") for c in set(tiny.obs.columns) - set(before_obs.columns))


def test_bad_counterfactual_request(trained, tiny):
    with pytest.raises(ValueError, match="at least one"):
        trained.predict_counterfactual(tiny, {})
    with pytest.raises(ValueError, match="Unknown category"):
        trained.predict_counterfactual(tiny, {"treatment": "placebo"})


def test_corrupt_model_file(tmp_path, trained, tiny):
    trained.save(tmp_path / "m")
    (tmp_path / "m" / "model.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="corrupt|could not be read"):
        PriorVI.load(tmp_path / "m", adata=tiny)
