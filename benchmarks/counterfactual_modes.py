"""DisentVI's ways of predicting an unseen combination, from one trained model per split.

``counterfactual.py --peers`` trains one model per method; the DisentVI modes
(``unseen="transfer"`` with ``transfer_method="simplex"`` or ``"ridge"``, each with the
sources' dispersion, the default, or the decoder's own, ``transfer_dispersion="own"``; the
simplex with the decoder's response instead of the data's, ``transfer_space="means"``;
``unseen="decode"``; and ``fraction``, the default since December 4, the simplex with the
sources' decreases carried over as fractions of the target's level, where the other transfer
modes shift by them, ``transfer_decrease="shift"``; ``stacked``, the same with the data's
response on two scales combined, ``transfer_scale="stacked"``) differ only after training, so this
script trains DisentVI once per held-out type and scores all of them, or those of
``--modes`` (a type's entry in ``--out`` is replaced by the modes run), on sampled counts
and ``return_mean=True``, with the
peers' scoring (top-20 DEG mean and variance R², Pearson delta on the top-100 DEGs). Same
split and settings as ``counterfactual.py`` (150 epochs, batch 128, genvi defaults; one
type's stimulated cells held out, predicted from its control cells). Meant for data sets the
peers' run does not cover, e.g. ``kang_ifnb_harmony_2k.h5ad`` (9,015 genes, 8 types; its
stimulated cells all carry transferred labels, so every cell is scored). About 11 minutes
per type there on one thread; ``--cell-types`` splits the run, results are merged into
``--out`` per type.

Run from the repository root::

    python benchmarks/counterfactual_modes.py --file kang_ifnb_harmony_2k.h5ad \\
        --cell-types "B cells,NK cells" --threads 1

    # no training: the default (fraction) against the peers run on the same file
    # (counterfactual.py --file kang_ifnb_harmony_2k.h5ad --peers ...)
    python benchmarks/counterfactual_modes.py \\
        --out benchmarks/results/counterfactual_modes_kang_ifnb_harmony_2k_fraction.json \\
        --against-peers benchmarks/results/counterfactual_kang_ifnb_harmony_2k_peers.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

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
from counterfactual import (  # noqa: E402
    BATCH_SIZE,
    CELL_TYPE,
    CONDITION,
    DEFAULT_EPOCHS,
    STIMULATED,
    _dense,
    as_counts,
    held_out_split,
)

#: ``predict_counterfactual`` settings of each mode; the modes other than ``fraction`` carry
#: decreases over as absolute shifts (``transfer_decrease="shift"``, the default when they
#: were run), so a rerun reproduces their entries
MODES = {
    "fraction": {"unseen": "transfer", "transfer_method": "simplex"},
    "stacked": {"unseen": "transfer", "transfer_method": "simplex", "transfer_scale": "stacked"},
    "simplex": {"unseen": "transfer", "transfer_method": "simplex", "transfer_decrease": "shift"},
    "simplex_means": {
        "unseen": "transfer",
        "transfer_method": "simplex",
        "transfer_space": "means",
        "transfer_decrease": "shift",
    },
    "simplex_own": {
        "unseen": "transfer",
        "transfer_method": "simplex",
        "transfer_dispersion": "own",
        "transfer_decrease": "shift",
    },
    "ridge": {"unseen": "transfer", "transfer_method": "ridge", "transfer_decrease": "shift"},
    "ridge_own": {
        "unseen": "transfer",
        "transfer_method": "ridge",
        "transfer_dispersion": "own",
        "transfer_decrease": "shift",
    },
    "decode": {"unseen": "decode"},
}
METRICS = ("top20_mean_r2", "top20_var_r2", "pearson_delta_top100")


def run_type(adata, cell_type: str, seed: int, epochs: int, modes: list[str]) -> dict:
    """Train on the split of ``cell_type``; scores of the ``modes``, sampled and means."""
    import scvi

    from genvi.metrics import counterfactual_scores
    from genvi.model import DisentVI

    train, ctrl, observed = held_out_split(adata, cell_type)
    scvi.settings.seed = seed
    DisentVI.setup_anndata(train, categorical_attributes=[CELL_TYPE, CONDITION])
    model = DisentVI(train)
    start = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=BATCH_SIZE, enable_progress_bar=False)
    out = {"train_s": time.perf_counter() - start, "n_control": ctrl.n_obs}
    out["n_observed"] = observed.n_obs
    for mode in modes:
        kwargs = MODES[mode]
        for kind, mean in (("sampled", False), ("mean", True)):
            pred = model.predict_counterfactual(  # leaves ``ctrl`` as it was
                ctrl, {CONDITION: STIMULATED}, seed=seed, return_mean=mean, **kwargs
            )
            s = counterfactual_scores(ctrl, as_counts(ctrl, _dense(pred.X)), observed)
            out[f"{mode}_{kind}"] = {
                "top20_mean_r2": float(s.loc["top20", "mean_r2"]),
                "top20_var_r2": float(s.loc["top20", "var_r2"]),
                "pearson_delta_top100": float(s.loc["top100", "lfc_pearson"]),
            }
            if not mean and mode in ("fraction", "stacked", "simplex", "ridge"):
                out[f"report_{mode}"] = pred.uns["genvi"]["transfer"]
    return out


def print_tables(results: dict) -> None:
    """Per type and median: every metric of every mode all types have (sampled counts)."""
    modes = [m for m in MODES if all(f"{m}_sampled" in r for r in results.values())]
    header = ["held out"] + [f"{m} · {mode}" for m in METRICS for mode in modes]
    rows = [
        [ct] + [r[f"{mode}_sampled"][m] for m in METRICS for mode in modes]
        for ct, r in results.items()
    ]
    rows.append(
        ["**median**"]
        + [
            float(np.median([r[f"{mode}_sampled"][m] for r in results.values()]))
            for m in METRICS
            for mode in modes
        ]
    )
    print("\nSampled counts (top-20 mean R², top-20 variance R², Pearson delta top-100):\n")
    print(markdown_table(header, rows))


def _peer_scores(res: dict, kind: str) -> dict[str, float]:
    s = res["scores"][kind]
    return {
        "top20_mean_r2": s["top20"]["mean_r2"],
        "top20_var_r2": s["top20"]["var_r2"],
        "pearson_delta_top100": s["pearson_delta_top100"],
    }


def against_peers(results: dict, peers: dict, mode: str = "fraction") -> dict:
    """DisentVI's ``mode`` (sampled counts) against the best peer or baseline per type.

    ``results``: one seed of this script's JSON; ``peers``: the same seed of
    ``counterfactual.py --peers``' JSON on the same file (same split per type). The peers'
    sampled and mean predictions both count; the identity baseline and DisentVI's own
    entries (``disentvi*``, earlier runs of DisentVI in that JSON) do not. Prints the table
    and returns ``{type: {metric: {"disentvi": ..., "best": ..., "by": ...}}}``.
    """
    out: dict = {}
    for ct, res in results.items():
        if f"{mode}_sampled" not in res or ct not in peers:
            continue
        others = {
            f"{m} ({kind})": _peer_scores(r, kind)
            for m, r in peers[ct].items()
            if r.get("ok") and m != "identity" and not m.startswith("disentvi")
            for kind in r["scores"]
        }
        out[ct] = {}
        for metric in METRICS:
            valid = {k: v[metric] for k, v in others.items() if v[metric] is not None}
            by = max(valid, key=valid.get) if valid else None
            out[ct][metric] = {
                "disentvi": res[f"{mode}_sampled"][metric],
                "disentvi_means": res[f"{mode}_mean"][metric],
                "best": valid.get(by),
                "by": by,
            }
    header = ["held out"]
    for metric in METRICS:
        header += [f"{metric}: DisentVI ({mode}, sampled)", "DisentVI means", "best peer"]
    rows = []
    for ct, per in out.items():
        row = [ct]
        for metric in METRICS:
            v = per[metric]
            best = "—" if v["by"] is None else f"{v['best']:.3f} ({v['by']})"
            row += [v["disentvi"], v["disentvi_means"], best]
        rows.append(row)
    print(f"\nDisentVI ({mode}) against the peers' JSON (per type, same split):\n")
    print(markdown_table(header, rows))
    for metric in METRICS:
        ahead = [
            ct
            for ct, per in out.items()
            if per[metric]["best"] is not None and per[metric]["disentvi"] >= per[metric]["best"]
        ]
        print(
            f"{metric}: DisentVI's draws at or above the best peer on {len(ahead)} of "
            f"{len(out)} types ({', '.join(ahead)})"
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, DEFAULT_EPOCHS)
    parser.add_argument("--file", default="kang_ifnb_harmony_2k.h5ad", help="data set file")
    parser.add_argument("--cell-types", default=None, help="comma list (default all)")
    parser.add_argument("--out", type=Path, default=None, help="JSON (merged per type)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)} (default all)"
    )
    parser.add_argument(
        "--against-peers",
        type=Path,
        default=None,
        help="no training: compare --out's entries of --against-mode (seed --seed) with this "
        "JSON of counterfactual.py --file <same file> --peers (same splits)",
    )
    parser.add_argument(
        "--against-mode", default="fraction", help="the mode --against-peers compares"
    )
    args = parser.parse_args(argv)
    out = args.out or RESULTS_DIR / f"counterfactual_modes_{Path(args.file).stem}.json"
    if args.against_peers is not None:
        results = json.loads(out.read_text())["results"][str(args.seed)]
        peers = json.loads(args.against_peers.read_text())["results"][str(args.seed)]
        return against_peers(results, peers, args.against_mode)
    set_threads(args.threads)
    quiet()
    adata = load_dataset(args.data_dir, args.file)
    for key in (CELL_TYPE, CONDITION):
        adata.obs[key] = adata.obs[key].astype("category")
    types = (
        args.cell_types.split(",") if args.cell_types else list(adata.obs[CELL_TYPE].cat.categories)
    )
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown --modes {unknown}; choose from {', '.join(MODES)}")
    for cell_type in types:
        result = run_type(adata, cell_type, args.seed, args.max_epochs, modes)
        result["machine"] = machine_info()
        # read again just before writing: parallel runs over other types share the file
        payload = json.loads(out.read_text()) if out.is_file() else {}
        payload.update({"file": args.file, "epochs": args.max_epochs})
        runs = payload.setdefault("results", {}).setdefault(str(args.seed), {})
        runs[cell_type] = result
        write_json(payload, out)
        print(cell_type, {k: v for k, v in result.items() if k.endswith("_sampled")})
        sys.stdout.flush()
    print_tables(runs)
    print(f"\nwrote {out}")
    return payload


if __name__ == "__main__":
    main()
