"""The README's main job: train, generate, evaluate and plot on one dataset."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

# Modest: 4 levels x every condition, and the demo must stay a few minutes on 2 CPU cores.
CALIBRATION_SAMPLES = 200
# Genes below 1 count per 10,000 (predicted mean) have intervals like [0, 0]: their coverage
# is inflated by the discreteness of counts, not informative about calibration.
CALIBRATION_MIN_MEAN = 1.0


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


def run_demo(
    adata_path: Path | None = None,
    condition_keys: Sequence[str] = ("cell_type",),
    layer: str | None = None,
    out: Path = Path("genvi_demo"),
    prior: str = "gaussian",
    max_epochs: int = 400,
    test_fraction: float = 0.2,
    min_cells: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Train PriorVI, generate held-out-sized cohorts per condition, evaluate and plot.

    Quality and privacy come from :func:`genvi.metrics.evaluate` (space fitted on the training
    cells, which also enables the privacy check), calibration of the predictive intervals from
    :func:`genvi.metrics.calibration` on the held-out cells. Writes ``synthetic.h5ad``,
    ``metrics.json``, ``umap_real_vs_generated.png``, ``mean_var_scatter.png`` and
    ``calibration_curve.png`` to ``out`` and prints a per-condition table.

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
        adata = ad.AnnData(adata.layers[layer], obs=adata.obs, var=adata.var)
    labels = adata.obs[keys].astype(str).agg("|".join, axis=1)
    train_idx, test_idx = _split(labels, test_fraction, seed)
    train, test = adata[train_idx].copy(), adata[test_idx].copy()

    PriorVI.setup_anndata(train, condition_keys=keys)
    model = PriorVI(train, prior=prior)
    start = time.perf_counter()
    model.train(max_epochs=max_epochs, enable_progress_bar=progress)
    train_seconds = time.perf_counter() - start

    conds = test.obs[keys].astype(str).drop_duplicates().to_dict(orient="records")
    test_labels = labels.iloc[test_idx]
    n_cells = [int((test_labels == "|".join(c[k] for k in keys)).sum()) for c in conds]
    synthetic = model.generate(conds, n_cells=n_cells, seed=seed)

    # Fitted here on the training cells (as evaluate would) so that the UMAP shares the space.
    space = ReferenceSpace.fit(train, n_top_genes=2000, n_comps=50, seed=seed)
    table = evaluate(
        test, synthetic, keys, train=train, space=space, min_cells=min_cells, seed=seed
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

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    synthetic.write_h5ad(out / "synthetic.h5ad")
    png = out / "umap_real_vs_generated.png"
    fig = genvi.pl.real_vs_generated(test, synthetic, keys, space=space, seed=seed, save=png)
    plt.close(fig)
    mean_var_png = out / "mean_var_scatter.png"
    plt.close(genvi.pl.mean_var_scatter(test, synthetic, save=mean_var_png))
    calibration_png = out / "calibration_curve.png"
    if coverage.empty:  # every condition skipped: nothing to draw
        calibration_png = None
    else:
        plt.close(genvi.pl.calibration_curve(reliability, save=calibration_png).figure)
    metrics = {
        "genvi_version": genvi.__version__,
        "data": source,
        "condition_keys": keys,
        "prior": prior,
        "max_epochs": max_epochs,
        "n_train": int(train.n_obs),
        "n_test": int(test.n_obs),
        "train_seconds": round(train_seconds, 2),
        "summary": {k: _jsonable(v) for k, v in summary.items()},
        "per_condition": json.loads(table.drop(columns=["mmd_bandwidths"]).to_json(orient="index")),
        "mmd_bandwidths": "per condition: median heuristic on real cells x (0.5, 1, 2)",
        "reference_space": "fitted on the training cells (2,000 HVGs, 50 PCs)",
        "privacy": {
            **table.attrs["privacy_overall"],
            "definition": "DCR in the reference PCA space; memorised if close_fraction > "
            "close_limit (see genvi.metrics.privacy)",
            # members: training cells, non-members: held-out cells (auroc 0.5 = chance)
            "membership_inference": table.attrs.get("membership"),
        },
        "calibration": {
            "n_samples": CALIBRATION_SAMPLES,
            "min_mean": CALIBRATION_MIN_MEAN,
            "mean_coverage_by_level": {str(k): float(v) for k, v in coverage.items()},
            "per_condition": json.loads(reliability.to_json(orient="records")),
        },
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _print_table(table, summary, coverage)
    files = [str(out / "synthetic.h5ad"), str(out / "metrics.json"), str(png), str(mean_var_png)]
    if calibration_png is not None:
        files.append(str(calibration_png))
    return {"out": str(out), "files": files, "summary": metrics["summary"]}


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    return v


def _print_table(table: pd.DataFrame, summary: pd.Series, coverage: pd.Series) -> None:
    cols = [
        "n_real",
        "energy",
        "energy_floor",
        "c2st_auroc",
        "mean_r2",
        "var_r2",
        "corr_dist",
        "dcr_ratio",
        "memorised",
        "skipped",
    ]
    shown = table[[c for c in cols if c in table.columns]].copy()
    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print("\nPer-condition quality (generated vs held-out real cells; floor = real vs real)")
        print(shown.round(3).to_string())
        print(
            f"\nmean over scored conditions: energy {summary.get('energy', np.nan):.3f} "
            f"(floor {summary.get('energy_floor', np.nan):.3f}), "
            f"C2ST AUROC {summary.get('c2st_auroc', np.nan):.3f}, "
            f"mean R2 {summary.get('mean_r2', np.nan):.3f}"
        )
        print(
            f"privacy (all cells): DCR ratio {summary.get('dcr_ratio', np.nan):.3f} "
            f"(>= 1: no memorisation), close fraction {summary.get('close_fraction', np.nan):.3f} "
            f"(expected {summary.get('close_expected', np.nan):.2f}), memorised: "
            f"{bool(summary.get('memorised', 0.0))}"
        )
        mia = table.attrs.get("membership") or {}
        if "auroc" in mia:
            print(
                f"membership inference: best attack ({mia['attack']}) AUROC {mia['auroc']:.3f} "
                f"(0.5: training cells not told apart from held-out ones), risk {mia['risk']}"
            )
        pairs = ", ".join(f"{level:.0%} -> {cov:.0%}" for level, cov in coverage.items())
        print(f"interval coverage (nominal -> observed, mean over conditions): {pairs or 'n/a'}")
