"""Saving a latent prior together with its base model, and loading the pair safely."""

from __future__ import annotations

import importlib
import os

import numpy as np
from anndata import AnnData

from genvi._validation import check_genes
from genvi.model.base._base_models import SUPPORTED_BASES, make_adapter
from genvi.model.base._io import (
    MODEL_FILENAME,
    LoadMixin,
    ModelFileError,
    check_payload,
    model_from_payload,
    model_payload,
    read_model_file,
)


class LatentPriorIOMixin(LoadMixin):
    """Save / load of latent priors: one file holds the prior and its base model.

    Loading refuses a base model other than the one the prior was trained on.
    """

    def _model_payload(self) -> dict:
        """The prior and, under ``base_model``, the base model in the same safe format.

        The pair is written atomically by :meth:`save`, so an interrupted save keeps the
        previous pair.
        """
        payload = model_payload(self)
        payload["base_model"] = model_payload(self.base_model)
        return payload

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        base_model=None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ):
        """Load a saved prior with its base model.

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        adata
            AnnData with the model's genes and condition columns (required).
        base_model
            The trained base model; by default the copy saved with the prior. A base model
            other than the one the prior was trained on is refused.
        accelerator, device
            Where to put the models.
        prefix
            File name prefix used when saving.
        """
        path = os.path.join(os.fspath(dir_path), f"{prefix or ''}{MODEL_FILENAME}")
        payload = read_model_file(path)
        if adata is None:
            raise ValueError(
                f"{cls.__name__}.load needs adata= (cells with the model's genes and condition "
                "columns)."
            )
        attrs = payload["decoded"]["attributes"]
        check_genes(adata, np.asarray(payload["decoded"]["var_names"], dtype=str))
        if base_model is None:
            if "base_model" not in payload:
                raise ModelFileError(
                    f"{path} holds no base model; pass the trained base model as base_model=."
                )
            base_payload = check_payload(payload["base_model"], path)
            base_model = model_from_payload(
                _import_base(attrs["base_class_"]),
                base_payload,
                adata,
                accelerator,
                device,
                path=f"{path} (base model)",
            )
        fingerprint = make_adapter(base_model).fingerprint()
        if fingerprint != attrs["base_fingerprint_"]:
            raise ValueError(
                f"base_model is not the model this {cls.__name__} was trained on (its weights "
                "differ). Pass the same trained base model, or retrain the prior on this one."
            )
        return model_from_payload(
            cls,
            payload,
            adata,
            accelerator,
            device,
            init_extra={"base_model": base_model},
            path=path,
        )


def _import_base(class_path: str):
    if class_path not in SUPPORTED_BASES:
        raise ValueError(
            f"Saved base model class {class_path!r} is not one genvi can load; supported: "
            f"{list(SUPPORTED_BASES)}. Pass the base model as base_model=."
        )
    module, name = class_path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)
