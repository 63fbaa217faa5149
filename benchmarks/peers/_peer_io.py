"""Input / output shared by the peer runners (imported inside each peer's own environment).

Only anndata, numpy and the standard library: it runs on Python 3.10 and 3.11 beside any
scvi-tools. A runner is called by ``benchmarks/counterfactual.py --peers`` as::

    <peer venv>/bin/python benchmarks/peers/run_<peer>.py --train train.h5ad --ctrl ctrl.h5ad \\
        --out pred.h5ad --seed 0 --threads 1

``train.h5ad``: raw counts in ``X``, ``obs`` ``cell_type`` and ``condition`` (control /
stimulated), without the held-out type's stimulated cells. ``ctrl.h5ad``: that type's control
cells (also in ``train.h5ad``). The runner writes ``pred.h5ad``: one row per control cell,
``layers["mean"]`` (the method's predicted expression) and, where the method has a likelihood
to draw from, ``layers["sampled"]``; ``uns["space"]`` says whether they are ``"counts"`` or
``"log_normalized"`` (``log1p`` of counts per 10,000), ``uns["peer"]`` the versions,
settings and training time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

CELL_TYPE, CONDITION = "cell_type", "condition"
CONTROL, STIMULATED = "control", "stimulated"
TARGET_SUM = 1e4


def parse_args(description: str) -> argparse.Namespace:
    """The runners' common options; also limits every thread pool to ``--threads``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--ctrl", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="cap on the documented number of epochs (recorded in the output); default: none",
    )
    args = parser.parse_args()
    pools = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
    for var in pools:
        os.environ[var] = str(args.threads)
    return args


def capped(kwargs: dict, key: str, cap: int | None) -> dict:
    """``kwargs`` with ``kwargs[key]`` lowered to ``cap`` (when given)."""
    out = dict(kwargs)
    if cap is not None:
        out[key] = min(int(out[key]), int(cap))
    return out


def set_torch_threads(n: int) -> None:
    """One thread in torch and in the BLAS pools (threadpoolctl when installed)."""
    import torch

    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)
    except ImportError:  # pragma: no cover
        pass


def read(path: Path):
    """An AnnData with categorical ``cell_type`` / ``condition`` and dense float32 counts."""
    import anndata as ad
    import numpy as np

    adata = ad.read_h5ad(path)
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    adata.X = x.astype(np.float32)
    for key in (CELL_TYPE, CONDITION):
        adata.obs[key] = adata.obs[key].astype(str).astype("category")
    return adata


def log_normalize(x):
    """``log1p`` of counts scaled to 10,000 per cell (scanpy's normalize_total + log1p)."""
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    return np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1.0) * TARGET_SUM).astype(np.float32)


class Timer:
    """Wall-clock seconds of a block (recorded, never compared: the machine is shared)."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def write(
    path: Path,
    ctrl,
    mean,
    sampled=None,
    *,
    space: str,
    info: dict[str, Any],
) -> None:
    """Write the prediction for the control cells (see the module docstring)."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    assert space in ("counts", "log_normalized"), space
    mean = np.asarray(mean, dtype=np.float32)
    assert mean.shape == (ctrl.n_obs, ctrl.n_vars), (mean.shape, ctrl.shape)
    out = ad.AnnData(
        X=mean.copy(),
        obs=pd.DataFrame(index=ctrl.obs_names.copy()),
        var=pd.DataFrame(index=ctrl.var_names.copy()),
    )
    out.layers["mean"] = mean
    if sampled is not None:
        sampled = np.asarray(sampled, dtype=np.float32)
        assert sampled.shape == mean.shape
        out.layers["sampled"] = sampled
    out.uns["space"] = space
    out.uns["peer"] = json.dumps(info, default=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.write_h5ad(path)


def version(dist: str) -> str:
    """Installed version of a distribution, or ``"not installed"``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _v

    try:
        return _v(dist)
    except PackageNotFoundError:
        return "not installed"
