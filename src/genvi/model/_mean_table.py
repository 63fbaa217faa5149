"""MeanTable: a mean predictor that looks conditions up in a table of expression profiles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse


class MeanTable:
    """Expected expression of each condition, read from a table (a lookup predictor).

    Use it to wrap predictions made elsewhere (a foundation model run on another machine,
    CPA's or scGen's point predictions, published pseudo-bulk profiles) for
    :class:`~genvi.model.HybridVI`: one row per combination of categorical condition values,
    one column per gene, expected expression per 1e4 counts. A table is saved inside the
    model file (arrays and strings only). Conditions are matched exactly, so continuous keys
    need a function instead (or :class:`~genvi.model.AdditiveMeanModel`).

    Parameters
    ----------
    table
        Rows indexed by the condition values (a MultiIndex whose level names are the
        condition keys, or an Index named after the single key), columns the genes; finite,
        non-negative values.

    Examples
    --------
    >>> table = genvi.model.MeanTable.from_cells(train, ["cell_type", "condition"])
    >>> table = table.with_rows(my_predictions)  # e.g. the stimulated B cells
    >>> model = genvi.model.HybridVI(adata, mean_predictor=table)
    """

    def __init__(self, table: pd.DataFrame):
        if not isinstance(table, pd.DataFrame):
            raise TypeError(f"MeanTable needs a DataFrame, got {type(table).__name__}.")
        keys = list(table.index.names)
        if any(k is None for k in keys):
            raise ValueError(
                "Name the index levels of the table after the condition keys, e.g. "
                "table.index.names = ['cell_type', 'condition']."
            )
        values = np.asarray(table.to_numpy(), dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError("A MeanTable needs finite, non-negative expression values.")
        index = [_row_key(v) for v in table.index]
        dup = sorted({k for k in index if index.count(k) > 1})
        if dup:
            raise ValueError(f"The table has duplicate conditions: {dup[:5]}.")
        self.keys = [str(k) for k in keys]
        self.var_names = np.asarray(table.columns.astype(str), dtype=str)
        self.values = values
        self.index = index
        self._rows = {k: i for i, k in enumerate(index)}

    @classmethod
    def from_cells(
        cls,
        adata: AnnData,
        keys: Sequence[str],
        layer: str | None = None,
        target_sum: float = 1e4,
    ) -> MeanTable:
        """Mean expression per ``target_sum`` counts of the cells of each condition.

        Parameters
        ----------
        adata
            Cells with raw counts in ``X`` (or ``layer``) and the condition columns.
        keys
            Categorical condition columns.
        layer
            Layer holding counts.
        target_sum
            Counts per cell after normalisation.
        """
        keys = [keys] if isinstance(keys, str) else list(keys)
        x = adata.X if layer is None else adata.layers[layer]
        totals = np.maximum(np.asarray(x.sum(1), dtype=np.float64).ravel(), 1.0)
        norm = sparse.diags(target_sum / totals) @ sparse.csr_matrix(x)
        labels = adata.obs[keys].astype(str).agg("\x1f".join, axis=1).to_numpy()
        uniq, inverse = np.unique(labels, return_inverse=True)
        size = np.bincount(inverse)
        indicator = sparse.csr_matrix(
            (1.0 / size[inverse], (inverse, np.arange(len(inverse)))),
            shape=(len(uniq), len(inverse)),
        )
        means = np.asarray((indicator @ norm).toarray(), dtype=np.float64)
        index = pd.MultiIndex.from_tuples([tuple(u.split("\x1f")) for u in uniq], names=keys)
        if len(keys) == 1:
            index = pd.Index(index.get_level_values(0), name=keys[0])
        return cls(pd.DataFrame(means, index=index, columns=adata.var_names.astype(str)))

    @property
    def table(self) -> pd.DataFrame:
        """The table as a DataFrame (conditions x genes)."""
        if len(self.keys) == 1:
            index = pd.Index([k[0] for k in self.index], name=self.keys[0])
        else:
            index = pd.MultiIndex.from_tuples(self.index, names=self.keys)
        return pd.DataFrame(self.values, index=index, columns=self.var_names)

    def with_rows(self, rows: pd.DataFrame) -> MeanTable:
        """A new table with ``rows`` added (replacing existing rows of the same conditions)."""
        rows = rows.reindex(columns=self.var_names)
        if rows.isna().to_numpy().any():
            raise ValueError("The new rows lack some of the table's genes.")
        old = self.table
        rows.index = rows.index.set_names(old.index.names)
        keep = ~old.index.isin(rows.index)
        return MeanTable(pd.concat([old[keep], rows]))

    def predict(self, obs: pd.DataFrame) -> np.ndarray:
        """Expression ``(len(obs), n_genes)`` of each row's conditions (looked up)."""
        missing = [k for k in self.keys if k not in obs.columns]
        if missing:
            raise ValueError(
                f"MeanTable needs the condition column(s) {missing}; obs has {list(obs.columns)}."
            )
        wanted = [_row_key(r) for r in obs[self.keys].itertuples(index=False, name=None)]
        unknown = sorted({k for k in wanted if k not in self._rows})
        if unknown:
            raise ValueError(
                f"MeanTable has no row for condition(s) {unknown[:5]} (keys {self.keys}); it "
                f"knows {self.index[:10]}{' ...' if len(self.index) > 10 else ''}. Add the "
                "rows (MeanTable.with_rows) or use a predictor that covers these conditions."
            )
        return self.values[[self._rows[k] for k in wanted]]

    __call__ = predict

    def to_state(self) -> dict[str, Any]:
        """Plain arrays and strings (genvi's safe model files store these)."""
        return {
            "keys": list(self.keys),
            "index": [list(k) for k in self.index],
            "var_names": np.asarray(self.var_names, dtype=str),
            "values": np.asarray(self.values, dtype=np.float64),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MeanTable:
        """Rebuild a table from :meth:`to_state`."""
        keys = [str(k) for k in state["keys"]]
        rows = [tuple(str(v) for v in r) for r in state["index"]]
        if len(keys) == 1:
            index = pd.Index([r[0] for r in rows], name=keys[0])
        else:
            index = pd.MultiIndex.from_tuples(rows, names=keys)
        values = np.asarray(state["values"], dtype=np.float64).reshape(len(rows), -1)
        return cls(pd.DataFrame(values, index=index, columns=list(state["var_names"])))

    def __repr__(self) -> str:
        n_rows, n_genes = self.values.shape
        return f"MeanTable(keys={self.keys}, conditions={n_rows}, genes={n_genes})"


def _row_key(value) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, tuple) else (str(value),)
