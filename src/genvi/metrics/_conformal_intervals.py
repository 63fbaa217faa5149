"""Predictive intervals recalibrated on held-out cells (split-conformal quantile recalibration).

A model's interval for gene ``g`` is a pair of quantiles of its sampled cells. If the model's
distribution of ``g`` is too wide (on real PBMCs, deeply expressed genes: a VAE's dispersion also
absorbs what its latent misses) or too narrow, the nominal 50 % interval holds more or less than
half of new cells. Recalibration reads the model's distribution where real cells fall in it:
the probability integral transform (PIT) ``u = F_c(x)`` of each *reference* cell ``x`` (held out
of training) under the model's sampled distribution of its own condition ``c``, per gene, with
counts randomised as for the intervals themselves (``x + U``). For a calibrated model ``u`` is
uniform. Whatever the model, the interval between the model's quantiles at levels ``a`` and
``b``, the ``floor((m + 1) (1 - ci) / 2)``-th smallest and ``ceil((m + 1) (1 + ci) / 2)``-th
smallest of ``m`` reference PITs of a group, contains a new value exchangeable with them with
probability at least ``ci`` and at most ``ci + 2 / (m + 1)`` without ties (split conformal
prediction, Vovk et al. 2005; quantile recalibration, Kuleshov, Fenner & Ermon 2018). PITs are
grouped (Mondrian conformal) by the gene's depth in the condition (``by="depth"``, the model's
mean count per cell, doubling bins merged until each holds ``min_group`` PITs), so the
guarantee holds within every depth group on average over its gene-condition pairs; or per gene
(``by="gene"``, pooled over the reference cells' conditions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ._calibration import _model_keys
from ._compare import LABEL_SEP, _check_keys, _condition_labels
from ._space import _check_unique_genes, _get_counts

# PITs are order statistics of these transforms alike: normalised -> log1p is monotone per value
_SAME_ORDER = {"normalized": "linear", "log1p": "linear", "counts": "counts"}
GROUPINGS = ("depth", "gene")


class ConformalIntervals:
    """A model's predictive intervals, recalibrated on reference cells it did not train on.

    Wraps a trained genvi model (any with ``predict_with_confidence``) and returns, from
    :meth:`predict_with_confidence` (same signature as the model's), per-gene intervals that
    hold a share ``ci`` of new cells (at least ``ci``, at most ``ci + 2 / (m + 1)`` for a group
    of ``m`` reference values) whenever the new cells are exchangeable with the reference
    cells, drawn like them from the same conditions. This holds also where the model's own
    intervals are too wide or too narrow (on real PBMCs, deeply expressed genes); see the module
    docstring for the construction. :func:`genvi.metrics.calibration` measures it like a
    model's.

    Parameters
    ----------
    model
        A trained genvi model (PriorVI, DisentVI, HybridVI, LatentFlow, LatentDiffusion).
    reference
        Real cells of the model's conditions that it did **not** train on (e.g. half of a
        held-out split; cells it trained on sit closer to its distribution and make the
        intervals too narrow), counts in ``X`` (or ``layer``), the model's genes (any order,
        extra genes ignored) and the condition columns in ``obs``. Not modified.
    condition_keys
        ``obs`` columns defining each reference cell's condition; default the model's
        categorical condition keys (continuous keys are marginalised).
    by
        ``"depth"`` (default): one recalibration per depth group, the gene's mean count per
        cell under the model in the condition, so a deep gene of one condition is not
        recalibrated with the shallow cells of another; ``"gene"``: one per gene, pooled over
        the reference conditions (needs a few hundred reference cells).
    min_group
        ``by="depth"``: fewest PITs (cells x gene-condition pairs) per depth group; doubling
        bins of depth are merged until each holds this many.
    n_samples
        Cells the model samples per condition, here and by default in
        :meth:`predict_with_confidence`; PITs are multiples of ``1 / n_samples``.
    transform
        Scale of the intervals, ``"normalized"`` (default) or ``"log1p"`` (the same PITs,
        either can be asked later) or ``"counts"``.
    target_sum
        Total counts after normalisation.
    layer
        Layer of ``reference`` holding counts; ``None`` uses ``X``.
    seed
        Seed of the model's sampling (and of the reference counts' jitter).
    batch_size
        Cells decoded per forward pass.

    Attributes
    ----------
    groups_
        One row per group: ``group`` (gene name, or the depth range ``lo-hi`` in mean counts
        per cell), ``n_pits`` and, for ``by="depth"``, ``min_depth`` / ``max_depth``.
    n_reference_
        The number of reference cells used.
    conditions_
        The reference conditions (index, one level per condition key) and their cell counts
        (column ``n_cells``).

    Notes
    -----
    Fitting samples ``n_samples`` cells for every condition in ``reference`` and holds one PIT
    per reference cell and gene (4 bytes each). Where no finite interval holds ``ci`` of a
    group's reference values (they fall above all the model's samples too often), ``upper`` is
    ``inf``; below all samples, ``lower`` is 0 (``-inf`` for ``gene_likelihood="normal"``).

    Examples
    --------
    >>> conformal = genvi.metrics.ConformalIntervals(model, held_out_half)  # doctest: +SKIP
    >>> conformal.predict_with_confidence({"cell_type": "B cells"}, ci=0.9)  # doctest: +SKIP
    >>> genvi.metrics.calibration(conformal, other_half)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        reference: ad.AnnData,
        condition_keys: str | Sequence[str] | None = None,
        by: str = "depth",
        min_group: int = 1000,
        n_samples: int = 1000,
        transform: str = "normalized",
        target_sum: float = 1e4,
        layer: str | None = None,
        seed: int = 0,
        batch_size: int = 1024,
    ) -> None:
        if not callable(getattr(model, "_iter_confidence_draws", None)):
            raise TypeError(
                f"{type(model).__name__} does not sample predictive intervals; pass a trained "
                "genvi model (one with `predict_with_confidence`)."
            )
        if transform not in _SAME_ORDER:
            raise ValueError(f"transform must be one of {list(_SAME_ORDER)}, got {transform!r}.")
        if by not in GROUPINGS:
            raise ValueError(f"by must be one of {list(GROUPINGS)}, got {by!r}.")
        if int(n_samples) != n_samples or n_samples < 10:
            raise ValueError(f"n_samples must be an integer >= 10, got {n_samples!r}.")
        if int(min_group) != min_group or min_group < 1:
            raise ValueError(f"min_group must be a positive integer, got {min_group!r}.")
        self.model = model
        self.by = by
        self.min_group = int(min_group)
        self.n_samples = int(n_samples)
        self.transform = transform
        self.target_sum = float(target_sum)
        self.seed = seed
        self.batch_size = batch_size
        self.randomize = bool(model._samples_counts())
        self.condition_keys = _model_keys(model, condition_keys)
        self._fit(reference, layer)

    @property
    def _schema(self):
        """The wrapped model's condition schema (so the metrics read its keys)."""
        return self.model._schema

    @property
    def var_names_(self) -> pd.Index:
        """The model's genes, in the order of the intervals."""
        return pd.Index(self.model.var_names_, name="gene")

    # ------------------------------------------------------------------ fitting
    def _fit(self, reference: ad.AnnData, layer: str | None) -> None:
        """Reference PITs, grouped; sets ``_pits`` (sorted, per group) and the attributes."""
        keys = self.condition_keys
        _check_keys(reference, keys, "reference")
        _check_unique_genes(reference)
        genes = self.var_names_.astype(str)
        idx = reference.var_names.get_indexer(genes)
        if (idx < 0).any():
            missing = list(genes[idx < 0][:5])
            raise ValueError(
                f"{int((idx < 0).sum())} of the model's genes are missing from `reference` "
                f"(e.g. {missing}); pass cells with the model's genes."
            )
        labels = _condition_labels(reference.obs, keys).to_numpy()
        combos = reference.obs[keys].dropna().drop_duplicates().sort_values(keys)
        counts = _get_counts(reference, layer)
        rng = np.random.default_rng(self.seed)
        pits, depths, used, n_cells = [], [], [], []
        for combo in combos.itertuples(index=False, name=None):
            label = LABEL_SEP.join(map(str, combo))
            cells = np.flatnonzero(labels == label)
            spec = {k: str(v) for k, v in zip(keys, combo)}
            try:
                sampled, _, spread = self._draws(spec, self.n_samples, self.seed)
            except ValueError as err:
                raise ValueError(
                    f"The model cannot sample reference condition {spec}: {err} Drop these "
                    "cells from `reference`."
                ) from err
            x = counts[cells][:, idx]
            x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
            pits.append(self._pit(np.sort(spread, axis=0), x, rng).astype(np.float32))
            depths.append(sampled.mean(0))
            used.append(combo)
            n_cells.append(len(cells))
        if not pits:
            raise ValueError("`reference` has no cell with all condition keys set.")
        # the keys as index levels: any obs column name works, "n_cells" included
        index = pd.MultiIndex.from_tuples(used, names=keys)
        self.conditions_ = pd.DataFrame({"n_cells": n_cells}, index=index)
        self.n_reference_ = int(sum(p.shape[0] for p in pits))
        # PITs pooled over conditions count every reference cell once (the reference mix);
        # weighing conditions equally instead gave conditions of 2-3 reference cells the
        # weight of 100 (pbmc3k seed 1: deep genes 0.550 vs 0.540 at 50 %, shallow 0.475)
        if self.by == "gene":
            pooled = np.concatenate(pits)
            self._pits = [np.sort(pooled[:, g]) for g in range(pooled.shape[1])]
            self.groups_ = pd.DataFrame({"group": genes, "n_pits": pooled.shape[0]})
            return
        self._edges = self._depth_edges(depths, [p.shape[0] for p in pits])
        grouped: list[list[np.ndarray]] = [[] for _ in range(len(self._edges) + 1)]
        for pit, depth in zip(pits, depths):
            group = self._depth_group(depth)
            for b in np.unique(group):
                grouped[b].append(pit[:, group == b].ravel())
        self._pits = [np.sort(np.concatenate(g)) if g else np.empty(0) for g in grouped]
        bounds = np.concatenate([[0.0], self._edges, [np.inf]])
        self.groups_ = pd.DataFrame(
            {
                "group": [f"{lo:.3g}-{hi:.3g}" for lo, hi in zip(bounds[:-1], bounds[1:])],
                "n_pits": [len(p) for p in self._pits],
                "min_depth": bounds[:-1],
                "max_depth": bounds[1:],
            }
        )

    def _depth_edges(self, depths: list[np.ndarray], n_cells: list[int]) -> np.ndarray:
        """Upper edges of depth groups: doubling bins, merged until each has ``min_group``."""
        log_depth = np.concatenate([np.log2(np.maximum(d, 1e-6)) for d in depths])
        weight = np.concatenate([np.full(len(d), n) for d, n in zip(depths, n_cells)])
        grid = np.arange(np.floor(log_depth.min()), np.floor(log_depth.max()) + 2)
        edges: list[float] = []
        since_last = 0.0
        for lo, hi in zip(grid[:-1], grid[1:]):
            since_last += weight[(log_depth >= lo) & (log_depth < hi)].sum()
            if since_last >= self.min_group:
                edges.append(hi)
                since_last = 0.0
        if edges and since_last < self.min_group:  # the deepest rest joins the group below
            edges.pop()
        return 2.0 ** np.asarray(edges, dtype=np.float64)

    def _depth_group(self, depth: np.ndarray) -> np.ndarray:
        """Depth group of each gene from its mean sampled count per cell."""
        return np.searchsorted(self._edges, np.maximum(depth, 1e-6), side="right")

    def _draws(
        self, spec: dict, n_samples: int, seed: int | None, batch_size: int | None = None
    ) -> tuple[np.ndarray, ...]:
        """The model's ``(counts, values, spread)`` for one condition, as its intervals draw."""
        specs = self.model._schema.parse(spec)
        ((_, x, values, spread),) = self.model._iter_confidence_draws(
            specs,
            [n_samples],
            self._fit_transform(),
            self.target_sum,
            seed,
            self.batch_size if batch_size is None else batch_size,
            self.randomize,
        )
        return np.asarray(x, dtype=np.float64), values, spread

    def _fit_transform(self) -> str:
        # PITs and quantile levels are the same on the normalised and log1p scales
        return "counts" if self.transform == "counts" else "normalized"

    def _pit(self, sorted_spread: np.ndarray, x: np.ndarray, rng: np.random.Generator):
        """Fraction of the model's (jittered) values below each reference cell's, per gene."""
        from genvi._transforms import jittered_expression, transform_expression

        transform = self._fit_transform()
        if self.randomize:
            real = jittered_expression(x, transform, self.target_sum, rng)
        else:
            real = transform_expression(x, transform, self.target_sum)
        n = sorted_spread.shape[0]
        return np.stack(
            [
                np.searchsorted(sorted_spread[:, g], real[:, g], side="left") / n
                for g in range(real.shape[1])
            ],
            axis=1,
        )

    # ------------------------------------------------------------------ intervals
    def levels(self, ci: float) -> pd.DataFrame:
        """Per group (gene or depth group), the model's quantile levels that hold ``ci``.

        A calibrated model has ``lower ≈ (1 - ci) / 2`` and ``upper ≈ (1 + ci) / 2``; a
        model too wide for a group gets levels closer together, one too narrow further apart
        (0 or 1: the interval is open on that side). Rows follow :attr:`groups_`.
        """
        if not 0 < ci < 1:
            raise ValueError(f"ci must lie in (0, 1), got {ci}.")
        alpha = (1 - ci) / 2
        lower, upper = np.zeros(len(self._pits)), np.ones(len(self._pits))
        for i, pit in enumerate(self._pits):
            m = len(pit)
            k_lo = int(np.floor((m + 1) * alpha))
            k_hi = int(np.ceil((m + 1) * (1 - alpha)))
            if k_lo >= 1:
                lower[i] = pit[k_lo - 1]
            if k_hi <= m:
                upper[i] = pit[k_hi - 1]
        out = self.groups_.copy()
        out["lower"], out["upper"] = lower, upper
        return out

    def predict_with_confidence(
        self,
        conditions,
        n_samples: int | None = None,
        ci: float = 0.95,
        transform: str | None = None,
        target_sum: float | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """The model's :meth:`predict_with_confidence`, with recalibrated intervals.

        Parameters
        ----------
        conditions
            One condition (dict) or several (list / DataFrame).
        n_samples, seed
            Default: those given at construction (the same draws as the reference PITs).
        ci
            Central interval mass in (0, 1).
        transform
            ``"normalized"`` or ``"log1p"`` when built with either, ``"counts"`` when built with
            it; default: the construction's.
        target_sum
            Must equal the construction's (default).
        batch_size
            Cells decoded per forward pass; default the construction's.

        Returns
        -------
        DataFrame as the model's, ``attrs["interval"] == "conformal"`` (read by
        :func:`genvi.metrics.calibration` like randomised intervals for count models).
        """
        transform = self.transform if transform is None else transform
        if _SAME_ORDER.get(transform) != _SAME_ORDER[self.transform]:
            raise ValueError(
                f"These intervals were recalibrated with transform={self.transform!r}; "
                f"{transform!r} orders cells differently. Build ConformalIntervals with "
                f"transform={transform!r}."
            )
        if target_sum is not None and float(target_sum) != self.target_sum:
            raise ValueError(
                f"target_sum={target_sum} differs from the recalibration's {self.target_sum}."
            )
        levels = self.levels(ci)
        n_samples = self.n_samples if n_samples is None else n_samples
        seed = self.seed if seed is None else seed
        specs = self.model._schema.parse(conditions)
        frames = {}
        for spec in specs:
            # each condition drawn as in the recalibration: its own seeded stream
            draws = self._draws(spec, n_samples, seed, batch_size)
            label = self.model._schema.label(spec)
            frames[label] = self._interval_table(draws, levels, transform)
        if len(frames) == 1:
            return next(iter(frames.values()))
        out = pd.concat(frames, names=["condition", "gene"])
        out.attrs.update(interval="conformal", randomized=self.randomize)
        return out

    def _interval_table(
        self, draws: tuple[np.ndarray, np.ndarray, np.ndarray], levels: pd.DataFrame, transform: str
    ) -> pd.DataFrame:
        """One condition's interval table from its draws and the recalibrated levels.

        ``draws`` is :meth:`_draws`' ``(x, values, spread)``; ``benchmarks/intervals.py`` reuses
        one condition's draws for many levels and recalibrations.
        """
        x, values, spread = draws
        group = self._depth_group(x.mean(0)) if self.by == "depth" else slice(None)
        lo = levels["lower"].to_numpy()[group]
        hi = levels["upper"].to_numpy()[group]
        return self._summary(values, spread, lo, hi, transform)

    def _summary(self, values, spread, lo, hi, transform: str) -> pd.DataFrame:
        """Per-gene mean, sd and the interval between the model's quantiles at ``lo``, ``hi``."""
        n = spread.shape[0]
        ordered = np.sort(spread, axis=0)
        cols = np.arange(ordered.shape[1])
        # u >= a  <=>  at least ceil(a n) draws below;  u <= b  <=>  at most floor(b n)
        k_lo = np.ceil(lo * n - 1e-9).astype(int)
        k_hi = np.floor(hi * n + 1e-9).astype(int)
        floor = 0.0 if self.randomize else -np.inf
        lower = np.where(k_lo >= 1, ordered[np.clip(k_lo - 1, 0, n - 1), cols], floor)
        upper = np.where(k_hi < n, ordered[np.clip(k_hi, 0, n - 1), cols], np.inf)
        if transform == "log1p":  # values and spread are on the normalised scale
            values, lower, upper = np.log1p(values), np.log1p(lower), np.log1p(upper)
        df = pd.DataFrame(
            {
                "mean": values.mean(0),
                "std": values.std(0, ddof=1),
                "lower": lower,
                "upper": upper,
            },
            index=self.var_names_,
        )
        df.attrs.update(interval="conformal", randomized=self.randomize)
        return df
