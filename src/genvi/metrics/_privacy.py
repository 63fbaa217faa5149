"""Privacy: distances of generated and held-out cells to their closest training cell."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from ._compare import LABEL_SEP, _check_keys, _condition_labels
from ._distances import _as_points
from ._space import ReferenceSpace

OVERALL = "(all)"
PRIVACY_COLUMNS = [
    "dcr_synthetic",
    "dcr_holdout",
    "dcr_ratio",
    "close_fraction",
    "close_expected",
    "close_limit",
    "memorised",
]


def distance_to_closest_record(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query point to its nearest reference point.

    Parameters
    ----------
    query
        Points of shape ``(n_query, d)``, e.g. generated cells in a reference PCA space.
    reference
        Points of shape ``(n_ref, d)``, e.g. the training cells.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_query,)``; 0 for a query that duplicates a reference point.
    """
    query = _as_points(query, "query", 1)
    reference = _as_points(reference, "reference", 1)
    if query.shape[1] != reference.shape[1]:
        raise ValueError(
            f"`query` and `reference` differ in dimension: {query.shape[1]} vs "
            f"{reference.shape[1]}."
        )
    nn = NearestNeighbors(n_neighbors=1).fit(reference)
    return nn.kneighbors(query, return_distance=True)[0][:, 0]


def close_limit(quantile: float, n_synthetic: int) -> float:
    """Largest ``close_fraction`` not flagged as memorisation.

    ``max(2 q, q + 3 sqrt(q (1 - q) / n))``: twice the expected fraction, and at least three
    binomial standard errors above it, so that small cohorts of genuinely new cells are not
    flagged by chance.

    Parameters
    ----------
    quantile
        The held-out DCR quantile ``q`` (the expected fraction).
    n_synthetic
        Number of synthetic cells the fraction is computed on.

    Returns
    -------
    float
        The threshold.
    """
    q = float(quantile)
    return float(max(2.0 * q, q + 3.0 * np.sqrt(q * (1.0 - q) / max(int(n_synthetic), 1))))


def _privacy_row(syn_dcr: np.ndarray, holdout_dcr: np.ndarray, quantile: float) -> dict:
    threshold = np.quantile(holdout_dcr, quantile)
    median_syn = float(np.median(syn_dcr))
    median_holdout = float(np.median(holdout_dcr))
    close = float(np.mean(syn_dcr < threshold))
    limit = close_limit(quantile, syn_dcr.size)
    return {
        "dcr_synthetic": median_syn,
        "dcr_holdout": median_holdout,
        # Held-out cells duplicating training cells (median 0) leave no scale for the ratio.
        "dcr_ratio": median_syn / median_holdout if median_holdout > 0 else float("nan"),
        "close_fraction": close,
        "close_expected": float(quantile),
        "close_limit": limit,
        "memorised": bool(close > limit),
    }


def privacy(
    train: ad.AnnData,
    holdout: ad.AnnData,
    synthetic: ad.AnnData,
    space: ReferenceSpace | None = None,
    condition_keys: str | Sequence[str] | None = None,
    quantile: float = 0.05,
    min_cells: int = 30,
    *,
    layer: str | None = None,
    synthetic_layer: str | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Distance to closest training record (DCR) of generated vs real held-out cells.

    Every generated cell and every held-out real cell is placed in the reference PCA space and
    its Euclidean distance to the nearest *training* cell is measured. Held-out cells were never
    seen by the model, so their DCRs show how close a genuinely new cell of the same
    distribution falls to the training set; a generator that copies (or nearly copies)
    training cells produces many smaller DCRs.

    - ``dcr_ratio`` = median DCR of synthetic cells / median DCR of held-out cells. About 1 for
      new cells of the right distribution, above 1 for generators that are off-distribution,
      well below 1 for memorisation.
    - ``close_fraction``: fraction of synthetic cells whose DCR is *below* the ``quantile``
      quantile of the held-out DCRs; for genuinely new cells it is about ``quantile``
      (``close_expected``). A quantile rather than the minimum of the held-out DCRs (the
      literal "closer than any held-out cell") keeps the threshold stable for small cohorts.
    - ``memorised``: ``close_fraction > close_limit`` with
      ``close_limit = max(2 q, q + 3 sqrt(q (1 - q) / n_synthetic))`` (see :func:`close_limit`).

    The check is a screen, not a proof: a generator that collapses onto the densest region of
    the data (too little variance) also produces small DCRs and can be flagged, and a
    generator that leaks training cells through other means than near-copies may pass.
    Compare like with like: per condition, synthetic and held-out cells of the same condition
    are compared (both against the whole training set), and the pooled ``"(all)"`` row is only
    meaningful when the synthetic cohort has the held-out mix of conditions.

    Parameters
    ----------
    train
        Real cells the model was trained on (counts in ``X`` or ``layer``).
    holdout
        Real cells *not* used for training, from the same distribution (counts in ``X`` or
        ``layer``).
    synthetic
        Generated cells (counts in ``X`` or ``synthetic_layer``).
    space
        Reference space; fitted on ``train`` (2,000 HVGs, 50 PCs) when ``None``.
    condition_keys
        ``obs`` columns defining conditions; ``None`` reports the pooled row only.
    quantile
        Held-out DCR quantile ``q`` in (0, 0.5] defining "close".
    min_cells
        Conditions with fewer held-out cells (or fewer than 2 synthetic cells) are skipped.
    layer
        Layer of ``train`` and ``holdout`` holding counts; ``None`` uses ``X``.
    synthetic_layer
        Layer of ``synthetic`` holding counts; ``None`` uses ``X``.
    seed
        Seed of the space fit when ``space`` is ``None``.

    Returns
    -------
    pandas.DataFrame
        One row per condition of ``holdout`` (label: values joined by ``"|"``) and a last row
        ``"(all)"`` pooling all cells, with columns: one per condition key, ``n_holdout``,
        ``n_synthetic``, ``dcr_synthetic``, ``dcr_holdout`` (medians, in PC units),
        ``dcr_ratio``, ``close_fraction``, ``close_expected``, ``close_limit``, ``memorised``
        (nullable boolean) and ``skipped`` (``None`` or the reason).
    """
    if not 0 < quantile <= 0.5:
        raise ValueError(f"`quantile` must lie in (0, 0.5], got {quantile}.")
    keys = (
        []
        if condition_keys is None
        else [condition_keys]
        if isinstance(condition_keys, str)
        else list(condition_keys)
    )
    if keys:
        _check_keys(holdout, keys, "holdout")
        _check_keys(synthetic, keys, "synthetic")
    if space is None:
        space = ReferenceSpace.fit(train, layer=layer, seed=seed)

    # One search for both sets: the same training index answers held-out and synthetic cells.
    queries = np.vstack(
        [space.transform(holdout, layer=layer), space.transform(synthetic, layer=synthetic_layer)]
    )
    dcr = distance_to_closest_record(queries, space.transform(train, layer=layer))
    holdout_dcr, syn_dcr = dcr[: holdout.n_obs], dcr[holdout.n_obs :]

    groups: list[tuple[str, dict, np.ndarray, np.ndarray]] = []
    if keys:
        hold_labels = _condition_labels(holdout.obs, keys).to_numpy()
        syn_labels = _condition_labels(synthetic.obs, keys).to_numpy()
        combos = holdout.obs[keys].dropna().drop_duplicates().sort_values(keys)
        for combo in combos.itertuples(index=False, name=None):
            label = LABEL_SEP.join(map(str, combo))
            groups.append(
                (label, dict(zip(keys, combo)), hold_labels == label, syn_labels == label)
            )
    all_hold = np.ones(holdout.n_obs, dtype=bool)
    all_syn = np.ones(synthetic.n_obs, dtype=bool)
    groups.append((OVERALL, dict.fromkeys(keys), all_hold, all_syn))

    rows, labels = [], []
    for label, values, hold_mask, syn_mask in groups:
        row: dict[str, object] = dict(values)
        row["n_holdout"] = int(hold_mask.sum())
        row["n_synthetic"] = int(syn_mask.sum())
        if row["n_holdout"] < max(min_cells, 2):
            row["skipped"] = f"{row['n_holdout']} held-out cells < min_cells={max(min_cells, 2)}"
        elif row["n_synthetic"] < 2:
            row["skipped"] = f"{row['n_synthetic']} synthetic cells (need at least 2)"
        else:
            row.update(_privacy_row(syn_dcr[syn_mask], holdout_dcr[hold_mask], quantile))
        rows.append(row)
        labels.append(label)

    columns = keys + ["n_holdout", "n_synthetic"] + PRIVACY_COLUMNS + ["skipped"]
    df = pd.DataFrame(rows, index=pd.Index(labels, name="condition"), columns=columns)
    numeric = [c for c in PRIVACY_COLUMNS if c != "memorised"]
    df[numeric] = df[numeric].astype(np.float64)
    df["memorised"] = df["memorised"].astype("boolean")
    df["skipped"] = df["skipped"].astype(object).where(df["skipped"].notna(), None)
    df.attrs.update(
        {
            "quantile": float(quantile),
            "min_cells": min_cells,
            "distance": "Euclidean, reference PCA space",
            "n_train": int(train.n_obs),
            "n_comps": space.n_comps,
        }
    )
    return df
