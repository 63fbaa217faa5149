"""Score the cached predictions of ``counterfactual.py --peers`` with Arc Institute's cell-eval.

Runs in its own environment (``setup_envs.sh celleval``; cell-eval needs Python >= 3.11 and
polars / pdex, none of which genvi needs)::

    benchmarks/peers/.venvs/celleval/bin/python benchmarks/peers/run_celleval.py

For every prediction file ``.cache/kang/<type>/<method>_seed<s>.h5ad`` and each of its layers
(``sampled``, ``mean``), it builds cell-eval's two AnnData: *real* = the type's real control
cells (``condition`` = control) + its real stimulated cells, *pred* = the same real control
cells + the predicted cells (labelled stimulated), both log-normalised (``log1p`` of counts per
10,000; predictions made in that space are used as they are, negatives set to 0), and runs
``MetricsEvaluator(...).compute(profile="full")`` with one thread. The per-perturbation
results (one perturbation: stimulated) go to
``benchmarks/results/counterfactual_kang_celleval.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "kang"
OUT = HERE.parent / "results" / "counterfactual_kang_celleval.json"
KEEP = ("pearson_delta", "overlap_at_N", "de_direction_match", "pr_auc")


def log_norm(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1.0) * 1e4).astype(np.float32)


def dense(x):
    import numpy as np

    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


def evaluate(ctrl, observed, pred_x, space: str) -> dict:
    """cell-eval's full profile for one prediction; all metrics of the 'stimulated' row."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    from cell_eval import MetricsEvaluator

    c = log_norm(dense(ctrl.X))
    o = log_norm(dense(observed.X))
    if space == "log_normalized":
        # a Gaussian decoder's mean (biolord) can dip below 0, which cell-eval refuses
        # ("Invalid scale"); log-normalised expression is >= 0, so negatives are read as 0
        p = np.clip(np.asarray(pred_x, dtype=np.float32), 0.0, None)
    else:
        p = log_norm(pred_x)
    var = pd.DataFrame(index=ctrl.var_names.astype(str))

    def pair(stim):
        obs = pd.DataFrame(
            {"condition": ["control"] * c.shape[0] + ["stimulated"] * stim.shape[0]},
            index=[f"c{i}" for i in range(c.shape[0] + stim.shape[0])],
        )
        return ad.AnnData(X=np.vstack([c, stim]).astype(np.float32), obs=obs, var=var)

    with tempfile.TemporaryDirectory() as tmp:
        ev = MetricsEvaluator(
            adata_pred=pair(p),
            adata_real=pair(o),
            control_pert="control",
            pert_col="condition",
            num_threads=1,
            outdir=tmp,
        )
        results, _ = ev.compute(profile="full", write_csv=False)
    df = results.to_pandas()
    row = df[df.iloc[:, 0].astype(str) == "stimulated"]
    row = row if len(row) else df
    out = {}
    for col, val in row.iloc[0].items():
        try:
            out[str(col)] = float(val)
        except (TypeError, ValueError):
            out[str(col)] = str(val)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--redo", action="store_true")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    logging.basicConfig(level=logging.WARNING)
    from importlib.metadata import version

    import anndata as ad

    payload = json.loads(args.out.read_text()) if args.out.is_file() else {"results": {}}
    payload["cell_eval"] = version("cell-eval")
    payload["how"] = (
        "cell-eval MetricsEvaluator.compute(profile='full'); real = real control + real "
        "stimulated cells of the held-out type, pred = the same real control cells + the "
        "prediction; both log1p(counts / total * 1e4); one thread"
    )
    for folder in sorted(p for p in args.cache.iterdir() if p.is_dir()):
        ctrl = ad.read_h5ad(folder / "ctrl.h5ad")
        observed = ad.read_h5ad(folder / "observed.h5ad")
        ct = str(ctrl.obs["cell_type"].iloc[0])
        for path in sorted(folder.glob("*_seed*.h5ad")):
            method, seed = path.stem.rsplit("_seed", 1)
            pred = ad.read_h5ad(path)
            space = str(pred.uns["space"])
            for kind in ("sampled", "mean"):
                if kind not in pred.layers:
                    continue
                entry = payload["results"].setdefault(seed, {}).setdefault(ct, {})
                entry = entry.setdefault(method, {})
                if kind in entry and not args.redo:
                    continue
                try:
                    entry[kind] = evaluate(ctrl, observed, dense(pred.layers[kind]), space)
                except Exception as err:  # noqa: BLE001 - recorded, the run goes on
                    entry[kind] = {"error": f"{type(err).__name__}: {err}"}
                short = {k: entry[kind].get(k) for k in KEEP}
                print(seed, ct, method, kind, json.dumps(short))
                sys.stdout.flush()
                args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
