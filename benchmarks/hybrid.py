"""HybridVI on Kang IFN-beta: a mean predictor alone vs the same predictor wrapped by HybridVI.

Protocol (BENCHMARKS.md, "Counterfactuals (Kang)"): for each cell type in turn its
*stimulated* cells are removed from training; the methods predict them from that cell type's
control cells and are compared with the real stimulated cells.

Mean predictors (each gives one expression profile per condition, no variance):

a. ``additive``: genvi's :class:`~genvi.model.AdditiveMeanModel` fitted on the training cells
   (HybridVI's ``mean_predictor="auto"``: Poisson log-linear main effects of cell type and
   condition plus ridge-shrunk interactions of the observed pairs; the held-out pair is
   predicted additively on the log scale).
b. ``disentvi``: DisentVI (genvi defaults) trained on the same cells; its mean prediction of
   the held-out pair is the average of ``predict_counterfactual(ctrl, stimulated,
   return_mean=True)`` (normalised per cell to 1e4); the seen pairs are the training cells'
   mean profiles (:meth:`~genvi.model.MeanTable.from_cells`).
c. ``shift``: the same table with the held-out pair's row from ``counterfactual.py``'s
   additive baseline (each control cell's log-normalised expression plus the other types'
   mean stimulation shift), averaged over the cells.
d. ``oracle``: the same table with the held-out pair's row replaced by the *true* mean profile
   of the held-out stimulated cells (an upper bound no method can reach).

e. ``cpa``: the same table with the held-out pair's row from CPA (``cpa-tools`` 0.8.8, its Kang
   tutorial settings, run in its own Python 3.10 environment by
   ``counterfactual.py --peers cpa``, which leaves its prediction for the control cells in
   ``benchmarks/peers/.cache/kang/<type>/cpa_seed<seed>.h5ad``): CPA's decoded NB mean of
   each control cell, normalised per cell to 1e4 and averaged. Where that file is missing the
   predictor is skipped and the JSON says so (``not_run``).

For each predictor, "alone" is its profile given to every control cell at the cell's own
library size (expected values, so no cell-to-cell variance: the variance R² shows what a
point prediction lacks); "HybridVI" is ``HybridVI.predict_counterfactual(ctrl, {"condition":
"stimulated"})`` around that predictor (sampled counts). HybridVI is trained twice per held-out
type: around (a), and around (b) - the rows of (c) and (d) are then swapped in with
``set_mean_predictor`` without retraining (the training cells never see the held-out pair, so
the residual model is the same; this is the "swap the predictor" use).

Metrics (:func:`genvi.metrics.counterfactual_scores`, log-normalised expression): R² of the
per-gene means ("mean R²": mean of log1p-normalised expression, which also depends on the
cells' spread) and of the per-gene variances on the top-20 DEGs (Wilcoxon, control vs
stimulated, real cells), the Pearson delta on the top-100 DEGs (Pearson r of predicted vs
observed change from the control mean; the ``lfc_pearson`` of the ``top100`` row, which is
scPerturBench's measure, from the same per-gene table as
``genvi.metrics.pearson_delta`` on the ``peers`` branch), the R² of log1p of the per-gene
*mean* normalised expression on the top-20 DEGs ("log-mean R²": what a point prediction is
about, free of the spread), and the coverage of HybridVI's 80% and 95% predictive intervals
(:meth:`predict_with_confidence` for the held-out pair, normalised expression, 1,000 samples)
by the real stimulated cells, on the top-100 DEGs (:func:`genvi.metrics.interval_coverage`:
the intervals are randomised by default, so a real count ``x`` counts for the fraction of
``[x, x + 1)`` inside; a closed check of randomised intervals under-counts every zero).

Run from the repository root (``--threads 1`` on the shared 2-core machine)::

    python benchmarks/hybrid.py --threads 1             # writes benchmarks/results/hybrid_kang.json
    python benchmarks/hybrid.py --threads 1 --quick     # 20 epochs, two held-out types
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RESULTS_DIR,
    add_common_args,
    load_dataset,
    machine_info,
    markdown_table,
    quiet,
    set_threads,
    timed,
    write_json,
)

FILENAME = "kang_ifnb_muscat_subset.h5ad"
CELL_TYPE, CONDITION = "cell_type", "condition"
KEYS = [CELL_TYPE, CONDITION]
CONTROL, STIMULATED = "control", "stimulated"
BATCH_SIZE = 128
DEFAULT_EPOCHS = 100
QUICK_EPOCHS = 20
N_INTERVAL_SAMPLES = 1000
PREDICTORS = {
    "additive": "additive (AdditiveMeanModel, 'auto')",
    "disentvi": "DisentVI mean",
    "shift": "additive shift (mean profile of counterfactual.py's baseline)",
    "oracle": "oracle table (true held-out mean)",
    "cpa": "CPA mean (cpa-tools 0.8.8, Kang tutorial settings, from counterfactual.py --peers)",
}
PEER_CACHE = Path(__file__).resolve().parent / "peers" / ".cache" / "kang"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, DEFAULT_EPOCHS)
    parser.add_argument("--quick", action="store_true", help="20 epochs, two held-out types")
    parser.add_argument(
        "--cell-types", default=None, help="comma list of held-out cell types (default all)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_epochs = min(args.max_epochs, QUICK_EPOCHS)
    if args.out is None:
        args.out = RESULTS_DIR / f"hybrid_kang{'_quick' if args.quick else ''}.json"
    return args


def _dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(x.sum(1, keepdims=True), 1e-12) * 1e4


def as_counts(template: ad.AnnData, x: np.ndarray) -> ad.AnnData:
    """An AnnData of predicted counts (or expected counts) with the template's genes."""
    return ad.AnnData(
        X=sp.csr_matrix(np.asarray(x, dtype=np.float32)),
        var=pd.DataFrame(index=template.var_names.copy()),
    )


def profile_alone(ctrl: ad.AnnData, profile: np.ndarray) -> ad.AnnData:
    """A point prediction: the profile (per 1e4) at each control cell's library size."""
    lib = _dense(ctrl.X).sum(1, keepdims=True)
    return as_counts(ctrl, lib * profile[None, :] / profile.sum())


def shift_profile(train: ad.AnnData, ctrl: ad.AnnData) -> np.ndarray:
    """counterfactual.py's additive baseline as a profile.

    Each control cell's log-normalised expression plus the other types' mean stimulation
    shift, back to normalised expression and averaged over the cells.
    """
    y = np.log1p(_normalized(_dense(train.X)))
    obs = train.obs
    shifts = []
    for ct in obs[CELL_TYPE].unique():
        is_ct = (obs[CELL_TYPE] == ct).to_numpy()
        stim = is_ct & (obs[CONDITION] == STIMULATED).to_numpy()
        con = is_ct & (obs[CONDITION] == CONTROL).to_numpy()
        if stim.any() and con.any():
            shifts.append(y[stim].mean(0) - y[con].mean(0))
    yc = np.log1p(_normalized(_dense(ctrl.X)))
    return np.expm1(np.maximum(yc + np.mean(shifts, axis=0), 0.0)).mean(0)


def cpa_profile(ct: str, ctrl: ad.AnnData, seed: int) -> tuple[np.ndarray | None, str | None]:
    """CPA's mean of the held-out pair from ``counterfactual.py --peers cpa``'s prediction file.

    Returns ``(profile, None)``, or ``(None, why)`` when the file is missing or does not hold
    the same control cells.
    """
    folder = PEER_CACHE / ct.replace(" ", "_").replace("+", "p")
    path = folder / f"cpa_seed{seed}.h5ad"
    if not path.is_file():
        return None, f"{path} missing: run `counterfactual.py --peers cpa --seeds {seed}` first"
    pred = ad.read_h5ad(path)
    if list(pred.obs_names) != list(ctrl.obs_names) or list(pred.var_names) != list(ctrl.var_names):
        return None, f"{path} holds other cells or genes than this split's control cells"
    return _normalized(_dense(pred.layers["mean"])).mean(0), None


def disentvi_profile(train: ad.AnnData, ctrl: ad.AnnData, epochs: int, seed: int):
    """DisentVI's mean of the held-out pair (average normalised expected counterfactual)."""
    import scvi

    from genvi.model import DisentVI

    adata = train.copy()
    scvi.settings.seed = seed
    DisentVI.setup_anndata(adata, categorical_attributes=KEYS)
    model = DisentVI(adata)
    _, seconds = timed(
        lambda: model.train(max_epochs=epochs, batch_size=BATCH_SIZE, enable_progress_bar=False)
    )
    cf = model.predict_counterfactual(ctrl.copy(), {CONDITION: STIMULATED}, return_mean=True)
    return _normalized(_dense(cf.X)).mean(0), seconds


def train_hybrid(train: ad.AnnData, predictor: Any, epochs: int, seed: int):
    """HybridVI around ``predictor`` ("auto" or a MeanTable) trained on ``train``."""
    import scvi

    from genvi.model import HybridVI

    adata = train.copy()
    scvi.settings.seed = seed
    HybridVI.setup_anndata(adata, condition_keys=KEYS)
    model = HybridVI(adata, mean_predictor=predictor)
    _, seconds = timed(
        lambda: model.train(max_epochs=epochs, batch_size=BATCH_SIZE, enable_progress_bar=False)
    )
    return model, seconds


def hybrid_scores(model, ct, ctrl, observed, seed, degs100) -> tuple[ad.AnnData, dict]:
    """HybridVI's counterfactual counts and its interval coverage on the top-100 DEGs."""
    from genvi.metrics import interval_coverage

    cf = model.predict_counterfactual(ctrl.copy(), {CONDITION: STIMULATED}, seed=seed)
    counts = _dense(observed.X)
    real = _normalized(counts)
    # one count on the normalised scale: randomised intervals (the default) are intervals of
    # the continuous extension, so a real count x stands for [x, x + 1) (interval_coverage)
    step = 1e4 / np.maximum(counts.sum(1, keepdims=True), 1e-12)
    cond = {CELL_TYPE: ct, CONDITION: STIMULATED}
    coverage = {}
    for ci in (0.8, 0.95):
        pred = model.predict_with_confidence(cond, n_samples=N_INTERVAL_SAMPLES, ci=ci, seed=seed)
        randomized = pred.attrs.get("interval") == "randomized"
        pred = pred.loc[observed.var_names[degs100]]
        lower, upper = pred["lower"].to_numpy(), pred["upper"].to_numpy()
        x = real[:, degs100]
        cov = interval_coverage(x, lower, upper, step=step if randomized else None)
        coverage[f"coverage_{int(ci * 100)}"] = float(np.mean(cov))
    return as_counts(ctrl, _dense(cf.X)), coverage


def log_mean_r2(predicted: ad.AnnData, observed: ad.AnnData, genes: np.ndarray) -> float:
    """R² of log1p(mean normalised expression) on ``genes``: the mean a point predictor gives.

    ``counterfactual_scores``' mean R² compares means of log-normalised expression, which
    depend on the spread of the cells too (Jensen's gap); this one compares the means only.
    """
    pred = np.log1p(_normalized(_dense(predicted.X)).mean(0)[genes])
    obs = np.log1p(_normalized(_dense(observed.X)).mean(0)[genes])
    return float(1 - ((obs - pred) ** 2).sum() / ((obs - obs.mean()) ** 2).sum())


def _row(sc: pd.DataFrame, log_mean: float) -> dict[str, float]:
    return {
        "log_mean_r2_top20": log_mean,
        "mean_r2_top20": float(sc.loc["top20", "mean_r2"]),
        "var_r2_top20": float(sc.loc["top20", "var_r2"]),
        "pearson_delta_top100": float(sc.loc["top100", "lfc_pearson"]),
        "mean_r2_all": float(sc.loc["all", "mean_r2"]),
    }


HEADER = [
    "held out",
    "predictor",
    "method",
    "top20 log-mean R²",
    "top20 mean R²",
    "top20 var R²",
    "Pearson Δ top100",
    "cov 80%",
    "cov 95%",
]


def table_rows(results: dict[str, Any]) -> list[list[Any]]:
    """One row per held-out type, predictor and method (alone / HybridVI)."""
    rows = []
    for ct, per in results.items():
        for pred in PREDICTORS:
            if pred not in per:
                continue
            for method in ("alone", "hybrid"):
                r = per[pred][method]
                rows.append(
                    [
                        ct,
                        pred,
                        "predictor alone" if method == "alone" else "HybridVI",
                        r["log_mean_r2_top20"],
                        r["mean_r2_top20"],
                        r["var_r2_top20"],
                        r["pearson_delta_top100"],
                        r.get("coverage_80"),
                        r.get("coverage_95"),
                    ]
                )
    return rows


def summary_rows(results: dict[str, Any]) -> list[list[Any]]:
    """Median over held-out types."""
    rows = []
    for pred in PREDICTORS:
        if not any(pred in per for per in results.values()):
            continue
        for method in ("alone", "hybrid"):
            vals = [results[ct][pred][method] for ct in results if pred in results[ct]]
            rows.append(
                [
                    "median",
                    pred,
                    "predictor alone" if method == "alone" else "HybridVI",
                    *[
                        float(np.median([v[k] for v in vals])) if k in vals[0] else None
                        for k in (
                            "log_mean_r2_top20",
                            "mean_r2_top20",
                            "var_r2_top20",
                            "pearson_delta_top100",
                            "coverage_80",
                            "coverage_95",
                        )
                    ],
                ]
            )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and write the JSON."""
    args = parse_args(argv)
    quiet()
    if args.threads:
        set_threads(args.threads)

    from genvi.metrics import counterfactual_lfc, counterfactual_scores
    from genvi.model import MeanTable

    adata = load_dataset(args.data_dir, FILENAME)
    for key in KEYS:
        adata.obs[key] = adata.obs[key].astype("category")
    cell_types = list(adata.obs[CELL_TYPE].cat.categories)
    if args.quick:
        cell_types = cell_types[:2]
    if args.cell_types:
        cell_types = [c.strip() for c in args.cell_types.split(",")]

    results: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    not_run: dict[str, str] = {}
    for ct in cell_types:
        is_ct = (adata.obs[CELL_TYPE] == ct).to_numpy()
        is_stim = (adata.obs[CONDITION] == STIMULATED).to_numpy()
        train = adata[~(is_ct & is_stim)].copy()
        ctrl = adata[is_ct & ~is_stim].copy()
        observed = adata[is_ct & is_stim].copy()
        key = (ct, STIMULATED)

        degs = counterfactual_lfc(ctrl, ctrl, observed)["deg_rank"].to_numpy()
        degs100 = np.argsort(degs)[:100]
        degs20 = degs100[:20]

        seen = MeanTable.from_cells(train, KEYS)
        profile_dv, t_dv = disentvi_profile(train, ctrl, args.max_epochs, args.seed)
        truth = _normalized(_dense(observed.X)).mean(0)
        index = pd.MultiIndex.from_tuples([key], names=KEYS)
        tables = {
            "disentvi": seen.with_rows(
                pd.DataFrame([profile_dv], index=index, columns=seen.var_names)
            ),
            "oracle": seen.with_rows(pd.DataFrame([truth], index=index, columns=seen.var_names)),
            "shift": seen.with_rows(
                pd.DataFrame([shift_profile(train, ctrl)], index=index, columns=seen.var_names)
            ),
        }
        profile_cpa, why = cpa_profile(ct, ctrl, args.seed)
        if profile_cpa is None:
            not_run[f"cpa ({ct})"] = why
        else:
            tables["cpa"] = seen.with_rows(
                pd.DataFrame([profile_cpa], index=index, columns=seen.var_names)
            )
        hyb_auto, t_auto = train_hybrid(train, "auto", args.max_epochs, args.seed)
        hyb_table, t_table = train_hybrid(train, tables["disentvi"], args.max_epochs, args.seed)
        timings[ct] = {
            "disentvi_train_s": t_dv,
            "hybrid_auto_train_s": t_auto,
            "hybrid_table_train_s": t_table,
        }

        results[ct] = {}
        obs_frame = pd.DataFrame({CELL_TYPE: [ct], CONDITION: [STIMULATED]})
        for pred in PREDICTORS:
            if pred != "additive" and pred not in tables:
                continue
            if pred == "additive":
                model = hyb_auto
                profile = model.predict_mean(dict(zip(KEYS, key))).to_numpy().ravel()
            else:
                model = hyb_table
                model.set_mean_predictor(tables[pred])  # no retraining (same training rows)
                profile = tables[pred].predict(obs_frame)[0]
            point = profile_alone(ctrl, profile)
            alone = _row(
                counterfactual_scores(ctrl, point, observed), log_mean_r2(point, observed, degs20)
            )
            pred_cf, coverage = hybrid_scores(model, ct, ctrl, observed, args.seed, degs100)
            hybrid = _row(
                counterfactual_scores(ctrl, pred_cf, observed),
                log_mean_r2(pred_cf, observed, degs20),
            )
            results[ct][pred] = {"alone": alone, "hybrid": {**hybrid, **coverage}}
        print(f"\n### held out: {ct}\n")
        print(markdown_table(HEADER, table_rows({ct: results[ct]})))
        sys.stdout.flush()

    print("\n## HybridVI vs its mean predictor alone, per held-out cell type\n")
    print(markdown_table(HEADER, table_rows(results)))
    print("\n## Median over held-out cell types\n")
    print(markdown_table(HEADER, summary_rows(results)))
    for name, why in not_run.items():
        print(f"not run: {name}: {why}")
    payload: dict[str, Any] = {
        "benchmark": "hybrid_kang",
        "dataset": FILENAME,
        "protocol": "BENCHMARKS.md Counterfactuals (Kang): stimulated cells of each type held "
        "out; predictors alone = expected values (no variance), HybridVI = sampled counts",
        "max_epochs": args.max_epochs,
        "seed": args.seed,
        "predictors": PREDICTORS,
        "not_run": not_run,
        "coverage": f"predict_with_confidence, {N_INTERVAL_SAMPLES} samples, normalised "
        "expression, real held-out stimulated cells, top-100 DEGs; randomised intervals "
        "(the default), measured by genvi.metrics.interval_coverage with the count step",
        "results": results,
        "train_seconds": timings,
        "machine": machine_info(),
    }
    path = write_json(payload, args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
