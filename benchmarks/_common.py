"""Shared helpers for the benchmark scripts (data location, splits, timing, output).

Benchmarks are plain scripts run from the repository root (``python benchmarks/<name>.py``);
this module sits next to them and is imported as ``_common``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def default_data_dir() -> Path:
    """``$GENVI_DATA_DIR`` if set, else ``../shared/data`` relative to the repository root."""
    env = os.environ.get("GENVI_DATA_DIR")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def add_common_args(parser: argparse.ArgumentParser, default_epochs: int) -> None:
    """Options every benchmark script takes: data folder, epochs, seed and torch threads."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="folder holding the datasets (default: $GENVI_DATA_DIR or ../shared/data)",
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=default_epochs,
        help=f"training epochs per model (default {default_epochs})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of split, models and metrics")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch and of the BLAS / OpenMP pools (default: the libraries' "
        "choice); 1 can be faster on a busy machine",
    )


_THREAD_LIMITS: list[Any] = []


def set_threads(n: int | None) -> None:
    """Use ``n`` threads in torch *and* in numpy / scipy / sklearn's BLAS and OpenMP pools.

    ``torch.set_num_threads`` alone leaves the BLAS pools at one thread per core, so parallel
    benchmark processes on a small machine oversubscribe it. (genvi itself restores torch's
    count after scanpy's numba kernels reset it; see ``genvi._threads``.)
    """
    if not n:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    _THREAD_LIMITS.append(threadpool_limits(limits=n))  # kept alive for the whole run


def quiet() -> None:
    """Silence Lightning's per-fit banners and the usual third-party deprecation noise."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("scvi").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")


def load_dataset(data_dir: str | Path, filename: str) -> ad.AnnData:
    """Read ``data_dir / filename``; exit with a clear message if it is missing."""
    path = Path(data_dir).expanduser() / filename
    if not path.is_file():
        sys.exit(
            f"Dataset not found: {path}\n"
            "Point --data-dir (or the GENVI_DATA_DIR environment variable) at the folder "
            f"holding {filename!r} (see BENCHMARKS.md for the list of datasets)."
        )
    return ad.read_h5ad(path)


def stratified_split(
    labels: Sequence | pd.Series, test_size: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test row indices, split per label (each label split ``1 - test_size``).

    Every label with at least 2 rows keeps at least one row on each side.
    """
    labels = pd.Series(np.asarray(labels, dtype=object))
    rng = np.random.default_rng(seed)
    train, test = [], []
    for _, idx in labels.groupby(labels, sort=True).indices.items():
        idx = rng.permutation(idx)
        n_test = int(round(len(idx) * test_size))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Result of ``fn()`` and its wall-clock duration in seconds."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def machine_info() -> dict[str, Any]:
    """CPU cores, accelerator and library versions of this run."""
    import scvi
    import torch

    import genvi

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    cuda = torch.cuda.is_available()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scvi_tools": scvi.__version__,
        "genvi": genvi.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "load_average_1_5_15min": load,
    }


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy / pandas values to JSON types (NaN and inf become ``None``)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, pd.DataFrame):
        return to_jsonable(obj.to_dict(orient="index"))
    if isinstance(obj, pd.Series):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    return str(obj)


def write_json(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` as indented JSON (creating folders); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(payload), indent=2) + "\n")
    return path


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant decimals, NaN/None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            return "—"
        return (
            f"{value:.{digits}f}" if abs(value) >= 10 ** (-digits) or value == 0 else f"{value:.2e}"
        )
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub markdown table; the first column is left-aligned, the others right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(fmt(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines)
