"""What every genvi model knows about its conditions: schema, tensors, validation, metadata."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from anndata import AnnData

from genvi._validation import check_anndata, check_genes, same_genes_other_order
from genvi.model.base._conditions import ConditionSchema
from genvi.nn import ConditionInputs


class ConditionedModelMixin:
    """Condition schema, condition tensors and AnnData validation for genvi models.

    The model defines ``_cat_registry_key`` / ``_cont_registry_key`` (registry keys of the
    categorical and continuous conditions), ``module`` with a ``condition_encoder``, and
    ``var_names_`` (training genes). ``_missing_labels`` says whether categorical labels may
    be missing in the cells a model is given (DisentVI imputes them).
    """

    _cat_registry_key: str
    _cont_registry_key: str
    _missing_labels: bool = False

    @property
    def _schema(self) -> ConditionSchema:
        """Condition keys and training categories, read from the AnnData registry."""
        manager = self.adata_manager
        registry = manager.data_registry
        categorical, continuous = {}, []
        if self._cat_registry_key in registry:
            state = manager.get_state_registry(self._cat_registry_key)
            categorical = {k: [str(c) for c in state.mappings[k]] for k in state.field_keys}
        if self._cont_registry_key in registry:
            continuous = list(manager.get_state_registry(self._cont_registry_key).columns)
        return ConditionSchema(categorical, continuous)

    @property
    def _unknown_label(self):
        """The setup's label for a missing categorical value, if any."""
        return self.adata_manager.registry["setup_args"].get("unknown_label")

    def _registered(self, key: str, adata: AnnData | None = None) -> np.ndarray | None:
        """A registered field of ``adata`` (the training data by default), or ``None``."""
        manager = self.get_anndata_manager(self.adata if adata is None else adata, required=True)
        if key not in manager.data_registry:
            return None
        return np.asarray(manager.get_from_registry(key))

    def _continuous_stats(self) -> tuple[list[float] | None, list[float] | None]:
        """Mean and standard deviation of the training cells' continuous conditions."""
        cont = self._registered(self._cont_registry_key)
        if cont is None:
            return None, None
        cont = cont.astype(float)
        return cont.mean(0).tolist(), cont.std(0).tolist()

    def _condition_tensors(
        self,
        cat: np.ndarray | None,
        cont: np.ndarray | None,
        keep: np.ndarray | None = None,
        n: int | None = None,
    ) -> ConditionInputs:
        """Per-cell condition arrays as :class:`~genvi.nn.ConditionInputs` on the device.

        ``keep=None`` keeps every key; ``n`` is needed only when no array is given.
        """
        dev = self.module.device
        has_cat = cat is not None and cat.shape[1] > 0
        has_cont = cont is not None and cont.shape[1] > 0
        n = next((a.shape[0] for a in (cat, cont, keep) if a is not None), n)
        if keep is None:
            keep = np.ones((n, self.module.condition_encoder.n_keys), dtype=bool)
        return ConditionInputs(
            torch.as_tensor(cat, device=dev).long() if has_cat else None,
            torch.as_tensor(cont, device=dev).float() if has_cont else None,
            torch.as_tensor(keep, device=dev),
        )

    def _batch_code(self, batch: str | None) -> int | None:
        if batch is None:
            return None
        cats = list(self.batch_categories_)
        if str(batch) not in cats:
            raise ValueError(f"Unknown batch {batch!r}. Known batches: {cats}.")
        return cats.index(str(batch))

    def _check_conditional_dropout(self, keep: np.ndarray) -> None:
        if not keep.all() and self.module.condition_encoder.dropout == 0:
            warnings.warn(
                "Some condition keys are unspecified, but the model was trained with "
                "condition_dropout=0, so their null tokens were never trained. Specify every "
                "key or retrain with condition_dropout > 0.",
                UserWarning,
                stacklevel=4,
            )

    def _run_metadata(self, **extra) -> dict:
        """``uns["genvi"]`` of generated or counterfactual cells."""
        import genvi

        meta = {
            "model": type(self).__name__,
            "genvi_version": genvi.__version__,
            "gene_likelihood": getattr(self.module, "gene_likelihood", None),
            "condition_keys": list(self._schema.categorical),
            "continuous_condition_keys": list(self._schema.continuous),
        }
        if hasattr(self.module, "prior_name"):
            meta["prior"] = self.module.prior_name
        meta.update({k: ("None" if v is None else v) for k, v in extra.items()})
        return meta

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True):
        if adata is not None:
            check_anndata(adata)
            if same_genes_other_order(adata, self.var_names_):
                adata = _reordered(adata, self.var_names_)
            check_genes(adata, self.var_names_)
            self._schema.check_obs(adata.obs, self._missing_labels, self._unknown_label)
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)


def _reordered(adata: AnnData, var_names) -> AnnData:
    """A copy with the model's gene order (the user's AnnData is not changed)."""
    warnings.warn(
        "This AnnData has the model's genes in another order; using a copy reordered as in "
        "training (outputs follow the model's gene order).",
        UserWarning,
        stacklevel=4,
    )
    out = adata[:, list(var_names)].copy()
    # the copy is a new object: scvi-tools must register it anew, not mistake it for the original
    for key in [k for k in out.uns if str(k).startswith("_scvi")]:
        del out.uns[key]
    return out
