"""Per-cell likelihoods and outlier scores of the count VAEs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from tqdm.auto import tqdm

from genvi._validation import row_sums


class LikelihoodMixin:
    """Importance-sampled :meth:`get_log_likelihood` and the per-count :meth:`score_outliers`."""

    @torch.inference_mode()
    def get_log_likelihood(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 100,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> np.ndarray:
        """Per-cell importance-weighted estimate of log p(x | c).

        Low values flag cells the model finds implausible for their condition (outliers,
        unseen populations). Values scale with sequencing depth: compare cells of similar
        library size, or use the depth-free :meth:`score_outliers`.

        Parameters
        ----------
        adata
            Cells to score (the training data by default); same genes as the model.
        indices
            Subset of cells.
        n_samples
            Importance samples per cell.
        batch_size
            Cells per forward pass.
        progress
            Show a progress bar over minibatches.

        Returns
        -------
        Array of shape ``(n_cells,)``.
        """
        adata = self._validate_anndata(adata)
        self.module.eval()
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        if progress:  # only then: wrapping the loader in tqdm moves the random stream
            loader = tqdm(loader, desc="log-likelihood")
        out = [
            self.module.marginal_ll(tensors, n_mc_samples=n_samples).cpu().numpy()
            for tensors in loader
        ]
        return np.concatenate(out)

    def score_outliers(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 100,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Per-cell outlier scores: negative log-likelihood per count (per gene for ``normal``).

        :meth:`get_log_likelihood` grows in magnitude with sequencing depth (a deep cell has
        more counts to explain), so raw values flag deep cells. Dividing by the cell's total
        count gives the average surprise per observed molecule; higher means less plausible
        for the cell's condition under the model. This removes the linear growth with depth,
        not all depth dependence: on real data the per-count score tends to fall with depth,
        so compare cells of similar library size.

        Read the scores relative to held-out cells the model should find typical (e.g. flag
        cells above their 99th percentile); absolute values depend on the dataset and genes.

        Parameters
        ----------
        adata
            Cells to score (the training data by default); same genes as the model.
        indices
            Subset of cells.
        n_samples
            Importance samples per cell.
        batch_size
            Cells per forward pass.

        Returns
        -------
        Array of shape ``(n_cells,)``.
        """
        ll = self.get_log_likelihood(adata, indices, n_samples, batch_size)
        if self.module.gene_likelihood == "normal":  # no counts: per gene instead
            return -ll / len(self.var_names_)
        adata = self._validate_anndata(adata)
        X = self.get_anndata_manager(adata, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)
        totals = row_sums(X)
        if indices is not None:
            totals = totals[np.asarray(indices)]
        return -ll / np.maximum(totals, 1.0)
