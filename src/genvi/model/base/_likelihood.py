"""Per-cell likelihoods and outlier scores of the count VAEs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from tqdm.auto import tqdm

from genvi._validation import row_sums
from genvi.model.base._novelty import NoveltyMixin


class LikelihoodMixin(NoveltyMixin):
    """Importance-sampled :meth:`get_log_likelihood` and the ``"per_count"`` outlier score."""

    _outlier_kinds = ("expression", "knn", "per_count")

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
        library size, or use :meth:`score_outliers`.

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

    def _other_outlier_scores(
        self,
        kind: str,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        n_samples: int | None,
        batch_size: int | None,
    ) -> np.ndarray:
        """``kind="per_count"``: negative log-likelihood per count (per gene for ``normal``).

        :meth:`get_log_likelihood` grows in magnitude with sequencing depth (a deep cell has
        more counts to explain), so raw values flag deep cells. Dividing by the cell's total
        count gives the average surprise per observed molecule. This removes the linear growth
        with depth, not all depth dependence: on real data the per-count score tends to fall
        with depth, and it separated unseen cell types near chance (issue #15).
        """
        if kind != "per_count":
            return super()._other_outlier_scores(kind, adata, indices, n_samples, batch_size)
        kwargs = {} if n_samples is None else {"n_samples": n_samples}
        ll = self.get_log_likelihood(adata, indices, batch_size=batch_size, **kwargs)
        if self.module.gene_likelihood == "normal":  # no counts: per gene instead
            return -ll / len(self.var_names_)
        adata = self._validate_anndata(adata)
        X = self.get_anndata_manager(adata, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)
        totals = row_sums(X)
        if indices is not None:
            totals = totals[np.asarray(indices)]
        return -ll / np.maximum(totals, 1.0)
