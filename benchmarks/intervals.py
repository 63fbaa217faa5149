"""Calibration of predictive intervals: closed, randomised and conformal, per level and dataset.

For each dataset a conditional PriorVI is trained on 80 % of the cells (stratified by
condition, ``genvi demo``'s split; 2,000 highly variable genes of the training cells as in the
demo). The held-out cells are split in two halves, stratified by condition: one recalibrates
the conformal intervals, the other is scored. For every condition with at least 10 scored
cells, ``predict_with_confidence`` draws ``n_samples`` cells from p(x | c) and each gene's
central interval at 50 / 80 / 90 / 95 % is compared with the scored cells of that condition on
the normalised scale (counts / total * 10,000), with every construction from the same sampled
cells (same seed):

- ``closed``: empirical quantiles of the sampled values, a real value on an endpoint counts
  as inside (``interval="closed"``; genvi's only construction before 0.1.0);
- ``randomized``: the continuous extension of counts (``interval="randomized"``, the
  default): quantiles of ``(x + U) / total * 1e4``, ``U ~ Uniform[0, 1)``; a real count
  counts for the fraction of ``[x, x + 1)`` inside, its expected coverage over the jitter
  (``genvi.metrics.interval_coverage(..., step=)``, as ``genvi.metrics.calibration`` reads
  these intervals);
- ``conformal``: ``genvi.metrics.ConformalIntervals`` (default ``by="depth"``) built on the
  other half: per depth group of gene-condition pairs, the model's quantile levels that hold
  the nominal share of those cells' randomised PITs, read like the randomised intervals;
  ``conformal_gene``: the same per gene (``by="gene"``), pooled over conditions.

Coverage is the mean over conditions of the mean over *all* genes (no expression filter),
and per depth bin of the gene (its mean count per cell in the condition's training cells).

One halving scores only half of the held-out cells, and a deep bin holds few gene-condition
pairs (pbmc68k: about 30, of 10-24 cells each), so its coverage moves by about 3 points
(bootstrap standard error over the scored cells) from one halving to the next. The
*cross-fitted* estimate therefore halves the held-out cells ``--splits`` times (the first
halving is the one above), lets each half recalibrate for the other, and averages every
cell's coverage over the evaluations that scored it; its standard error (``_se``) resamples
the held-out cells within conditions. ``pooled`` weighs each (cell, gene) pair of a bin
equally instead of each condition (the weighting of the conformal guarantee)::

    python benchmarks/intervals.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RESULTS_DIR,
    add_common_args,
    load_dataset,
    machine_info,
    markdown_table,
    quiet,
    set_threads,
    write_json,
)

LEVELS = (0.5, 0.8, 0.9, 0.95)
CONSTRUCTIONS = ("closed", "randomized", "conformal", "conformal_gene")
DEPTH_BINS = (0.0, 0.1, 1.0, 10.0, np.inf)  # mean count per cell (training cells)
DATASETS = {
    # name: (condition keys, default epochs)
    "pbmc68k": (["cell_type"], 300),
    "pbmc3k": (["cell_type_coarse"], 150),
    "simulated": (["cell_type", "treatment"], 300),
}
MIN_CELLS = 10
TARGET_SUM = 1e4
SPLIT_SEED_STEP = 100  # halving k uses seed + 1 + 100 k (k = 0: the single split)
N_BOOTSTRAP = 200
N_TOP_GENES = 2000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--max-epochs`` overrides every dataset's default)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, 0)
    parser.add_argument("--datasets", default="pbmc68k,pbmc3k,simulated")
    parser.add_argument("--n-samples", type=int, default=1000, help="model cells per condition")
    parser.add_argument(
        "--splits", type=int, default=4, help="halvings of the held-out cells (cross-fitting)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "intervals.json")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = set(args.datasets) - set(DATASETS)
    if unknown:
        parser.error(f"unknown datasets {sorted(unknown)}; choose from {sorted(DATASETS)}")
    return args


def load(name: str, data_dir: Path):
    """The dataset as AnnData with integer counts in ``X``."""
    import genvi

    if name == "pbmc68k":
        return genvi.data.pbmc68k()
    if name == "simulated":
        return genvi.data.simulate(n_cells=2000, n_genes=200, seed=0)
    return load_dataset(data_dir, "pbmc3k_labeled.h5ad")


def dense(x) -> np.ndarray:
    """Dense float64 rows."""
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def train_model(train, keys: list[str], epochs: int, seed: int):
    """Conditional PriorVI with default settings; returns the model and training seconds."""
    import scvi

    from genvi.model import PriorVI

    scvi.settings.seed = seed
    PriorVI.setup_anndata(train, condition_keys=keys)
    model = PriorVI(train)
    start = time.perf_counter()
    model.train(max_epochs=epochs, enable_progress_bar=False)
    return model, time.perf_counter() - start


def conformal_bounds(conformal, draws: tuple, level: float) -> tuple[np.ndarray, np.ndarray]:
    """``conformal.predict_with_confidence``'s bounds from draws made once per condition.

    The draws do not depend on the recalibration (same model, seed and sample count), so every
    halving and level reuses them; :func:`run_dataset` asserts equality with the public call.
    """
    table = conformal._interval_table(draws, conformal.levels(level), "normalized")
    return table["lower"].to_numpy(), table["upper"].to_numpy()


def run_dataset(name: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict]:
    """Per-evaluation, per-condition, per-level, per-construction coverage of one dataset.

    Each row holds the scored cells' coverage per depth bin, one value per cell (lists), so
    that :func:`report` can average over evaluations and bootstrap over cells.
    """
    from genvi._demo import _select_genes, _split
    from genvi._transforms import count_step, transform_expression
    from genvi.metrics import ConformalIntervals, interval_coverage

    keys, default_epochs = DATASETS[name]
    epochs = args.max_epochs or default_epochs
    adata = load(name, args.data_dir)
    labels = adata.obs[keys].astype(str).agg("|".join, axis=1)
    train_idx, test_idx = _split(labels, 0.2, args.seed)
    genes, selection = _select_genes(adata[train_idx], N_TOP_GENES, args.seed)
    train = adata[train_idx][:, genes].copy()
    test = adata[test_idx][:, genes].copy()
    model, seconds = train_model(train, keys, epochs, args.seed)
    test_labels = labels.iloc[test_idx].reset_index(drop=True)
    train_labels = labels.iloc[train_idx].to_numpy()
    kwargs = dict(n_samples=args.n_samples, target_sum=TARGET_SUM, seed=args.seed)
    own: dict[tuple[str, str, float], tuple[np.ndarray, np.ndarray]] = {}  # model's intervals
    draws: dict[str, tuple] = {}  # the model's draws per condition, shared by all halvings
    bins: dict[str, np.ndarray] = {}
    rows, info = [], {}
    evaluation = 0
    for split in range(args.splits):
        # held-out cells: one half recalibrates the conformal intervals, the other is scored
        halves = _split(test_labels, 0.5, args.seed + 1 + SPLIT_SEED_STEP * split)
        for cal_idx, eval_idx in (halves, halves[::-1]):
            conformal = {
                construction: ConformalIntervals(
                    model, test[cal_idx], by=by, n_samples=args.n_samples, seed=args.seed
                )
                for construction, by in (("conformal", "depth"), ("conformal_gene", "gene"))
            }
            if evaluation == 0:
                info = {
                    "n_cells": adata.n_obs,
                    "n_train": train.n_obs,
                    "n_test": len(test_idx),
                    "n_recalibration": int(conformal["conformal"].n_reference_),
                    "conformal_depth_groups": conformal["conformal"].groups_.to_dict(
                        orient="records"
                    ),
                    "n_scored": len(eval_idx),
                    "n_evaluations": 2 * args.splits,
                    "genes": selection,
                    "condition_keys": keys,
                    "max_epochs": epochs,
                    "train_seconds": round(seconds, 1),
                }
                print(f"{name}: {info}", flush=True)
            scored = test[eval_idx]
            scored_labels = test_labels.to_numpy()[eval_idx]
            for label in sorted(set(scored_labels)):
                cells = np.flatnonzero(scored_labels == label)
                if len(cells) < MIN_CELLS:
                    continue
                spec = dict(zip(keys, label.split("|")))
                real = dense(scored.X[cells])
                values = transform_expression(real, "normalized", TARGET_SUM)
                step = count_step(real, "normalized", TARGET_SUM)
                if label not in draws:
                    draws[label] = conformal["conformal"]._draws(spec, args.n_samples, args.seed)
                    depth = dense(train.X[np.flatnonzero(train_labels == label)]).mean(0)
                    bins[label] = np.digitize(depth, DEPTH_BINS[1:-1])
                for level in LEVELS:
                    for construction in CONSTRUCTIONS:
                        if construction in conformal:
                            lower, upper = conformal_bounds(
                                conformal[construction], draws[label], level
                            )
                            if evaluation == 0 and level == LEVELS[0]:
                                pred = conformal[construction].predict_with_confidence(
                                    spec, ci=level, **kwargs
                                )
                                assert pred.attrs["interval"] == "conformal"
                                np.testing.assert_array_equal(pred["lower"].to_numpy(), lower)
                                np.testing.assert_array_equal(pred["upper"].to_numpy(), upper)
                        else:
                            if (label, construction, level) not in own:
                                pred = model.predict_with_confidence(
                                    spec, interval=construction, ci=level, **kwargs
                                )
                                assert pred.attrs["interval"] == construction
                                own[label, construction, level] = (
                                    pred["lower"].to_numpy(),
                                    pred["upper"].to_numpy(),
                                )
                            lower, upper = own[label, construction, level]
                        # per cell and gene (the first axis of values[None] is averaged away)
                        covered = interval_coverage(
                            values[None],
                            lower,
                            upper,
                            step=None if construction == "closed" else step[None],
                        )
                        row = {
                            "dataset": name,
                            "evaluation": evaluation,
                            "condition": label,
                            "level": level,
                            "construction": construction,
                            "n_cells": len(cells),
                            "coverage": float(covered.mean()),
                            "cell_ids": eval_idx[cells].tolist(),  # held-out cell numbers
                        }
                        for b in range(len(DEPTH_BINS) - 1):
                            g = bins[label] == b
                            row[f"n_genes_bin{b}"] = int(g.sum())
                            row[f"cells_bin{b}"] = (
                                covered[:, g].mean(1).tolist() if g.any() else None
                            )
                        rows.append(row)
                if evaluation == 0:
                    print(f"  {label}: {len(cells)} held-out cells", flush=True)
            evaluation += 1
    return rows, info


def bin_names() -> list[str]:
    """Depth bins as ``lo-hi`` strings."""
    return [f"{DEPTH_BINS[b]:g}-{DEPTH_BINS[b + 1]:g}" for b in range(len(DEPTH_BINS) - 1)]


def crossfit(sub: pd.DataFrame, b: int, rng: np.random.Generator) -> tuple[dict, dict, dict]:
    """Cross-fitted coverage of one construction and depth bin, per level: mean, SE, pooled.

    Every held-out cell of a condition is scored in some evaluations (one per halving where its
    half has ``MIN_CELLS`` of the condition); its coverage is averaged over them, then over the
    condition's cells (bootstrap SE: cells resampled within conditions), then over conditions;
    ``pooled`` weighs conditions by their cells x genes of the bin.
    """
    col = f"cells_bin{b}"
    mean, se, pooled = {}, {}, {}
    for level, rows in sub[sub[col].notna()].groupby("level"):
        per_condition = {}
        for condition, cond_rows in rows.groupby("condition"):
            # each held-out cell's mean over the evaluations that scored it
            ids = np.concatenate([np.asarray(v) for v in cond_rows["cell_ids"]])
            values = np.concatenate([np.asarray(v) for v in cond_rows[col]])
            _, inverse = np.unique(ids, return_inverse=True)
            per_cell = np.bincount(inverse, values) / np.bincount(inverse)
            per_condition[condition] = (per_cell, int(cond_rows[f"n_genes_bin{b}"].iloc[0]))
        if not per_condition:
            continue
        means = [v.mean() for v, _ in per_condition.values()]
        boot = [
            np.mean([v[rng.integers(0, len(v), len(v))].mean() for v, _ in per_condition.values()])
            for _ in range(N_BOOTSTRAP)
        ]
        weights = [len(v) * n for v, n in per_condition.values()]
        mean[str(level)] = float(np.mean(means))
        se[str(level)] = float(np.std(boot))
        pooled[str(level)] = float(np.average(means, weights=weights))
    return mean, se, pooled


def report(df: pd.DataFrame, seed: int) -> dict:
    """Print coverage per dataset, construction and level, overall and by depth bin."""
    summary: dict[str, Any] = {}
    names = bin_names()
    header = ["dataset", "construction", *[f"{lv:.0%}" for lv in LEVELS]]
    overall_rows = []
    rng = np.random.default_rng(seed)
    for name, everything in df.groupby("dataset", sort=False):
        summary[name] = {}
        sub_all = everything
        sub = everything[everything["evaluation"] == 0]
        for construction in CONSTRUCTIONS:
            s = sub[sub["construction"] == construction]
            means = s.groupby("level")["coverage"].mean()
            overall_rows.append([name, construction, *[float(means[lv]) for lv in LEVELS]])
            by_bin = {}
            for b, bn in enumerate(names):
                per_condition = s.assign(
                    cov=[np.nan if v is None else float(np.mean(v)) for v in s[f"cells_bin{b}"]]
                )
                by_bin[bn] = {
                    str(k): (None if pd.isna(v) else float(v))
                    for k, v in per_condition.groupby("level")["cov"].mean().items()
                }
            fitted = [
                crossfit(sub_all[sub_all["construction"] == construction], b, rng)
                for b in range(len(names))
            ]
            summary[name][construction] = {
                "overall": {str(k): float(v) for k, v in means.items()},
                "by_depth_bin": by_bin,
                "crossfit_by_depth_bin": {bn: f[0] for bn, f in zip(names, fitted)},
                "crossfit_by_depth_bin_se": {bn: f[1] for bn, f in zip(names, fitted)},
                "crossfit_by_depth_bin_pooled": {bn: f[2] for bn, f in zip(names, fitted)},
            }
        first = sub[(sub["construction"] == "closed") & (sub["level"] == LEVELS[0])]
        summary[name]["genes_per_bin_summed_over_conditions"] = {
            bn: int(first[f"n_genes_bin{b}"].sum()) for b, bn in enumerate(names)
        }
    print("\n## Coverage of held-out cells, first halving (mean over conditions and all genes)\n")
    print(markdown_table(header, overall_rows))
    print("\n## By depth bin (gene's mean count per cell in its condition's training cells)\n")
    rows = []
    for name in summary:
        for construction in CONSTRUCTIONS:
            for bn in names:
                v = summary[name][construction]["by_depth_bin"][bn]
                n = summary[name]["genes_per_bin_summed_over_conditions"][bn]
                rows.append([name, construction, bn, n, *[v.get(str(lv)) for lv in LEVELS]])
    print(markdown_table(["dataset", "construction", "depth bin", "genes", *header[2:]], rows))
    print("\n## Cross-fitted by depth bin: mean ± bootstrap SE (pooled over cells x genes)\n")
    rows = []
    for name in summary:
        for construction in CONSTRUCTIONS:
            part = summary[name][construction]
            for bn in names:
                mean = part["crossfit_by_depth_bin"][bn]
                se = part["crossfit_by_depth_bin_se"][bn]
                pooled = part["crossfit_by_depth_bin_pooled"][bn]
                cells = [
                    f"{mean[str(lv)]:.3f} ± {se[str(lv)]:.3f} ({pooled[str(lv)]:.3f})"
                    if str(lv) in mean
                    else "n/a"
                    for lv in LEVELS
                ]
                rows.append([name, construction, bn, *cells])
    print(markdown_table(["dataset", "construction", "depth bin", *header[2:]], rows))
    return summary


def rows_for_json(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows with each bin's mean coverage in place of its per-cell values."""
    out = df.copy()
    for b in range(len(DEPTH_BINS) - 1):
        col = f"cells_bin{b}"
        out[f"coverage_bin{b}"] = [None if v is None else float(np.mean(v)) for v in out[col]]
        out = out.drop(columns=col)
    return out.drop(columns="cell_ids").to_dict(orient="records")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, predict, measure coverage; print the tables and write the JSON."""
    args = parse_args(argv)
    quiet()
    set_threads(args.threads)
    rows: list[dict[str, Any]] = []
    infos = {}
    for name in args.datasets:
        dataset_rows, infos[name] = run_dataset(name, args)
        rows.extend(dataset_rows)
    df = pd.DataFrame(rows)
    summary = report(df, args.seed)
    payload = {
        "benchmark": "intervals",
        "settings": {
            "levels": LEVELS,
            "constructions": CONSTRUCTIONS,
            "n_samples": args.n_samples,
            "seed": args.seed,
            "splits": args.splits,
            "split_seeds": [args.seed + 1 + SPLIT_SEED_STEP * k for k in range(args.splits)],
            "depth_bins_mean_count": [str(b) for b in DEPTH_BINS],
            "torch_threads": args.threads,
        },
        "datasets": infos,
        "summary": summary,
        # per-cell lists stay out of the JSON: per evaluation, condition, level, construction
        "rows": rows_for_json(df),
        "machine": machine_info(),
    }
    if not args.no_write:
        print(f"\nwrote {write_json(payload, args.out)}")
    return payload


if __name__ == "__main__":
    main()
