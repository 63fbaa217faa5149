"""PCA space of a model's training cells' expression, for the ``"expression"`` outlier score."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA

#: components of the space: as many as the models' default latent, fixed before the real-data
#: runs of issue #15 (``benchmarks/outlier_probe.py``: 5-20 components were within 0.02 AUROC on
#: pbmc3k, 50 fell to 0.85)
N_COMPONENTS = 10
#: highly variable genes, as in the benchmarks' reference space
N_TOP_GENES = 2000


class ExpressionSpace:
    """Log-normalised expression of the most variable genes, projected on their first PCs.

    Fitted on a model's training cells. Count data go through
    :class:`genvi.metrics.ReferenceSpace` (``seurat_v3`` genes, counts per 10,000, ``log1p``,
    PCA). Log-scale data (``gene_likelihood="normal"``) are used as they are: the genes with
    the largest variance, centred, PCA.

    Parameters
    ----------
    counts
        Whether the data are counts (else already log-scale).
    n_comps
        Number of principal components.
    seed
        Seed of the PCA solver.
    """

    def __init__(self, counts: bool, n_comps: int = N_COMPONENTS, seed: int = 0) -> None:
        self.counts = counts
        self.n_comps = n_comps
        self.seed = seed

    def fit(self, X: np.ndarray | sp.spmatrix, var_names: pd.Index) -> ExpressionSpace:
        """Fit the space on the training cells' data ``X`` (cells x genes)."""
        if self.counts:
            from genvi.metrics import ReferenceSpace

            self._space = ReferenceSpace.fit(
                self._anndata(X, var_names),
                n_top_genes=N_TOP_GENES,
                n_comps=self.n_comps,
                seed=self.seed,
            )
            return self
        var = _column_variances(X)
        keep = np.sort(np.argsort(-var, kind="stable")[:N_TOP_GENES])
        data = _dense(X[:, keep])
        n_comps = min(self.n_comps, data.shape[0] - 1, data.shape[1] - 1)
        self._genes, self._mean = keep, data.mean(0)
        self._pca = PCA(n_components=n_comps, random_state=self.seed).fit(data - self._mean)
        return self

    def transform(self, X: np.ndarray | sp.spmatrix, var_names: pd.Index) -> np.ndarray:
        """Coordinates of cells ``X`` (same genes, same order as at :meth:`fit`)."""
        if self.counts:
            return self._space.transform(self._anndata(X, var_names))
        return self._pca.transform(_dense(X[:, self._genes]) - self._mean)

    @staticmethod
    def _anndata(X: np.ndarray | sp.spmatrix, var_names: pd.Index) -> ad.AnnData:
        # a fresh AnnData around the data (not copied): the user's object is never touched
        X = sp.csr_matrix(X) if sp.issparse(X) else np.asarray(X)
        return ad.AnnData(X=X, var=pd.DataFrame(index=pd.Index(var_names, dtype=str)))


def _dense(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float64)


def _column_variances(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        mean = np.asarray(X.mean(0)).ravel()
        return np.asarray(X.multiply(X).mean(0)).ravel() - mean**2
    return np.asarray(X, dtype=np.float64).var(0)
