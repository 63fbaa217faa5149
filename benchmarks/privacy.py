"""Privacy vs fidelity on Kang control PBMCs (BENCHMARKS.md, "Privacy"; issue #18).

``kang_ctrl_8donors.h5ad`` (12,261 cells x 1,287 genes, 8 donors) is split into members (the
training cells) and non-members (held-out cells of the same population) in two ways:

- **by cells**: half of the cells of every donor x cell type, so both sides hold all 8 donors;
- **by donors**: 4 donors vs 4 (chosen so both sides hold about as many cells; largest donor
  first, to the side with fewer cells), the setting of a patient who asks "was I in it?".

Every model is trained on the members only (``train_size=1.0``: every member is fitted, none
is kept for validation), conditioned on ``cell_type`` (not on donor, which is unseen in the
donor split), and generates as many cells per cell type as were held out. Methods: PriorVI
with each prior (gaussian, mog, flow, vamp), DisentVI (``cell_type`` as its attribute),
LatentFlow on a plain scVI model, the resampling baseline (real training cells of each cell
type, an upper bound of fidelity that must fail privacy) and, split by cells, a null row:
real held-out cells used as "synthetic" (the non-members are then the other half of the
held-out cells), which must look private.

Per method: :func:`genvi.metrics.membership_inference` (distance / GAN-Leaks, calibrated
distance, DOMIAS density ratio; AUROC of members vs non-members at cell level and, split by
donors, averaged per donor; TPR at 1% FPR; every member and non-member scored), the DCR ratio
of :func:`genvi.metrics.privacy` and fidelity from :func:`genvi.metrics.evaluate` (energy
distance, classifier AUROC, mean / variance R², means over cell types with >= 30 held-out
cells, space fitted on the training cells). Also PriorVI (gaussian) at several training
lengths, split by cells: does the attack AUROC grow with epochs (memorisation)? And the
DOMIAS AUROC for other numbers of density PCs. Run from the repository root::

    python benchmarks/privacy.py --quick --threads 1    # smoke run, a few epochs
    python benchmarks/privacy.py --threads 1            # full run, writes results/privacy_kang.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import anndata as ad

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RESULTS_DIR,
    add_common_args,
    load_dataset,
    machine_info,
    markdown_table,
    quiet,
    set_threads,
    stratified_split,
    timed,
    write_json,
)
from generation import BATCH_SIZE, MIN_CELLS, resample_training  # noqa: E402

DATASET = "kang_ctrl_8donors.h5ad"
CONDITION = "cell_type"
DONOR = "donor"
DEFAULT_EPOCHS = 50
QUICK_EPOCHS = 3
DEFAULT_SWEEP = "25,100,400"
QUICK_SWEEP = "2,6"
DENSITY_DIMS = 50  # membership_inference's default: all PCs of its space
ABLATION_DIMS = (5, 10, 20)
PRIORS = ["gaussian", "mog", "flow", "vamp"]
METHODS = {
    "priorvi_gaussian": "PriorVI, conditional Gaussian prior",
    "priorvi_mog": "PriorVI, mixture-of-Gaussians prior",
    "priorvi_flow": "PriorVI, normalizing-flow prior",
    "priorvi_vamp": "PriorVI, VampPrior",
    "disentvi": "DisentVI",
    "scvi_latentflow": "LatentFlow on scVI",
    "resample": "Resampled training cells",
    "null": "Real held-out cells (null)",
}
SPLITS = {
    "cells": "split by cells (every donor on both sides)",
    "donors": "split by donors (4 / 4)",
}
PARTS = (*SPLITS, "sweep")
# DOMIAS with fewer density PCs: for these rows only (each costs a full scoring pass)
ABLATION_METHODS = ("priorvi_gaussian", "resample", "null")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, DEFAULT_EPOCHS)
    parser.add_argument(
        "--methods",
        default=",".join(m for m in METHODS if m != "null"),
        help="comma list of methods (default: all); the null row is always added",
    )
    parser.add_argument(
        "--sweep-epochs",
        default=None,
        help=f"training lengths of PriorVI (gaussian), split by cells (default {DEFAULT_SWEEP}; "
        "'' to skip)",
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma list of {', '.join(PARTS)} (default all); run parts in parallel processes "
        "with their own --out and join them with --merge",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default: benchmarks/results/privacy_kang.json, or "
        "privacy_kang_quick.json with --quick)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        help="only combine the JSON files of runs over disjoint --parts into --out",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_EPOCHS} epochs, sweep {QUICK_SWEEP}, LatentFlow 200 steps",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.max_epochs = min(args.max_epochs, QUICK_EPOCHS)
    if args.sweep_epochs is None:
        args.sweep_epochs = QUICK_SWEEP if args.quick else DEFAULT_SWEEP
    args.sweep_epochs = [int(e) for e in args.sweep_epochs.split(",") if e.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if sorted(set(args.parts) - set(PARTS)):
        parser.error(f"unknown part(s) in {args.parts}; choose from {list(PARTS)}")
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    if args.out is None:
        args.out = RESULTS_DIR / f"privacy_kang{'_quick' if args.quick else ''}.json"
    return args


# ---------------------------------------------------------------------------- splits
def split_by_cells(adata: ad.AnnData, seed: int) -> tuple[ad.AnnData, ad.AnnData]:
    """Half of the cells of every donor x cell type on each side."""
    labels = adata.obs[DONOR].astype(str) + " | " + adata.obs[CONDITION].astype(str)
    train_idx, test_idx = stratified_split(labels, test_size=0.5, seed=seed)
    return adata[train_idx].copy(), adata[test_idx].copy()


def member_donors(adata: ad.AnnData) -> list[str]:
    """Half of the donors, balancing cells: largest donor first, to the side with fewer cells."""
    counts = adata.obs[DONOR].astype(str).value_counts()
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    half = len(order) // 2
    sides: list[list[str]] = [[], []]
    sizes = [0, 0]
    for donor, n in order:
        side = int(sizes[1] < sizes[0])
        if len(sides[side]) == half:
            side = 1 - side
        sides[side].append(donor)
        sizes[side] += n
    return sorted(sides[0])


def split_by_donors(adata: ad.AnnData) -> tuple[ad.AnnData, ad.AnnData]:
    """Cells of :func:`member_donors` vs cells of the other donors."""
    members = adata.obs[DONOR].astype(str).isin(member_donors(adata)).to_numpy()
    return adata[members].copy(), adata[~members].copy()


# ---------------------------------------------------------------------------- generators
def _fit(model: Any, epochs: int, **kwargs: Any) -> float:
    """Train on every cell given (no validation cells); return the wall-clock seconds."""
    _, seconds = timed(
        lambda: model.train(
            max_epochs=epochs,
            batch_size=BATCH_SIZE,
            train_size=1.0,
            enable_progress_bar=False,
            **kwargs,
        )
    )
    return seconds


def train_and_generate(
    method: str, train: ad.AnnData, n_cells: dict[str, int], epochs: int, seed: int, quick: bool
) -> tuple[ad.AnnData, float]:
    """Train ``method`` on ``train`` and generate ``n_cells[t]`` cells of each cell type ``t``."""
    import scvi

    from genvi.model import DisentVI, LatentFlow, PriorVI
    from genvi.model.base import default_kl_warmup

    adata = train.copy()
    scvi.settings.seed = seed
    if method.startswith("priorvi_"):
        PriorVI.setup_anndata(adata, condition_keys=[CONDITION])
        model = PriorVI(adata, prior=method.removeprefix("priorvi_"))
        seconds = _fit(model, epochs)
    elif method == "disentvi":
        DisentVI.setup_anndata(adata, categorical_attributes=[CONDITION])
        model = DisentVI(adata)
        seconds = _fit(model, epochs)
    elif method == "scvi_latentflow":
        scvi.model.SCVI.setup_anndata(adata)
        base = scvi.model.SCVI(adata)
        seconds = _fit(base, epochs, plan_kwargs={"n_epochs_kl_warmup": default_kl_warmup(epochs)})
        scvi.settings.seed = seed
        model = LatentFlow.from_model(base, condition_keys=[CONDITION])
        # default: ~10,000 optimizer steps; the smoke run takes a few hundred
        latent_epochs = 2 if quick else None
        _, latent_seconds = timed(
            lambda: model.train(max_epochs=latent_epochs, train_size=1.0, enable_progress_bar=False)
        )
        seconds += latent_seconds
    else:
        raise ValueError(f"no generator for {method!r}")
    specs = [{CONDITION: c} for c in n_cells]
    return model.generate(specs, n_cells=list(n_cells.values()), seed=seed), seconds


# ---------------------------------------------------------------------------- scoring
def score(
    train: ad.AnnData,
    holdout: ad.AnnData,
    synthetic: ad.AnnData,
    space: Any,
    seed: int,
    donor_level: bool,
    ablation: bool,
) -> dict[str, Any]:
    """Fidelity and DCR (``evaluate``), membership inference, DOMIAS with fewer PCs."""
    import genvi

    start = time.perf_counter()
    table = genvi.metrics.evaluate(
        holdout,
        synthetic,
        [CONDITION],
        train=train,
        space=space,
        min_cells=MIN_CELLS,
        seed=seed,
        membership=False,
    )
    summary = genvi.metrics.summarize(table)
    # every member and non-member scored (max_cells above the split sizes)
    mia = genvi.metrics.membership_inference(
        synthetic,
        train,
        holdout,
        donor_key=DONOR if donor_level else None,
        max_cells=train.n_obs + holdout.n_obs,
        seed=seed,
    )
    fewer_dims = {}
    for dims in ABLATION_DIMS if ablation else ():
        other = genvi.metrics.membership_inference(
            synthetic,
            train,
            holdout,
            donor_key=DONOR if donor_level else None,
            attacks=["domias"],
            density_dims=dims,
            max_cells=train.n_obs + holdout.n_obs,
            seed=seed,
        )["attacks"]["domias"]
        fewer_dims[str(dims)] = {k: other.get(k) for k in ("auroc", "tpr_at_fpr", "donor_auroc")}
    seconds = time.perf_counter() - start
    print(
        f"    scored in {seconds:.0f} s: membership AUROC {mia['auroc']:.3f} ({mia['attack']}), "
        f"risk {mia['risk']}, DCR ratio {summary.get('dcr_ratio', float('nan')):.3f}, "
        f"energy {summary.get('energy', float('nan')):.3f}",
        flush=True,
    )
    return {
        "summary": summary.to_dict(),
        "per_condition": table.drop(columns=["mmd_bandwidths"], errors="ignore"),
        "privacy_overall": table.attrs["privacy_overall"],
        "membership": mia,
        "domias_density_dims": fewer_dims,
        "score_seconds": seconds,
    }


def run_split(
    name: str, adata: ad.AnnData, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train every method on one split and score it; settings and per-method results."""
    import genvi

    train, holdout = split_by_cells(adata, args.seed) if name == "cells" else split_by_donors(adata)
    n_cells = holdout.obs[CONDITION].astype(str).value_counts().sort_index()
    n_cells = {str(k): int(v) for k, v in n_cells.items()}
    donors = {
        side: sorted(map(str, d.obs[DONOR].astype(str).unique()))
        for side, d in (("members", train), ("nonmembers", holdout))
    }
    print(
        f"\n{SPLITS[name]}: {train.n_obs} member cells (donors {', '.join(donors['members'])}), "
        f"{holdout.n_obs} non-member cells (donors {', '.join(donors['nonmembers'])})",
        flush=True,
    )
    space = genvi.metrics.ReferenceSpace.fit(train, n_top_genes=2000, n_comps=50, seed=args.seed)
    donor_level = name == "donors"
    results: dict[str, Any] = {}
    for method in args.methods:
        print(f"  {METHODS[method]}...", flush=True)
        if method == "resample":
            synthetic = resample_training(
                train, [CONDITION], {(c,): n for c, n in n_cells.items()}, args.seed
            )
            seconds, epochs = 0.0, None
        else:
            load = os.getloadavg()[0]
            synthetic, seconds = train_and_generate(
                method, train, n_cells, args.max_epochs, args.seed, args.quick
            )
            epochs = args.max_epochs
            print(f"    trained in {seconds:.0f} s (load {load:.1f})", flush=True)
        results[method] = {
            "epochs": epochs,
            "train_seconds": seconds,
            **score(
                train, holdout, synthetic, space, args.seed, donor_level, method in ABLATION_METHODS
            ),
        }
    if name == "cells":
        # Null: half of the held-out cells as "synthetic", the other half as non-members.
        labels = holdout.obs[DONOR].astype(str) + " | " + holdout.obs[CONDITION].astype(str)
        a, b = stratified_split(labels, test_size=0.5, seed=args.seed + 1)
        fake = holdout[a].copy()
        results["null"] = {
            "epochs": None,
            "train_seconds": 0.0,
            "nonmembers": "the other half of the held-out cells",
            **score(train, holdout[b].copy(), fake, space, args.seed, donor_level, True),
        }
    settings = {
        "description": SPLITS[name],
        "n_members": train.n_obs,
        "n_nonmembers": holdout.n_obs,
        "member_donors": donors["members"],
        "nonmember_donors": donors["nonmembers"],
        "generated_cells": n_cells,
        "reference_space_fidelity": {"n_comps": space.n_comps, "hvg_flavor": space.hvg_flavor},
    }
    return settings, results


def sweep_epochs(adata: ad.AnnData, args: argparse.Namespace, done: dict) -> dict[str, Any]:
    """PriorVI (gaussian), split by cells, at each training length of ``--sweep-epochs``.

    The row at ``--max-epochs`` is the main table's (from ``done``, or added by ``--merge``).
    """
    import genvi

    train, holdout = split_by_cells(adata, args.seed)
    n_cells = holdout.obs[CONDITION].astype(str).value_counts().sort_index()
    n_cells = {str(k): int(v) for k, v in n_cells.items()}
    space = genvi.metrics.ReferenceSpace.fit(train, n_top_genes=2000, n_comps=50, seed=args.seed)
    out = {}
    for epochs in sorted(set(args.sweep_epochs) | {args.max_epochs}):
        if epochs == args.max_epochs:
            if "priorvi_gaussian" in done:
                out[str(epochs)] = done["priorvi_gaussian"]
            continue
        print(f"  PriorVI (gaussian), {epochs} epochs...", flush=True)
        synthetic, seconds = train_and_generate(
            "priorvi_gaussian", train, n_cells, epochs, args.seed, args.quick
        )
        print(f"    trained in {seconds:.0f} s", flush=True)
        out[str(epochs)] = {
            "epochs": epochs,
            "train_seconds": seconds,
            **score(train, holdout, synthetic, space, args.seed, False, True),
        }
    return out


# ---------------------------------------------------------------------------- reporting
def _row(label: str, res: dict[str, Any], donor: bool) -> list[Any]:
    mia, s = res["membership"], res["summary"]
    attacks = mia["attacks"]
    row = [
        label,
        mia["auroc"],
        mia["tpr_at_fpr"],
        attacks["distance"]["auroc"],
        attacks["distance_calibrated"]["auroc"],
        attacks["domias"]["auroc"],
    ]
    if donor:
        row += [mia["donor_auroc"], mia["donor_p_value"]]
    row += [
        mia["risk"],
        s.get("dcr_ratio"),
        s.get("energy"),
        s.get("c2st_auroc"),
        s.get("mean_r2"),
        s.get("var_r2"),
    ]
    return row


def privacy_table(results: dict[str, Any], donor: bool) -> str:
    """One row per method: attack AUROCs, DCR ratio and fidelity side by side."""
    header = ["method", "cell AUROC (best)", "TPR @ 1% FPR", "distance", "calibrated", "DOMIAS"]
    if donor:
        header += ["donor AUROC (best)", "donor p"]
    header += ["risk", "DCR ratio", "energy", "C2ST AUROC", "mean R²", "var R²"]
    rows = [_row(METHODS[k], r, donor) for k, r in results.items()]
    floor = next(iter(results.values()))["summary"]
    blank = [""] * (len(header) - 5)
    rows.append(
        ["Noise floor (real vs real halves)"]
        + blank
        + [floor.get(c) for c in ("energy_floor", "c2st_floor", "mean_r2_floor", "var_r2_floor")]
    )
    return markdown_table(header, rows)


def sweep_table(sweep: dict[str, Any]) -> str:
    """Attack AUROCs and fidelity by training length."""
    header = ["epochs", "train s", "cell AUROC (best)", "TPR @ 1% FPR", "distance", "calibrated"]
    header += ["DOMIAS", "DCR ratio", "energy", "C2ST AUROC", "mean R²", "var R²"]
    rows = []
    for epochs, res in sorted(sweep.items(), key=lambda kv: int(kv[0])):
        row = _row(epochs, res, False)
        rows.append([row[0], res["train_seconds"]] + row[1:6] + row[7:])
    return markdown_table(header, rows)


def ablation_table(results: dict[str, dict[str, Any]]) -> str:
    """DOMIAS cell-level AUROC by number of density PCs."""
    dims = [str(DENSITY_DIMS)] + [str(d) for d in ABLATION_DIMS]
    rows = []
    for split, res in results.items():
        for key, r in res.items():
            if not r["domias_density_dims"]:
                continue
            values = {str(DENSITY_DIMS): r["membership"]["attacks"]["domias"]["auroc"]}
            values.update({d: v["auroc"] for d, v in r["domias_density_dims"].items()})
            rows.append([f"{METHODS[key]} ({split})"] + [values[d] for d in sorted(dims, key=int)])
    return markdown_table(["method (split)"] + [f"{d} PCs" for d in sorted(dims, key=int)], rows)


def print_tables(payload: dict[str, Any]) -> None:
    """The markdown tables of a (possibly merged) result."""
    settings, results, sweep = payload["settings"], payload["results"], payload["training_length"]
    for split, donor in (("cells", False), ("donors", True)):
        if split not in results:
            continue
        s = settings["splits"][split]
        print(
            f"\n## {SPLITS[split]}: {s['n_members']} members, {s['n_nonmembers']} non-members, "
            f"{settings['max_epochs']} epochs\n"
        )
        print(privacy_table(results[split], donor))
    if sweep:
        print("\n## Training length: PriorVI (gaussian), split by cells\n")
        print(sweep_table(sweep))
    if results:
        print("\n## DOMIAS AUROC (cell level) by number of density PCs\n")
        print(ablation_table(results))


def merge(paths: list[Path], out: Path) -> dict[str, Any]:
    """Combine the JSON of runs over disjoint ``--parts`` (run in parallel)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    payload = dict(parts[0])
    payload["settings"] = dict(parts[0]["settings"])
    payload["settings"]["splits"] = {}
    payload["results"], payload["training_length"] = {}, {}
    for part in parts:
        payload["settings"]["splits"].update(part["settings"]["splits"])
        payload["results"].update(part["results"])
        payload["training_length"].update(part["training_length"])
    payload["settings"]["parts"] = [p for part in parts for p in part["settings"]["parts"]]
    main_row = payload["results"].get("cells", {}).get("priorvi_gaussian")
    if payload["training_length"] and main_row is not None:
        payload["training_length"].setdefault(str(main_row["epochs"]), main_row)
    payload["machine"] = [part["machine"] for part in parts]
    payload["merged_from"] = [str(p) for p in paths]
    print_tables(payload)
    path = write_json(payload, out)
    print(f"\nwrote {path}")
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and write the JSON."""
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    adata = load_dataset(args.data_dir, DATASET)

    import scvi

    quiet()
    # train_size=1.0 leaves Lightning an empty validation loader
    warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
    warnings.filterwarnings("ignore", message="Observation names are not unique")
    if args.threads is not None:
        set_threads(args.threads)
    scvi.settings.seed = args.seed
    for key in (CONDITION, DONOR):
        adata.obs[key] = adata.obs[key].astype(str).astype("category")

    settings, results = {}, {}
    for split in SPLITS:
        if split in args.parts:
            settings[split], results[split] = run_split(split, adata, args)
    sweep = {}
    if "sweep" in args.parts and args.sweep_epochs:
        print("\ntraining length (PriorVI gaussian, split by cells)", flush=True)
        sweep = sweep_epochs(adata, args, results.get("cells", {}))

    machine = machine_info()
    payload = {
        "benchmark": "privacy",
        "dataset": DATASET,
        "settings": {
            "max_epochs": args.max_epochs,
            "sweep_epochs": args.sweep_epochs,
            "quick": args.quick,
            "parts": args.parts,
            "seed": args.seed,
            "torch_threads": args.threads,
            "batch_size": BATCH_SIZE,
            "train_size": 1.0,
            "condition_key": CONDITION,
            "donor_key": DONOR,
            "min_cells_fidelity": MIN_CELLS,
            "density_dims": DENSITY_DIMS,
            "density_dims_ablation": list(ABLATION_DIMS),
            "density_dims_ablation_methods": list(ABLATION_METHODS),
            "latent_flow_epochs": 2 if args.quick else "model default (~10,000 steps)",
            "splits": settings,
        },
        "methods": METHODS,
        "results": results,
        "training_length": sweep,
        "machine": machine,
    }
    print_tables(payload)
    print(
        f"\nMachine: {machine['cpu_usable']} usable CPU cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), device {machine['device']}, "
        f"load average {machine['load_average_1_5_15min']}"
    )
    path = write_json(payload, args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
