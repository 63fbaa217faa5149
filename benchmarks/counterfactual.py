"""Counterfactual prediction on Kang IFN-beta (BENCHMARKS.md, "Counterfactuals (Kang)").

For each cell type in turn, its *stimulated* cells are removed from training; each method
predicts them from that cell type's control cells, and the prediction is compared with the real
stimulated cells by :func:`genvi.metrics.counterfactual_scores`: R² of per-gene means and
variances of log-normalised expression on the top 20/50/100 DEGs (Wilcoxon, control vs
stimulated, real cells) and on all genes, LFC slope and sign agreement.

Methods, all on the same split:

1. ``DisentVI`` (``categorical_attributes=["cell_type", "condition"]``, genvi defaults):
   each control cell keeps its unknown latent, ``condition`` is swapped; sampled counts.
2. ``PriorVI`` (``condition_keys=["cell_type", "condition"]``, genvi defaults):
   ``predict_counterfactual`` (prior transport); sampled counts.
3. ``scvi.model.SCVI`` with ``condition`` as a categorical covariate of the decoder, the
   control cells decoded with the covariate set to "stimulated" (posterior predictive counts).
4. Identity: the control cells unchanged.
5. Additive: each control cell's log-normalised expression plus the mean stimulation shift of
   the other cell types (mean of stimulated minus mean of control, per type, averaged).

Also label imputation: 50% of ``cell_type`` labels masked at random (all cells trained),
accuracy on the masked cells of ``DisentVI.predict_attributes`` vs ``scvi.model.SCANVI``
(initialised from an scVI model, as recommended).

Run from the repository root (``--threads 1`` on the shared 2-core machine)::

    bash benchmarks/peers/setup_envs.sh              # once: the peers' own environments
    python benchmarks/counterfactual.py --peers --threads 1   # slow: peers side by side, 2 seeds

    # the same peers on another file with cell_type / condition columns (one seed here);
    # writes results/counterfactual_kang_ifnb_harmony_2k_peers.json, splits in
    # benchmarks/peers/.cache/kang_ifnb_harmony_2k/
    python benchmarks/counterfactual.py --file kang_ifnb_harmony_2k.h5ad \\
        --peers trvae,scgen_scarches,cpa,additive,identity --seeds 0 --threads 1

    python benchmarks/counterfactual.py --quick     # smoke run, 20 epochs, 2 held-out types
    python benchmarks/counterfactual.py --threads 1  # full run, writes benchmarks/results/

The default of 150 epochs for every model (~1,400 training cells, batch size 128: ~1,700
steps) takes ~45 s per model on one thread; the full run (15 models + label imputation) takes
~15 minutes on one core of the 2-core CPU. ``--cell-types`` and ``--skip-imputation`` split it
into parallel parts, ``--merge`` joins them.
"""

from __future__ import annotations

import argparse
import json
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


def file_stem(filename: str) -> str:
    """Name of a data set's results and caches: ``kang`` for the default file (its results
    predate ``--file``), else the file's stem."""
    return "kang" if filename == FILENAME else Path(filename).stem


CELL_TYPE, CONDITION = "cell_type", "condition"
CONTROL, STIMULATED = "control", "stimulated"
BATCH_SIZE = 128
DEFAULT_EPOCHS = 150
QUICK_EPOCHS = 20
METHODS = {
    "disentvi": "DisentVI (swap condition, keep z_u)",
    "priorvi": "PriorVI predict_counterfactual",
    "scvi": "scVI, condition covariate swapped",
    "identity": "Identity (control cells)",
    "additive": "Additive mean shift",
}
REFERENCE = {  # from the issue: top-20 DEG mean R² measured with this protocol on this file
    "additive": {
        "B cells": 0.92,
        "CD14+ Monocytes": -3.28,
        "CD4 T cells": 0.74,
        "CD8 T cells": 0.81,
        "FCGR3A+ Monocytes": 0.29,
    },
    "scvi": {
        "B cells": -0.26,
        "CD14+ Monocytes": -3.45,
        "CD4 T cells": 0.58,
        "CD8 T cells": 0.64,
        "FCGR3A+ Monocytes": -0.26,
    },
    "CPA (published, B cells held out)": {"mean_r2_top20": 0.78, "var_r2_top20": -0.82},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, DEFAULT_EPOCHS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_EPOCHS} epochs, two held-out cell types",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma list among {','.join(METHODS)}",
    )
    parser.add_argument(
        "--disentvi-kwargs",
        type=json.loads,
        default={},
        help="JSON of extra DisentVI arguments, e.g. '{\"interaction_weight\": 0.1}'",
    )
    parser.add_argument(
        "--cell-types", default=None, help="comma list of held-out cell types (default all)"
    )
    parser.add_argument("--skip-imputation", action="store_true", help="skip the SCANVI part")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path")
    parser.add_argument(
        "--peers",
        nargs="?",
        const="all",
        default=None,
        help="slow, optional: run DisentVI, biolord, CPA, scGen, trVAE and the baselines side by "
        "side (comma list of disentvi_fraction,disentvi_data,disentvi,disentvi_own,disentvi_ridge,"
        "disentvi_decode,"
        "biolord,cpa,"
        "scgen,scgen_scarches,trvae,"
        "additive,identity; default all), "
        "each peer in its own environment (benchmarks/peers/setup_envs.sh); writes "
        "results/counterfactual_kang_peers.json, resuming what it already holds",
    )
    parser.add_argument(
        "--file",
        default=FILENAME,
        help="data set file in --data-dir (any with 'cell_type' and 'condition' columns, e.g. "
        "kang_ifnb_harmony_2k.h5ad); --peers writes results/counterfactual_<stem>_peers.json",
    )
    parser.add_argument("--seeds", default="0,1", help="--peers: comma list of seeds (default 0,1)")
    parser.add_argument(
        "--peer-max-epochs",
        type=json.loads,
        default={},
        help="--peers: JSON caps on a peer's documented epochs, e.g. '{\"biolord\": 100}' "
        "(recorded in the JSON)",
    )
    parser.add_argument("--redo", action="store_true", help="--peers: rerun what the JSON holds")
    parser.add_argument(
        "--tables",
        action="store_true",
        help="--peers: only print the tables of the peers JSON (and the cell-eval JSON)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        help="only combine the JSON files of runs over disjoint --cell-types into --out",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.max_epochs = min(args.max_epochs, QUICK_EPOCHS)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.out_given = args.out is not None
    args.seeds = [int(x) for x in str(args.seeds).split(",") if x.strip()]
    if args.peers is not None:
        from counterfactual_peers import ALL_METHODS

        chosen = list(ALL_METHODS) if args.peers == "all" else args.peers.split(",")
        args.peer_methods = [m.strip() for m in chosen if m.strip()]
        bad = sorted(set(args.peer_methods) - set(ALL_METHODS))
        if bad:
            parser.error(f"unknown --peers method(s) {bad}; choose from {sorted(ALL_METHODS)}")
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    if args.out is None:
        quick = "_quick" if args.quick else ""
        args.out = RESULTS_DIR / f"counterfactual_{file_stem(args.file)}{quick}.json"
    return args


def _dense(x) -> np.ndarray:
    if hasattr(x, "todense") and not sp.issparse(x):  # pydata sparse (scvi's GCXS)
        return np.asarray(x.todense())
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _log_norm(x: np.ndarray) -> np.ndarray:
    return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1.0) * 1e4)


def as_counts(template: ad.AnnData, x: np.ndarray) -> ad.AnnData:
    """An AnnData of predicted counts with the template's genes."""
    return ad.AnnData(
        X=sp.csr_matrix(np.asarray(x, dtype=np.float32)),
        var=pd.DataFrame(index=template.var_names.copy()),
    )


# ---------------------------------------------------------------------------- methods
DISENTVI_KWARGS: dict[str, Any] = {}


def _predict_genvi(model_cls, setup_kwargs, model_kwargs, train, ctrl, epochs, seed):
    """Train a genvi model on ``train``; swap the control cells' condition to stimulated."""
    import scvi

    adata = train.copy()
    scvi.settings.seed = seed
    model_cls.setup_anndata(adata, **setup_kwargs)
    model = model_cls(adata, **model_kwargs)
    _, seconds = timed(
        lambda: model.train(max_epochs=epochs, batch_size=BATCH_SIZE, enable_progress_bar=False)
    )
    pred = model.predict_counterfactual(ctrl.copy(), {CONDITION: STIMULATED}, seed=seed)
    return as_counts(ctrl, _dense(pred.X)), seconds


def predict_disentvi(train, ctrl, epochs, seed) -> tuple[ad.AnnData, float]:
    """DisentVI: each control cell keeps its unknown latent, the condition is swapped."""
    from genvi.model import DisentVI

    setup = {"categorical_attributes": [CELL_TYPE, CONDITION]}
    return _predict_genvi(DisentVI, setup, DISENTVI_KWARGS, train, ctrl, epochs, seed)


def predict_priorvi(train, ctrl, epochs, seed) -> tuple[ad.AnnData, float]:
    """PriorVI: ``predict_counterfactual`` (prior transport) to stimulated."""
    from genvi.model import PriorVI

    setup = {"condition_keys": [CELL_TYPE, CONDITION]}
    return _predict_genvi(PriorVI, setup, {}, train, ctrl, epochs, seed)


def predict_scvi(train, ctrl, epochs, seed) -> tuple[ad.AnnData, float]:
    """scVI with the condition in the decoder; decode the control cells as stimulated."""
    import scvi

    from genvi.model.base import default_kl_warmup

    adata = train.copy()
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(adata, categorical_covariate_keys=[CONDITION])
    model = scvi.model.SCVI(adata)
    _, seconds = timed(
        lambda: model.train(
            max_epochs=epochs,
            batch_size=BATCH_SIZE,
            enable_progress_bar=False,
            plan_kwargs={"n_epochs_kl_warmup": default_kl_warmup(epochs)},
        )
    )
    swapped = ctrl.copy()
    swapped.obs[CONDITION] = pd.Categorical(
        [STIMULATED] * swapped.n_obs, categories=train.obs[CONDITION].cat.categories
    )
    x = model.posterior_predictive_sample(swapped, n_samples=1)
    x = _dense(x)
    return as_counts(ctrl, x.reshape(ctrl.n_obs, ctrl.n_vars)), seconds


def held_out_split(adata: ad.AnnData, ct: str) -> tuple[ad.AnnData, ad.AnnData, ad.AnnData]:
    """The split of one held-out type: training cells (all but its stimulated cells), its
    control cells (to predict from) and its stimulated cells (to score against)."""
    is_ct = (adata.obs[CELL_TYPE] == ct).to_numpy()
    is_stim = (adata.obs[CONDITION] == STIMULATED).to_numpy()
    return (
        adata[~(is_ct & is_stim)].copy(),
        adata[is_ct & ~is_stim].copy(),
        adata[is_ct & is_stim].copy(),
    )


def shifted_control(ctrl: ad.AnnData, shift: np.ndarray) -> ad.AnnData:
    """The control cells' log-normalised expression plus ``shift``, as counts at their depth."""
    xc = _dense(ctrl.X)
    pred = np.expm1(np.maximum(_log_norm(xc) + shift, 0.0))
    # back to the control cells' depth; the metrics renormalise per cell
    pred = pred / 1e4 * np.maximum(xc.sum(1, keepdims=True), 1.0)
    return as_counts(ctrl, pred)


def predict_additive(train, ctrl) -> ad.AnnData:
    """Control cells plus the mean log-normalised stimulation shift of the other types."""
    x = _dense(train.X)
    y = _log_norm(x)
    obs = train.obs
    shifts = []
    for ct in obs[CELL_TYPE].unique():
        is_ct = (obs[CELL_TYPE] == ct).to_numpy()
        stim = is_ct & (obs[CONDITION] == STIMULATED).to_numpy()
        con = is_ct & (obs[CONDITION] == CONTROL).to_numpy()
        if stim.any() and con.any():
            shifts.append(y[stim].mean(0) - y[con].mean(0))
    return shifted_control(ctrl, np.mean(shifts, axis=0))


# ---------------------------------------------------------------------------- imputation
def label_imputation(adata: ad.AnnData, epochs: int, seed: int) -> dict[str, Any]:
    """Accuracy on 50% masked cell-type labels: DisentVI vs SCANVI."""
    import scvi

    from genvi.model import DisentVI
    from genvi.model.base import default_kl_warmup

    rng = np.random.default_rng(seed)
    masked = rng.random(adata.n_obs) < 0.5
    truth = adata.obs[CELL_TYPE].astype(str).to_numpy()
    out: dict[str, Any] = {"n_masked": int(masked.sum()), "chance": float(0)}
    out["chance"] = float(pd.Series(truth[~masked]).value_counts(normalize=True).max())

    a = adata.copy()
    labels = a.obs[CELL_TYPE].astype(object)
    labels[masked] = np.nan
    a.obs["cell_type_masked"] = pd.Categorical(labels)
    scvi.settings.seed = seed
    DisentVI.setup_anndata(a, categorical_attributes=["cell_type_masked", CONDITION])
    model = DisentVI(a, **DISENTVI_KWARGS)
    _, sec = timed(
        lambda: model.train(max_epochs=epochs, batch_size=BATCH_SIZE, enable_progress_bar=False)
    )
    pred = model.predict_attributes()["cell_type_masked"].astype(str).to_numpy()
    out["disentvi"] = {"accuracy": float(np.mean(pred[masked] == truth[masked])), "train_s": sec}

    b = adata.copy()
    b.obs["cell_type_masked"] = np.where(masked, "Unknown", truth)
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(b, labels_key="cell_type_masked")
    base = scvi.model.SCVI(b)
    plan = {"n_epochs_kl_warmup": default_kl_warmup(epochs)}
    _, sec1 = timed(
        lambda: base.train(
            max_epochs=epochs, batch_size=BATCH_SIZE, enable_progress_bar=False, plan_kwargs=plan
        )
    )
    scanvi = scvi.model.SCANVI.from_scvi_model(base, unlabeled_category="Unknown")
    n_scanvi = max(epochs // 3, 10)
    _, sec2 = timed(
        lambda: scanvi.train(max_epochs=n_scanvi, batch_size=BATCH_SIZE, enable_progress_bar=False)
    )
    pred = np.asarray(scanvi.predict()).astype(str)
    out["scanvi"] = {
        "accuracy": float(np.mean(pred[masked] == truth[masked])),
        "train_s": sec1 + sec2,
        "epochs": f"scVI {epochs} + SCANVI {n_scanvi}",
    }
    return out


# ---------------------------------------------------------------------------- tables
HEADER = [
    "held out",
    "method",
    "top20 mean R²",
    "top20 var R²",
    "top50 mean R²",
    "top100 mean R²",
    "all mean R²",
    "all var R²",
    "top20 LFC slope",
    "top20 sign agr.",
]


def _scores(entry: dict[str, Any]) -> pd.DataFrame:
    scores = entry["scores"]
    return scores if isinstance(scores, pd.DataFrame) else pd.DataFrame.from_dict(scores, "index")


def print_tables(results: dict[str, Any], cell_types: list[str], methods: list[str]) -> None:
    """Per-held-out-type table and the median over held-out types."""
    rows = []
    for ct in cell_types:
        for method in methods:
            sc = _scores(results[ct][method])
            rows.append(
                [
                    ct,
                    METHODS[method],
                    sc.loc["top20", "mean_r2"],
                    sc.loc["top20", "var_r2"],
                    sc.loc["top50", "mean_r2"],
                    sc.loc["top100", "mean_r2"],
                    sc.loc["all", "mean_r2"],
                    sc.loc["all", "var_r2"],
                    sc.loc["top20", "lfc_slope"],
                    sc.loc["top20", "sign_agreement"],
                ]
            )
    print("\n## Counterfactual recovery per held-out cell type\n")
    print(markdown_table(HEADER, rows))
    summary = []
    for method in methods:
        sc = [_scores(results[ct][method]) for ct in cell_types]
        m20 = [s.loc["top20", "mean_r2"] for s in sc]
        summary.append(
            [
                METHODS[method],
                np.median(m20),
                np.median([s.loc["top20", "var_r2"] for s in sc]),
                np.median([s.loc["top100", "mean_r2"] for s in sc]),
                np.median([s.loc["all", "mean_r2"] for s in sc]),
                np.min(m20),
            ]
        )
    print("\n## Median over held-out cell types\n")
    header = ["method", "top20 mean R²", "top20 var R²", "top100 mean R²", "all mean R²"]
    print(markdown_table([*header, "worst top20 mean R²"], summary))


def print_imputation(imp: dict[str, Any]) -> None:
    """Label imputation table."""
    print("\n## Label imputation (50% of cell_type labels masked)\n")
    rows = [
        ["DisentVI.predict_attributes", imp["disentvi"]["accuracy"], imp["disentvi"]["train_s"]],
        [
            f"SCANVI ({imp['scanvi']['epochs']})",
            imp["scanvi"]["accuracy"],
            imp["scanvi"]["train_s"],
        ],
        ["majority class (chance)", imp["chance"], None],
    ]
    print(markdown_table(["method", "accuracy on masked", "train s"], rows))


def merge(paths: list[Path], out: Path) -> dict[str, Any]:
    """Combine the JSON of runs over disjoint held-out cell types (run in parallel)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    payload = dict(parts[0])
    results: dict[str, Any] = {}
    for part in parts:
        for ct, per_method in part["results"].items():
            results.setdefault(ct, {}).update(per_method)
    payload["results"] = results
    payload["methods"] = {
        m: METHODS[m] for m in METHODS if any(m in part["methods"] for part in parts)
    }
    payload["merged_from"] = [str(p) for p in paths]
    for part in parts:
        if "label_imputation" in part:
            payload["label_imputation"] = part["label_imputation"]
    methods = list(payload["methods"])
    print_tables(payload["results"], list(payload["results"]), methods)
    if "label_imputation" in payload:
        print_imputation(payload["label_imputation"])
    path = write_json(payload, out)
    print(f"\nwrote {path}")
    return payload


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and write the JSON."""
    args = parse_args(argv)
    if args.merge and args.peers is not None:
        from counterfactual_peers import default_out, merge_parts

        return merge_parts(args.merge, args.out if args.out_given else default_out(args.file))
    if args.merge:
        return merge(args.merge, args.out)
    if args.peers is not None and args.tables:
        from counterfactual_peers import default_out, print_peer_tables

        path = args.out if args.out_given else default_out(args.file)
        if not path.is_file():
            raise SystemExit(f"{path} does not exist yet: run `counterfactual.py --peers` first.")
        payload = json.loads(path.read_text())
        print_peer_tables(payload)
        return payload
    quiet()

    from genvi.metrics import counterfactual_scores

    if args.threads:
        set_threads(args.threads)
    adata = load_dataset(args.data_dir, args.file)
    adata.obs[CELL_TYPE] = adata.obs[CELL_TYPE].astype("category")
    adata.obs[CONDITION] = adata.obs[CONDITION].astype("category")
    cell_types = list(adata.obs[CELL_TYPE].cat.categories)
    if args.quick:
        cell_types = cell_types[:2]
    if args.cell_types:
        cell_types = [c.strip() for c in args.cell_types.split(",")]
    DISENTVI_KWARGS.update(args.disentvi_kwargs)
    if args.peers is not None:
        from counterfactual_peers import run_all

        return run_all(args, adata, cell_types)

    results: dict[str, Any] = {}
    for ct in cell_types:
        train, ctrl, observed = held_out_split(adata, ct)
        results[ct] = {}
        for method in args.methods:
            seconds = None
            if method == "identity":
                pred = as_counts(ctrl, _dense(ctrl.X))
            elif method == "additive":
                pred = predict_additive(train, ctrl)
            else:
                fn = {
                    "disentvi": predict_disentvi,
                    "priorvi": predict_priorvi,
                    "scvi": predict_scvi,
                }[method]
                pred, seconds = fn(train, ctrl, args.max_epochs, args.seed)
            scores = counterfactual_scores(ctrl, pred, observed)
            results[ct][method] = {"scores": scores, "train_s": seconds}
            progress = [ct, METHODS[method], scores.loc["top20", "mean_r2"], seconds]
            print(markdown_table(["held out", "method", "top20 mean R²", "train s"], [progress]))
            sys.stdout.flush()

    print_tables(results, cell_types, args.methods)
    payload: dict[str, Any] = {
        "benchmark": "counterfactual_kang",
        "dataset": args.file,
        "protocol": "BENCHMARKS.md Counterfactuals (Kang): stimulated cells of each type held out",
        "max_epochs": args.max_epochs,
        "disentvi_kwargs": args.disentvi_kwargs,
        "seed": args.seed,
        "methods": {m: METHODS[m] for m in args.methods},
        "results": results,
        "reference": REFERENCE,
        "machine": machine_info(),
    }
    if not args.skip_imputation:
        imp = label_imputation(adata, args.max_epochs, args.seed)
        payload["label_imputation"] = imp
        print_imputation(imp)
    path = write_json(payload, args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
