"""Safe, atomic, versioned model files.

File format (``{prefix}model.pt``, format version 1)
---------------------------------------------------
One file written with :func:`torch.save` that :func:`torch.load` reads with
``weights_only=True``: it holds only tensors, strings, numbers, lists and dicts, so loading
a model file cannot execute code (scvi-tools' own files are full pickles). Its keys:

``genvi_model_format``
    Format version (an int); files of a newer format are refused with a clear error.
``genvi_version``
    genvi version that wrote the file; a newer genvi *major* version is refused.
``model_class``
    Import path of the model class (``"genvi.model.PriorVI"``, ``"scvi.model.SCVI"``...).
``state_dict``
    The module's weights.
``attributes``
    A JSON document with every ``*_`` attribute of the model (``init_params_``,
    ``registry_`` — the scvi-tools registry —, ``var_names``, training reference arrays,
    ``history_``...). Plain values are JSON; numpy arrays of fixed-size dtypes (numbers,
    booleans, fixed-width strings) are stored as raw bytes in ``arrays`` and referenced by
    name with their dtype and shape; object arrays, tuples, dicts with non-string keys and
    pandas DataFrames (the training history) are tagged JSON.
``arrays``
    ``{name: uint8 tensor}`` raw bytes of the arrays referenced from ``attributes``.
``checksum``
    SHA-256 over ``attributes``, ``arrays`` and ``state_dict``: a damaged file is refused.
``base_model``
    Latent priors only: the payload of the base model they decode with, in the same
    format, so the pair is written (and replaced) in one atomic step.
``attr_dict``, ``var_names``, ``model_state_dict``
    Not read by genvi. They are where scvi-tools' ``load`` looks, so that
    ``scvi.model.SCVI.load(<a genvi folder>)`` fails with a message naming the genvi class
    to load the file with, instead of an unrelated ``AttributeError``.

Saving writes a temporary file next to the target, flushes it to disk and renames it over
the target (:func:`os.replace`, atomic on POSIX and Windows), so an interrupted save leaves
the previous model intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import pickle
import uuid
import warnings
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from genvi._validation import check_genes

FORMAT_VERSION = 1
FORMAT_KEY = "genvi_model_format"
MODEL_FILENAME = "model.pt"
ADATA_FILENAME = "adata.h5ad"


class ModelFileError(ValueError):
    """A model file that is corrupt, truncated, unsafe or from an incompatible genvi."""


# ---------------------------------------------------------------------- encoding
def _encode(obj: Any, arrays: dict[str, torch.Tensor], path: str) -> Any:
    """Turn ``obj`` into JSON-able data; fixed-size numpy arrays go into ``arrays``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, (np.generic,)):
        return obj
    if isinstance(obj, np.generic):
        return _encode(np.asarray(obj), arrays, path)
    if isinstance(obj, torch.Tensor):
        return _encode(obj.detach().cpu().numpy(), arrays, path)
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            items = [_encode(x, arrays, f"{path}[]") for x in obj.ravel().tolist()]
            return {"__objarray__": items, "shape": list(obj.shape)}
        name = f"a{len(arrays)}"
        raw = np.ascontiguousarray(obj).reshape(-1).view(np.uint8)
        arrays[name] = torch.from_numpy(raw.copy())
        return {"__array__": name, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, pd.DataFrame):
        return {
            "__dataframe__": {
                "columns": _encode(np.asarray(obj.columns, dtype=object), arrays, path),
                "index": _encode(np.asarray(obj.index), arrays, path),
                "index_name": _encode(obj.index.name, arrays, path),
                "data": {
                    str(i): _encode(obj.iloc[:, i].to_numpy(), arrays, f"{path}.{c}")
                    for i, c in enumerate(obj.columns)
                },
            }
        }
    if isinstance(obj, pd.Index):
        return {"__index__": _encode(np.asarray(obj), arrays, path)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(x, arrays, f"{path}[{i}]") for i, x in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(x, arrays, f"{path}[{i}]") for i, x in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, arrays, f"{path}.{k}") for k, v in obj.items()}
        return {
            "__dict__": [
                [_encode(k, arrays, path), _encode(v, arrays, f"{path}.{k}")]
                for k, v in obj.items()
            ]
        }
    raise TypeError(
        f"Cannot save attribute {path} of type {type(obj).__name__} in genvi's safe model "
        "format (supported: numbers, strings, None, lists, tuples, dicts, numpy arrays, "
        "tensors and DataFrames)."
    )


def _decode(obj: Any, arrays: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(x, arrays) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "__array__" in obj:
        raw = arrays[obj["__array__"]].numpy().tobytes()
        return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    if "__objarray__" in obj:
        items = [_decode(x, arrays) for x in obj["__objarray__"]]
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(obj["shape"])
    if "__dataframe__" in obj:
        d = obj["__dataframe__"]
        columns = _decode(d["columns"], arrays)
        data = {columns[int(i)]: _decode(v, arrays) for i, v in d["data"].items()}
        index = pd.Index(_decode(d["index"], arrays), name=_decode(d["index_name"], arrays))
        return pd.DataFrame(data, index=index, columns=list(columns))
    if "__index__" in obj:
        return pd.Index(_decode(obj["__index__"], arrays))
    if "__tuple__" in obj:
        return tuple(_decode(x, arrays) for x in obj["__tuple__"])
    if "__dict__" in obj:
        return {_hashable(_decode(k, arrays)): _decode(v, arrays) for k, v in obj["__dict__"]}
    return {k: _decode(v, arrays) for k, v in obj.items()}


def _hashable(key):
    return key.item() if isinstance(key, np.ndarray) and key.ndim == 0 else key


def _checksum(attributes: str, arrays: dict, state_dict: dict) -> str:
    h = hashlib.sha256(attributes.encode())
    for group in (arrays, state_dict):
        for name in sorted(group):
            t = group[name]
            h.update(name.encode())
            h.update(str(t.dtype).encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


# ---------------------------------------------------------------------- payloads
def _class_path(cls: type) -> str:
    return f"{cls.__module__.split('.')[0]}.model.{cls.__name__}"


def model_payload(model) -> dict:
    """Everything needed to rebuild ``model`` (any scvi-tools ``BaseModelClass``), safely."""
    import genvi

    state = OrderedDict((k, v.detach().cpu()) for k, v in model.module.state_dict().items())
    attrs = {name: value for name, value in model._get_user_attributes() if name.endswith("_")}
    attributes = {"attributes": attrs, "var_names": np.asarray(model.adata.var_names, dtype=str)}
    arrays: dict[str, torch.Tensor] = {}
    encoded = json.dumps(_encode(attributes, arrays, type(model).__name__))
    class_path = _class_path(type(model))
    return {
        FORMAT_KEY: FORMAT_VERSION,
        "genvi_version": str(genvi.__version__),
        "model_class": class_path,
        "state_dict": state,
        "attributes": encoded,
        "arrays": arrays,
        "checksum": _checksum(encoded, arrays, state),
        **_scvi_tools_guard(class_path),
    }


def _scvi_tools_guard(class_path: str) -> dict:
    """Entries that make scvi-tools' ``load`` stop with a message naming the genvi class.

    scvi-tools calls ``getattr(cls, registry["setup_method_name"])`` when an AnnData is given
    and ``cls(**init_params_["non_kwargs"])`` otherwise; both errors quote the text below.
    """
    text = (
        f"THIS IS A GENVI MODEL FILE (genvi's safe format, not scvi-tools' pickle): load it "
        f"with {class_path}.load(dir_path, adata)"
    )
    return {
        "attr_dict": {
            "registry_": {"setup_method_name": text, "setup_args": {}},
            "init_params_": {"non_kwargs": {text: None}, "kwargs": {}},
        },
        "var_names": [],
        "model_state_dict": {},
    }


def atomic_write(path: str, write) -> None:
    """Call ``write(tmp_path)``, flush the file to disk and rename it to ``path`` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with contextlib.suppress(OSError, AttributeError):  # directory fsync: POSIX only
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_model(
    model,
    dir_path: str | os.PathLike,
    prefix: str | None = None,
    overwrite: bool = False,
    save_anndata: bool = False,
    payload: dict | None = None,
    **anndata_write_kwargs,
) -> None:
    """Write ``model`` to ``dir_path/{prefix}model.pt`` in genvi's safe format, atomically."""
    dir_path = os.fspath(dir_path)
    path = os.path.join(dir_path, f"{prefix or ''}{MODEL_FILENAME}")
    if os.path.exists(path) and not overwrite:
        raise ValueError(
            f"{path} already exists; pass overwrite=True to replace it or choose another folder."
        )
    payload = model_payload(model) if payload is None else payload
    os.makedirs(dir_path, exist_ok=True)
    if save_anndata:
        adata_path = os.path.join(dir_path, f"{prefix or ''}{ADATA_FILENAME}")
        atomic_write(adata_path, lambda tmp: model.adata.write_h5ad(tmp, **anndata_write_kwargs))
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


# ---------------------------------------------------------------------- reading
def _major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return 0


def read_model_file(path: str) -> dict:
    """Read and check a model file with ``weights_only=True``; clear errors otherwise."""
    import genvi

    if not os.path.exists(path):
        raise FileNotFoundError(f"No saved model at {path}; pass the folder given to save().")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise _corrupt(path, ValueError("not a zip archive written by torch.save"))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise ModelFileError(
                f"{path} is not a genvi safe model file: it is a full pickle (written by "
                "scvi-tools' save() or by genvi before the safe format), and loading it could "
                "execute arbitrary code, so genvi refuses it. If you trust its origin, load it "
                "with the scvi-tools class of the same version that wrote it and save it again "
                "with this genvi."
            ) from None
        raise _corrupt(path, err) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, ValueError) as err:
        raise _corrupt(path, err) from err
    if not isinstance(payload, dict) or FORMAT_KEY not in payload:
        raise ModelFileError(
            f"{path} is not a genvi model file (no {FORMAT_KEY!r} entry); it may come from "
            "scvi-tools or another program. Save the model with genvi."
        )
    fmt, written_by = payload[FORMAT_KEY], str(payload.get("genvi_version", "?"))
    if (
        not isinstance(fmt, int)
        or fmt > FORMAT_VERSION
        or _major(written_by) > _major(genvi.__version__)
    ):
        raise ModelFileError(
            f"{path} was saved by genvi {written_by} (model file format {fmt}); this genvi "
            f"{genvi.__version__} reads formats up to {FORMAT_VERSION} from genvi major "
            f"version {_major(genvi.__version__)} or older. Upgrade genvi "
            "(`pip install -U genvi`) to load it."
        )
    return check_payload(payload, path)


def check_payload(payload: dict, path: str) -> dict:
    """Verify a payload's checksum and decode its attributes (into ``payload['decoded']``)."""
    try:
        if (
            _checksum(payload["attributes"], payload["arrays"], payload["state_dict"])
            != payload["checksum"]
        ):
            raise ValueError("checksum mismatch")
        payload["decoded"] = _decode(json.loads(payload["attributes"]), payload["arrays"])
    except (KeyError, ValueError, TypeError) as err:
        raise _corrupt(path, err) from err
    return payload


def _corrupt(path: str, err: Exception) -> ModelFileError:
    return ModelFileError(
        f"The model file {path} is corrupt or truncated and could not be read "
        f"({type(err).__name__}: {str(err)[:200]}). Save the model again from a trained "
        "instance, or restore the file from a backup."
    )


def import_model_class(class_path: str) -> type:
    """The class for a recorded ``model_class``: only genvi and scvi-tools models."""
    module, _, name = class_path.rpartition(".")
    if module not in ("genvi.model", "scvi.model"):
        raise ModelFileError(
            f"Model class {class_path!r} is not a genvi or scvi-tools model; refusing to import it."
        )
    cls = getattr(importlib.import_module(module), name, None)
    if cls is None:
        raise ModelFileError(f"Model class {class_path!r} does not exist in this installation.")
    return cls


def model_from_payload(
    cls: type,
    payload: dict,
    adata: AnnData,
    accelerator: str = "auto",
    device: int | str = "auto",
    init_extra: dict | None = None,
    path: str = "model file",
):
    """Rebuild a model of class ``cls`` from a checked payload on ``adata``."""
    from scvi.model._utils import parse_device_args
    from scvi.model.base._save_load import _initialize_model

    if payload["model_class"].rsplit(".", 1)[-1] != cls.__name__:
        raise ModelFileError(
            f"{path} holds a {payload['model_class']}, not a {cls.__name__}; load it with "
            f"{payload['model_class']}.load."
        )
    decoded = payload["decoded"]
    attr_dict = dict(decoded["attributes"])
    check_genes(adata, np.asarray(decoded["var_names"], dtype=str))
    registry = attr_dict.pop("registry_")
    cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
    if init_extra:
        init = attr_dict["init_params_"]
        init["non_kwargs"] = {**init["non_kwargs"], **init_extra}
    model = _initialize_model(cls, adata, registry, attr_dict, None)
    for attr, val in attr_dict.items():
        setattr(model, attr, val)
    state = OrderedDict(payload["state_dict"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(model.module, "on_load"):
            model.module.on_load(model)
    model.module.load_state_dict(state)
    _, _, torch_device = parse_device_args(accelerator, device, return_device="torch")
    model.to_device(torch_device)
    model.module.eval()
    return model


def load_model(
    cls: type,
    dir_path: str | os.PathLike,
    adata: AnnData | None = None,
    accelerator: str = "auto",
    device: int | str = "auto",
    prefix: str | None = None,
):
    """Load a model saved by :func:`save_model` (``adata`` from the folder when omitted)."""
    dir_path = os.fspath(dir_path)
    path = os.path.join(dir_path, f"{prefix or ''}{MODEL_FILENAME}")
    payload = read_model_file(path)
    if adata is None:
        adata_path = os.path.join(dir_path, f"{prefix or ''}{ADATA_FILENAME}")
        if not os.path.exists(adata_path):
            raise ValueError(
                f"{cls.__name__}.load needs adata= (no AnnData was saved with the model; "
                "save with save_anndata=True to store one)."
            )
        import anndata

        adata = anndata.read_h5ad(adata_path)
    return model_from_payload(cls, payload, adata, accelerator, device, path=path)


class LoadMixin:
    """Safe ``save``/``load`` (see :mod:`genvi.model.base._io` for the file format).

    Model files hold only tensors and JSON-encoded attributes, are read with
    ``torch.load(weights_only=True)`` (loading cannot run code), are written atomically (an
    interrupted save keeps the previous model) and carry the genvi version that wrote them.
    """

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model to ``dir_path/{prefix}model.pt`` (atomically, safe format).

        Parameters
        ----------
        dir_path
            Folder (created if missing).
        prefix
            File name prefix, to keep several models in one folder.
        overwrite
            Replace an existing model file of the same name.
        save_anndata
            Also write the registered AnnData to ``{prefix}adata.h5ad``.
        **anndata_write_kwargs
            Passed to :meth:`anndata.AnnData.write_h5ad`.
        """
        save_model(
            self,
            dir_path,
            prefix,
            overwrite,
            save_anndata,
            payload=self._model_payload(),
            **anndata_write_kwargs,
        )

    def _model_payload(self) -> dict:
        """What the file holds (latent priors add their base model)."""
        return model_payload(self)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ):
        """Load a model saved with :meth:`save`.

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        adata
            AnnData with the model's genes (in order) and setup columns; the AnnData saved
            with ``save_anndata=True`` by default.
        accelerator, device
            Where to put the model.
        prefix
            File name prefix used when saving.

        Raises
        ------
        FileNotFoundError
            ``dir_path`` holds no saved model.
        ValueError
            (:class:`ModelFileError`) the file is corrupt, truncated, a pickle (unsafe), of
            another model class or from a newer genvi; or ``adata`` has other genes.
        """
        return load_model(cls, dir_path, adata, accelerator, device, prefix)
