"""Peer generators on ``generation.py``'s split (``generation.py --peers cfgen``).

The training cells and one request row per cell to generate (its condition and a library size
drawn from training cells of that condition, the rule genvi's ``generate`` and the scVI row
follow) are written as h5ad files to ``benchmarks/peers/.cache/generation/<dataset>/``; the peer
trains and samples in its own environment (``benchmarks/peers/setup_envs.sh cfgen``) through
``benchmarks/peers/run_<peer>.py``, and its cells come back as h5ad to be scored beside genvi's.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from counterfactual_peers import PEERS_DIR, peer_env_dir

CACHE = PEERS_DIR / ".cache" / "generation"
# One row per guidance weight the runner samples from its trained model.
PEER_METHODS = {
    "cfgen": {
        "cfgen": (1.0, "CFGen (its published configuration, guidance 1)"),
        "cfgen_w1.5": (1.5, "CFGen (its published configuration, guidance 1.5)"),
    },
}
QUICK_EPOCHS = {"cfgen": ("--encoder-epochs", "3", "--flow-epochs", "5")}


def library_draws(
    labels: np.ndarray, library: np.ndarray, n_cells: dict[tuple[str, ...], int], seed: int
) -> dict[tuple[str, ...], np.ndarray]:
    """Library sizes of ``n`` training cells of each condition, drawn with replacement."""
    rng = np.random.default_rng(seed)
    out = {}
    for cond, n in n_cells.items():
        pool = np.flatnonzero(labels == " | ".join(cond))
        out[cond] = library[rng.choice(pool, size=n)]
    return out


def run_peer(
    peer: str,
    train: ad.AnnData,
    keys: list[str],
    labels: np.ndarray,
    n_cells: dict[tuple[str, ...], int],
    *,
    dataset: str,
    seed: int,
    quick: bool,
    extra_args: list[str] | None = None,
) -> tuple[dict[str, ad.AnnData], dict[str, Any]]:
    """Train ``peer`` on ``train`` and return its cells per method key and the run's record."""
    python = peer_env_dir() / peer / "bin" / "python"
    if not python.is_file():
        raise SystemExit(
            f"{peer}'s environment is missing ({python}): run "
            f"`bash benchmarks/peers/setup_envs.sh {peer}` first."
        )
    folder = CACHE / dataset / f"seed{seed}{'_quick' if quick else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.h5ad" for name in ("train", "request", peer)}
    x = sp.csr_matrix(train.X)
    ad.AnnData(
        X=x, obs=train.obs[keys].astype(str), var=pd.DataFrame(index=train.var_names)
    ).write_h5ad(paths["train"])
    library = np.maximum(np.asarray(x.sum(1), dtype=np.float64).ravel(), 1.0)
    draws = library_draws(labels, library, n_cells, seed)
    obs = pd.DataFrame(
        [dict(zip(keys, cond, strict=True)) for cond, n in n_cells.items() for _ in range(n)]
    )
    obs["library"] = np.concatenate(list(draws.values()))
    obs.index = [f"request_{i}" for i in range(len(obs))]
    ad.AnnData(obs=obs).write_h5ad(paths["request"])

    cmd = [str(python), str(PEERS_DIR / f"run_{peer}.py"), "--train", str(paths["train"])]
    cmd += ["--request", str(paths["request"]), "--keys", ",".join(keys)]
    cmd += ["--out", str(paths[peer]), "--seed", str(seed), "--threads", "1"]
    if quick:
        cmd += list(QUICK_EPOCHS[peer])
    cmd += list(extra_args or [])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    print(f"running {peer} in its environment ({python})...", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=PEERS_DIR)
    (folder / f"{peer}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not paths[peer].is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"{peer} failed (log: {folder / f'{peer}.log'}):\n{tail}")
    wall = time.perf_counter() - start

    generated = ad.read_h5ad(paths[peer])
    info = json.loads(str(generated.uns["peer"]))
    info["wall_seconds"] = wall
    info["runner_args"] = list(extra_args or [])
    out = {}
    for key, (weight, _) in PEER_METHODS[peer].items():
        part = generated[np.isclose(generated.obs["guidance"].to_numpy(float), weight)].copy()
        for k in keys:
            part.obs[k] = pd.Categorical(
                part.obs[k].astype(str), categories=train.obs[k].cat.categories
            )
        part.obs = part.obs[keys]
        part.X = sp.csr_matrix(part.X, dtype=np.float32)
        out[key] = part
    return out, info
