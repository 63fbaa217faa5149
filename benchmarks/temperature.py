"""Sampling temperature of the generated cells: ``generate(temperature=...)`` (issue #20).

Same split and scoring as ``generation.py`` / ``dispersion_check.py`` (80/20 stratified by the
condition, generated cells against the real held-out ones in a 50-PC space; energy,
classifier AUROC, variance R², count-shape AUROC, correlation and zero-fraction distances,
medians over conditions). One model, trained once, generates at each temperature of
``--temperatures``; ``--draws N`` generations per temperature (seeds ``--seed + 1000 k``, the
same seeds at every temperature) because one draw's median AUROC moves by a few hundredths
with the generation seed alone. The table gives the mean over draws of the per-draw medians
(and the AUROC's standard deviation over draws).

``--model priorvi``: the default PriorVI (``generation.train_priorvi``, the conditional
Gaussian prior; z = mu(c) + temperature * sigma(c) * u), or with ``--dispersion`` another
dispersion model (its ``temperature 1`` row scores that dispersion over the same draws).
``--model latentflow``: a LatentFlow with its defaults on a plain scVI
(``dispersion_check.py``'s pair; the ODE starts from temperature * u). Run from the
repository root::

    python benchmarks/temperature.py --dataset pbmc3k --model priorvi --max-epochs 400 \\
        --model-dir models/pbmc3k_s0 --threads 1
    python benchmarks/temperature.py --dataset kang --model latentflow --max-epochs 400 \\
        --seed 1 --model-dir models/kang_s1 --threads 1

``--model-dir DIR`` saves the trained model there (``DIR/priorvi``, or ``DIR/flow`` as
``dispersion_check.py --model-dir`` does) and reuses it on a later run; training is
deterministic at a given seed, so a reused model equals a retrained one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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
from dispersion_check import models as flow_models  # noqa: E402
from generation import DATASETS, MIN_CELLS, held_out_split, train_priorvi  # noqa: E402
from latent_priors import generate  # noqa: E402

METRICS = ["energy", "c2st_auroc", "var_r2", "count_shape_auroc", "corr_dist", "zero_frac_dist"]
MODELS = ("priorvi", "latentflow")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, 400)
    parser.add_argument("--dataset", default="pbmc3k", choices=sorted(DATASETS))
    parser.add_argument("--model", default="priorvi", choices=MODELS)
    parser.add_argument(
        "--temperatures", default="1,0.9,0.8", help="comma list (default 1,0.9,0.8)"
    )
    parser.add_argument("--draws", type=int, default=5, help="generations per temperature")
    parser.add_argument(
        "--dispersion",
        default=None,
        choices=["gene", "gene-batch", "gene-cell"],
        help="--model priorvi: PriorVI's dispersion (default: its own default, gene-cell)",
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="save / reuse the model")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        args.temperatures = [float(t) for t in args.temperatures.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--temperatures must be numbers, got {args.temperatures!r}")
    if not args.temperatures or any(not (t > 0 and np.isfinite(t)) for t in args.temperatures):
        parser.error("--temperatures must be positive numbers")
    if args.draws < 1:
        parser.error("--draws must be at least 1")
    if args.dispersion is not None and args.model != "priorvi":
        parser.error("--dispersion is an option of --model priorvi")
    if args.out is None:
        tag = "" if args.dispersion is None else f"_{args.dispersion}"
        args.out = RESULTS_DIR / (
            f"temperature_{args.dataset}_{args.model}{tag}_{args.max_epochs}ep_s{args.seed}.json"
        )
    return args


def priorvi_model(args, train, keys):
    """PriorVI (genvi defaults but ``--dispersion``): trained, or loaded from ``--model-dir``."""
    from genvi.model import PriorVI

    path = None if args.model_dir is None else args.model_dir / "priorvi"
    if path is not None and path.exists():
        model = PriorVI.load(path, adata=train.copy())
        if args.dispersion not in (None, model.module.dispersion):
            raise SystemExit(
                f"{path} holds a PriorVI with dispersion={model.module.dispersion!r}, not "
                f"{args.dispersion!r}; give another --model-dir"
            )
        return model
    kwargs = {} if args.dispersion is None else {"dispersion": args.dispersion}
    model, _ = train_priorvi(train, keys, args.max_epochs, args.seed, **kwargs)
    if path is not None:
        model.save(path, overwrite=True)
    return model


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write the JSON."""
    args = parse_args(argv)
    dataset, keys = DATASETS[args.dataset]
    adata = load_dataset(args.data_dir, dataset)

    import genvi

    quiet()
    if args.threads is not None:
        set_threads(args.threads)
    train, test, _, n_cells, space = held_out_split(adata, keys, args.seed)
    model = (priorvi_model if args.model == "priorvi" else flow_models)(args, train, keys)

    results: dict[str, dict[str, Any]] = {}
    for t in args.temperatures:
        medians = {m: [] for m in METRICS}
        for k in range(args.draws):
            df = genvi.metrics.compare_conditions(
                test,
                generate(model, keys, n_cells, args.seed + 1000 * k, temperature=t),
                keys,
                space,
                min_cells=MIN_CELLS,
                seed=args.seed,
            )
            summary = genvi.metrics.summarize(df, statistic="median")
            for m in METRICS:
                medians[m].append(float(summary[m]))
        results[f"{t:g}"] = {
            m: {
                "draws_median": v,
                "median_over_draws_mean": float(np.mean(v)),
                "median_over_draws_sd": float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"),
            }
            for m, v in medians.items()
        }
        print(f"temperature {t:g}: done", flush=True)

    name = "LatentFlow on a plain scVI"
    if args.model == "priorvi":
        name = "default PriorVI" if args.dispersion is None else f"PriorVI, {args.dispersion}"
    header = ["temperature"] + METRICS + ["c2st_auroc sd over draws"]
    rows = [
        [t]
        + [r[m]["median_over_draws_mean"] for m in METRICS]
        + [r["c2st_auroc"]["median_over_draws_sd"]]
        for t, r in results.items()
    ]
    print(
        f"\n## {name}, {dataset}, {args.max_epochs} epochs, seed {args.seed}: medians over "
        f"conditions, mean of {args.draws} generations\n"
    )
    print(markdown_table(header, rows))
    payload = {
        "benchmark": "temperature",
        "dataset": dataset,
        "model": args.model,
        "settings": {
            "max_epochs": args.max_epochs,
            "dispersion": args.dispersion or "model default",
            "seed": args.seed,
            "draws": args.draws,
            "draw_seeds": [args.seed + 1000 * k for k in range(args.draws)],
            "condition_keys": keys,
            "min_cells": MIN_CELLS,
            "generated_cells": {" | ".join(k): v for k, v in n_cells.items()},
        },
        "machine": machine_info(),
        "results": results,
    }
    print(f"\nwrote {write_json(payload, args.out)}")
    return payload


if __name__ == "__main__":
    main()
