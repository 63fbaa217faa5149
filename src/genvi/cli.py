"""The ``genvi`` command line: ``genvi demo`` trains PriorVI, generates cells and reports quality.

Kept free of heavy imports (torch, scanpy) until a command runs, so that ``genvi --help`` is
instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

# The names of genvi.nn.PRIORS, listed here so that `--help` needs no torch import;
# tests/test_cli.py checks that the two stay equal.
PRIOR_CHOICES = ("normal", "gaussian", "mog", "flow", "vamp")
EXIT_INTERRUPTED = 130


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except for options whose help says what happens when they are omitted."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genvi")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genvi",
        description="genvi: generative models for single-cell expression counts "
        "(scvi-tools plugin).",
    )
    parser.add_argument("--version", action="version", version=f"genvi {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="Train PriorVI, generate cells for every condition, evaluate and plot.",
        description=(
            "Train PriorVI on the embedded PBMC data (or --adata, raw counts), generate as many "
            "cells as were held out for every condition, compare them with the held-out cells "
            "(quality against real-vs-real noise floors, privacy, interval calibration) and "
            "write metrics.json, synthetic.h5ad and plots to --out. Progress and the report go "
            "to stderr; the list of written files is printed to stdout as JSON."
        ),
        formatter_class=_HelpFormatter,
    )
    demo.add_argument(
        "--adata", type=Path, default=None, help="an .h5ad with raw counts (default: embedded)"
    )
    demo.add_argument(
        "--condition-key",
        action="append",
        dest="condition_keys",
        default=None,
        help="categorical obs column to condition on; repeat for several (default: cell_type)",
    )
    demo.add_argument("--layer", default=None, help="layer holding raw counts (default: X)")
    demo.add_argument("--out", type=Path, default=Path("genvi_demo"), help="output folder")
    demo.add_argument("--prior", default="gaussian", choices=PRIOR_CHOICES, help="PriorVI prior")
    demo.add_argument(
        "--decode-conditions",
        action="store_true",
        help="give PriorVI's decoder the conditions as well (decode_conditions=True)",
    )
    demo.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="training epochs (default: about 2,500 minibatches, at most 400 epochs)",
    )
    demo.add_argument(
        "--n-top-genes",
        type=int,
        default=2000,
        help="train on this many highly variable genes (of the training cells)",
    )
    demo.add_argument(
        "--all-genes", action="store_true", help="train on every gene (overrides --n-top-genes)"
    )
    demo.add_argument(
        "--test-fraction", type=float, default=0.2, help="held-out fraction of each condition"
    )
    demo.add_argument(
        "--min-cells", type=int, default=10, help="held-out cells a condition needs to be scored"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of split, model and metrics")
    demo.add_argument("--no-progress", action="store_true", help="hide the training progress bar")
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
                n_top_genes=None if args.all_genes else args.n_top_genes,
                decode_conditions=args.decode_conditions,
            )
        except (ValueError, FileNotFoundError) as err:
            print(f"genvi demo: error: {err}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, SystemExit) as err:
            # Lightning turns Ctrl-C during training into SystemExit(1) after its shutdown
            if isinstance(err, SystemExit) and err.code in (0, None):
                raise
            print("genvi demo: interrupted.", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(json.dumps({k: summary[k] for k in ("out", "files")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
