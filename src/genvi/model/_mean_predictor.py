"""Mean predictors: the protocol HybridVI accepts, checks of their output, and a cache.

A *mean predictor* is any object with ``predict(obs) -> array (n_rows, n_genes)`` (the
scikit-learn convention), or a plain callable ``f(obs)``, where ``obs`` is a
:class:`pandas.DataFrame` with one row per condition and one column per condition key
(categorical keys as pandas categoricals of the training categories, continuous keys as
floats), and the output is the expected expression per ``1e4`` counts of each row, one column
per gene of the model in the model's gene order. A predictor may declare its genes with a
``var_names`` attribute (or return a DataFrame whose columns are gene names); they are then
checked against the model's genes and reordered when only the order differs.

Only the relative expression of a row matters: each row is rescaled to proportions over the
model's genes (the unit "per 1e4 counts" is the convention, and what
:meth:`~genvi.model.HybridVI.predict_mean` returns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from genvi.model.base._conditions import ConditionSchema

#: Proportions below this are raised to it (a zero mean would make any count impossible).
MIN_PROPORTION = 1e-10
# rows kept in the cache of predicted log proportions (continuous conditions make many rows)
_MAX_CACHE_ROWS = 20_000
# conditions per call of the user's predictor
_CHUNK_ROWS = 4096


class MeanPredictorError(ValueError):
    """A mean predictor that fails or returns something HybridVI cannot use."""


def predictor_function(predictor: Any) -> Callable[[pd.DataFrame], Any]:
    """The function that predicts: ``predictor.predict`` or the callable itself."""
    fn = getattr(predictor, "predict", None)
    if callable(fn):
        return fn
    if callable(predictor):
        return predictor
    raise TypeError(
        f"mean_predictor must be 'auto', an object with a predict(obs) method (scikit-learn "
        f"convention) or a callable f(obs); got {type(predictor).__name__}. It maps a DataFrame "
        "of conditions (one row per condition, one column per condition key) to expected "
        "expression per 1e4 counts, shape (n_rows, n_genes), in the model's gene order."
    )


def predictor_name(predictor: Any) -> str:
    """A readable name of a predictor for messages."""
    return getattr(predictor, "__name__", None) or type(predictor).__name__


class MeanPredictorAdapter:
    """Calls a mean predictor on condition codes, checks its output and caches it.

    Parameters
    ----------
    predictor
        The mean predictor (see the module docstring).
    schema
        The model's conditions (keys and training categories).
    var_names
        The model's genes, in order.
    """

    def __init__(self, predictor: Any, schema: ConditionSchema, var_names: Sequence[str]):
        self.predictor = predictor
        self._fn = predictor_function(predictor)
        self.schema = schema
        self.var_names = pd.Index(np.asarray(var_names, dtype=str))
        self._order = self._declared_gene_order(getattr(predictor, "var_names", None))
        self._cache: dict[tuple, np.ndarray] = {}

    @property
    def name(self) -> str:
        """The predictor's name."""
        return predictor_name(self.predictor)

    # ------------------------------------------------------------------ genes
    def _declared_gene_order(self, genes) -> np.ndarray | None:
        """Column order taking declared genes to the model's order; error if they differ."""
        if genes is None:
            return None
        genes = pd.Index(np.asarray(genes, dtype=str))
        if genes.equals(self.var_names):
            return None
        missing = self.var_names.difference(genes)
        extra = genes.difference(self.var_names)
        if len(missing) or len(extra) or len(genes) != len(self.var_names):
            raise MeanPredictorError(
                f"The mean predictor ({self.name}) predicts other genes than the model's: "
                f"{len(missing)} of the model's {len(self.var_names)} genes are missing (e.g. "
                f"{list(missing[:5])}) and {len(extra)} are extra (e.g. {list(extra[:5])}). Give "
                "a predictor of exactly the model's genes (adata.var_names), or subset the "
                "AnnData to the predictor's genes before setup_anndata."
            )
        return genes.get_indexer(self.var_names)

    # ------------------------------------------------------------------ conditions
    def frame(self, cat: np.ndarray | None, cont: np.ndarray | None) -> pd.DataFrame:
        """The DataFrame of conditions a predictor receives, from codes and values."""
        cols: dict[str, Any] = {}
        for j, (key, cats) in enumerate(self.schema.categorical.items()):
            cols[key] = pd.Categorical.from_codes(np.asarray(cat[:, j], dtype=np.int64), cats)
        for j, key in enumerate(self.schema.continuous):
            cols[key] = np.asarray(cont[:, j], dtype=np.float64)
        n = next((a.shape[0] for a in (cat, cont) if a is not None), 0)
        return pd.DataFrame(cols, index=pd.RangeIndex(n))

    # ------------------------------------------------------------------ prediction
    def proportions(self, obs: pd.DataFrame) -> np.ndarray:
        """Checked proportions ``(n_rows, n_genes)`` (rows sum to 1) for a conditions frame."""
        out = []
        for start in range(0, len(obs), _CHUNK_ROWS):
            out.append(self._predict_chunk(obs.iloc[start : start + _CHUNK_ROWS]))
        return np.concatenate(out) if out else np.zeros((0, len(self.var_names)))

    def _predict_chunk(self, obs: pd.DataFrame) -> np.ndarray:
        try:
            raw = self._fn(obs.reset_index(drop=True))
        except Exception as err:  # noqa: BLE001 - any failure of user code gets context
            raise MeanPredictorError(
                f"The mean predictor ({self.name}) failed on the conditions "
                f"{_describe_rows(obs)}: {type(err).__name__}: {err}. HybridVI needs its mean "
                "for every condition it trains on, generates or transforms cells to; give a "
                "predictor that covers these conditions (e.g. mean_predictor='auto', "
                "genvi.model.AdditiveMeanModel, or add them to your genvi.model.MeanTable)."
            ) from err
        values = self._as_array(raw, len(obs))
        if not np.all(np.isfinite(values)):
            bad_rows = np.flatnonzero(~np.isfinite(values).all(1))
            bad_genes = self.var_names[~np.isfinite(values[bad_rows[0]])]
            raise MeanPredictorError(
                f"The mean predictor ({self.name}) returned NaN or infinite values for "
                f"{len(bad_rows)} condition(s), e.g. {_describe_rows(obs.iloc[bad_rows[:1]])} "
                f"(genes {list(bad_genes[:5])}). It must return finite expected expression; "
                "fix the predictor (or impute its missing genes) before using it."
            )
        if np.any(values < 0):
            bad_rows = np.flatnonzero((values < 0).any(1))
            raise MeanPredictorError(
                f"The mean predictor ({self.name}) returned negative values (min "
                f"{values.min():.4g}) for {len(bad_rows)} condition(s), e.g. "
                f"{_describe_rows(obs.iloc[bad_rows[:1]])}. It must return expected expression "
                "per 1e4 counts (>= 0), not log-scale or centred values: if it predicts "
                "log1p-normalised expression, wrap it as lambda obs: np.expm1(model.predict(obs))."
            )
        totals = values.sum(1, keepdims=True)
        if np.any(totals <= 0):
            bad_rows = np.flatnonzero(totals.ravel() <= 0)
            raise MeanPredictorError(
                f"The mean predictor ({self.name}) returned all-zero expression for "
                f"{_describe_rows(obs.iloc[bad_rows[:1]])}; every condition needs some "
                "expression."
            )
        return np.maximum(values / totals, MIN_PROPORTION)

    def _as_array(self, raw: Any, n_rows: int) -> np.ndarray:
        order = self._order
        if isinstance(raw, pd.DataFrame):
            columns = pd.Index(raw.columns.astype(str))
            if not columns.equals(self.var_names):
                order = self._declared_gene_order(columns)
            raw = raw.to_numpy()
        if hasattr(raw, "detach"):  # a torch tensor
            raw = raw.detach().cpu().numpy()
        try:
            values = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise MeanPredictorError(
                f"The mean predictor ({self.name}) returned {type(raw).__name__}, which is not a "
                "numeric array; it must return an array (n_rows, n_genes)."
            ) from err
        expected = (n_rows, len(self.var_names))
        if values.shape != expected:
            raise MeanPredictorError(
                f"The mean predictor ({self.name}) returned shape {values.shape} for {n_rows} "
                f"condition(s) and the model's {len(self.var_names)} genes; it must return "
                f"{expected}: one row per row of obs and one column per gene of the model, in "
                "adata.var_names order (declare its genes with a var_names attribute, or return "
                "a DataFrame with gene columns, to have them checked and reordered)."
            )
        return values if order is None else values[:, order]

    # ------------------------------------------------------------------ cached codes
    def log_proportions(
        self, cat: np.ndarray | None, cont: np.ndarray | None, n: int | None = None
    ) -> np.ndarray:
        """``log rho`` ``(n, n_genes)`` float32 of per-cell condition codes and values.

        Each distinct condition is predicted once and cached; ``n`` is needed only when the
        model has no condition keys.
        """
        table, inverse = self.unique_log_proportions(cat, cont)
        if inverse is None:
            return np.broadcast_to(table[0], (int(n or 1), table.shape[1])).copy()
        return table[inverse]

    def unique_log_proportions(
        self, cat: np.ndarray | None, cont: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``log rho`` of each distinct condition and each cell's row in it.

        Checks the predictor's output for every distinct condition (and caches it); the
        inverse is ``None`` when the model has no condition keys (one row for every cell).
        """
        cat = None if cat is None or cat.shape[1] == 0 else np.asarray(cat)
        cont = None if cont is None or cont.shape[1] == 0 else np.asarray(cont)
        parts = [a.astype(np.float64) for a in (cat, cont) if a is not None]
        if not parts:  # no condition keys: one profile for every cell
            if () not in self._cache:
                obs = pd.DataFrame(index=pd.RangeIndex(1))
                self._cache[()] = np.log(self.proportions(obs)[0]).astype(np.float32)
            return self._cache[()][None], None
        key_rows = np.concatenate(parts, axis=1)
        uniq, first, inverse = np.unique(key_rows, axis=0, return_index=True, return_inverse=True)
        keys = [tuple(row) for row in uniq.tolist()]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        new: dict[tuple, np.ndarray] = {}
        if todo:
            rows = first[todo]
            obs = self.frame(
                None if cat is None else cat[rows], None if cont is None else cont[rows]
            )
            logp = np.log(self.proportions(obs)).astype(np.float32)
            new = {keys[i]: logp[j] for j, i in enumerate(todo)}
            if len(self._cache) + len(new) > _MAX_CACHE_ROWS:
                self._cache.clear()
            self._cache.update(new)
        table = np.stack([new[k] if k in new else self._cache[k] for k in keys])
        return table, np.asarray(inverse).ravel()


def _describe_rows(obs: pd.DataFrame, limit: int = 3) -> str:
    rows = obs.head(limit).to_dict(orient="records")
    more = f" and {len(obs) - limit} more" if len(obs) > limit else ""
    return f"{rows}{more}"
