"""The README's main job: train, generate, evaluate and plot on one dataset."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

# Modest: 4 levels x every condition, and the demo must stay a few minutes on 2 CPU cores.
CALIBRATION_SAMPLES = 200
# Genes below 1 count per 10,000 (predicted mean) have intervals like [0, 0]: their coverage
# is inflated by the discreteness of counts, not informative about calibration.
CALIBRATION_MIN_MEAN = 1.0
# Default number of optimiser steps (minibatches of 128 cells): ~400 epochs on the embedded
# 700 cells, fewer passes on larger data, so the demo stays a few minutes on 2 cores.
DEFAULT_STEPS = 2500
# Verdicts of the normalised score (model - floor) / (baseline - floor): 0 = as good as real
# cells, 1 = no better than ignoring the condition.
GOOD, BORDERLINE = 0.2, 0.5
# Interval coverage within this many points of nominal is "calibrated".
COVERAGE_TOLERANCE = 0.03

FIELDS = {
    "genvi_version": "genvi version that wrote this file",
    "data": "input data",
    "condition_keys": "obs columns that define a condition",
    "prior": "PriorVI prior",
    "decode_conditions": "whether PriorVI's decoder also sees the conditions",
    "max_epochs": "training epochs",
    "n_train": "training cells (80% of each condition by default)",
    "n_test": "held-out real cells, never seen in training; generated cells are compared to them",
    "n_genes": "genes the model was trained on",
    "gene_selection": "how the genes were chosen",
    "train_seconds": "training time (wall clock)",
    "summary": "means over the scored conditions; privacy entries are pooled over all cells",
    "verdicts": "per metric: good / borderline / poor, with the numbers behind the verdict",
    "skipped_conditions": "conditions not scored, with the reason",
    "per_condition": "every metric per condition (see genvi.metrics.compare_conditions)",
    "metric_definitions": "what each summary metric measures and which direction is better",
    "baseline": "the reference that the normalised scores compare against",
    "mmd_bandwidths": "RBF bandwidths of the MMD",
    "reference_space": "the PCA space every distance is computed in",
    "privacy": "distance to the closest training cell (DCR) of generated vs held-out cells",
    "calibration": "coverage of predict_with_confidence intervals on held-out cells",
}

METRICS = {
    "energy": "energy distance in the 50-PC space (0 = same distribution; the unbiased estimate "
    "can be slightly negative, which is noise)",
    "c2st_auroc": "AUROC of a classifier telling generated from real cells (0.5 = cannot tell)",
    "mean_r2": "R² of per-gene means, log-normalised (1 = identical)",
    "var_r2": "R² of per-gene variances, log-normalised (1 = identical)",
    "corr_dist": "distance between gene-gene correlation matrices (0 = identical)",
    "zero_frac_dist": "mean absolute difference of per-gene zero fractions (0 = identical)",
    "library_dist": "distance between library-size distributions (0 = identical)",
}


def _log(message: str) -> None:
    """Progress and tables go to stderr; stdout carries only the final JSON."""
    print(message, file=sys.stderr, flush=True)


def _split(labels: pd.Series, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices; conditions with one cell stay in training."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for _, idx in labels.groupby(labels, observed=True).indices.items():
        idx = rng.permutation(idx)
        n_test = int(round(len(idx) * test_fraction)) if len(idx) > 1 else 0
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(train), np.sort(test)


def _select_genes(train, n_top_genes: int | None, seed: int) -> tuple[np.ndarray, str]:
    """Highly variable genes of the training cells (all genes with ``n_top_genes`` None/0)."""
    from genvi.metrics._space import _select_hvgs

    if not n_top_genes or train.n_vars <= n_top_genes:
        return np.ones(train.n_vars, dtype=bool), f"all {train.n_vars} genes"
    mask, flavor = _select_hvgs(train.X, train.var_names, n_top_genes, 1e4)
    return mask, f"{int(mask.sum())} highly variable of {train.n_vars} genes (scanpy {flavor})"


def _epoch_timer(max_epochs: int):
    """A Lightning callback that prints the expected training time after the first epoch."""
    import lightning.pytorch as pl

    class EpochTimer(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 0:
                self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            if trainer.current_epoch == 0:
                seconds = time.perf_counter() - self.start
                _log(
                    f"first epoch took {seconds:.1f} s: about {seconds * max_epochs / 60:.1f} "
                    f"min for {max_epochs} epochs"
                )

    return EpochTimer()


def _unconditional_baseline(train, synthetic, keys: list[str], seed: int):
    """Training cells drawn regardless of condition, labelled like the generated cells.

    The "no better than ignoring the condition" reference of the normalised scores.
    """
    import anndata as ad

    rng = np.random.default_rng(seed)
    idx = rng.choice(train.n_obs, size=synthetic.n_obs, replace=True)
    obs = synthetic.obs[keys].copy()
    obs.index = [f"baseline_{i}" for i in range(len(obs))]
    return ad.AnnData(X=train.X[idx], obs=obs, var=train.var[[]].copy())


def _verdicts(summary: pd.Series) -> dict:
    """A verdict per metric from the means over conditions.

    normalised score = (model - floor) / (baseline - floor) for distances, the mirror image
    for agreement (R²) metrics: 0 = as good as two halves of the real cells, 1 = no better
    than ignoring the condition; a model at or beyond the floor counts as good. A metric
    whose baseline is not worse than its floor cannot tell anything apart on these cells.
    """
    from genvi.metrics._compare import HIGHER_IS_BETTER

    out = {}
    for metric, meaning in METRICS.items():
        if metric not in summary:
            continue
        floor_key = "c2st_floor" if metric == "c2st_auroc" else f"{metric}_floor"
        model, floor = float(summary[metric]), float(summary.get(floor_key, np.nan))
        baseline = float(summary.get(f"baseline_{metric}", np.nan))
        sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
        gap_model, gap_baseline = sign * (model - floor), sign * (baseline - floor)
        if not (math.isfinite(gap_model) and math.isfinite(gap_baseline)):
            verdict, score = "n/a", float("nan")
        elif gap_baseline <= 0:
            verdict, score = "uninformative (baseline at the noise floor)", float("nan")
        else:
            score = gap_model / gap_baseline
            verdict = "good" if score <= GOOD else "borderline" if score <= BORDERLINE else "poor"
        out[metric] = {
            "verdict": verdict,
            "model": _num(model),
            "floor": _num(floor),
            "baseline": _num(baseline),
            "normalised_score": _num(score),
            "meaning": meaning,
        }
    return out


def _coverage_verdicts(coverage: pd.Series) -> dict:
    out = {}
    for level, cov in coverage.items():
        gap = float(cov) - float(level)
        if abs(gap) <= COVERAGE_TOLERANCE:
            verdict = "calibrated"
        else:
            verdict = "intervals too wide" if gap > 0 else "intervals too narrow"
        out[f"{float(level):g}"] = {"observed": float(cov), "verdict": verdict}
    return out


def _num(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def run_demo(
    adata_path: Path | None = None,
    condition_keys: Sequence[str] = ("cell_type",),
    layer: str | None = None,
    out: Path = Path("genvi_demo"),
    prior: str = "gaussian",
    max_epochs: int | None = None,
    test_fraction: float = 0.2,
    min_cells: int = 10,
    seed: int = 0,
    progress: bool = True,
    n_top_genes: int | None = 2000,
    decode_conditions: bool = False,
) -> dict:
    """Train PriorVI, generate held-out-sized cohorts per condition, evaluate and plot.

    Quality and privacy come from :func:`genvi.metrics.evaluate` (space fitted on the training
    cells, which also enables the privacy check), with training cells drawn regardless of the
    condition as the baseline of the normalised scores; calibration of the predictive intervals
    from :func:`genvi.metrics.calibration` on the held-out cells. Writes ``metrics.json`` (first),
    ``synthetic.h5ad`` and the plots ``umap_real_vs_generated.png``, ``mean_var_scatter.png``
    and ``calibration_curve.png`` to ``out``, and prints a per-condition table and a verdict
    per metric to stderr.

    Returns
    -------
    A dict with the output folder, files, and the metric summary.
    """
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")  # the demo writes files; it must run without a display
    import matplotlib.pyplot as plt
    import scvi

    import genvi
    from genvi.metrics import ReferenceSpace, calibration, evaluate, summarize
    from genvi.model import PriorVI

    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must lie in (0, 1), got {test_fraction}.")
    scvi.settings.seed = seed
    if adata_path is None:
        adata = genvi.data.pbmc68k()
        source = "embedded pbmc68k_reduced (700 PBMCs, recovered integer counts)"
    else:
        if not Path(adata_path).exists():
            raise FileNotFoundError(f"{adata_path} does not exist.")
        adata = ad.read_h5ad(adata_path)
        source = str(adata_path)
    keys = list(condition_keys)
    missing = [k for k in keys if k not in adata.obs]
    if missing:
        raise ValueError(
            f"Condition keys {missing} not in obs; pass --condition-key with one of "
            f"{list(adata.obs.columns)}."
        )
    if layer is not None:
        if layer not in adata.layers:
            raise ValueError(f"Layer {layer!r} not found (available: {list(adata.layers)}).")
        adata = ad.AnnData(adata.layers[layer], obs=adata.obs, var=adata.var)
    labels = adata.obs[keys].astype(str).agg("|".join, axis=1)
    train_idx, test_idx = _split(labels, test_fraction, seed)
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    genes, gene_selection = _select_genes(train, n_top_genes, seed)
    train, test = train[:, genes].copy(), test[:, genes].copy()

    steps_per_epoch = max(1, math.ceil(train.n_obs / 128))
    if max_epochs is None:
        max_epochs = int(min(400, max(20, round(DEFAULT_STEPS / steps_per_epoch))))
    _log(
        f"genvi demo: PriorVI (prior={prior}) on {train.n_obs} training cells x {train.n_vars} "
        f"genes ({gene_selection}), {max_epochs} epochs = {max_epochs * steps_per_epoch} "
        f"minibatches; {test.n_obs} held-out cells for evaluation."
    )
    PriorVI.setup_anndata(train, condition_keys=keys)
    model = PriorVI(train, prior=prior, decode_conditions=decode_conditions)
    start = time.perf_counter()
    # Lightning's hardware lines, tips and advice about logging intervals are noise here
    with warnings.catch_warnings(), _quiet_loggers("lightning.pytorch", "lightning.fabric"):
        warnings.filterwarnings("ignore", module=r"lightning\..*")
        model.train(
            max_epochs=max_epochs,
            enable_progress_bar=progress,
            callbacks=[_epoch_timer(max_epochs)],
        )
    train_seconds = time.perf_counter() - start
    _log(f"trained in {train_seconds:.0f} s; generating and evaluating...")

    conds = test.obs[keys].astype(str).drop_duplicates().to_dict(orient="records")
    test_labels = labels.iloc[test_idx]
    n_cells = [int((test_labels == "|".join(c[k] for k in keys)).sum()) for c in conds]
    synthetic = model.generate(conds, n_cells=n_cells, seed=seed)

    # Fitted here on the training cells (as evaluate would) so that the UMAP shares the space.
    space = ReferenceSpace.fit(train, n_top_genes=2000, n_comps=50, seed=seed)
    baseline = _unconditional_baseline(train, synthetic, keys, seed)
    table = evaluate(
        test,
        synthetic,
        keys,
        train=train,
        baseline=baseline,
        space=space,
        min_cells=min_cells,
        seed=seed,
    )
    summary = summarize(table)
    reliability = calibration(
        model,
        test,
        keys,
        n_samples=CALIBRATION_SAMPLES,
        min_mean=CALIBRATION_MIN_MEAN,
        min_cells=min_cells,
        seed=seed,
    )
    coverage = reliability[reliability["skipped"].isna()].groupby("level")["coverage"].mean()
    skipped = {
        str(label): str(reason)
        for label, reason in table["skipped"].items()
        if reason is not None and not (isinstance(reason, float) and math.isnan(reason))
    }

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    privacy = dict(table.attrs["privacy_overall"])
    metrics = {
        "genvi_version": genvi.__version__,
        "data": source,
        "condition_keys": keys,
        "prior": prior,
        "decode_conditions": bool(decode_conditions),
        "max_epochs": int(max_epochs),
        "n_train": int(train.n_obs),
        "n_test": int(test.n_obs),
        "n_genes": int(train.n_vars),
        "gene_selection": gene_selection,
        "train_seconds": round(train_seconds, 2),
        "summary": _typed_summary(summary),
        "verdicts": _verdicts(summary),
        "skipped_conditions": skipped,
        "per_condition": json.loads(table.drop(columns=["mmd_bandwidths"]).to_json(orient="index")),
        "metric_definitions": METRICS,
        "baseline": "training cells drawn regardless of condition (normalised score 1 = no "
        "better than ignoring the condition; 0 = as close as two halves of the real cells)",
        "mmd_bandwidths": "per condition: median heuristic on real cells x (0.5, 1, 2)",
        "reference_space": f"fitted on the training cells ({space.n_genes} genes, "
        f"{space.n_comps} PCs, {space.hvg_flavor} gene selection)",
        "privacy": {
            **{k: _jsonable(v) for k, v in privacy.items()},
            "definition": "DCR in the reference PCA space; memorised if close_fraction > "
            "close_limit (see genvi.metrics.privacy)",
            # members: training cells, non-members: held-out cells (auroc 0.5 = chance)
            "membership_inference": table.attrs.get("membership"),
        },
        "calibration": {
            "n_samples": CALIBRATION_SAMPLES,
            "min_mean": CALIBRATION_MIN_MEAN,
            "mean_coverage_by_level": {f"{float(k):g}": float(v) for k, v in coverage.items()},
            "verdicts": _coverage_verdicts(coverage),
            "per_condition": json.loads(reliability.to_json(orient="records")),
        },
        "fields": FIELDS,
    }
    # metrics first: a plotting problem must not lose the numbers
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    synthetic.write_h5ad(out / "synthetic.h5ad")
    _print_report(table, summary, metrics)

    png = out / "umap_real_vs_generated.png"
    fig = genvi.pl.real_vs_generated(test, synthetic, keys, space=space, seed=seed, save=png)
    plt.close(fig)
    mean_var_png = out / "mean_var_scatter.png"
    plt.close(genvi.pl.mean_var_scatter(test, synthetic, save=mean_var_png))
    files = [str(out / "metrics.json"), str(out / "synthetic.h5ad"), str(png), str(mean_var_png)]
    if not coverage.empty:  # every condition skipped: nothing to draw
        calibration_png = out / "calibration_curve.png"
        plt.close(genvi.pl.calibration_curve(reliability, save=calibration_png).figure)
        files.append(str(calibration_png))
    return {"out": str(out), "files": files, "summary": metrics["summary"]}


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def _typed_summary(summary: pd.Series) -> dict:
    """Counts as ints, flags as booleans, NaN as null."""
    out = {}
    for key, value in summary.items():
        if key in ("n_conditions", "n_skipped"):
            out[key] = int(value)
        elif key == "memorised":
            out[key] = bool(value)
        else:
            out[key] = _num(value)
    return out


def _print_report(table: pd.DataFrame, summary: pd.Series, metrics: dict) -> None:
    cols = ["n_real", "energy", "energy_floor", "c2st_auroc", "mean_r2", "var_r2", "corr_dist"]
    shown = table.loc[table["skipped"].isna(), [c for c in cols if c in table.columns]]
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        _log("\nPer-condition quality (generated vs held-out real cells; floor = real vs real)")
        _log(shown.round(3).to_string())
    for label, reason in metrics["skipped_conditions"].items():
        _log(f"skipped {label}: {reason}")
    _log(
        "\nVerdicts (normalised score = (model - floor) / (baseline - floor); 0 = as good as "
        f"real cells, 1 = no better than ignoring the condition; good <= {GOOD}, "
        f"borderline <= {BORDERLINE}):"
    )
    for metric, v in metrics["verdicts"].items():
        score = v["normalised_score"]
        _log(
            f"  {metric:15s} {v['verdict']:10s} model {_fmt(v['model'])}, floor "
            f"{_fmt(v['floor'])}, baseline {_fmt(v['baseline'])}, score {_fmt(score)}"
        )
    privacy = metrics["privacy"]
    _log(
        f"privacy (all cells): DCR ratio {_fmt(privacy.get('dcr_ratio'))} (>= 1: generated "
        "cells are no closer to training cells than held-out real cells are), memorised: "
        f"{bool(privacy.get('memorised'))}"
    )
    mia = privacy.get("membership_inference") or {}
    if "auroc" in mia:
        _log(
            f"membership inference: best attack ({mia['attack']}) AUROC {mia['auroc']:.3f} "
            f"(0.5: training cells not told apart from held-out ones), risk {mia['risk']}"
        )
    for level, v in metrics["calibration"]["verdicts"].items():
        _log(
            f"interval coverage at nominal {float(level):.0%}: observed {v['observed']:.0%} "
            f"({v['verdict']})"
        )


@contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Raise these loggers to WARNING for the block, then restore their levels."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
