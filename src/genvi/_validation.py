"""Early, explicit checks of user input (raised before any training starts)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

_CHUNK_ROWS = 10_000


def check_anndata(adata) -> None:
    """Raise a clear error for objects that are not an AnnData (``adata.raw`` in particular)."""
    if isinstance(adata, AnnData):
        return
    if type(adata).__name__ == "Raw":
        raise TypeError(
            "Got `adata.raw`, which is not an AnnData. Pass `adata.raw.to_adata()` (the raw "
            "counts with the cells' obs) or the AnnData whose X / layer holds the counts."
        )
    raise TypeError(f"Expected an AnnData, got {type(adata).__name__}.")


def get_matrix(adata: AnnData, layer: str | None):
    """The expression matrix of ``adata`` (``X`` or ``layers[layer]``) with a clear error."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass `layer=` naming the layer that holds counts.")
        return adata.X
    if layer not in adata.layers:
        raise ValueError(
            f"Layer {layer!r} not found in adata.layers (available: {list(adata.layers)})."
        )
    return adata.layers[layer]


def _iter_values(X) -> np.ndarray:
    """Yield the stored values of X in row chunks, without densifying the whole matrix."""
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        block = X[start : start + _CHUNK_ROWS]
        if sparse.issparse(block):
            yield np.asarray(block.data if hasattr(block, "data") else block.tocsr().data)
        else:
            yield np.asarray(block).ravel()


def row_sums(X) -> np.ndarray:
    """Per-cell totals of a dense, sparse or backed (on-disk) matrix, read in row chunks.

    Memory: one chunk of rows at a time; a backed matrix is never loaded whole.
    """
    if isinstance(X, np.ndarray) or sparse.issparse(X):
        return np.asarray(X.sum(1), dtype=np.float64).ravel()
    out = np.empty(X.shape[0], dtype=np.float64)
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        block = X[start : start + _CHUNK_ROWS]
        out[start : start + block.shape[0]] = np.asarray(block.sum(1), dtype=np.float64).ravel()
    return out


def check_finite(X, what: str = "the expression matrix") -> None:
    """Raise if X holds NaN or infinite values."""
    for values in _iter_values(X):
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"{what} contains NaN or infinite values. Remove or impute them before "
                "setup_anndata (e.g. `adata = adata[np.isfinite(adata.X.sum(1)).A1]`)."
            )


def check_counts(X, what: str = "the expression matrix") -> None:
    """Raise if X holds negative or non-integer values (count likelihoods need raw counts)."""
    for values in _iter_values(X):
        if np.any(values < 0):
            raise ValueError(
                f"{what} contains negative values, but gene_likelihood is a count model. Pass "
                "raw counts (e.g. `layer='counts'`) or use gene_likelihood='normal' for "
                "log-scale or scaled data."
            )
        if np.any(values != np.round(values)):
            raise ValueError(
                f"{what} contains non-integer values, but gene_likelihood is a count model "
                "(nb/zinb/poisson). Pass raw integer counts (e.g. `layer='counts'`; data that "
                "were normalised or log-transformed are not counts) or use "
                "gene_likelihood='normal'."
            )


def check_obs_columns(adata: AnnData, keys: Sequence[str], roles: str) -> None:
    """Check that each key is a column of ``adata.obs`` and plays only one of ``roles``."""
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise ValueError(
            f"Keys {missing} are not columns of adata.obs (available: {list(adata.obs.columns)})."
        )
    dup = sorted({k for k in keys if list(keys).count(k) > 1})
    if dup:
        raise ValueError(
            f"Keys {dup} are used more than once (as {roles}); each obs column can play one role."
        )


def check_obs_keys(
    adata: AnnData,
    condition_keys: Sequence[str],
    continuous_keys: Sequence[str],
    batch_key: str | None,
    size_factor_key: str | None,
    missing_labels: bool = False,
) -> None:
    """Check that every registered obs column exists, is used once and holds valid values.

    ``missing_labels=True`` (DisentVI's attributes) allows NaN categorical labels, which the
    model imputes; continuous values and batches may never be missing.
    """
    all_keys = [*condition_keys, *continuous_keys]
    all_keys += [k for k in (batch_key, size_factor_key) if k is not None]
    check_obs_columns(
        adata, all_keys, "categorical condition, continuous condition, batch or size factor"
    )
    labels = [] if missing_labels else list(condition_keys)
    for key in [*labels, *([batch_key] if batch_key else [])]:
        n_nan = int(pd.isna(adata.obs[key]).sum())
        if n_nan:
            raise ValueError(
                f"obs[{key!r}] has {n_nan} missing (NaN) values. Fill them with an explicit "
                f"category (e.g. `adata.obs[{key!r}] = adata.obs[{key!r}].astype(object)"
                ".fillna('unknown').astype('category')`) or drop those cells."
            )
    for key in [*continuous_keys, *([size_factor_key] if size_factor_key else [])]:
        col = adata.obs[key]
        if not pd.api.types.is_numeric_dtype(col):
            raise ValueError(
                f"obs[{key!r}] must be numeric to be a continuous condition or ordered attribute "
                f"(dtype {col.dtype}); list it as categorical if it is a label."
            )
        values = col.to_numpy(dtype=float)
        if not np.all(np.isfinite(values)):
            raise ValueError(
                f"obs[{key!r}] has {int((~np.isfinite(values)).sum())} missing (NaN) or infinite "
                "values; continuous conditions and ordered attributes cannot be missing. Impute "
                "or drop those cells, or make it categorical."
            )
    if size_factor_key is not None and np.any(adata.obs[size_factor_key].to_numpy() <= 0):
        raise ValueError(f"obs[{size_factor_key!r}] must be strictly positive size factors.")


def same_genes_other_order(adata: AnnData, var_names: Sequence[str]) -> bool:
    """Whether ``adata`` has exactly the model's genes, in another order."""
    var_names = pd.Index(var_names)
    return (
        adata.n_vars == len(var_names)
        and not np.array_equal(adata.var_names, var_names)
        and pd.Index(adata.var_names).is_unique
        and set(adata.var_names) == set(var_names)
    )


def check_genes(adata: AnnData, var_names: Sequence[str]) -> None:
    """Raise if ``adata`` does not have exactly the model's genes in the model's order."""
    var_names = pd.Index(var_names)
    if adata.n_vars == len(var_names) and np.array_equal(adata.var_names, var_names):
        return
    if same_genes_other_order(adata, var_names):
        raise ValueError(
            "This AnnData has the model's genes in a different order. Reorder them as in "
            "training: `adata = adata[:, model.adata.var_names].copy()`."
        )
    missing = var_names.difference(adata.var_names)
    extra = pd.Index(adata.var_names).difference(var_names)
    hint = (
        "Subset the genes to the model's: `adata = adata[:, model.adata.var_names].copy()`."
        if len(missing) == 0
        else "The data lack genes the model was trained on; it cannot be scored by this model."
    )
    raise ValueError(
        f"The genes of this AnnData ({adata.n_vars}) do not match the model's "
        f"({len(var_names)}): {len(missing)} missing (e.g. {list(missing[:5])}), "
        f"{len(extra)} unexpected (e.g. {list(extra[:5])}). {hint}"
    )
