"""Per-condition comparison of generated vs real held-out cells."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import anndata as ad
import numpy as np
import pandas as pd

from ._distances import c2st_auroc, energy_distance, median_heuristic_bandwidths, mmd_rbf
from ._expression import mean_var_agreement
from ._floor import split_halves
from ._space import ReferenceSpace, _normalize_log1p
from ._structure import (
    correlation_distance,
    count_profile,
    library_size_distance,
    zero_fraction_distance,
)

LABEL_SEP = "|"
_PAIR_METRICS = (
    "energy",
    "mmd",
    "c2st_auroc",
    "mean_r2",
    "var_r2",
    "mean_pearson",
    "var_pearson",
    "corr_dist",
    "zero_frac_dist",
    "library_dist",
    "count_shape_auroc",
)
# Agreement metrics: larger is better; every other metric is a distance (smaller is better).
HIGHER_IS_BETTER = frozenset({"mean_r2", "var_r2", "mean_pearson", "var_pearson"})
# Spec names: the C2ST floor is "c2st_floor", every other floor is "<metric>_floor".
_FLOOR_NAMES = {m: ("c2st_floor" if m == "c2st_auroc" else f"{m}_floor") for m in _PAIR_METRICS}
_SCORED = _PAIR_METRICS

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


class _Cells(NamedTuple):
    """One set of cells as the metrics see it."""

    pcs: np.ndarray  # reference PCA coordinates
    log: np.ndarray  # log-normalised expression of the space's genes
    library: np.ndarray  # library sizes as used by the normalisation
    profile: np.ndarray  # per-cell count profile of the space's genes (count_profile)

    def take(self, idx: np.ndarray) -> _Cells:
        return _Cells(self.pcs[idx], self.log[idx], self.library[idx], self.profile[idx])


def _pair_metrics(
    real: _Cells,
    other: _Cells,
    bandwidths: list[float],
    *,
    corr_genes: np.ndarray,
    max_cells: int,
    seed: int,
    classifier: str,
) -> dict[str, float]:
    mmd, _ = mmd_rbf(real.pcs, other.pcs, bandwidths=bandwidths, max_cells=max_cells, seed=seed)
    return {
        "energy": energy_distance(real.pcs, other.pcs, max_cells=max_cells, seed=seed),
        "mmd": mmd,
        "c2st_auroc": c2st_auroc(
            real.pcs, other.pcs, seed=seed, classifier=classifier, max_cells=max_cells
        ),
        **mean_var_agreement(real.log, other.log),
        "corr_dist": correlation_distance(real.log[:, corr_genes], other.log[:, corr_genes]),
        "zero_frac_dist": zero_fraction_distance(real.log, other.log),
        "library_dist": library_size_distance(real.library, other.library),
        "count_shape_auroc": c2st_auroc(
            real.profile, other.profile, seed=seed, classifier="logistic", max_cells=max_cells
        ),
    }


def _normalised_score(model: float, floor: float, baseline: float, higher_is_better: bool) -> float:
    denom = baseline - floor
    # A baseline not worse than the noise floor gives no scale to normalise by.
    worse = denom < 0 if higher_is_better else denom > 0
    return float((model - floor) / denom) if worse else float("nan")


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
    n_corr_genes: int = 200,
) -> pd.DataFrame:
    """Compare generated with real held-out cells, condition by condition.

    For every combination of ``condition_keys`` present in ``real``, the real and synthetic
    cells of that condition are compared in the reference PCA space (energy distance, RBF-MMD²,
    classifier two-sample AUROC), in log-normalised expression of the space's genes (per-gene
    mean / variance R² and Pearson r, zero fractions, gene-gene correlations of the
    ``n_corr_genes`` most expressed genes), by their library sizes and by a classifier on
    per-cell count profiles (depth, detected genes, repeated counts). Each metric also gets a
    noise floor: the same metric between two random disjoint halves of the real cells of the
    condition. :func:`~genvi.metrics.evaluate` wraps this with space fitting and privacy.

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
    n_corr_genes
        Genes of the correlation distance: the space's genes with the highest mean training
        expression (:meth:`~genvi.metrics.ReferenceSpace.top_expressed`).

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
        - ``corr_dist``, ``corr_dist_floor``: RMS difference of the gene-gene Pearson
          correlation matrices (:func:`~genvi.metrics.correlation_distance`);
        - ``zero_frac_dist``, ``zero_frac_dist_floor``: mean absolute difference of per-gene
          zero fractions over the space's genes (:func:`~genvi.metrics.zero_fraction_distance`);
        - ``library_dist``, ``library_dist_floor``: Wasserstein distance of ``log1p`` library
          sizes, as the space normalises by them (:func:`~genvi.metrics.library_size_distance`);
        - ``count_shape_auroc``, ``count_shape_auroc_floor``: classifier two-sample AUROC
          (always logistic, standardised features) on each cell's
          :func:`~genvi.metrics.count_profile` over the space's genes: ``log1p`` library size,
          ``log1p`` detected genes and the fraction of detected genes with two or more counts.
          It sees the count noise (Poisson vs overdispersed) that normalisation and the PCA
          hide; 0.5 = the counts look alike;
        - with ``baseline``: ``n_baseline``, ``baseline_<metric>`` for each metric above, and
          ``<metric>_score`` = ``(model - floor) / (baseline - floor)`` for each metric (0 = at
          the noise floor, 1 = as far as the baseline, for distances and agreements alike;
          NaN if the baseline is not worse than the floor or has fewer than 2 cells in the
          condition);
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

    def embed(adata: ad.AnnData, mask: np.ndarray, lay: str | None) -> _Cells:
        counts, library = space._reference_counts(adata[mask], lay)
        log_expr = _normalize_log1p(counts, library, space.target_sum)
        return _Cells(space.project(log_expr), log_expr, library, count_profile(counts, library))

    opts = {
        "max_cells": max_cells,
        "seed": seed,
        "classifier": classifier,
        "corr_genes": space.top_expressed(n_corr_genes),
    }
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

        real_cells = embed(real, real_mask, layer)
        syn_cells = embed(synthetic, syn_mask, synthetic_layer)
        if mmd_bandwidths is None:
            bandwidths = median_heuristic_bandwidths(real_cells.pcs, max_cells=max_cells, seed=seed)
        else:
            bandwidths = [float(b) for b in mmd_bandwidths]
        row["mmd_bandwidths"] = tuple(bandwidths)
        bandwidths_by_label[label] = list(bandwidths)

        row.update(_pair_metrics(real_cells, syn_cells, bandwidths, **opts))

        rng = np.random.default_rng(seed)
        floors = []
        for _ in range(n_floor_repeats):
            a, b = split_halves(row["n_real"], rng)
            floors.append(_pair_metrics(real_cells.take(a), real_cells.take(b), bandwidths, **opts))
        for metric in _PAIR_METRICS:
            row[_FLOOR_NAMES[metric]] = float(np.mean([f[metric] for f in floors]))

        if base_labels is not None and row["n_baseline"] >= 2:
            base_cells = embed(baseline, base_mask, synthetic_layer)
            base = _pair_metrics(real_cells, base_cells, bandwidths, **opts)
            row.update({f"baseline_{m}": v for m, v in base.items()})
            for metric in _SCORED:
                row[f"{metric}_score"] = _normalised_score(
                    row[metric],
                    row[_FLOOR_NAMES[metric]],
                    row[f"baseline_{metric}"],
                    metric in HIGHER_IS_BETTER,
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
            "n_corr_genes": int(min(n_corr_genes, space.n_genes)),
        }
    )
    return df


def summarize(df: pd.DataFrame, statistic: Literal["mean", "median"] = "mean") -> pd.Series:
    """Mean (or median) of each metric over the conditions that were not skipped.

    Parameters
    ----------
    df
        Output of :func:`compare_conditions` or :func:`~genvi.metrics.evaluate`.
    statistic
        ``"mean"`` (default) or ``"median"`` over the scored conditions. The median is the
        robust choice when a few small conditions have noisy scores.

    Returns
    -------
    pandas.Series
        ``n_conditions`` (scored), ``n_skipped``, then the mean (or median) of every metric
        column present (NaNs, e.g. a missing baseline for one condition, are ignored). For a
        table of :func:`~genvi.metrics.evaluate` with privacy, the privacy entries (``dcr_ratio``,
        ``close_fraction``, ``memorised`` as 0 / 1, ...) are the *pooled* values of
        ``df.attrs["privacy_overall"]``, not means over conditions, and so are
        ``membership_auroc``, ``membership_tpr_at_fpr`` and ``membership_donor_auroc`` (from
        ``df.attrs["membership"]``; NaN where not computed).
    """
    if statistic not in ("mean", "median"):
        raise ValueError(f"statistic must be 'mean' or 'median', got {statistic!r}.")
    scored = df[df["skipped"].isna()] if "skipped" in df.columns else df
    present = [c for c in METRIC_COLUMNS if c in df.columns]
    summary = {"n_conditions": float(len(scored)), "n_skipped": float(len(df) - len(scored))}
    values = scored[present].astype(np.float64)
    center = values.median(axis=0) if statistic == "median" else values.mean(axis=0)
    summary.update(center.to_dict())
    overall = df.attrs.get("privacy_overall") or {}
    for key, value in overall.items():
        if key != "skipped":
            summary[key] = float("nan") if value is None else float(value)
    mia = df.attrs.get("membership")
    if mia is not None:
        for key in ("auroc", "tpr_at_fpr", "donor_auroc"):
            value = mia.get(key)
            summary[f"membership_{key}"] = float("nan") if value is None else float(value)
    return pd.Series(summary, name=statistic)
