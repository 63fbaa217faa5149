"""Scale and reliability: DDP, sparse / backed data, streaming generation, model files, faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scvi
import torch
from scipy import sparse

import genvi
from conftest import quiet_train
from genvi.model import DisentVI, LatentFlow, PriorVI
from genvi.model.base import ModelFileError, NonFiniteLossError, _io

HERE = Path(__file__).resolve().parent


def _small(n_cells: int = 120, seed: int = 1) -> ad.AnnData:
    return genvi.data.simulate(n_cells=n_cells, n_genes=30, n_cell_types=2, seed=seed)


@pytest.fixture(scope="module")
def small_model():
    scvi.settings.seed = 0
    adata = _small()
    PriorVI.setup_anndata(adata, condition_keys=["cell_type", "treatment"])
    return quiet_train(PriorVI(adata, n_latent=4, n_hidden=16), max_epochs=2)


# ---------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_cpu_processes_train_save_load_generate(tmp_path):
    """2 gloo processes (Lightning ddp_fork): same weights on both ranks, loads, generates."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}
    proc = subprocess.run(
        [sys.executable, str(HERE / "_ddp_train.py"), str(tmp_path), "ddp_fork"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "info.json").read_text())
    ranks = json.loads((tmp_path / "rank_weights.json").read_text())
    assert ranks["world_size"] == 2
    # one consistent model: the weight fingerprints of both processes agree
    np.testing.assert_allclose(ranks["stats"][0], ranks["stats"][1], rtol=1e-6)
    # the data were sharded, batch_size per process as in scvi-tools: 216 / 2 / 64 -> 2 steps
    assert ranks["num_training_batches"] == 2
    # a dry step found no parameter without gradient: DDP does not search for them
    flow_ranks = json.loads((tmp_path / "flow_rank_weights.json").read_text())
    assert ranks["find_unused_parameters"] is False
    assert flow_ranks["find_unused_parameters"] is False
    np.testing.assert_allclose(flow_ranks["stats"][0], flow_ranks["stats"][1], rtol=1e-6)
    assert info["priorvi_is_trained"] and info["weights_finite"]
    # the model in the launching process is rank 0's
    np.testing.assert_allclose(info["main_stats"], ranks["stats"][0], rtol=1e-5)
    adata = genvi.data.simulate(n_cells=240, n_genes=30, n_cell_types=2, seed=3)
    model = PriorVI.load(tmp_path / "priorvi", adata=adata.copy())
    gen = model.generate({"cell_type": "type_0"}, n_cells=10, seed=0)
    assert gen.shape == (10, 30) and np.all(gen.X.data == np.round(gen.X.data))
    flow = LatentFlow.load(tmp_path / "flow", adata=adata.copy())
    assert flow.generate({"cell_type": "type_1"}, n_cells=5, n_steps=2, seed=0).shape == (5, 30)


# ---------------------------------------------------------------------- data formats
@pytest.mark.parametrize("fmt", ["csr", "backed"])
def test_train_from_sparse_and_backed_without_densifying(tmp_path, fmt, monkeypatch):
    adata = _small()
    adata.X = sparse.csr_matrix(adata.X)
    if fmt == "backed":
        adata.write_h5ad(tmp_path / "a.h5ad")
        adata = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    kind = type(adata.X)
    densified = []  # rows of every sparse block made dense, by anyone
    for cls in (sparse.csr_matrix, sparse.csr_array):
        for method in ("toarray", "todense"):
            real = getattr(cls, method)

            def spy(self, *args, _real=real, **kwargs):
                densified.append(self.shape[0])
                return _real(self, *args, **kwargs)

            monkeypatch.setattr(cls, method, spy)
    PriorVI.setup_anndata(adata, condition_keys=["cell_type"])
    model = quiet_train(PriorVI(adata, n_latent=4, n_hidden=16), max_epochs=1, batch_size=32)
    assert model.get_latent_representation(batch_size=32).shape == (120, 4)
    assert np.isfinite(model.get_log_likelihood(n_samples=2, batch_size=32)).all()
    # minibatches were densified (the loader did run), never the whole matrix
    assert densified and max(densified) <= 32, sorted(set(densified))
    assert type(adata.X) is kind
    if fmt == "backed":
        assert adata.isbacked
        expected = np.asarray(ad.read_h5ad(tmp_path / "a.h5ad").X.sum(1)).ravel()
        np.testing.assert_allclose(model.train_library_, np.maximum(expected, 1))


def test_disentvi_trains_from_backed_data(tmp_path):
    adata = _small()
    adata.X = sparse.csr_matrix(adata.X)
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    DisentVI.setup_anndata(backed, categorical_attributes=["cell_type", "treatment"])
    model = quiet_train(DisentVI(backed, n_latent=4, n_hidden=16), max_epochs=1)
    assert backed.isbacked
    expected = np.asarray(ad.read_h5ad(tmp_path / "a.h5ad").X.sum(1)).ravel()
    np.testing.assert_allclose(model.train_library_, np.maximum(expected, 1))
    assert model.get_latent_representation().shape == (120, 4)


# ---------------------------------------------------------------------- streaming generation
def test_streaming_generation_matches_in_memory(tmp_path, small_model):
    conds = [{"cell_type": "type_0"}, {"cell_type": "type_1", "treatment": "treated"}]
    mem = small_model.generate(conds, [70, 50], seed=2, batch_size=32)
    out = tmp_path / "cohort.h5ad"
    disk = small_model.generate(conds, [70, 50], seed=2, batch_size=32, out=out)
    assert disk.isbacked and Path(disk.filename) == out
    assert (mem.X != disk.X[:]).nnz == 0  # same seed, same cells
    np.testing.assert_array_equal(mem.obsm["X_genvi_latent"], disk.obsm["X_genvi_latent"][:])
    assert list(disk.obs["cell_type"].cat.categories) == ["type_0", "type_1"]
    np.testing.assert_array_equal(mem.obs["library_size"], disk.obs["library_size"])
    assert disk.uns["genvi"]["model"] == "PriorVI"
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="h5ad"):
        small_model.generate(conds[0], 5, out=tmp_path / "cohort.csv")


def test_streaming_writes_in_chunks(tmp_path, small_model, monkeypatch):
    """Many write chunks (tiny chunk size) still give one consistent file."""
    from genvi.model.base import _streaming

    monkeypatch.setattr(_streaming, "WRITE_CHUNK_CELLS", 7)
    disk = small_model.generate(
        {"cell_type": "type_0"}, 100, seed=0, batch_size=9, out=tmp_path / "c.h5ad"
    )
    mem = small_model.generate({"cell_type": "type_0"}, 100, seed=0, batch_size=9)
    assert disk.shape == (100, 30) and (mem.X != disk.X[:]).nnz == 0


def test_generated_csr_matches_dense_samples(small_model):
    """Counts compressed to CSR on the model's device equal the dense samples, cell for cell."""
    from genvi.model.base._generation import _host_csr
    from genvi.model.base._seeding import seeded

    x = torch.tensor([[0.0, 2.0, -1.5], [0.0, 0.0, 0.0], [3.0, 0.0, float("nan")]])
    csr = _host_csr(x)
    assert csr.format == "csr" and csr.has_canonical_format and csr.nnz == 4
    np.testing.assert_array_equal(csr.toarray(), x.numpy())
    spec = {"cell_type": "type_1", "treatment": "treated"}
    small_model.module.eval()
    with seeded(4, small_model.module.device) as rng:
        dense = small_model._simulate_cells([spec], [75], None, None, rng, 16)["x"]
    gen = small_model.generate(spec, 75, seed=4, batch_size=16)
    assert isinstance(dense, np.ndarray) and sparse.isspmatrix_csr(gen.X)
    assert gen.X.dtype == np.float32 and (sparse.csr_matrix(dense) != gen.X).nnz == 0


# ---------------------------------------------------------------------- model files
def test_model_file_is_safe_and_round_trips(tmp_path, small_model):
    small_model.save(tmp_path / "m")
    payload = torch.load(tmp_path / "m" / "model.pt", weights_only=True)  # no pickle needed
    assert payload["genvi_model_format"] == _io.FORMAT_VERSION
    assert payload["model_class"] == "genvi.model.PriorVI"
    loaded = PriorVI.load(tmp_path / "m", adata=small_model.adata)
    for name in ("train_library_", "train_codes_", "train_batch_", "var_names_"):
        a, b = getattr(small_model, name), getattr(loaded, name)
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert loaded.init_params_ == small_model.init_params_
    assert loaded.batch_categories_ == small_model.batch_categories_
    assert list(loaded.history_) == list(small_model.history_)
    a = small_model.generate({"cell_type": "type_1"}, 20, seed=1)
    b = loaded.generate({"cell_type": "type_1"}, 20, seed=1)
    assert (a.X != b.X).nnz == 0
    with pytest.raises(ValueError, match="already exists"):
        small_model.save(tmp_path / "m")


def test_pickled_model_file_is_refused(tmp_path, small_model):
    """A file that would run code when unpickled (scvi's format) is never unpickled."""
    small_model.save(tmp_path / "m")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model_state_dict": {}, "x": Exploit()}, tmp_path / "m" / "model.pt")
    with pytest.raises(ModelFileError, match="pickle"):
        PriorVI.load(tmp_path / "m", adata=small_model.adata)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_model_file_gives_clear_error(tmp_path, small_model, damage):
    small_model.save(tmp_path / "m")
    path = tmp_path / "m" / "model.pt"
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":  # a flipped byte inside the weights: caught by the checksum
        payload = torch.load(path, weights_only=True)
        name, tensor = next(iter(payload["state_dict"].items()))
        payload["state_dict"][name] = tensor + 1
        torch.save(payload, path)
        raw = bytearray(path.read_bytes())
    else:
        raw = bytearray(b"not a model at all")
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        PriorVI.load(tmp_path / "m", adata=small_model.adata)


def test_newer_genvi_file_is_refused(tmp_path, small_model):
    small_model.save(tmp_path / "m")
    path = tmp_path / "m" / "model.pt"
    payload = torch.load(path, weights_only=True)
    payload["genvi_version"] = "99.0.0"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"saved by genvi 99\.0\.0.*Upgrade genvi"):
        PriorVI.load(tmp_path / "m", adata=small_model.adata)
    payload["genvi_version"], payload["genvi_model_format"] = genvi.__version__, 999
    torch.save(payload, path)
    with pytest.raises(ValueError, match="format 999"):
        PriorVI.load(tmp_path / "m", adata=small_model.adata)


def test_interrupted_save_keeps_previous_model(tmp_path, small_model, monkeypatch):
    small_model.save(tmp_path / "m")
    before = (tmp_path / "m" / "model.pt").read_bytes()

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        small_model.save(tmp_path / "m", overwrite=True)
    monkeypatch.undo()
    assert (tmp_path / "m" / "model.pt").read_bytes() == before
    assert os.listdir(tmp_path / "m") == ["model.pt"]  # no temporary file left behind
    PriorVI.load(tmp_path / "m", adata=small_model.adata)


def test_attribute_encoding_round_trip():
    value = {
        "a": np.arange(6, dtype=np.int32).reshape(2, 3),
        "s": np.asarray(["x", "yy"]),
        "o": np.asarray(["p", 3, None], dtype=object),
        "t": (1, 2.5, "z"),
        "n": {1: "one", "__x": [np.float64(0.5), True, None]},
        "f": float("nan"),
    }
    arrays: dict = {}
    back = _io._decode(json.loads(json.dumps(_io._encode(value, arrays, "v"))), arrays)
    np.testing.assert_array_equal(back["a"], value["a"])
    assert back["a"].dtype == np.int32 and back["s"].dtype == value["s"].dtype
    assert list(back["o"]) == ["p", 3, None] and back["t"] == (1, 2.5, "z")
    assert back["n"][1] == "one" and back["n"]["__x"][1:] == [True, None]
    assert np.isnan(back["f"])
    with pytest.raises(TypeError, match="Cannot save attribute v.bad"):
        _io._encode({"bad": object()}, {}, "v")


# ---------------------------------------------------------------------- training faults
@pytest.mark.parametrize("where", ["dispersion", "condition embedding"])
def test_nan_weights_stop_training_with_causes(where):
    """A NaN per-gene dispersion reaches the loss; NaN condition embeddings fail earlier, in
    torch's check of the prior's Normal: both stop with the causes, not torch's message."""
    adata = _small()
    PriorVI.setup_anndata(adata, condition_keys=["cell_type"])
    if where == "dispersion":
        model = PriorVI(adata, n_latent=4, n_hidden=16, dispersion="gene")
        weight, expected = model.module.px_r, "the loss became nan"
    else:
        model = PriorVI(adata, n_latent=4, n_hidden=16)
        weight = model.module.condition_encoder.embeddings[0].weight
        expected = "parameters of a distribution became NaN"
    with torch.no_grad():
        weight.fill_(float("nan"))
    match = f"{expected}.*learning rate.*continuous covariates.*counts"
    with pytest.raises(NonFiniteLossError, match=match) as info:
        quiet_train(model, max_epochs=1)
    assert (info.value.__cause__ is None) == (where == "dispersion")


@pytest.mark.parametrize("n_cells", [5, 40])
def test_fewer_cells_than_the_batch_size(n_cells):
    adata = _small(n_cells=n_cells, seed=4)
    PriorVI.setup_anndata(adata, condition_keys=["cell_type"])
    model = quiet_train(PriorVI(adata, n_latent=4, n_hidden=16), max_epochs=2, batch_size=128)
    assert model.is_trained_
    assert model.generate({"cell_type": "type_0"}, 3, seed=0).shape == (3, 30)


def test_condition_with_one_cell_trains_and_generates():
    adata = _small(n_cells=60, seed=5)
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.add_categories("rare")
    adata.obs.iloc[0, adata.obs.columns.get_loc("cell_type")] = "rare"
    PriorVI.setup_anndata(adata, condition_keys=["cell_type"])
    model = quiet_train(PriorVI(adata, n_latent=4, n_hidden=16), max_epochs=2)
    gen = model.generate({"cell_type": "rare"}, 4, seed=0)
    assert (gen.obs["cell_type"] == "rare").all()
    assert np.allclose(gen.obs["library_size"], model.train_library_[0])


def test_loader_reads_with_weights_only(monkeypatch, tmp_path, small_model):
    """Every model file is read by torch.load(weights_only=True), never by a full unpickler."""
    small_model.save(tmp_path / "m")
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(_io.torch, "load", spy)
    PriorVI.load(tmp_path / "m", adata=small_model.adata)
    assert calls == [True]
