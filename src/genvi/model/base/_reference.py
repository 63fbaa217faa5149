"""What a model remembers of its training cells to generate realistic library sizes."""

from __future__ import annotations

import numpy as np
import torch
from scvi import REGISTRY_KEYS

from genvi._validation import row_sums


def draw_reference_cells(
    train_codes: np.ndarray,
    cat: np.ndarray,
    keep_cat: np.ndarray,
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Indices of training cells drawn uniformly among those matching a condition.

    Only the specified categorical keys (``keep_cat``) must match. When no training cell
    matches (an unseen combination), keys are relaxed from the last one until some do, so
    library sizes come from the closest observed population rather than from everywhere.

    Parameters
    ----------
    train_codes
        ``(n_train, n_categorical)`` codes of the training cells.
    cat, keep_cat
        Codes of the requested condition and which of them are specified.
    n
        Number of cells to draw.
    rng
        Random generator.
    """
    keys = list(np.flatnonzero(keep_cat))
    while True:
        if keys:
            match = np.all(train_codes[:, keys] == cat[keys], axis=1)
            idx = np.flatnonzero(match)
        else:
            idx = np.arange(train_codes.shape[0])
        if len(idx) > 0:
            return rng.choice(idx, size=n, replace=True)
        keys.pop()


class TrainingReferenceMixin:
    """Per-cell library sizes, condition codes and batches of the training cells.

    Generation draws reference cells (library size, batch) from these arrays; the model
    defines ``_cat_registry_key`` and ``_registered`` (:class:`ConditionedModelMixin`).
    """

    def _store_training_reference(self) -> None:
        """Keep library sizes (or registered size factors), condition codes and batches."""
        manager = self.adata_manager
        registry = manager.data_registry
        if REGISTRY_KEYS.SIZE_FACTOR_KEY in registry:
            # size factors are validated positive; clipping them at 1 would bias DESeq-style
            # factors below 1
            sf = np.asarray(manager.get_from_registry(REGISTRY_KEYS.SIZE_FACTOR_KEY)).ravel()
            self.train_library_ = sf.astype(np.float64)
        else:
            X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
            self.train_library_ = np.maximum(row_sums(X), 1.0).astype(np.float64)
        codes = self._registered(self._cat_registry_key)
        if codes is None:
            codes = np.zeros((len(self.train_library_), 0))
        self.train_codes_ = codes.astype(np.int32)  # -1 = missing label (never matched)
        batch = np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
        self.train_batch_ = batch.astype(np.int64)
        batch_state = manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
        self.batch_categories_ = [str(c) for c in batch_state.categorical_mapping]
        self.batch_key_ = manager.registry["setup_args"].get("batch_key")
        self.var_names_ = np.asarray(self.adata.var_names, dtype=str)

    def _initialize_prior_from_data(self, max_cells: int = 5000) -> None:
        """Data-dependent prior initialisation (VampPrior pseudo-inputs at real cells).

        Overwritten by the saved weights on load.
        """
        if not self.module.prior.needs_data_init:
            return
        X = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(X.shape[0], size=min(max_cells, X.shape[0]), replace=False))
        rows = X[idx]
        rows = rows.toarray() if hasattr(rows, "toarray") else np.asarray(rows)
        x = torch.as_tensor(rows, dtype=torch.float32)
        self.module.prior.initialize_from_data(self.module.encoder_input(x))
