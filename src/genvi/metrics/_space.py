"""Reference PCA space fitted on real training cells."""

from __future__ import annotations

import importlib.util
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.decomposition import PCA

from genvi._threads import keep_torch_threads

#: loess spans tried in turn for scanpy's seurat_v3 gene selection (0.3: scanpy's default)
HVG_SPANS = (0.3, 0.5, 1.0)
#: what skmisc's loess says when its fit is singular
_LOESS_FAILURES = ("singular", "reciprocal condition number")


def _get_counts(adata: ad.AnnData, layer: str | None) -> np.ndarray | sp.spmatrix | sp.sparray:
    """Return the count matrix of ``adata`` (``X`` or ``layers[layer]``) without copying it."""
    if layer is None:
        counts = adata.X
        where = "adata.X"
    else:
        if layer not in adata.layers:
            raise KeyError(f"Layer {layer!r} not found; available layers: {list(adata.layers)}.")
        counts = adata.layers[layer]
        where = f"adata.layers[{layer!r}]"
    if counts is None:
        raise ValueError(f"{where} is empty; expected raw counts.")
    if not sp.issparse(counts):
        counts = np.asarray(counts)
    data = counts.data if sp.issparse(counts) else counts
    if data.size and np.nanmin(data) < 0:
        raise ValueError(f"{where} contains negative values; expected raw (non-negative) counts.")
    return counts


def _check_unique_genes(adata: ad.AnnData) -> None:
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"var_names must be unique to match genes by name; duplicated e.g. {dup}. "
            "Call `adata.var_names_make_unique()` on a copy first."
        )


def _normalize_log1p(
    counts: np.ndarray | sp.spmatrix | sp.sparray,
    totals: np.ndarray,
    target_sum: float,
    dense: bool = True,
) -> np.ndarray | sp.csr_matrix:
    """``log1p(counts / totals * target_sum)``; cells with zero total stay at zero.

    Dense output unless ``dense=False`` and ``counts`` is sparse.
    """
    # Zero-count cells are left at zero, as scanpy's normalize_total does, instead of NaN.
    scale = np.divide(
        target_sum, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0
    )
    if sp.issparse(counts):
        scaled = sp.csr_matrix(sp.diags(scale) @ counts.astype(np.float64))
        return np.log1p(scaled.toarray()) if dense else scaled.log1p()
    return np.log1p(np.asarray(counts, dtype=np.float64) * scale[:, None])


def _has_skmisc() -> bool:
    """Whether scikit-misc (needed by scanpy's ``seurat_v3`` flavor) is importable."""
    return importlib.util.find_spec("skmisc") is not None


def _select_hvgs(
    counts: np.ndarray | sp.spmatrix | sp.sparray,
    var_names: pd.Index,
    n_top_genes: int,
    target_sum: float,
) -> tuple[np.ndarray, str]:
    """Boolean mask of highly variable genes and the scanpy flavor used to pick them."""
    n_genes = counts.shape[1]
    if n_genes <= n_top_genes:
        return np.ones(n_genes, dtype=bool), "all"
    # scanpy is imported here only: it is slow to import and only needed to pick genes.
    import scanpy as sc

    # A fresh AnnData so that scanpy's in-place annotations never touch the caller's object.
    # seurat_v3 only reads X, so the counts are shared rather than copied (large data);
    # csr_matrix because scanpy 1.11's count checks reject the newer scipy sparse arrays.
    x = sp.csr_matrix(counts) if sp.issparse(counts) else np.asarray(counts)
    tmp = ad.AnnData(X=x, var=pd.DataFrame(index=var_names.copy()))
    if _has_skmisc():
        # seurat_v3's loess fit of log variance on log mean fails on very sparse data (many
        # genes share the same mean and variance, e.g. cells of a few hundred counts over
        # 14,000 genes): widen its span, scanpy's remedy, then fall back to "seurat" below
        for span in HVG_SPANS:
            try:
                with keep_torch_threads():
                    sc.pp.highly_variable_genes(
                        tmp, flavor="seurat_v3", n_top_genes=n_top_genes, span=span
                    )
            except ValueError as err:  # skmisc's loess: "... near singularities ...", etc.
                if not any(m in str(err) for m in _LOESS_FAILURES):
                    raise
                continue
            flavor = "seurat_v3" if span == HVG_SPANS[0] else f"seurat_v3 (span {span})"
            return tmp.var["highly_variable"].to_numpy(dtype=bool), flavor
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    # Kept sparse: the full cells x genes matrix may not fit in memory densely.
    tmp.X = _normalize_log1p(counts, totals, target_sum, dense=False)
    with keep_torch_threads():
        sc.pp.highly_variable_genes(tmp, flavor="seurat", n_top_genes=n_top_genes)
    return tmp.var["highly_variable"].to_numpy(dtype=bool), "seurat"


class ReferenceSpace:
    """PCA space of log-normalised expression, fitted on real training cells.

    Generated and real held-out cells are compared in this fixed space so that every model is
    judged by the same coordinates, which do not depend on the generated data. Build it with
    :meth:`ReferenceSpace.fit`.

    Parameters
    ----------
    genes
        Names of the selected (highly variable) genes, in the column order of the space.
    mean
        Per-gene mean of the log-normalised training cells, shape ``(n_genes,)``.
    components
        PCA loadings, shape ``(n_comps, n_genes)``.
    target_sum
        Library size each cell is scaled to before ``log1p``.
    explained_variance_ratio
        Fraction of the training variance explained by each component.
    hvg_flavor
        How genes were chosen: ``"seurat_v3"``, ``"seurat"`` or ``"all"``.
    totals_over
        Genes whose sum is a cell's library size: ``"all"`` genes of the AnnData being
        normalised, or only the space's ``"reference"`` genes.

    Attributes
    ----------
    n_comps
        Number of principal components.
    n_genes
        Number of genes in the space.
    """

    def __init__(
        self,
        genes: pd.Index | list[str],
        mean: np.ndarray,
        components: np.ndarray,
        target_sum: float,
        explained_variance_ratio: np.ndarray | None = None,
        hvg_flavor: str = "unknown",
        totals_over: Literal["all", "reference"] = "all",
    ) -> None:
        self.genes = pd.Index(genes, dtype=str)
        self.mean_ = np.asarray(mean, dtype=np.float64)
        self.components_ = np.asarray(components, dtype=np.float64)
        self.target_sum = float(target_sum)
        self.explained_variance_ratio_ = (
            None
            if explained_variance_ratio is None
            else np.asarray(explained_variance_ratio, dtype=np.float64)
        )
        self.hvg_flavor = hvg_flavor
        if totals_over not in ("all", "reference"):
            raise ValueError(f"`totals_over` must be 'all' or 'reference', got {totals_over!r}.")
        self.totals_over = totals_over
        if self.components_.ndim != 2 or self.components_.shape[1] != len(self.genes):
            raise ValueError("`components` must have shape (n_comps, len(genes)).")
        if self.mean_.shape != (len(self.genes),):
            raise ValueError("`mean` must have shape (len(genes),).")

    @property
    def n_comps(self) -> int:
        return int(self.components_.shape[0])

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def __repr__(self) -> str:
        return (
            f"ReferenceSpace(n_genes={self.n_genes}, n_comps={self.n_comps}, "
            f"target_sum={self.target_sum:g}, hvg_flavor={self.hvg_flavor!r}, "
            f"totals_over={self.totals_over!r})"
        )

    @classmethod
    def fit(
        cls,
        adata_train: ad.AnnData,
        n_top_genes: int = 2000,
        n_comps: int = 50,
        target_sum: float = 1e4,
        layer: str | None = None,
        seed: int = 0,
        totals_over: Literal["all", "reference"] = "all",
    ) -> ReferenceSpace:
        """Fit the space on real training cells.

        Genes are selected with ``sc.pp.highly_variable_genes(flavor="seurat_v3")`` on the
        counts when scikit-misc is importable, else with ``flavor="seurat"`` on log-normalised
        data; when there are at most ``n_top_genes`` genes, all are kept. Cells are then
        normalised to ``target_sum`` (total over all genes by default), ``log1p``-transformed,
        centred with the training mean and projected by PCA.

        Parameters
        ----------
        adata_train
            Real training cells with raw counts in ``X`` (dense or sparse) or in ``layer``.
            Not modified.
        n_top_genes
            Number of highly variable genes.
        n_comps
            Number of principal components, capped at ``min(n_cells - 1, n_genes - 1)``.
        target_sum
            Library size each cell is scaled to before ``log1p``.
        layer
            Layer holding the counts; ``None`` uses ``X``.
        seed
            Seed of the (possibly randomised) PCA solver.
        totals_over
            ``"all"`` (the protocol): a cell's library size is its total over all genes of the
            AnnData being normalised. ``"reference"``: its total over the selected genes only,
            for generators that output only those genes (with ``"all"`` such cells would be
            scaled up and look far from real cells).

        Returns
        -------
        ReferenceSpace
            The fitted space.
        """
        _check_unique_genes(adata_train)
        counts = _get_counts(adata_train, layer)
        n_cells, n_genes = counts.shape
        if n_cells < 3 or n_genes < 2:
            raise ValueError(f"Need at least 3 cells and 2 genes, got {n_cells} x {n_genes}.")
        if n_top_genes < 2 or n_comps < 1:
            raise ValueError("`n_top_genes` must be >= 2 and `n_comps` >= 1.")

        mask, flavor = _select_hvgs(counts, adata_train.var_names, n_top_genes, target_sum)
        genes = adata_train.var_names[mask]
        hvg_counts = counts[:, np.flatnonzero(mask)]
        totals = np.asarray(
            (counts if totals_over == "all" else hvg_counts).sum(axis=1), dtype=np.float64
        ).ravel()
        log_expr = _normalize_log1p(hvg_counts, totals, target_sum)

        n_comps = min(n_comps, n_cells - 1, len(genes) - 1)
        pca = PCA(n_components=n_comps, random_state=seed)
        pca.fit(log_expr)
        return cls(
            genes=genes,
            mean=log_expr.mean(axis=0),
            components=pca.components_,
            target_sum=target_sum,
            explained_variance_ratio=pca.explained_variance_ratio_,
            hvg_flavor=flavor,
            totals_over=totals_over,
        )

    def _reference_counts(
        self, adata: ad.AnnData, layer: str | None
    ) -> tuple[np.ndarray | sp.spmatrix | sp.sparray, np.ndarray]:
        """Counts of the space's genes (in its order) and each cell's library size."""
        _check_unique_genes(adata)
        idx = adata.var_names.get_indexer(self.genes)
        if (idx < 0).any():
            missing = self.genes[idx < 0]
            shown = ", ".join(map(str, missing[:10]))
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise ValueError(
                f"{len(missing)} of the {self.n_genes} reference genes are missing from adata: "
                f"{shown}{more}."
            )
        counts = _get_counts(adata, layer)
        ref_counts = counts[:, idx]
        totals = np.asarray(
            (counts if self.totals_over == "all" else ref_counts).sum(axis=1), dtype=np.float64
        ).ravel()
        return ref_counts, totals

    def library_sizes(self, adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
        """Each cell's library size as :meth:`log_normalize` divides by it.

        The total count over all genes of ``adata``, or over the space's genes if
        ``totals_over="reference"``.

        Parameters
        ----------
        adata
            Cells with raw counts in ``X`` or ``layer``; must contain every gene of the space.
        layer
            Layer holding the counts; ``None`` uses ``X``.

        Returns
        -------
        numpy.ndarray
            Array of shape ``(n_cells,)``.
        """
        return self._reference_counts(adata, layer)[1]

    def log_normalize(self, adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
        """Log-normalised expression of the space's genes.

        Each cell is divided by its total count over *all* genes of ``adata`` (or over the
        space's genes if ``totals_over="reference"``), multiplied by ``target_sum`` and
        ``log1p``-transformed; the space's genes are taken by name. With ``"all"``, cells of a
        generator that outputs only a subset of genes have smaller totals than full real cells
        and are normalised differently.

        Parameters
        ----------
        adata
            Cells with raw counts in ``X`` or ``layer``; must contain every gene of the space
            (any order, extra genes allowed). Not modified.
        layer
            Layer holding the counts; ``None`` uses ``X``.

        Returns
        -------
        numpy.ndarray
            Dense array of shape ``(n_cells, n_genes)``, columns in the order of ``genes``.
        """
        ref_counts, totals = self._reference_counts(adata, layer)
        return _normalize_log1p(ref_counts, totals, self.target_sum)

    def top_expressed(self, n: int = 200) -> np.ndarray:
        """Column indices of the ``n`` genes with the highest mean training expression.

        The ranking uses the stored training mean of log-normalised expression, so it does not
        depend on the cells being evaluated (ties keep the space's gene order).

        Parameters
        ----------
        n
            Number of genes; all genes if the space has fewer.

        Returns
        -------
        numpy.ndarray
            Integer indices into :attr:`genes`, most expressed first.
        """
        if n < 1:
            raise ValueError(f"`n` must be at least 1, got {n}.")
        return np.argsort(-self.mean_, kind="stable")[:n]

    def project(self, log_expr: np.ndarray) -> np.ndarray:
        """Project log-normalised expression (from :meth:`log_normalize`) onto the PCs.

        Parameters
        ----------
        log_expr
            Array of shape ``(n_cells, n_genes)`` with columns in the order of ``genes``.

        Returns
        -------
        numpy.ndarray
            Array of shape ``(n_cells, n_comps)``, centred with the training mean.
        """
        log_expr = np.asarray(log_expr, dtype=np.float64)
        if log_expr.ndim != 2 or log_expr.shape[1] != self.n_genes:
            raise ValueError(f"Expected an array of shape (n_cells, {self.n_genes}).")
        return (log_expr - self.mean_) @ self.components_.T

    def transform(self, adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
        """Coordinates of cells in the reference PCA space.

        Parameters
        ----------
        adata
            Cells with raw counts in ``X`` or ``layer``; see :meth:`log_normalize`.
        layer
            Layer holding the counts; ``None`` uses ``X``.

        Returns
        -------
        numpy.ndarray
            Array of shape ``(n_cells, n_comps)``.
        """
        return self.project(self.log_normalize(adata, layer=layer))
