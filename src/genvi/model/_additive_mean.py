"""AdditiveMeanModel: genvi's supervised mean model (HybridVI's ``mean_predictor="auto"``)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

# Newton steps are clipped to this (log scale) for robustness far from the optimum
_MAX_STEP = 3.0
# floats of the per-gene Hessians held at once (genes are fitted in chunks)
_HESSIAN_BUDGET = 20_000_000


class AdditiveMeanModel:
    """Log-linear model of mean expression from conditions, fitted to pseudo-bulk counts.

    For a condition ``c`` with categorical values ``c_k`` and standardised continuous values
    ``s_j``, the expected proportion of gene ``g`` is ``softmax_g(eta(c))`` with::

        eta_g(c) = b_g + sum_k a_{k, c_k, g} + sum_j beta_{j, g} s_j
                   + sum_{k < k'} gamma_{(k, k'), (c_k, c_k'), g}

    main effects ``a`` per category, slopes ``beta`` per continuous key and, for every pair of
    categorical keys, an interaction ``gamma`` per *observed* pair of values (0 for a pair
    never observed). So observed combinations get their own mean and an unseen combination
    of observed categories (stimulated B cells when only control B cells were seen) is
    predicted additively on the log scale from the main effects (and the pairs that were
    observed).

    **Training.** Cells are pooled into groups (each combination of categorical values, times
    ``n_bins`` quantile bins of each continuous key). Each gene is a Poisson GLM of the
    group's summed counts with the log of the group's summed library size as offset (for a
    design constant within groups this is the cell-level Poisson GLM, whose sufficient
    statistics are these sums), with Gaussian (ridge) penalties of standard deviation
    ``main_sd`` on main effects, ``slope_sd`` on slopes and ``interaction_sd`` on
    interactions (the intercept is free). Since interactions are penalised harder than main
    effects, the main effects take the additive part of the observed combinations and the
    interactions what is left. ``pseudocount`` counts per gene, spread over the groups in
    proportion to their depth, keep never-observed genes finite. Fitted by Newton's method
    (batched over genes, steps clipped to 3 on the log scale) to a step below ``tol``. All
    parameters are arrays, so a model saves safely (:meth:`to_state`).

    Parameters
    ----------
    main_sd, interaction_sd, slope_sd
        Prior standard deviations (log scale) of main effects, interactions and slopes (per
        standard deviation of the continuous key).
    interactions
        Fit pairwise interactions of the observed value pairs; ``False`` gives a purely
        additive model (observed combinations then need not get their own mean).
    n_bins
        Quantile bins per continuous key when pooling cells.
    pseudocount
        Counts added per gene over all groups.
    max_iter, tol
        Newton iterations and convergence threshold (largest step, log scale).
    target_sum
        Total of a predicted row (expression per ``target_sum`` counts).

    Examples
    --------
    >>> mean_model = genvi.model.AdditiveMeanModel().fit(
    ...     adata.X, adata.obs, categorical_keys=["cell_type", "condition"]
    ... )
    >>> mean_model.predict(pd.DataFrame({"cell_type": ["B"], "condition": ["stimulated"]}))
    """

    def __init__(
        self,
        main_sd: float = 3.0,
        interaction_sd: float = 1.0,
        slope_sd: float = 1.0,
        interactions: bool = True,
        n_bins: int = 8,
        pseudocount: float = 0.5,
        max_iter: int = 100,
        tol: float = 1e-6,
        target_sum: float = 1e4,
    ):
        for name, value in (
            ("main_sd", main_sd),
            ("interaction_sd", interaction_sd),
            ("slope_sd", slope_sd),
            ("pseudocount", pseudocount),
            ("target_sum", target_sum),
        ):
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        if int(n_bins) < 1:
            raise ValueError(f"n_bins must be at least 1, got {n_bins!r}.")
        self.params = {
            "main_sd": float(main_sd),
            "interaction_sd": float(interaction_sd),
            "slope_sd": float(slope_sd),
            "interactions": bool(interactions),
            "n_bins": int(n_bins),
            "pseudocount": float(pseudocount),
            "max_iter": int(max_iter),
            "tol": float(tol),
            "target_sum": float(target_sum),
        }
        self.fitted_ = False

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        counts,
        obs: pd.DataFrame,
        categorical_keys: Sequence[str] | None = None,
        continuous_keys: Sequence[str] | None = None,
        var_names: Sequence[str] | None = None,
    ) -> AdditiveMeanModel:
        """Fit to raw counts.

        Parameters
        ----------
        counts
            Cells x genes raw counts (dense or sparse).
        obs
            One row per cell with the condition columns.
        categorical_keys, continuous_keys
            Condition columns (default: the categorical / numeric columns of ``obs``).
        var_names
            Gene names (``gene_0``... by default).

        Returns
        -------
        ``self``.
        """
        n_cells, n_genes = counts.shape
        if len(obs) != n_cells:
            raise ValueError(f"obs has {len(obs)} rows for {n_cells} cells.")
        if categorical_keys is None and continuous_keys is None:
            numeric = [k for k in obs.columns if pd.api.types.is_numeric_dtype(obs[k])]
            categorical_keys = [k for k in obs.columns if k not in numeric]
            continuous_keys = numeric
        cat_keys, cont_keys = list(categorical_keys or []), list(continuous_keys or [])
        self.categorical_keys, self.continuous_keys = cat_keys, cont_keys
        self.var_names = np.asarray(
            [f"gene_{g}" for g in range(n_genes)] if var_names is None else var_names, dtype=str
        )
        self.categories = {}
        codes = np.zeros((n_cells, len(cat_keys)), dtype=np.int64)
        for j, key in enumerate(cat_keys):
            col = obs[key]
            if pd.isna(col).any():
                raise ValueError(f"obs[{key!r}] has missing values; fill or drop them first.")
            if isinstance(col.dtype, pd.CategoricalDtype):
                cats = [str(c) for c in col.cat.categories]
            else:
                cats = sorted(set(col.astype(str)))
            self.categories[key] = cats
            codes[:, j] = pd.Categorical(col.astype(str), categories=cats).codes
        cont = np.zeros((n_cells, len(cont_keys)))
        for j, key in enumerate(cont_keys):
            cont[:, j] = np.asarray(obs[key], dtype=np.float64)
        if not np.all(np.isfinite(cont)):
            raise ValueError("Continuous conditions must be finite.")
        self.cont_mean = cont.mean(0) if len(cont_keys) else np.zeros(0)
        self.cont_std = np.maximum(cont.std(0), 1e-8) if len(cont_keys) else np.zeros(0)
        std = (cont - self.cont_mean) / self.cont_std if len(cont_keys) else cont

        first, group_of = self._groups(codes, std)
        m = len(first)
        indicator = sparse.csr_matrix(
            (np.ones(n_cells), (group_of, np.arange(n_cells))), shape=(m, n_cells)
        )
        y = indicator @ counts
        y = np.asarray(y.toarray() if sparse.issparse(y) else y, dtype=np.float64)
        library = np.asarray(y.sum(1), dtype=np.float64)
        if np.any(library <= 0):
            raise ValueError("Some groups of cells have no counts at all; drop empty cells first.")
        size = np.bincount(group_of, minlength=m).astype(np.float64)
        group_std = (indicator @ std) / size[:, None] if len(cont_keys) else np.zeros((m, 0))
        group_codes = codes[first]
        self.pairs = self._observed_pairs(group_codes)
        design, penalty = self._design(group_codes, group_std, fit=True)
        y = y + self.params["pseudocount"] * (library / library.sum())[:, None]
        self.coef = _fit_poisson_ridge(
            design, y, np.log(library), penalty, self.params["max_iter"], self.params["tol"]
        )
        self.fitted_ = True
        return self

    def _groups(self, codes: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A first cell of each distinct (categorical codes, continuous bins) row; cells' groups."""
        bins = np.zeros((codes.shape[0], std.shape[1]), dtype=np.int64)
        n_bins = self.params["n_bins"]
        for j in range(std.shape[1]):
            edges = np.unique(np.quantile(std[:, j], np.linspace(0, 1, n_bins + 1)[1:-1]))
            bins[:, j] = np.searchsorted(edges, std[:, j], side="right")
        keys = np.concatenate([codes, bins], axis=1)
        if keys.shape[1] == 0:
            return np.zeros(1, dtype=np.int64), np.zeros(codes.shape[0], dtype=np.int64)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        return first, np.asarray(inverse).ravel()

    def _observed_pairs(self, group_codes: np.ndarray) -> list[dict[str, Any]]:
        if not self.params["interactions"]:
            return []
        pairs = []
        for a, b in combinations(range(len(self.categorical_keys)), 2):
            seen = np.unique(group_codes[:, [a, b]], axis=0)
            pairs.append({"keys": [a, b], "codes": seen.astype(np.int64)})
        return pairs

    def _design(
        self, codes: np.ndarray, std: np.ndarray, fit: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Design matrix (rows: conditions) and per-column penalties (1 / sd^2)."""
        n = codes.shape[0]
        cols = [np.ones((n, 1))]
        pen = [np.zeros(1) + 1e-8]
        p = self.params
        for j, key in enumerate(self.categorical_keys):
            cols.append(np.eye(len(self.categories[key]))[codes[:, j]])
            pen.append(np.full(len(self.categories[key]), 1 / p["main_sd"] ** 2))
        if std.shape[1]:
            cols.append(std)
            pen.append(np.full(std.shape[1], 1 / p["slope_sd"] ** 2))
        for pair in self.pairs:
            a, b = pair["keys"]
            seen = pair["codes"]
            match = (codes[:, [a]] == seen[:, 0]) & (codes[:, [b]] == seen[:, 1])
            cols.append(match.astype(np.float64))
            pen.append(np.full(len(seen), 1 / p["interaction_sd"] ** 2))
        return np.concatenate(cols, axis=1), np.concatenate(pen)

    # ------------------------------------------------------------------ prediction
    def predict(self, obs: pd.DataFrame) -> np.ndarray:
        """Expected expression per ``target_sum`` counts, ``(len(obs), n_genes)``.

        Parameters
        ----------
        obs
            One row per condition with a column per condition key (others are ignored).
        """
        if not self.fitted_:
            raise ValueError("This AdditiveMeanModel is not fitted; call fit(counts, obs) first.")
        missing = [k for k in (*self.categorical_keys, *self.continuous_keys) if k not in obs]
        if missing:
            raise ValueError(
                f"AdditiveMeanModel needs the condition column(s) {missing}; obs has "
                f"{list(obs.columns)}."
            )
        n = len(obs)
        codes = np.zeros((n, len(self.categorical_keys)), dtype=np.int64)
        for j, key in enumerate(self.categorical_keys):
            cats = self.categories[key]
            values = obs[key].astype(object).to_numpy()
            lookup = {c: i for i, c in enumerate(cats)}
            unknown = sorted({str(v) for v in values if str(v) not in lookup or pd.isna(v)})
            if unknown:
                raise ValueError(
                    f"AdditiveMeanModel does not know {key}={unknown[:5]}; it was fitted on "
                    f"{cats}. Refit it on cells that include these categories, or use a "
                    "predictor that knows them."
                )
            codes[:, j] = [lookup[str(v)] for v in values]
        std = np.zeros((n, len(self.continuous_keys)))
        for j, key in enumerate(self.continuous_keys):
            values = np.asarray(obs[key], dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise ValueError(f"AdditiveMeanModel needs finite values of {key!r}.")
            std[:, j] = (values - self.cont_mean[j]) / self.cont_std[j]
        design, _ = self._design(codes, std)
        eta = design @ self.coef
        eta -= eta.max(1, keepdims=True)
        expr = np.exp(eta)
        return expr / expr.sum(1, keepdims=True) * self.params["target_sum"]

    __call__ = predict

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        """Plain arrays, strings and numbers (genvi's safe model files store these)."""
        if not self.fitted_:
            raise ValueError("Only a fitted AdditiveMeanModel has a state.")
        return {
            "params": dict(self.params),
            "categorical_keys": list(self.categorical_keys),
            "continuous_keys": list(self.continuous_keys),
            "categories": {k: list(v) for k, v in self.categories.items()},
            "cont_mean": np.asarray(self.cont_mean, dtype=np.float64),
            "cont_std": np.asarray(self.cont_std, dtype=np.float64),
            "pairs": [
                {"keys": list(p["keys"]), "codes": np.asarray(p["codes"])} for p in self.pairs
            ],
            "coef": np.asarray(self.coef, dtype=np.float64),
            "var_names": np.asarray(self.var_names, dtype=str),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AdditiveMeanModel:
        """Rebuild a fitted model from :meth:`to_state`."""
        model = cls(**state["params"])
        model.categorical_keys = [str(k) for k in state["categorical_keys"]]
        model.continuous_keys = [str(k) for k in state["continuous_keys"]]
        model.categories = {str(k): [str(c) for c in v] for k, v in state["categories"].items()}
        model.cont_mean = np.asarray(state["cont_mean"], dtype=np.float64)
        model.cont_std = np.asarray(state["cont_std"], dtype=np.float64)
        model.pairs = [
            {
                "keys": [int(k) for k in p["keys"]],
                "codes": np.asarray(p["codes"], dtype=np.int64).reshape(-1, 2),
            }
            for p in state["pairs"]
        ]
        model.coef = np.asarray(state["coef"], dtype=np.float64)
        model.var_names = np.asarray(state["var_names"], dtype=str)
        model.fitted_ = True
        return model

    def __repr__(self) -> str:
        if not self.fitted_:
            return "AdditiveMeanModel(unfitted)"
        return (
            f"AdditiveMeanModel(categorical={self.categorical_keys}, "
            f"continuous={self.continuous_keys}, genes={len(self.var_names)}, "
            f"interaction pairs={len(self.pairs)})"
        )


def _fit_poisson_ridge(
    design: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray,
    penalty: np.ndarray,
    max_iter: int,
    tol: float,
) -> np.ndarray:
    """Penalised Poisson GLMs ``y[:, g] ~ Poisson(exp(offset + design @ coef[:, g]))``.

    Newton's method, batched over genes (chunks bounded by a memory budget). Returns
    ``coef`` ``(n_params, n_genes)``.
    """
    m, p = design.shape
    n_genes = y.shape[1]
    coef = np.zeros((p, n_genes))
    coef[0] = np.log(y.sum(0) / np.exp(offset).sum())
    outer = (design[:, :, None] * design[:, None, :]).reshape(m, p * p)
    chunk = max(1, _HESSIAN_BUDGET // max(p * p, 1))
    ridge = np.diag(penalty)
    for start in range(0, n_genes, chunk):
        sl = slice(start, min(start + chunk, n_genes))
        b, yc = coef[:, sl], y[:, sl]
        for _ in range(max_iter):
            eta = np.clip(design @ b + offset[:, None], -50.0, 50.0)
            mu = np.exp(eta)
            grad = design.T @ (mu - yc) + penalty[:, None] * b
            hess = (mu.T @ outer).reshape(-1, p, p) + ridge
            step = np.linalg.solve(hess, grad.T[..., None])[..., 0].T
            step = np.clip(step, -_MAX_STEP, _MAX_STEP)
            b = b - step
            if np.abs(step).max() < tol:
                break
        coef[:, sl] = b
    return coef
