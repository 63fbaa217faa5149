"""Calibration of predictive intervals: observed vs nominal coverage on held-out cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ._compare import LABEL_SEP, _check_keys, _condition_labels
from ._space import _check_unique_genes, _get_counts

DEFAULT_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
# the condition's label ("B cells|stimulated") and the per-level statistics of the table
LABEL_COLUMN = "genvi_condition"
STAT_COLUMNS = ("level", "coverage", "coverage_sd", "n_cells", "n_genes", "interval", "skipped")


def interval_coverage(
    values: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    step: np.ndarray | float | None = None,
) -> np.ndarray:
    """Fraction of observations inside their interval, ``lower <= value <= upper``.

    Works with any intervals: per gene (``lower`` of shape ``(n_genes,)`` against ``values`` of
    shape ``(n_cells, n_genes)``), per observation (same shape as ``values``) or scalar.
    Closed intervals, so a value equal to an endpoint counts as covered, which inflates the
    coverage of discrete counts (see :func:`calibration`).

    With ``step`` (the width of one count on the scale of ``values``: 1 for counts,
    ``target_sum / total`` per cell for normalised counts), a value ``v`` stands for the
    continuous extension ``[v, v + step)`` of its count and counts for the fraction of that
    segment inside the interval: the expected coverage of the jittered value ``v + U * step``
    that randomised intervals (``predict_with_confidence``, ``attrs["interval"] ==
    "randomized"``) are built for. Values must then be on a linear scale (counts or
    normalised counts, not log1p).

    Parameters
    ----------
    values
        Observations, shape ``(n, ...)``; the first axis is averaged over.
    lower
        Lower interval bounds, broadcastable to ``values``.
    upper
        Upper interval bounds, broadcastable to ``values``.
    step
        Width of one count per observation, positive, broadcastable to ``values`` (e.g.
        ``(n_cells, 1)``); ``None`` for closed-interval coverage.

    Returns
    -------
    numpy.ndarray
        Coverage of shape ``values.shape[1:]`` (0-d for 1-D ``values``; ``float()`` it); the
        mean over genes is the usual summary.
    """
    values = np.asarray(values, dtype=np.float64)
    lower = np.asarray(lower, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    if values.ndim < 1 or values.shape[0] < 1:
        raise ValueError("`values` needs at least one observation along its first axis.")
    if np.any(lower > upper):
        raise ValueError("Every `lower` bound must be <= its `upper` bound.")
    if step is not None:
        step = np.asarray(step, dtype=np.float64)
        if np.any(~(step > 0)):
            raise ValueError("`step` must be positive.")
    try:
        if step is None:
            inside = (values >= lower) & (values <= upper)
        else:
            overlap = np.minimum(values + step, upper) - np.maximum(values, lower)
            inside = np.clip(overlap, 0.0, None) / step
    except ValueError as err:
        raise ValueError(
            f"Bounds of shapes {lower.shape} and {upper.shape} do not broadcast to values of "
            f"shape {values.shape}."
        ) from err
    if inside.shape != values.shape:
        raise ValueError(f"Bounds must broadcast to the shape of `values` {values.shape}.")
    return inside.mean(axis=0)


def _model_keys(model: Any, condition_keys: str | Sequence[str] | None) -> list[str]:
    if condition_keys is not None:
        return [condition_keys] if isinstance(condition_keys, str) else list(condition_keys)
    schema = getattr(model, "_schema", None)
    keys = list(getattr(schema, "categorical", {}) or {})
    if not keys:
        raise ValueError("Pass `condition_keys`: the model exposes no categorical conditions.")
    return keys


def calibration(
    model: Any,
    real: ad.AnnData,
    condition_keys: str | Sequence[str] | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    n_samples: int = 1000,
    min_mean: float | None = None,
    min_cells: int = 10,
    *,
    transform: str = "normalized",
    target_sum: float = 1e4,
    layer: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Reliability table of a model's predictive intervals on held-out real cells.

    For every condition of ``real`` and every nominal level, the interval of
    ``model.predict_with_confidence(condition, n_samples, ci=level)`` is compared with the real
    cells of that condition (expression transformed the same way: counts / total over the
    model's genes * ``target_sum``, ``log1p`` of that, or raw counts). The observed coverage of
    a gene is the fraction of its real values inside the interval; the table reports its mean
    over genes. A calibrated model has coverage ≈ level; below means over-confident.

    Coverage is measured the way the intervals are meant. genvi's count models return
    *randomised* intervals by default (``attrs["interval"] == "randomized"``, see
    :meth:`~genvi.model.PriorVI.predict_with_confidence`): intervals of the continuous
    extension of counts, ``x + U``, so a real count counts for the fraction of ``[x, x + 1)``
    (on the ``transform`` scale) inside the interval, its expected coverage over the jitter;
    these can be calibrated for genes of every depth, zeros included. Other intervals are read
    as closed: a value on an endpoint counts as inside. For closed intervals discreteness
    inflates the coverage of lowly expressed genes (when most cells have 0 counts, the interval
    is e.g. ``[0, 0]`` or ``[0, x]`` and every real zero lies on its boundary) whatever the
    model; ``min_mean`` restricts the average to genes whose predicted mean (in ``transform``
    units) exceeds it.

    Works with any model that has ``predict_with_confidence(conditions, n_samples=..., ci=...,
    transform=..., target_sum=..., seed=...)`` returning a per-gene DataFrame with ``mean``,
    ``lower`` and ``upper`` (every genvi generative model).

    Parameters
    ----------
    model
        A trained model.
    real
        Held-out real cells (not used for training) with counts in ``X`` (or ``layer``), the
        model's genes and the condition columns in ``obs``.
    condition_keys
        ``obs`` columns defining the conditions. Default: the model's categorical condition
        keys (continuous keys are then left unspecified, i.e. marginalised by the model).
    levels
        Nominal central interval masses in (0, 1).
    n_samples
        Cells the model samples per condition for each interval; more gives sharper quantile
        estimates (the same seed is used for every level, so intervals are nested).
    min_mean
        Keep only genes with predicted mean above this value; ``None`` keeps all.
    min_cells
        Conditions with fewer real cells are skipped.
    transform
        ``"normalized"``, ``"log1p"`` or ``"counts"``; see
        :meth:`~genvi.model.PriorVI.predict_with_confidence`.
    target_sum
        Total counts after normalisation.
    layer
        Layer of ``real`` holding counts; ``None`` uses ``X``.
    seed
        Seed of the model's sampling.

    Returns
    -------
    pandas.DataFrame
        One row per condition and level: ``genvi_condition`` (values joined by ``"|"``), one
        column per condition key (named after the key; a key that clashes with a column of
        this table gets the suffix `` (condition)``, see ``attrs["key_columns"]``), ``level``
        (nominal), ``coverage`` (observed, mean over the kept genes), ``coverage_sd`` (its
        spread across genes), ``n_cells``, ``n_genes`` (genes kept), ``interval``
        (the prediction's ``attrs["interval"]``: ``"randomized"``, ``"closed"`` or
        ``"conformal"``, :class:`ConformalIntervals`, read as randomised for count models)
        and ``skipped`` (``None`` or the reason; coverage is then NaN).
    """
    if not callable(getattr(model, "predict_with_confidence", None)):
        raise TypeError(f"{type(model).__name__} has no `predict_with_confidence` method.")
    levels = [float(level) for level in levels]
    if not levels or not all(0 < level < 1 for level in levels):
        raise ValueError(f"`levels` must be values in (0, 1), got {levels}.")
    # Imported here: metrics stay importable without loading torch and the models.
    from genvi._transforms import count_step, transform_expression

    keys = _model_keys(model, condition_keys)
    _check_keys(real, keys, "real")
    _check_unique_genes(real)
    labels = _condition_labels(real.obs, keys).to_numpy()
    combos = real.obs[keys].dropna().drop_duplicates().sort_values(keys)
    counts = _get_counts(real, layer)
    # any obs column name must work: a key named like a column of this table gets a suffix
    key_columns = {
        k: (f"{k} (condition)" if k in (LABEL_COLUMN, *STAT_COLUMNS) else k) for k in keys
    }

    rows: list[dict[str, object]] = []
    for combo in combos.itertuples(index=False, name=None):
        label = LABEL_SEP.join(map(str, combo))
        mask = labels == label
        base = {
            LABEL_COLUMN: label,
            **{key_columns[k]: v for k, v in zip(keys, combo)},
            "n_cells": int(mask.sum()),
        }
        skipped = None
        preds: dict[float, pd.DataFrame] = {}
        if base["n_cells"] < max(min_cells, 1):
            skipped = f"{base['n_cells']} real cells < min_cells={max(min_cells, 1)}"
        else:
            spec = {k: str(v) for k, v in zip(keys, combo)}
            try:
                for level in levels:
                    preds[level] = model.predict_with_confidence(
                        spec,
                        n_samples=n_samples,
                        ci=level,
                        transform=transform,
                        target_sum=target_sum,
                        seed=seed,
                    )
            except ValueError as err:  # e.g. a category the model never saw
                skipped = f"model cannot predict this condition: {err}"
        if skipped is not None:
            rows.extend(
                {**base, "level": level, "n_genes": 0, "skipped": skipped} for level in levels
            )
            continue

        genes = pd.Index(preds[levels[0]].index.astype(str))
        idx = real.var_names.get_indexer(genes)
        if (idx < 0).any():
            raise ValueError(f"{int((idx < 0).sum())} of the model's genes are missing from real.")
        cells = counts[np.flatnonzero(mask)][:, idx]
        cells = cells.toarray() if hasattr(cells, "toarray") else np.asarray(cells)
        # Normalised over the model's genes, as the model's samples are.
        cells = cells.astype(np.float64)
        values = transform_expression(cells, transform, target_sum)
        # randomised intervals are read on the linear scale, with one count = `step`
        linear = values if transform != "log1p" else np.expm1(values)
        step = count_step(cells, transform, target_sum)
        for level in levels:
            pred = preds[level]
            construction = pred.attrs.get("interval") or "closed"
            # conformal intervals of count models are read like the randomised ones they adjust
            randomized = construction == "randomized" or (
                construction == "conformal" and pred.attrs.get("randomized", False)
            )
            keep = np.ones(len(genes), dtype=bool)
            if min_mean is not None:
                keep = pred["mean"].to_numpy() > min_mean
            row = {**base, "level": level, "n_genes": int(keep.sum()), "skipped": None}
            if not keep.any():
                row["skipped"] = f"no gene with predicted mean > min_mean={min_mean}"
            else:
                lower = pred["lower"].to_numpy()[keep]
                upper = pred["upper"].to_numpy()[keep]
                if randomized:  # expected coverage of the jittered count
                    if transform == "log1p":
                        lower, upper = np.expm1(lower), np.expm1(upper)
                    per_gene = interval_coverage(linear[:, keep], lower, upper, step=step)
                else:
                    per_gene = interval_coverage(values[:, keep], lower, upper)
                row["interval"] = construction
                row["coverage"] = float(per_gene.mean())
                row["coverage_sd"] = float(per_gene.std())
            rows.append(row)

    columns = [LABEL_COLUMN, *key_columns.values(), *STAT_COLUMNS]
    df = pd.DataFrame(rows, columns=columns)
    df[["level", "coverage", "coverage_sd"]] = df[["level", "coverage", "coverage_sd"]].astype(
        np.float64
    )
    df["skipped"] = df["skipped"].astype(object).where(df["skipped"].notna(), None)
    df.attrs.update(
        {
            "condition_keys": keys,
            "key_columns": key_columns,
            "levels": levels,
            "n_samples": n_samples,
            "min_mean": min_mean,
            "transform": transform,
            "target_sum": target_sum,
            "seed": seed,
        }
    )
    return df
