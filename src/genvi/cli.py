"""``genvi`` command line: ``genvi demo`` trains PriorVI, generates cells and reports quality."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genvi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="Train PriorVI, generate cells for every condition, evaluate and plot.",
        description=(
            "Train PriorVI on the embedded PBMC data (or --adata), generate as many cells as "
            "held out for every condition, and write synthetic.h5ad, metrics.json and plots "
            "(UMAP of real vs generated cells, mean/variance scatter, calibration curve) to --out."
        ),
    )
    demo.add_argument("--adata", type=Path, help="An .h5ad with raw counts (default: embedded).")
    demo.add_argument(
        "--condition-key",
        action="append",
        dest="condition_keys",
        help="Categorical obs column to condition on (repeatable; default: cell_type).",
    )
    demo.add_argument("--layer", help="Layer holding raw counts (default: X).")
    demo.add_argument("--out", type=Path, default=Path("genvi_demo"), help="Output folder.")
    demo.add_argument("--prior", default="gaussian", choices=["gaussian", "normal", "mog"])
    demo.add_argument("--max-epochs", type=int, default=400)
    demo.add_argument("--test-fraction", type=float, default=0.2)
    demo.add_argument(
        "--min-cells", type=int, default=10, help="Held-out cells a condition needs to be scored."
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", action="store_true", help="Hide the training progress bar.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``genvi`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from genvi._demo import run_demo

        try:
            summary = run_demo(
                adata_path=args.adata,
                condition_keys=args.condition_keys or ["cell_type"],
                layer=args.layer,
                out=args.out,
                prior=args.prior,
                max_epochs=args.max_epochs,
                test_fraction=args.test_fraction,
                min_cells=args.min_cells,
                seed=args.seed,
                progress=not args.no_progress,
            )
        except (ValueError, FileNotFoundError) as err:
            print(f"genvi demo: error: {err}", file=sys.stderr)
            return 2
        print(json.dumps({k: summary[k] for k in ("out", "files")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
