"""Per-condition comparison of generated vs real held-out cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd

from ._distances import c2st_auroc, energy_distance, median_heuristic_bandwidths, mmd_rbf
from ._expression import mean_var_agreement
from ._floor import split_halves
from ._space import ReferenceSpace

LABEL_SEP = "|"
_PAIR_METRICS = (
    "energy",
    "mmd",
    "c2st_auroc",
    "mean_r2",
    "var_r2",
    "mean_pearson",
    "var_pearson",
)
# Spec names: the C2ST floor is "c2st_floor", every other floor is "<metric>_floor".
_FLOOR_NAMES = {m: ("c2st_floor" if m == "c2st_auroc" else f"{m}_floor") for m in _PAIR_METRICS}
_SCORED = ("energy", "mmd")

MODEL_COLUMNS = list(_PAIR_METRICS)
FLOOR_COLUMNS = [_FLOOR_NAMES[m] for m in _PAIR_METRICS]
BASELINE_COLUMNS = [f"baseline_{m}" for m in _PAIR_METRICS]
SCORE_COLUMNS = [f"{m}_score" for m in _SCORED]
METRIC_COLUMNS = MODEL_COLUMNS + FLOOR_COLUMNS + BASELINE_COLUMNS + SCORE_COLUMNS


def _condition_labels(obs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """``"a|b"`` label per cell, NaN where any key is missing."""
    labels = obs[keys[0]].astype(str)
    for key in keys[1:]:
        labels = labels + LABEL_SEP + obs[key].astype(str)
    return labels.where(obs[keys].notna().all(axis=1))


def _check_keys(adata: ad.AnnData, keys: list[str], name: str) -> None:
    missing = [k for k in keys if k not in adata.obs.columns]
    if missing:
        raise KeyError(f"Condition key(s) {missing} not found in `{name}.obs`.")


def _pair_metrics(
    real_pcs: np.ndarray,
    real_log: np.ndarray,
    other_pcs: np.ndarray,
    other_log: np.ndarray,
    bandwidths: list[float],
    *,
    max_cells: int,
    seed: int,
    classifier: str,
) -> dict[str, float]:
    mmd, _ = mmd_rbf(real_pcs, other_pcs, bandwidths=bandwidths, max_cells=max_cells, seed=seed)
    return {
        "energy": energy_distance(real_pcs, other_pcs, max_cells=max_cells, seed=seed),
        "mmd": mmd,
        "c2st_auroc": c2st_auroc(
            real_pcs, other_pcs, seed=seed, classifier=classifier, max_cells=max_cells
        ),
        **mean_var_agreement(real_log, other_log),
    }


def _normalised_score(model: float, floor: float, baseline: float) -> float:
    denom = baseline - floor
    # A baseline not above the noise floor gives no scale to normalise by.
    return float((model - floor) / denom) if denom > 0 else float("nan")


def compare_conditions(
    real: ad.AnnData,
    synthetic: ad.AnnData,
    condition_keys: str | Sequence[str],
    space: ReferenceSpace,
    min_cells: int = 30,
    seed: int = 0,
    baseline: ad.AnnData | None = None,
    *,
    max_cells: int = 2000,
    n_floor_repeats: int = 1,
    classifier: Literal["logistic", "knn"] = "logistic",
    mmd_bandwidths: Sequence[float] | None = None,
    layer: str | None = None,
    synthetic_layer: str | None = None,
) -> pd.DataFrame:
    """Compare generated with real held-out cells, condition by condition.

    For every combination of ``condition_keys`` present in ``real``, the real and synthetic
    cells of that condition are compared in the reference PCA space (energy distance, RBF-MMD²,
    classifier two-sample AUROC) and in log-normalised expression (per-gene mean / variance R²
    and Pearson r). Each metric also gets a noise floor: the same metric between two random
    disjoint halves of the real cells of the condition.

    Parameters
    ----------
    real
        Real held-out cells: counts in ``X`` (or ``layer``) and ``condition_keys`` in ``obs``.
    synthetic
        Generated cells: counts in ``X`` (or ``synthetic_layer``) and ``condition_keys`` in
        ``obs``. Conditions absent from ``real`` are ignored; conditions of ``real`` absent here
        are skipped.
    condition_keys
        One or several ``obs`` columns defining a condition.
    space
        Reference space fitted on the real *training* cells.
    min_cells
        Conditions with fewer real cells (or fewer than 4, needed for the floor halves) are
        skipped.
    seed
        Seed of all subsampling, splits and folds.
    baseline
        Optional second generator (same layout as ``synthetic``) scored the same way; enables
        the normalised ``energy_score`` and ``mmd_score``.
    max_cells
        Per-side subsampling cap for the PCA-space metrics.
    n_floor_repeats
        Number of random half splits averaged into each floor.
    classifier
        Classifier of the two-sample test, ``"logistic"`` or ``"knn"``.
    mmd_bandwidths
        Fixed RBF bandwidths for every condition. ``None`` uses, per condition, the median
        pairwise distance of its *real* cells times ``(0.5, 1, 2)``, so that model, baseline and
        floor share one kernel and values do not depend on the generator being scored.
    layer
        Layer of ``real`` holding counts; ``None`` uses ``X``.
    synthetic_layer
        Layer of ``synthetic`` and ``baseline`` holding counts; ``None`` uses ``X``.

    Returns
    -------
    pandas.DataFrame
        One row per real condition, indexed by its label (values joined by ``"|"``), with
        columns:

        - one column per condition key, holding its value;
        - ``n_real``, ``n_synthetic``;
        - ``energy``, ``energy_floor``, ``mmd``, ``mmd_floor``, ``c2st_auroc``, ``c2st_floor``,
          ``mean_r2``, ``mean_r2_floor``, ``var_r2``, ``var_r2_floor``, ``mean_pearson``,
          ``mean_pearson_floor``, ``var_pearson``, ``var_pearson_floor``;
        - with ``baseline``: ``n_baseline``, ``baseline_<metric>`` for each metric above, and
          ``energy_score``, ``mmd_score`` = ``(model - floor) / (baseline - floor)`` (0 = at
          the noise floor, 1 = as far as the baseline; NaN if the baseline is not above the
          floor or has fewer than 2 cells in the condition);
        - ``mmd_bandwidths``: tuple of the bandwidths used;
        - ``skipped``: ``None``, or why the condition was not scored (its metrics are NaN).

        ``df.attrs`` records the settings, including ``mmd_bandwidths`` per condition.
    """
    keys = [condition_keys] if isinstance(condition_keys, str) else list(condition_keys)
    if not keys:
        raise ValueError("`condition_keys` must name at least one obs column.")
    reserved = {"n_real", "n_synthetic", "n_baseline", "mmd_bandwidths", "skipped"}
    clashes = set(keys) & (reserved | set(METRIC_COLUMNS))
    if clashes:
        raise ValueError(f"Condition keys {sorted(clashes)} clash with output column names.")
    _check_keys(real, keys, "real")
    _check_keys(synthetic, keys, "synthetic")
    if baseline is not None:
        _check_keys(baseline, keys, "baseline")

    real_labels = _condition_labels(real.obs, keys).to_numpy()
    syn_labels = _condition_labels(synthetic.obs, keys).to_numpy()
    base_labels = None if baseline is None else _condition_labels(baseline.obs, keys).to_numpy()
    # sort_values follows category order for categoricals, value order otherwise.
    combos = real.obs[keys].dropna().drop_duplicates().sort_values(keys)

    def embed(
        adata: ad.AnnData, mask: np.ndarray, lay: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        log_expr = space.log_normalize(adata[mask], layer=lay)
        return space.project(log_expr), log_expr

    opts = {"max_cells": max_cells, "seed": seed, "classifier": classifier}
    rows, labels, bandwidths_by_label = [], [], {}
    for combo in combos.itertuples(index=False, name=None):
        label = LABEL_SEP.join(map(str, combo))
        real_mask = real_labels == label
        syn_mask = syn_labels == label
        row: dict[str, object] = dict(zip(keys, combo))
        row["n_real"] = int(real_mask.sum())
        row["n_synthetic"] = int(syn_mask.sum())
        if base_labels is not None:
            base_mask = base_labels == label
            row["n_baseline"] = int(base_mask.sum())
        labels.append(label)
        rows.append(row)

        if row["n_real"] < max(min_cells, 4):
            row["skipped"] = f"{row['n_real']} real cells < min_cells={max(min_cells, 4)}"
            continue
        if row["n_synthetic"] < 2:
            row["skipped"] = f"{row['n_synthetic']} synthetic cells (need at least 2)"
            continue

        real_pcs, real_log = embed(real, real_mask, layer)
        syn_pcs, syn_log = embed(synthetic, syn_mask, synthetic_layer)
        if mmd_bandwidths is None:
            bandwidths = median_heuristic_bandwidths(real_pcs, max_cells=max_cells, seed=seed)
        else:
            bandwidths = [float(b) for b in mmd_bandwidths]
        row["mmd_bandwidths"] = tuple(bandwidths)
        bandwidths_by_label[label] = list(bandwidths)

        row.update(_pair_metrics(real_pcs, real_log, syn_pcs, syn_log, bandwidths, **opts))

        rng = np.random.default_rng(seed)
        floors = []
        for _ in range(n_floor_repeats):
            a, b = split_halves(row["n_real"], rng)
            floors.append(
                _pair_metrics(
                    real_pcs[a], real_log[a], real_pcs[b], real_log[b], bandwidths, **opts
                )
            )
        for metric in _PAIR_METRICS:
            row[_FLOOR_NAMES[metric]] = float(np.mean([f[metric] for f in floors]))

        if base_labels is not None and row["n_baseline"] >= 2:
            base_pcs, base_log = embed(baseline, base_mask, synthetic_layer)
            base = _pair_metrics(real_pcs, real_log, base_pcs, base_log, bandwidths, **opts)
            row.update({f"baseline_{m}": v for m, v in base.items()})
            for metric in _SCORED:
                row[f"{metric}_score"] = _normalised_score(
                    row[metric], row[_FLOOR_NAMES[metric]], row[f"baseline_{metric}"]
                )

    counts = ["n_real", "n_synthetic"] + ([] if baseline is None else ["n_baseline"])
    metric_columns = [c for pair in zip(MODEL_COLUMNS, FLOOR_COLUMNS) for c in pair]
    if baseline is not None:
        metric_columns += BASELINE_COLUMNS + SCORE_COLUMNS
    columns = keys + counts + metric_columns + ["mmd_bandwidths", "skipped"]
    df = pd.DataFrame(rows, index=pd.Index(labels, name="condition"), columns=columns)
    df[metric_columns] = df[metric_columns].astype(np.float64)
    df["skipped"] = df["skipped"].astype(object).where(df["skipped"].notna(), None)
    df.attrs.update(
        {
            "condition_keys": keys,
            "min_cells": min_cells,
            "seed": seed,
            "max_cells": max_cells,
            "n_floor_repeats": n_floor_repeats,
            "classifier": classifier,
            "mmd_bandwidths": bandwidths_by_label,
            "n_comps": space.n_comps,
            "n_genes": space.n_genes,
            "hvg_flavor": space.hvg_flavor,
            "totals_over": space.totals_over,
        }
    )
    return df


def summarize(df: pd.DataFrame) -> pd.Series:
    """Mean of each metric over the conditions that were not skipped.

    Parameters
    ----------
    df
        Output of :func:`compare_conditions`.

    Returns
    -------
    pandas.Series
        ``n_conditions`` (scored), ``n_skipped``, then the mean of every metric column present
        (NaNs, e.g. a missing baseline for one condition, are ignored).
    """
    scored = df[df["skipped"].isna()] if "skipped" in df.columns else df
    present = [c for c in METRIC_COLUMNS if c in df.columns]
    summary = {"n_conditions": float(len(scored)), "n_skipped": float(len(df) - len(scored))}
    summary.update(scored[present].astype(np.float64).mean(axis=0).to_dict())
    return pd.Series(summary, name="mean")
