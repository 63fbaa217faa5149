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
and per depth bin of the gene (its mean count per cell in the condition's training cells)::

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
N_TOP_GENES = 2000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--max-epochs`` overrides every dataset's default)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, 0)
    parser.add_argument("--datasets", default="pbmc68k,pbmc3k,simulated")
    parser.add_argument("--n-samples", type=int, default=1000, help="model cells per condition")
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


def run_dataset(name: str, args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict]:
    """Per-condition, per-level, per-construction coverage rows of one dataset."""
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
    # held-out cells: one half recalibrates the conformal intervals, the other scores all four
    test_labels_all = labels.iloc[test_idx].reset_index(drop=True)
    cal_idx, eval_idx = _split(test_labels_all, 0.5, args.seed + 1)
    conformal = {
        construction: ConformalIntervals(
            model, test[cal_idx], by=by, n_samples=args.n_samples, seed=args.seed
        )
        for construction, by in (("conformal", "depth"), ("conformal_gene", "gene"))
    }
    test = test[eval_idx].copy()
    info = {
        "n_cells": adata.n_obs,
        "n_train": train.n_obs,
        "n_test": len(test_idx),
        "n_recalibration": int(conformal["conformal"].n_reference_),
        "conformal_depth_groups": conformal["conformal"].groups_.to_dict(orient="records"),
        "n_scored": test.n_obs,
        "genes": selection,
        "condition_keys": keys,
        "max_epochs": epochs,
        "train_seconds": round(seconds, 1),
    }
    print(f"{name}: {info}", flush=True)
    train_labels = labels.iloc[train_idx].to_numpy()
    test_labels = test_labels_all.to_numpy()[eval_idx]
    rows = []
    for label in sorted(set(test_labels)):
        cells = np.flatnonzero(test_labels == label)
        if len(cells) < MIN_CELLS:
            continue
        spec = dict(zip(keys, label.split("|")))
        real = dense(test.X[cells])
        values = transform_expression(real, "normalized", TARGET_SUM)
        step = count_step(real, "normalized", TARGET_SUM)
        depth = dense(train.X[np.flatnonzero(train_labels == label)]).mean(0)
        bins = np.digitize(depth, DEPTH_BINS[1:-1])
        for level in LEVELS:
            for construction in CONSTRUCTIONS:
                kwargs = dict(n_samples=args.n_samples, ci=level, target_sum=TARGET_SUM)
                if construction in conformal:
                    pred = conformal[construction].predict_with_confidence(
                        spec, seed=args.seed, **kwargs
                    )
                else:
                    pred = model.predict_with_confidence(
                        spec, seed=args.seed, interval=construction, **kwargs
                    )
                assert pred.attrs["interval"] == construction.split("_")[0]
                lower, upper = pred["lower"].to_numpy(), pred["upper"].to_numpy()
                per_gene = interval_coverage(
                    values, lower, upper, step=None if construction == "closed" else step
                )
                row = {
                    "dataset": name,
                    "condition": label,
                    "level": level,
                    "construction": construction,
                    "n_cells": len(cells),
                    "coverage": float(per_gene.mean()),
                }
                for b in range(len(DEPTH_BINS) - 1):
                    g = bins == b
                    row[f"coverage_bin{b}"] = float(per_gene[g].mean()) if g.any() else None
                    row[f"n_genes_bin{b}"] = int(g.sum())
                rows.append(row)
        print(f"  {label}: {len(cells)} held-out cells", flush=True)
    return rows, info


def report(df: pd.DataFrame) -> dict:
    """Print coverage per dataset, construction and level, overall and by depth bin."""
    summary: dict[str, Any] = {}
    bin_names = [f"{DEPTH_BINS[b]:g}-{DEPTH_BINS[b + 1]:g}" for b in range(len(DEPTH_BINS) - 1)]
    header = ["dataset", "construction", *[f"{lv:.0%}" for lv in LEVELS]]
    overall_rows = []
    for name, sub in df.groupby("dataset", sort=False):
        summary[name] = {}
        for construction in CONSTRUCTIONS:
            s = sub[sub["construction"] == construction]
            means = s.groupby("level")["coverage"].mean()
            overall_rows.append([name, construction, *[float(means[lv]) for lv in LEVELS]])
            summary[name][construction] = {
                "overall": {str(k): float(v) for k, v in means.items()},
                "by_depth_bin": {
                    bn: {
                        str(k): (None if pd.isna(v) else float(v))
                        for k, v in s.groupby("level")[f"coverage_bin{b}"].mean().items()
                    }
                    for b, bn in enumerate(bin_names)
                },
            }
        first = sub[(sub["construction"] == "closed") & (sub["level"] == LEVELS[0])]
        summary[name]["genes_per_bin_summed_over_conditions"] = {
            bn: int(first[f"n_genes_bin{b}"].sum()) for b, bn in enumerate(bin_names)
        }
    print("\n## Coverage of held-out cells (mean over conditions and all genes)\n")
    print(markdown_table(header, overall_rows))
    print("\n## By depth bin (gene's mean count per cell in its condition's training cells)\n")
    rows = []
    for name in summary:
        for construction in CONSTRUCTIONS:
            for bn in bin_names:
                v = summary[name][construction]["by_depth_bin"][bn]
                n = summary[name]["genes_per_bin_summed_over_conditions"][bn]
                rows.append([name, construction, bn, n, *[v.get(str(lv)) for lv in LEVELS]])
    print(markdown_table(["dataset", "construction", "depth bin", "genes", *header[2:]], rows))
    return summary


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
    summary = report(df)
    payload = {
        "benchmark": "intervals",
        "settings": {
            "levels": LEVELS,
            "constructions": CONSTRUCTIONS,
            "n_samples": args.n_samples,
            "seed": args.seed,
            "depth_bins_mean_count": [str(b) for b in DEPTH_BINS],
            "torch_threads": args.threads,
        },
        "datasets": infos,
        "summary": summary,
        "rows": df.to_dict(orient="records"),
        "machine": machine_info(),
    }
    if not args.no_write:
        print(f"\nwrote {write_json(payload, args.out)}")
    return payload


if __name__ == "__main__":
    main()
