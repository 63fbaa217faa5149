"""Turning user condition specifications into tensors a genvi module understands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ConditionSpec = Mapping[str, object]
Conditions = ConditionSpec | Sequence[ConditionSpec] | pd.DataFrame


@dataclass
class ConditionSchema:
    """The conditions a model was trained on.

    Attributes
    ----------
    categorical
        Each categorical key and its training categories (in code order).
    continuous
        The continuous keys.
    """

    categorical: dict[str, list[str]] = field(default_factory=dict)
    continuous: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        """All condition keys, categorical first (the order of the null-token mask)."""
        return [*self.categorical, *self.continuous]

    def parse(self, conditions: Conditions) -> list[dict]:
        """Normalise a dict, list of dicts or DataFrame into a list of validated dicts."""
        if isinstance(conditions, pd.DataFrame):
            specs = conditions.to_dict(orient="records")
        elif isinstance(conditions, Mapping):
            specs = [dict(conditions)]
        elif isinstance(conditions, Sequence) and not isinstance(conditions, str):
            specs = [dict(c) for c in conditions]
        else:
            raise TypeError(
                "conditions must be a dict (e.g. {'cell_type': 'B cells'}), a list of dicts or a "
                f"DataFrame, not {type(conditions).__name__}."
            )
        if not specs:
            raise ValueError("conditions is empty; give at least one condition.")
        return [self._validate(s) for s in specs]

    def _validate(self, spec: dict) -> dict:
        unknown = [k for k in spec if k not in self.keys]
        if unknown:
            raise ValueError(
                f"Unknown condition key(s) {unknown}; the model knows {self.keys or 'none'}."
            )
        out = {}
        for key, value in spec.items():
            if key in self.categorical:
                if value is None or (isinstance(value, float) and np.isnan(value)):
                    continue  # a missing value means "unspecified": the key's null token
                if str(value) not in self.categorical[key]:
                    raise ValueError(
                        f"Unknown category {value!r} for condition {key!r}. Known categories: "
                        f"{self.categorical[key]}."
                    )
                out[key] = str(value)
            else:
                if value is None:
                    continue
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"Continuous condition {key!r} needs a number, got {value!r}."
                    ) from None
                if np.isnan(v):
                    continue
                if not np.isfinite(v):
                    raise ValueError(f"Continuous condition {key!r} must be finite, got {v}.")
                out[key] = v
        return out

    def encode(self, specs: Sequence[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Codes, continuous values and keep-mask for validated specs.

        Returns
        -------
        cat
            ``(m, n_categorical)`` int64 codes (0 where unspecified).
        cont
            ``(m, n_continuous)`` float32 values (0 where unspecified).
        keep
            ``(m, n_keys)`` bool, False where a key is unspecified (null token).
        """
        m = len(specs)
        cat = np.zeros((m, len(self.categorical)), dtype=np.int64)
        cont = np.zeros((m, len(self.continuous)), dtype=np.float32)
        keep = np.zeros((m, len(self.keys)), dtype=bool)
        for i, spec in enumerate(specs):
            for j, (key, cats) in enumerate(self.categorical.items()):
                if key in spec:
                    cat[i, j] = cats.index(spec[key])
                    keep[i, j] = True
            for j, key in enumerate(self.continuous):
                if key in spec:
                    cont[i, j] = spec[key]
                    keep[i, len(self.categorical) + j] = True
        return cat, cont, keep

    def label(self, spec: dict) -> str:
        """A readable name of a condition, e.g. ``"B cells|stimulated"``."""
        return "|".join(str(spec[k]) for k in self.keys if k in spec) or "(unconditional)"

    def to_obs(self, specs: Sequence[dict], repeats: Sequence[int]) -> pd.DataFrame:
        """Obs columns for generated cells, categoricals carrying the training categories."""
        obs = {}
        for key, cats in self.categorical.items():
            values = np.repeat([s.get(key) for s in specs], repeats)
            obs[key] = pd.Categorical(values, categories=cats)
        for key in self.continuous:
            obs[key] = np.repeat([s.get(key, np.nan) for s in specs], repeats).astype(float)
        return pd.DataFrame(obs)

    def substitute(self, cat, cont, new: dict):
        """Copies of per-cell codes / values with the keys of ``new`` replaced (counterfactuals).

        ``cat`` ``(n, n_categorical)`` and ``cont`` ``(n, n_continuous)`` are numpy arrays or
        torch tensors (``None`` when the model has no such keys); the inputs are not modified.
        """
        ncat, ncont, _ = self.encode([new])
        cat = None if cat is None else _copy(cat)
        cont = None if cont is None else _copy(cont)
        for j, key in enumerate(self.categorical):
            if key in new:
                cat[:, j] = int(ncat[0, j])
        for j, key in enumerate(self.continuous):
            if key in new:
                cont[:, j] = float(ncont[0, j])
        return cat, cont

    def check_obs(
        self, obs: pd.DataFrame, missing_labels: bool = False, unknown_label: object = None
    ) -> None:
        """Raise if obs lacks a condition key or holds a category unseen in training.

        Parameters
        ----------
        obs
            The cells' metadata.
        missing_labels
            Categorical labels may be missing (NaN or ``unknown_label``; DisentVI imputes them).
        unknown_label
            A label meaning "missing" besides NaN.
        """
        hint = (
            " For unlabelled cells add the column filled with NaN (`adata.obs[{key!r}] = np.nan`)."
            if missing_labels
            else ""
        )
        for key, cats in self.categorical.items():
            if key not in obs.columns:
                raise ValueError(
                    f"Condition key {key!r} is missing from adata.obs." + hint.format(key=key)
                )
            values = pd.Series(obs[key]).dropna().astype(str).unique()
            allowed = set(cats) | ({str(unknown_label)} if unknown_label is not None else set())
            unseen = sorted(set(values) - allowed)
            if unseen:
                fix = "set them to NaN" if missing_labels else "subset the cells to known ones"
                raise ValueError(
                    f"obs[{key!r}] holds categories unseen in training: {unseen}. Known "
                    f"categories: {cats}. Rename them to known categories or {fix}."
                )
        for key in self.continuous:
            if key not in obs.columns:
                raise ValueError(f"Continuous condition {key!r} is missing from adata.obs.")


def _copy(a):
    return a.clone() if hasattr(a, "clone") else np.array(a, copy=True)
