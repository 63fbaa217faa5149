"""Peers side by side on the Kang counterfactual splits (``counterfactual.py --peers``).

For every seed and every cell type, the split of ``counterfactual.py`` (that type's stimulated
cells held out, predicted from its control cells) is written as h5ad files; DisentVI (here, in
genvi's environment), the identity and additive baselines, and each peer (biolord, CPA,
scGen, scGen's scArches port, trVAE; each in its own virtual environment from
``benchmarks/peers/setup_envs.sh``, called as a subprocess through
``benchmarks/peers/run_<peer>.py``) write their predictions as h5ad files, and every
prediction is scored here with :func:`genvi.metrics.counterfactual_scores` and
:func:`genvi.metrics.pearson_delta`. Each prediction is scored twice where the method has
both: ``sampled`` (counts drawn from the model's likelihood, or one Gaussian draw in log space
for biolord) and ``mean`` (the model's expected expression). Predictions stay in
``benchmarks/peers/.cache`` (gitignored) for ``benchmarks/peers/run_celleval.py``.

Results are appended to the JSON after every model, and a rerun skips what the JSON already
holds, so the slow run can be split and resumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from _common import REPO_ROOT, RESULTS_DIR, machine_info, markdown_table, write_json
from counterfactual import file_stem

PEERS_DIR = REPO_ROOT / "benchmarks" / "peers"
CACHE = PEERS_DIR / ".cache" / "kang"  # the muscat subset's splits (run_celleval.py, hybrid.py)
PEERS = {
    "biolord": "biolord",
    "cpa": "CPA",
    "scgen": "scGen",
    "scgen_scarches": "scGen (scArches port)",
    "trvae": "trVAE (scArches)",
}
# environment of each peer where it is not the peer's own name (setup_envs.sh's "scarches")
PEER_ENV = {"scgen_scarches": "scarches", "trvae": "scarches"}
ALL_METHODS = {
    "disentvi_fraction": "DisentVI, transfer_decrease='fraction' (the default since December 4)",
    "disentvi_data": "DisentVI, transfer_space='data' (the default December 3-4)",
    "disentvi": "DisentVI",
    "disentvi_own": "DisentVI, transfer_dispersion='own'",
    "disentvi_ridge": "DisentVI, transfer_method='ridge'",
    "disentvi_decode": "DisentVI, unseen='decode'",
    **PEERS,
    "additive": "Additive mean shift",
    "identity": "Identity (control cells)",
}
#: ``predict_counterfactual`` settings of each DisentVI entry, each the default when that
#: entry was run, so a rerun reproduces it
_DISENTVI_BASE = {
    "unseen": "transfer",
    "transfer_method": "simplex",
    "transfer_dispersion": "sources",
    "transfer_space": "means",
    "transfer_decrease": "shift",
}
DISENTVI_SETTINGS = {
    "disentvi_fraction": {
        **_DISENTVI_BASE,
        "transfer_space": "data",
        "transfer_decrease": "fraction",
    },
    "disentvi_data": {**_DISENTVI_BASE, "transfer_space": "data"},
    "disentvi": _DISENTVI_BASE,
    "disentvi_own": {**_DISENTVI_BASE, "transfer_dispersion": "own"},
    "disentvi_ridge": {**_DISENTVI_BASE, "transfer_method": "ridge"},
    "disentvi_decode": {**_DISENTVI_BASE, "unseen": "decode"},
}
DEFAULT_OUT = RESULTS_DIR / "counterfactual_kang_peers.json"
CELL_TYPE, CONDITION = "cell_type", "condition"
CONTROL, STIMULATED = "control", "stimulated"


def cache_dir(filename: str) -> Path:
    """Where the splits and predictions of ``filename`` go (:data:`CACHE` for the default)."""
    return PEERS_DIR / ".cache" / file_stem(filename)


def default_out(filename: str) -> Path:
    """The peers JSON of ``filename`` (:data:`DEFAULT_OUT` for the default)."""
    return RESULTS_DIR / f"counterfactual_{file_stem(filename)}_peers.json"


def peer_env_dir() -> Path:
    """Where ``setup_envs.sh`` put the peers' environments."""
    return Path(os.environ.get("GENVI_PEER_ENVS", PEERS_DIR / ".venvs"))


def split_files(adata: ad.AnnData, ct: str, cache: Path = CACHE) -> dict[str, Path]:
    """Write (once) and return the train / control / observed h5ad files of one split."""
    folder = cache / ct.replace(" ", "_").replace("+", "p")
    paths = {name: folder / f"{name}.h5ad" for name in ("train", "ctrl", "observed")}
    if all(p.is_file() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    from counterfactual import held_out_split

    keep = adata.obs[[CELL_TYPE, CONDITION]].copy()
    bare = ad.AnnData(X=adata.X.copy(), obs=keep, var=pd.DataFrame(index=adata.var_names))
    for name, part in zip(("train", "ctrl", "observed"), held_out_split(bare, ct)):
        part.write_h5ad(paths[name])
    return paths


def run_peer(peer: str, paths: dict[str, Path], out: Path, seed: int, cap: int | None) -> dict:
    """Run one peer's runner in its environment; ``{"ok": bool, "log": tail, ...}``."""
    python = peer_env_dir() / PEER_ENV.get(peer, peer) / "bin" / "python"
    if not python.is_file():
        return {"ok": False, "error": f"environment missing: {python} (run setup_envs.sh)"}
    cmd = [
        str(python),
        str(PEERS_DIR / f"run_{peer}.py"),
        "--train",
        str(paths["train"]),
        "--ctrl",
        str(paths["ctrl"]),
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--threads",
        "1",
    ]
    if cap is not None:
        cmd += ["--max-epochs", str(cap)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=PEERS_DIR)
    log = (proc.stdout + proc.stderr)[-4000:]
    (out.parent / f"{out.stem}.log").write_text(proc.stdout + proc.stderr)
    res = {"ok": proc.returncode == 0 and out.is_file(), "returncode": proc.returncode}
    res["wall_s"] = time.perf_counter() - start
    if not res["ok"]:
        lines = [ln for ln in log.splitlines() if ln.strip()]
        res["error"] = "\n".join(lines[-12:])
    return res


def read_prediction(path: Path) -> tuple[dict[str, ad.AnnData], str, dict]:
    """The prediction layers as AnnData (``X`` = layer), their space and the runner's info."""
    pred = ad.read_h5ad(path)
    space = str(pred.uns["space"])
    info = json.loads(str(pred.uns["peer"]))
    out = {}
    for kind in ("sampled", "mean"):
        if kind in pred.layers:
            x = pred.layers[kind]
            x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
            out[kind] = ad.AnnData(X=np.asarray(x, dtype=np.float64), var=pred.var.copy())
    return out, space, info


def score(ctrl, pred, observed, space: str) -> dict[str, Any]:
    """counterfactual_scores (top 20/50/100, all) and the Pearson delta on the top-100 DEGs."""
    from genvi.metrics import counterfactual_scores

    sc = counterfactual_scores(
        ctrl, pred, observed, predicted_log_normalized=(space == "log_normalized")
    )
    out = sc.to_dict(orient="index")
    out["pearson_delta_top100"] = float(sc.loc["top100", "lfc_pearson"])
    return out


def _write_counts(path: Path, ctrl: ad.AnnData, layers: dict[str, np.ndarray], info: dict):
    pred = ad.AnnData(
        X=np.asarray(next(iter(layers.values())), dtype=np.float32),
        obs=pd.DataFrame(index=ctrl.obs_names.copy()),
        var=pd.DataFrame(index=ctrl.var_names.copy()),
    )
    for kind, x in layers.items():
        pred.layers[kind] = np.asarray(x, dtype=np.float32)
    pred.uns["space"] = "counts"
    pred.uns["peer"] = json.dumps(info, default=str)
    pred.write_h5ad(path)


def run_disentvi(paths, out: Path, seed: int, epochs: int, kwargs: dict, method: str) -> dict:
    """DisentVI on the split; sampled counts and ``return_mean=True`` from one model.

    ``method`` picks the ``predict_counterfactual`` settings (:data:`DISENTVI_SETTINGS`):
    ``unseen`` ``"transfer"`` (the default since December 2026) or ``"decode"`` (the
    decoder's own prediction, the only behaviour before); ``transfer_method`` ``"simplex"``
    (the default since 2 December 2026) or ``"ridge"``; ``transfer_dispersion``
    ``"sources"`` (the default since 2 December 2026) or ``"own"``; ``transfer_space``
    ``"data"`` (the default since 3 December 2026) or ``"means"``; ``transfer_decrease``
    ``"fraction"`` (the default since 4 December 2026) or ``"shift"``.
    """
    import scvi

    from genvi.model import DisentVI

    train = ad.read_h5ad(paths["train"])
    ctrl = ad.read_h5ad(paths["ctrl"])
    for a in (train, ctrl):
        for key in (CELL_TYPE, CONDITION):
            a.obs[key] = a.obs[key].astype("category")
    scvi.settings.seed = seed
    DisentVI.setup_anndata(train, categorical_attributes=[CELL_TYPE, CONDITION])
    model = DisentVI(train, **kwargs)
    start = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=128, enable_progress_bar=False)
    seconds = time.perf_counter() - start
    settings = DISENTVI_SETTINGS[method]
    layers = {}
    for kind, mean in (("sampled", False), ("mean", True)):
        x = model.predict_counterfactual(
            ctrl, {CONDITION: STIMULATED}, return_mean=mean, seed=seed, **settings
        )
        xx = x.X
        layers[kind] = xx.toarray() if hasattr(xx, "toarray") else np.asarray(xx)
    info = {
        "method": "DisentVI",
        "model_kwargs": kwargs,
        **settings,
        "epochs": epochs,
        "train_s": seconds,
        "sampled": "counts drawn from the NB (predict_counterfactual, seed)",
        "mean": "NB means (predict_counterfactual(return_mean=True))",
    }
    _write_counts(out, ctrl, layers, info)
    return {"ok": True}


def run_baseline(method: str, paths, out: Path) -> dict:
    """Identity and additive baselines (deterministic: one 'mean' prediction)."""
    from counterfactual import _dense, predict_additive

    train = ad.read_h5ad(paths["train"])
    ctrl = ad.read_h5ad(paths["ctrl"])
    if method == "identity":
        x = _dense(ctrl.X)
        info = {"method": "identity", "mean": "the control cells' counts"}
    else:
        x = _dense(predict_additive(train, ctrl).X)
        info = {
            "method": "additive",
            "mean": "control cells + mean log-normalised shift of the other types, as counts",
        }
    _write_counts(out, ctrl, {"mean": x}, info)
    return {"ok": True}


def run_all(args, adata: ad.AnnData, cell_types: list[str]) -> dict[str, Any]:
    """The peers benchmark: every seed x type x method; JSON written after each model."""
    out_path = args.out if args.out_given else default_out(args.file)
    payload = json.loads(out_path.read_text()) if out_path.is_file() else {}
    payload.setdefault("results", {})
    payload.update(
        {
            "benchmark": "counterfactual_kang_peers",
            "dataset": args.file,
            "protocol": "BENCHMARKS.md Counterfactuals (Kang): each type's stimulated cells held "
            "out, predicted from its control cells; same split for every method",
            "disentvi_epochs": args.max_epochs,
            "disentvi_kwargs": args.disentvi_kwargs,
            "kinds": {
                "sampled": "counts drawn from the model's likelihood (biolord: one Gaussian draw "
                "in log-normalised space)",
                "mean": "the model's expected expression (NB mean, or the predicted "
                "log-normalised mean for biolord and scGen); deterministic baselines are 'mean'",
            },
            "peer_epoch_caps": args.peer_max_epochs,
        }
    )
    methods = args.peer_methods
    for seed in args.seeds:
        for ct in cell_types:
            paths = split_files(adata, ct, cache_dir(args.file))
            ctrl, observed = ad.read_h5ad(paths["ctrl"]), ad.read_h5ad(paths["observed"])
            for method in methods:
                if method in ("identity", "additive") and seed != args.seeds[0]:
                    continue  # deterministic: scored once
                entry = payload["results"].setdefault(str(seed), {}).setdefault(ct, {})
                if method in entry and not args.redo:
                    continue
                pred_path = paths["train"].parent / f"{method}_seed{seed}.h5ad"
                start = time.perf_counter()
                if method in DISENTVI_SETTINGS:
                    kw = args.disentvi_kwargs
                    res = run_disentvi(paths, pred_path, seed, args.max_epochs, kw, method)
                elif method in ("identity", "additive"):
                    res = run_baseline(method, paths, pred_path)
                else:
                    cap = args.peer_max_epochs.get(method)
                    res = run_peer(method, paths, pred_path, seed, cap)
                res["wall_s"] = time.perf_counter() - start
                if res["ok"]:
                    preds, space, info = read_prediction(pred_path)
                    res["space"] = space
                    res["info"] = info
                    res["scores"] = {k: score(ctrl, p, observed, space) for k, p in preds.items()}
                # each entry records its own machine: the JSON mixes runs made on different
                # machines, whose kernels move single scores by a few hundredths
                res["machine"] = machine_info()
                entry[method] = res
                payload.setdefault("machine", res["machine"])
                write_json(payload, out_path)
                print(_progress(seed, ct, method, res))
                sys.stdout.flush()
    print_peer_tables(payload)
    print(f"\nwrote {out_path}")
    return payload


def merge_parts(paths: list[Path], out: Path) -> dict[str, Any]:
    """Join peers JSON files of runs over disjoint (seed, type, method) into ``out``."""
    payload: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    results = payload.setdefault("results", {})
    for path in paths:
        part = json.loads(Path(path).read_text())
        for key, val in part.items():
            if key != "results":
                payload.setdefault(key, val)
        for seed, per_ct in part["results"].items():
            for ct, per_method in per_ct.items():
                results.setdefault(seed, {}).setdefault(ct, {}).update(per_method)
    payload.setdefault("merged_from", [])
    payload["merged_from"] += [str(Path(p).name) for p in paths]
    write_json(payload, out)
    print_peer_tables(payload)
    print(f"\nwrote {out}")
    return payload


def _progress(seed, ct, method, res) -> str:
    if not res["ok"]:
        return f"seed {seed} | {ct} | {method}: FAILED\n{res.get('error', '')}"
    sc = res["scores"]
    parts = [
        f"{k}: top20 mean R² {v['top20']['mean_r2']:.3f}, var R² {v['top20']['var_r2']:.3f}, "
        f"Pearson delta {v['pearson_delta_top100']:.3f}"
        for k, v in sc.items()
    ]
    return f"seed {seed} | {ct} | {method} ({res['wall_s']:.0f} s) | " + " | ".join(parts)


TABLE_SETS = ("top20", "top50", "top100", "all")


def peer_rows(payload: dict, kind_pref: str) -> list[list[Any]]:
    """Rows: type, seed, method, kind, mean / var R² per gene set, Pearson delta top-100."""
    rows = []
    for seed, per_ct in payload["results"].items():
        for ct, per_method in per_ct.items():
            for method, res in per_method.items():
                if not res.get("ok"):
                    rows.append([ct, seed, ALL_METHODS.get(method, method), "failed"] + [None] * 9)
                    continue
                kinds = [kind_pref] if kind_pref in res["scores"] else list(res["scores"])
                for kind in kinds:
                    s = res["scores"][kind]
                    row = [ct, seed, ALL_METHODS.get(method, method), kind]
                    for gs in TABLE_SETS:
                        row += [s[gs]["mean_r2"], s[gs]["var_r2"]]
                    row.append(s["pearson_delta_top100"])
                    rows.append(row)
    return rows


def _median(values: list) -> float:
    """Median of the defined values: the JSON stores an undefined score (the identity's
    Pearson delta, a constant prediction) as null."""
    return float(np.nanmedian([np.nan if v is None else v for v in values]))


def print_peer_tables(payload: dict) -> None:
    """Side-by-side tables: per type and seed, sampled and means; medians per method."""
    header = ["held out", "seed", "method", "from"]
    for gs in TABLE_SETS:
        header += [f"{gs} mean R²", f"{gs} var R²"]
    header.append("Pearson Δ top100")
    for kind in ("sampled", "mean"):
        print(
            f"\n## Peers side by side: {kind} predictions where the method has them "
            f"(else its only kind, named in 'from')\n"
        )
        print(markdown_table(header, peer_rows(payload, kind)))
    print("\n## Median over held-out types and seeds (top-20 mean R², var R², Pearson Δ top100)\n")
    summary = []
    for method in ALL_METHODS:
        for kind in ("sampled", "mean"):
            vals = [
                res["scores"][kind]
                for per_ct in payload["results"].values()
                for per_method in per_ct.values()
                for m, res in per_method.items()
                if m == method and res.get("ok") and kind in res["scores"]
            ]
            if vals:
                summary.append(
                    [
                        ALL_METHODS[method],
                        kind,
                        len(vals),
                        _median([v["top20"]["mean_r2"] for v in vals]),
                        _median([v["top20"]["var_r2"] for v in vals]),
                        _median([v["pearson_delta_top100"] for v in vals]),
                    ]
                )
    print(
        markdown_table(
            ["method", "from", "n runs", "top20 mean R²", "top20 var R²", "Pearson Δ top100"],
            summary,
        )
    )
