"""Loading genvi models with clear errors."""

from __future__ import annotations

import os
import pickle
import zipfile

from anndata import AnnData

from genvi._validation import check_genes


class LoadMixin:
    """``load`` that turns unreadable model files and gene mismatches into clear errors."""

    @classmethod
    def load(cls, dir_path: str | os.PathLike, adata: AnnData | None = None, **kwargs):
        """Load a saved model (see :meth:`scvi.model.base.BaseModelClass.load`).

        Raises
        ------
        FileNotFoundError
            ``dir_path`` holds no saved model.
        ValueError
            The model file is corrupt or truncated, or ``adata`` has other genes than the
            model.
        """
        path = os.path.join(os.fspath(dir_path), kwargs.get("prefix") or "", "model.pt")
        if not os.path.exists(path):
            raise FileNotFoundError(f"No saved model at {path}; pass the folder given to save().")
        try:
            model = super().load(dir_path, adata=adata, **kwargs)
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as err:
            raise ValueError(
                f"The model file {path} is corrupt or truncated and could not be read ({err}). "
                "Save the model again from a trained instance."
            ) from err
        if adata is not None:
            check_genes(adata, model.var_names_)
        return model
