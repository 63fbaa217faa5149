"""Spread of the counterfactual guard's statistics over seeds, torch threads and model variants.

Runs ``tests/test_counterfactual_guard.py``'s ``fit_held_out`` (DisentVI, Kang, B cells'
stimulated cells held out, 150 epochs) for each configuration and writes every statistic
(sampled counts and ``return_mean=True``, top 20/50/100 mean and variance R², Pearson delta)
to ``benchmarks/results/counterfactual_guard_spread.json``. The floors of the guard test were
chosen from this file::

    python benchmarks/counterfactual_guard_spread.py                  # seeds 0-2 x threads 1, 2
    python benchmarks/counterfactual_guard_spread.py --variants       # + regressions, seed 0, 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import RESULTS_DIR, machine_info, quiet, write_json  # noqa: E402

VARIANTS = {
    "interaction=False": {"interaction": False},
    'dispersion="gene"': {"dispersion": "gene"},
    "adversary_weight=0": {"adversary_weight": 0.0},
}


def main(argv: list[str] | None = None) -> dict:
    """Run the configurations one after the other; append each result to the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--variants", action="store_true", help="also the regression variants")
    parser.add_argument("--variant-seeds", default="0,1")
    parser.add_argument("--only-variants", action="store_true")
    parser.add_argument(
        "--merge", nargs="+", type=Path, default=None, help="only add these files' runs to --out"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR / "counterfactual_guard_spread.json"
    )
    args = parser.parse_args(argv)
    if args.merge:
        payload = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
        seen = {(r["variant"], r["seed"], r["threads"]) for r in payload["runs"]}
        for path in args.merge:
            part = json.loads(path.read_text())
            payload.setdefault("machine", part.get("machine"))
            for r in part["runs"]:
                if (r["variant"], r["seed"], r["threads"]) not in seen:
                    payload["runs"].append(r)
        write_json(payload, args.out)
        return payload
    quiet()
    import torch
    from threadpoolctl import threadpool_limits

    from test_counterfactual_guard import fit_held_out

    payload = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    done = {(r["variant"], r["seed"], r["threads"]) for r in payload["runs"]}
    configs = []
    if not args.only_variants:
        configs += [
            ("current", {}, int(s), int(t))
            for t in args.threads.split(",")
            for s in args.seeds.split(",")
        ]
    if args.variants or args.only_variants:
        configs += [
            (name, kw, int(s), 1)
            for name, kw in VARIANTS.items()
            for s in args.variant_seeds.split(",")
        ]
    for name, kwargs, seed, threads in configs:
        if (name, seed, threads) in done:
            continue
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads):
            stats = fit_held_out(seed=seed, **kwargs)
        row = {"variant": name, "model_kwargs": kwargs, "seed": seed, "threads": threads, **stats}
        payload["runs"].append(row)
        payload["machine"] = machine_info()
        write_json(payload, args.out)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}))
        sys.stdout.flush()
    return payload


if __name__ == "__main__":
    main()
