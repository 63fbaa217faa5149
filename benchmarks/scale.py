"""Scale: seconds per epoch relative to scVI, peak memory vs cells; streaming generation memory.

For each size (default 10k, 100k, 1M simulated cells x 2,000 genes, CSR in memory):

- ``ratio`` (the speed comparison): **one** fresh process trains ``genvi.model.PriorVI``,
  ``genvi.model.DisentVI`` and ``scvi.model.SCVI`` (same data object, batch size 128, same
  network sizes) in ``--rounds`` interleaved rounds of ``--max-batches`` minibatches each
  (the order rotates between rounds), timing every minibatch in wall-clock and in the main
  thread's CPU time (``time.thread_time``; with one torch thread this is the work done, and
  it moves much less than wall time when other processes share the cores). Seconds per
  epoch are **extrapolated** as median seconds per minibatch x minibatches per epoch (the
  first minibatch of each round, with one-off set-up, is excluded), and every model is
  reported as a ratio to scVI's time in the same round (median and range over rounds).
- ``memory``: every model again in its own **fresh subprocess**, so peak RSS (``VmHWM``)
  covers exactly one configuration: reading the data, model set-up and training.
- ``generate`` (once): peak RSS of generating ``--stream-cells`` (1M) cells streamed to an
  ``.h5ad`` (``generate(out=...)``) vs ``--memory-cells`` (100k) in memory, from a PriorVI
  trained on the smallest size.

With a GPU every part also runs on it (wall time, synchronised per minibatch).

Data: a fast dedicated simulator (NB-like Poisson-Gamma counts with cell-type programmes,
~600 counts per cell, ~20% non-zero) written once per size to ``--work-dir``;
``genvi.data.simulate`` draws every gene of every cell through its full generative model and
is much slower at 1M cells.

Run: ``python benchmarks/scale.py --threads 1`` (writes ``benchmarks/results/scale.json``);
``--parts ratio`` for the speed ratios only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR,
    add_common_args,
    machine_info,
    markdown_table,
    quiet,
    set_threads,
    write_json,
)

N_GENES = 2000
BATCH_SIZE = 128
MODELS = ("PriorVI", "DisentVI", "SCVI")


# ---------------------------------------------------------------------- helpers (workers)
def peak_rss_mb() -> float:
    """Peak resident memory of this process (``VmHWM``), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def simulation_design(rng: np.random.Generator, n_cells: int, n_genes: int, n_types: int = 8):
    """Cell-type expression programmes (rows sum to 1) and each cell's type."""
    base = rng.gamma(0.3, 1.0, n_genes)
    programmes = base * np.exp(rng.normal(0, 1.0, (n_types, n_genes)))
    programmes /= programmes.sum(1, keepdims=True)
    return programmes, rng.integers(0, n_types, n_cells)


def counts_anndata(blocks: list, types: np.ndarray, rng: np.random.Generator):
    """CSR AnnData of stacked count blocks, the cells' types and a random batch (b0 / b1)."""
    import anndata as ad
    import pandas as pd
    from scipy import sparse

    n_cells, n_genes = len(types), blocks[0].shape[1]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type_{i}" for i in types]),
            "batch": pd.Categorical(rng.choice(["b0", "b1"], n_cells)),
        },
        index=[f"c{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_genes)])
    return ad.AnnData(sparse.vstack(blocks, format="csr"), obs=obs, var=var)


def simulate_counts(n_cells: int, n_genes: int = N_GENES, seed: int = 0):
    """Sparse NB-like counts with 8 cell types; returns a CSR AnnData (fast at 1M cells)."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    programmes, types = simulation_design(rng, n_cells, n_genes)
    blocks = []
    for start in range(0, n_cells, 20_000):
        t = types[start : start + 20_000]
        lib = rng.lognormal(np.log(600), 0.4, len(t))[:, None]
        rate = programmes[t] * lib * rng.gamma(4.0, 0.25, (len(t), n_genes))
        blocks.append(sparse.csr_matrix(rng.poisson(rate).astype(np.float32)))
    return counts_anndata(blocks, types, rng)


class _BatchTimer:
    """Lightning callback recording wall and thread CPU time of every training minibatch."""

    def __new__(cls, cuda: bool = False):
        from lightning.pytorch.callbacks import Callback

        def sync():
            if cuda:
                import torch

                torch.cuda.synchronize()

        class Timer(Callback):
            def __init__(self):
                self.times: list[float] = []
                self.cpu_times: list[float] = []

            def on_train_batch_start(self, trainer, *args):
                sync()
                self._t = time.perf_counter()
                self._c = time.thread_time()

            def on_train_batch_end(self, trainer, *args):
                sync()
                self.times.append(time.perf_counter() - self._t)
                self.cpu_times.append(time.thread_time() - self._c)

        return Timer()


def build_model(name: str, adata):
    """One of :data:`MODELS` set up on ``adata`` (cell type as condition, batch as nuisance)."""
    import scvi

    import genvi

    if name == "PriorVI":
        genvi.model.PriorVI.setup_anndata(adata, condition_keys=["cell_type"], batch_key="batch")
        return genvi.model.PriorVI(adata, n_latent=10, n_hidden=128)
    if name == "DisentVI":
        genvi.model.DisentVI.setup_anndata(
            adata, categorical_attributes=["cell_type"], batch_key="batch"
        )
        return genvi.model.DisentVI(adata, n_latent=10, n_hidden=128)
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    return scvi.model.SCVI(adata, n_latent=10, n_hidden=128)


def timed_batches(model, n_obs: int, max_batches: int, accel: str, epochs: int = 1) -> dict:
    """Train ``max_batches`` minibatches per epoch; median wall / CPU seconds per minibatch."""
    timer = _BatchTimer(cuda=accel == "gpu")
    n_train = int(round(0.9 * n_obs))
    batches_per_epoch = int(np.ceil(n_train / BATCH_SIZE))
    model.train(
        max_epochs=epochs,
        batch_size=BATCH_SIZE,
        accelerator=accel,
        devices=1,
        limit_train_batches=min(max_batches, batches_per_epoch),
        limit_val_batches=0,
        enable_progress_bar=False,
        callbacks=[timer],
        early_stopping=False,
    )
    keep = slice(1, None) if len(timer.times) > 1 else slice(None)
    wall = float(np.median(timer.times[keep]))
    cpu = float(np.median(timer.cpu_times[keep]))
    return {
        "timed_batches": len(timer.times[keep]),
        "batches_per_epoch": batches_per_epoch,
        "sec_per_batch": wall,
        "cpu_sec_per_batch": cpu,
        "sec_per_epoch": wall * batches_per_epoch,
        "cpu_sec_per_epoch": cpu * batches_per_epoch,
        "cells_per_s": BATCH_SIZE / wall,
        "extrapolated": len(timer.times) < batches_per_epoch * epochs,
    }


def worker(cfg: dict) -> dict:
    """Run one configuration in this (fresh) process and return its measurements."""
    import anndata as ad
    import scvi

    import genvi

    quiet()
    if cfg.get("threads"):
        set_threads(cfg["threads"])
    scvi.settings.seed = cfg.get("seed", 0)
    accel = cfg.get("accelerator", "cpu")
    out: dict = {"config": cfg}
    if cfg["task"] == "data":
        t0 = time.perf_counter()
        adata = simulate_counts(cfg["n_cells"], seed=cfg.get("seed", 0))
        adata.write_h5ad(cfg["path"])
        out.update(seconds=time.perf_counter() - t0, nnz_per_cell=adata.X.nnz / adata.n_obs)
    elif cfg["task"] == "ratio":
        t0 = time.perf_counter()
        adata = ad.read_h5ad(cfg["path"])
        out["load_s"] = time.perf_counter() - t0
        models = {name: build_model(name, adata) for name in cfg["models"]}
        rounds = []
        names = list(models)
        for r in range(cfg["rounds"]):
            order = names[r % len(names) :] + names[: r % len(names)]
            rounds.append(
                {
                    name: timed_batches(models[name], adata.n_obs, cfg["max_batches"], accel)
                    for name in order
                }
            )
        out["rounds"] = rounds
    elif cfg["task"] == "train":
        t0 = time.perf_counter()
        adata = ad.read_h5ad(cfg["path"])
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = build_model(cfg["model"], adata)
        setup_s = time.perf_counter() - t0
        res = timed_batches(model, adata.n_obs, cfg["max_batches"], accel, cfg["epochs"])
        out.update(load_s=load_s, setup_s=setup_s, **res)
        if cfg.get("save"):
            model.save(cfg["save"], overwrite=True)
    elif cfg["task"] in ("generate_stream", "generate_memory"):
        adata = ad.read_h5ad(cfg["path"])
        model = genvi.model.PriorVI.load(cfg["model_dir"], adata=adata, accelerator=accel)
        del adata
        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        conds = [{"cell_type": f"type_{i}"} for i in range(8)]
        n = [cfg["n_cells"] // 8] * 8
        if cfg["task"] == "generate_stream":
            gen = model.generate(conds, n, seed=0, batch_size=4096, out=cfg["out"])
            size_mb = os.path.getsize(cfg["out"]) / 1e6
        else:
            gen = model.generate(conds, n, seed=0, batch_size=4096)
            size_mb = gen.X.data.nbytes / 1e6
        secs = time.perf_counter() - t0
        out.update(
            n_generated=gen.n_obs,
            seconds=secs,
            cells_per_s=gen.n_obs / secs,
            rss_before_generate_mb=rss_before,
            output_mb=size_mb,
        )
        if cfg["task"] == "generate_stream":
            os.remove(cfg["out"])
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_worker(cfg: dict) -> dict:
    """Run :func:`worker` in a fresh Python process; its peak RSS is its own."""
    cmd = [sys.executable, "-u", __file__, "--worker", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-2000:]
        return {"config": cfg, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1][len("RESULT ") :])


# ---------------------------------------------------------------------- main
def ratio_summary(rounds: list[dict], reference: str = "SCVI") -> dict:
    """Per model: median seconds per epoch over rounds and ratios to ``reference`` per round."""
    out = {}
    for name in rounds[0]:
        cpu = np.array([r[name]["cpu_sec_per_epoch"] for r in rounds])
        wall = np.array([r[name]["sec_per_epoch"] for r in rounds])
        entry = {
            "cpu_sec_per_epoch": float(np.median(cpu)),
            "sec_per_epoch": float(np.median(wall)),
            "batches_per_epoch": rounds[0][name]["batches_per_epoch"],
            "timed_batches_per_round": rounds[0][name]["timed_batches"],
        }
        if reference in rounds[0]:
            ref_cpu = np.array([r[reference]["cpu_sec_per_epoch"] for r in rounds])
            ref_wall = np.array([r[reference]["sec_per_epoch"] for r in rounds])
            entry["cpu_ratio_per_round"] = (cpu / ref_cpu).tolist()
            entry["wall_ratio_per_round"] = (wall / ref_wall).tolist()
            entry["cpu_ratio"] = float(np.median(cpu / ref_cpu))
            entry["wall_ratio"] = float(np.median(wall / ref_wall))
        out[name] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, default_epochs=1)
    parser.add_argument("--epochs", dest="max_epochs", type=int, help="alias of --max-epochs")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="cells per dataset")
    parser.add_argument("--max-batches", type=int, default=40, help="minibatches timed per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (ratio part)")
    parser.add_argument("--models", default=",".join(MODELS), help="models to compare")
    parser.add_argument(
        "--parts", default="ratio,memory,generate", help="comma list of ratio, memory, generate"
    )
    parser.add_argument("--stream-cells", type=int, default=1_000_000)
    parser.add_argument("--memory-cells", type=int, default=100_000)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/genvi_scale"))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "scale.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    import torch

    sizes = [int(s) for s in args.sizes.split(",")]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    parts = {p.strip() for p in args.parts.split(",")}
    args.work_dir.mkdir(parents=True, exist_ok=True)
    accelerators = ["cpu"] + (["gpu"] if torch.cuda.is_available() else [])
    device_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    common = {"threads": args.threads, "seed": args.seed, "epochs": args.max_epochs}
    results: dict = {
        "machine": machine_info(),
        "gpu": device_name,
        "settings": {
            "sizes": sizes,
            "models": models,
            "rounds": args.rounds,
            "max_batches": args.max_batches,
            "batch_size": BATCH_SIZE,
            "threads": args.threads,
            "parts": sorted(parts),
        },
        "ratio": [],
        "train": [],
        "generate": [],
    }
    ratio_rows, rows = [], []
    model_dir = str(args.work_dir / "priorvi_small")
    for n in sizes:
        path = str(args.work_dir / f"sim_{n}.h5ad")
        if not os.path.exists(path):
            res = run_worker({**common, "task": "data", "n_cells": n, "path": path})
            print(f"data {n}: {res.get('seconds', res.get('error'))}", flush=True)
        for accel in accelerators:
            dev = device_name if accel == "gpu" else f"cpu x{args.threads or 'auto'}"
            if "ratio" in parts:
                cfg = {
                    **common,
                    "task": "ratio",
                    "models": models,
                    "n_cells": n,
                    "path": path,
                    "accelerator": accel,
                    "max_batches": args.max_batches,
                    "rounds": args.rounds,
                }
                res = run_worker(cfg)
                if "error" in res:
                    print(f"ratio {n} {accel}: ERROR {res['error']}", flush=True)
                    results["ratio"].append(res)
                else:
                    res["summary"] = ratio_summary(res["rounds"])
                    results["ratio"].append(res)
                    for name, e in res["summary"].items():
                        spread = e.get("cpu_ratio_per_round", [float("nan")])
                        ratio_rows.append(
                            [
                                name,
                                f"{n:,}",
                                dev,
                                e["cpu_sec_per_epoch"],
                                e["sec_per_epoch"],
                                e.get("cpu_ratio", float("nan")),
                                f"{min(spread):.2f}-{max(spread):.2f}",
                                e.get("wall_ratio", float("nan")),
                            ]
                        )
                        print(ratio_rows[-1], flush=True)
            if "memory" not in parts:
                continue
            for model in models:
                cfg = {
                    **common,
                    "task": "train",
                    "model": model,
                    "n_cells": n,
                    "path": path,
                    "accelerator": accel,
                    "max_batches": args.max_batches,
                    "save": model_dir if (n == sizes[0] and model == "PriorVI") else None,
                }
                res = run_worker(cfg)
                results["train"].append(res)
                if "error" in res:
                    print(f"{model} {n} {accel}: ERROR {res['error']}", flush=True)
                    continue
                rows.append(
                    [
                        model,
                        f"{n:,}",
                        dev,
                        res["sec_per_epoch"],
                        res["cells_per_s"],
                        res["peak_rss_mb"],
                        f"{res['timed_batches']}/{res['batches_per_epoch']}",
                        res["load_s"] + res["setup_s"],
                    ]
                )
                print(rows[-1], flush=True)
    if ratio_rows:
        print()
        print(
            markdown_table(
                [
                    "model",
                    "cells",
                    "device",
                    "CPU s/epoch",
                    "wall s/epoch",
                    "ratio to scVI (CPU time)",
                    "range over rounds",
                    "ratio to scVI (wall)",
                ],
                ratio_rows,
            )
        )
    if rows:
        print()
        print(
            markdown_table(
                [
                    "model",
                    "cells",
                    "device",
                    "s/epoch (extrapolated)",
                    "train cells/s",
                    "peak RSS MB",
                    "batches timed",
                    "load+setup s",
                ],
                rows,
            )
        )
    gen_rows = []
    small = str(args.work_dir / f"sim_{sizes[0]}.h5ad")
    for accel in accelerators if "generate" in parts else []:
        if not os.path.exists(model_dir):
            res = run_worker(
                {
                    **common,
                    "task": "train",
                    "model": "PriorVI",
                    "n_cells": sizes[0],
                    "path": small,
                    "accelerator": "cpu",
                    "max_batches": args.max_batches,
                    "save": model_dir,
                }
            )
        for task, n in (
            ("generate_memory", args.memory_cells),
            ("generate_stream", args.stream_cells),
        ):
            cfg = {
                **common,
                "task": task,
                "n_cells": n,
                "path": small,
                "model_dir": model_dir,
                "accelerator": accel,
                "out": str(args.work_dir / "cohort.h5ad"),
            }
            res = run_worker(cfg)
            results["generate"].append(res)
            if "error" in res:
                print(f"{task} {accel}: ERROR {res['error']}", flush=True)
                continue
            gen_rows.append(
                [
                    "stream to .h5ad" if task == "generate_stream" else "in memory",
                    f"{res['n_generated']:,}",
                    device_name if accel == "gpu" else "cpu",
                    res["seconds"],
                    res["cells_per_s"],
                    res["peak_rss_mb"],
                    res["rss_before_generate_mb"],
                    res["output_mb"],
                ]
            )
            print(gen_rows[-1], flush=True)
    if gen_rows:
        print()
        print(
            markdown_table(
                [
                    "generation",
                    "cells",
                    "device",
                    "seconds",
                    "cells/s",
                    "peak RSS MB",
                    "RSS before MB",
                    "output MB",
                ],
                gen_rows,
            )
        )
    note = (
        "s/epoch extrapolated from the median time of the timed minibatches (first of each "
        f"round excluded) x minibatches per epoch (batch size {BATCH_SIZE}, 90% of cells in "
        "training). Ratios: CPU time of the main thread relative to scVI's in the same round "
        "of the same process (median over rounds). Peak RSS is VmHWM of a fresh subprocess "
        "per configuration."
    )
    print("\n" + note)
    results["notes"] = note
    results["machine_after"] = machine_info()
    print(f"wrote {write_json(results, args.out)}")


if __name__ == "__main__":
    main()
