"""One call from real and generated AnnData to every quality and privacy metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ._compare import compare_conditions
from ._membership import TooFewCellsError, membership_inference
from ._privacy import OVERALL, PRIVACY_COLUMNS, privacy
from ._space import ReferenceSpace


def evaluate(
    real: ad.AnnData,
    synthetic: ad.AnnData,
    condition_keys: str | Sequence[str],
    train: ad.AnnData | None = None,
    baseline: ad.AnnData | None = None,
    space: ReferenceSpace | None = None,
    min_cells: int = 30,
    seed: int = 0,
    *,
    n_top_genes: int = 2000,
    n_comps: int = 50,
    privacy_quantile: float = 0.05,
    donor_key: str | None = None,
    membership: bool = True,
    layer: str | None = None,
    synthetic_layer: str | None = None,
    **compare_kwargs: Any,
) -> pd.DataFrame:
    """Evaluate generated cells against real held-out cells, condition by condition.

    Runs the protocol of the project's ``BENCHMARKS.md`` in one call: a reference PCA space
    (``n_top_genes`` HVGs, ``normalize_total`` + ``log1p``, ``n_comps`` PCs), then
    :func:`~genvi.metrics.compare_conditions` (energy distance, RBF-MMD² with the stated
    bandwidths, classifier AUROC, per-gene mean / variance R² and Pearson r, gene-gene
    correlation distance on the 200 most expressed genes, zero-fraction distance, library-size
    distance, count-profile classifier AUROC; each with its real-vs-real noise floor, and
    normalised scores when ``baseline`` is given), and, when ``train`` is given,
    :func:`~genvi.metrics.privacy` per condition and overall and
    :func:`~genvi.metrics.membership_inference` on all cells (members: ``train``, non-members:
    ``real``).

    Which cells the space is fitted on matters. With ``train`` (the protocol), the space is
    fixed before any held-out or generated cell is seen, every generator is judged in the same
    coordinates and the privacy distances are not biased towards the held-out cells. Without
    ``train`` the space is fitted on ``real`` itself: its axes then follow the variation of the
    held-out cells, which slightly favours structure present in ``real`` and makes values
    not comparable with tables computed on another space; fine for a quick look, not for
    reported numbers.

    Parameters
    ----------
    real
        Real held-out cells (never used for training): counts in ``X`` (or ``layer``) and the
        ``condition_keys`` in ``obs``.
    synthetic
        Generated cells, counts in ``X`` (or ``synthetic_layer``), same condition columns.
    condition_keys
        One or several ``obs`` columns defining a condition.
    train
        Real training cells (counts in ``X`` or ``layer``). Fits the space and enables the
        privacy columns.
    baseline
        Optional second generator scored the same way; adds ``baseline_<metric>`` and
        ``<metric>_score`` columns.
    space
        A fitted :class:`~genvi.metrics.ReferenceSpace`; overrides the fitting above.
    min_cells
        Conditions with fewer real cells get a ``skipped`` reason and NaN metrics.
    seed
        Seed of the space fit, subsampling, floor splits and classifier folds.
    n_top_genes
        HVGs of the fitted space.
    n_comps
        Principal components of the fitted space.
    privacy_quantile
        Held-out DCR quantile defining a "close" synthetic cell (see
        :func:`~genvi.metrics.privacy`).
    donor_key
        ``obs`` column of ``train`` and ``real`` naming donors: adds the donor-level
        membership-inference AUROC (meaningful when the split is by donors).
    membership
        Run :func:`~genvi.metrics.membership_inference` when ``train`` is given. It fits its
        own space on the training and held-out cells together (not ``space``: a space fitted on
        the training cells alone biases the distance attack, see there).
    layer
        Layer of ``real`` and ``train`` holding counts; ``None`` uses ``X``.
    synthetic_layer
        Layer of ``synthetic`` and ``baseline`` holding counts; ``None`` uses ``X``.
    **compare_kwargs
        Passed to :func:`~genvi.metrics.compare_conditions` (``max_cells``,
        ``n_floor_repeats``, ``classifier``, ``mmd_bandwidths``, ``n_corr_genes``).

    Returns
    -------
    pandas.DataFrame
        The table of :func:`~genvi.metrics.compare_conditions` (one row per real condition,
        see there for the metric columns) and, with ``train``, the per-condition privacy
        columns ``dcr_synthetic``, ``dcr_holdout``, ``dcr_ratio``, ``close_fraction``,
        ``close_expected``, ``close_limit``, ``memorised`` (NaN / NA where skipped).
        ``df.attrs`` holds the settings, ``space_fitted_on`` (``"train"``, ``"real"`` or
        ``"given"``) and, with ``train``, ``privacy_overall``: the same privacy values pooled
        over all cells, and ``membership``: the dict of
        :func:`~genvi.metrics.membership_inference` (or ``{"skipped": reason}`` when there are
        too few cells). :func:`~genvi.metrics.summarize` condenses the table to one row.
    """
    if space is None:
        fitted_on = "real" if train is None else "train"
        space = ReferenceSpace.fit(
            real if train is None else train,
            n_top_genes=n_top_genes,
            n_comps=n_comps,
            layer=layer,
            seed=seed,
        )
    else:
        fitted_on = "given"
    df = compare_conditions(
        real,
        synthetic,
        condition_keys,
        space,
        min_cells=min_cells,
        seed=seed,
        baseline=baseline,
        layer=layer,
        synthetic_layer=synthetic_layer,
        **compare_kwargs,
    )
    attrs = dict(df.attrs)
    attrs["space_fitted_on"] = fitted_on
    if train is not None:
        priv = privacy(
            train,
            real,
            synthetic,
            space,
            condition_keys=df.attrs["condition_keys"],
            quantile=privacy_quantile,
            min_cells=min_cells,
            layer=layer,
            synthetic_layer=synthetic_layer,
        )
        overall = priv.loc[OVERALL]
        df = df.join(priv.loc[priv.index != OVERALL, PRIVACY_COLUMNS])
        attrs["privacy_overall"] = {
            c: (None if pd.isna(overall[c]) else _plain(overall[c])) for c in PRIVACY_COLUMNS
        }
        attrs["privacy_overall"]["skipped"] = overall["skipped"]
        attrs["privacy"] = dict(priv.attrs)
        if membership:
            try:
                attrs["membership"] = membership_inference(
                    synthetic,
                    train,
                    real,
                    donor_key=donor_key,
                    layer=layer,
                    synthetic_layer=synthetic_layer,
                    seed=seed,
                )
            except TooFewCellsError as err:
                attrs["membership"] = {"skipped": str(err)}
    df.attrs = attrs
    return df


def _plain(value: Any) -> Any:
    """Return numpy scalars as Python scalars, so that ``attrs`` serialise to JSON."""
    return value.item() if isinstance(value, np.generic) else value
