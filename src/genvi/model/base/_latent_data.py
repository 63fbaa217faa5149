"""Minibatches of a base model's latents and the cells' conditions, for Lightning."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from genvi._constants import GENVI_REGISTRY_KEYS
from genvi.module._latent_prior import LATENT_LOC_KEY, LATENT_SCALE_KEY


class _LatentDataset(Dataset):
    """Rows of in-memory tensors, fetched a whole minibatch at a time.

    ``DataLoader`` calls :meth:`__getitems__` with the minibatch's indices (PyTorch >= 2.0),
    so a batch costs one indexing operation per tensor instead of one dictionary per cell
    and a collation. Samplers (shuffling, Lightning's ``DistributedSampler``) still work on
    cell indices, so minibatches hold the same cells in the same order as before.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.n = next(iter(tensors.values())).shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[idx] for k, v in self.tensors.items()}


def _as_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collation of :meth:`_LatentDataset.__getitems__` output: already a batch."""
    return batch


class LatentDataModule(pl.LightningDataModule):
    """Train/validation split of per-cell latents (posterior means and scales) and conditions.

    Latents are small (cells x n_latent), so they are held in memory whatever the size of
    the count matrix. Under DDP, Lightning shards these plain ``DataLoader`` s itself.

    Parameters
    ----------
    loc, scale
        Posterior means and standard deviations, ``(n_cells, n_latent)``.
    cat, cont
        Condition codes and continuous values (``None`` when absent).
    train_size
        Fraction of cells used for training; the rest is validation.
    batch_size
        Minibatch size.
    seed
        Seed of the split.
    """

    def __init__(
        self,
        loc: np.ndarray,
        scale: np.ndarray,
        cat: np.ndarray | None,
        cont: np.ndarray | None,
        train_size: float = 0.9,
        batch_size: int = 256,
        seed: int = 0,
    ):
        super().__init__()
        if not 0 < train_size <= 1:
            raise ValueError(f"train_size must lie in (0, 1], got {train_size}.")
        tensors = {
            LATENT_LOC_KEY: torch.as_tensor(loc, dtype=torch.float32),
            LATENT_SCALE_KEY: torch.as_tensor(scale, dtype=torch.float32),
        }
        if cat is not None:
            tensors[GENVI_REGISTRY_KEYS.COND_CAT_KEY] = torch.as_tensor(cat, dtype=torch.long)
        if cont is not None:
            tensors[GENVI_REGISTRY_KEYS.COND_CONT_KEY] = torch.as_tensor(cont, dtype=torch.float32)
        n = len(loc)
        perm = np.random.default_rng(seed).permutation(n)
        n_train = max(1, min(n, int(round(train_size * n))))
        self.train_idx = np.sort(perm[:n_train])
        self.val_idx = np.sort(perm[n_train:])
        self.test_idx = np.array([], dtype=int)
        self.n_train, self.n_val = len(self.train_idx), len(self.val_idx)
        self.batch_size = batch_size
        self._train = _LatentDataset({k: v[self.train_idx] for k, v in tensors.items()})
        self._val = _LatentDataset({k: v[self.val_idx] for k, v in tensors.items()})

    def train_dataloader(self) -> DataLoader:
        # drop a last batch of one cell: it adds noise and nothing else
        drop_last = self.n_train % self.batch_size == 1
        return DataLoader(
            self._train,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=drop_last,
            collate_fn=_as_batch,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.n_val == 0:
            return []
        return DataLoader(self._val, batch_size=self.batch_size, collate_fn=_as_batch)
