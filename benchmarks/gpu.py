"""GPU throughput: training cells/s of PriorVI and DisentVI against scVI, generation cells/s.

One process, one CUDA device, in about 3-5 minutes on one H200 (the issue's budget is 8):

1. Data: ``--n-cells`` (1M) simulated cells x ``--n-genes`` (2,000) of NB-like counts with 8 cell
   types and 2 batches (the distribution of ``benchmarks/scale.py``), drawn on the GPU in
   chunks and held in memory as CSR, as a user's AnnData would be.
2. Training: ``scvi.model.SCVI``, ``genvi.model.PriorVI`` and ``genvi.model.DisentVI`` (same
   network sizes, batch size 1024, the same AnnData) train ``--batches`` minibatches in each of
   ``--rounds`` interleaved rounds (the order rotates). Throughput = cells of the minibatches
   after the first ``--warmup`` ones divided by the wall time between them, the device
   synchronised at both ends: data loading (CSR rows densified on the host, copied to the
   device) is part of it, as it is for a user. Ratios to scVI are per round, then the median.
3. Generation from the trained PriorVI: latents drawn from p(z | c) on the device
   (``1M`` latents, in chunks of 65,536, synchronised), and ``generate`` of ``--generate-cells``
   decoded cells returned as an in-memory CSR AnnData (sampling, transfer, CSR assembly).
4. Peak GPU memory (``torch.cuda.max_memory_allocated``) of every stage.

Goals (issue #17, one H200): PriorVI >= 0.9x scVI's training cells/s and >= 35k cells/s;
>= 1M latent samples/s; >= 100k decoded cells/s. The JSON records each goal as met or not.

Run: ``python benchmarks/gpu.py`` (writes ``benchmarks/results/gpu.json``);
``--dry-run`` runs the same code on the CPU on 20k cells (checks the script, no numbers).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, markdown_table, quiet, write_json  # noqa: E402
from scale import (  # noqa: E402  (same data design, models and sizes as the CPU ratios)
    build_model,
    counts_anndata,
    simulation_design,
)

MODELS = ("SCVI", "PriorVI", "DisentVI")
GOALS = {
    "priorvi_vs_scvi_train_ratio": 0.9,
    "priorvi_train_cells_per_s": 35_000,
    "latent_samples_per_s": 1_000_000,
    "decoded_cells_per_s": 100_000,
}


def simulate_on_device(n_cells: int, n_genes: int, device, seed: int = 0, chunk: int = 50_000):
    """``scale.py``'s NB-like counts (Poisson-Gamma, 8 programmes), drawn on ``device``.

    Same design as :func:`scale.simulate_counts`; the per-cell draws run on the device (the
    Gamma noise from torch's global generator, seeded by the caller), then each chunk becomes
    a CSR block on the host.
    """
    import torch
    from scipy import sparse

    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    programmes, types = simulation_design(rng, n_cells, n_genes)
    prog = torch.as_tensor(programmes, dtype=torch.float32, device=device)
    # parameters on the device, so the noise is drawn there (not on the host, then copied)
    four = torch.tensor(4.0, device=device)
    noise_dist = torch.distributions.Gamma(four, four)
    blocks = []
    for start in range(0, n_cells, chunk):
        t = torch.as_tensor(types[start : start + chunk], device=device)
        lib = torch.exp(np.log(600) + 0.4 * torch.randn(len(t), 1, generator=gen, device=device))
        noise = noise_dist.sample((len(t), n_genes))
        counts = torch.poisson(prog[t] * lib * noise, generator=gen)
        blocks.append(sparse.csr_matrix(counts.cpu().numpy()))
    return counts_anndata(blocks, types, rng)


def throughput_callback(warmup: int, sync):
    """Lightning callback: wall time from the end of minibatch ``warmup`` to the last one."""
    from lightning.pytorch.callbacks import Callback

    class Throughput(Callback):
        def __init__(self):
            self.t0 = self.t1 = None
            self.batches = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx + 1 == warmup:
                sync()
                self.t0 = time.perf_counter()
            elif batch_idx + 1 > warmup:
                self.batches += 1

        def on_train_epoch_end(self, trainer, pl_module):
            sync()
            self.t1 = time.perf_counter()

    return Throughput()


def train_throughput(model, n_batches: int, warmup: int, batch_size: int, accel: str, sync):
    """Cells per second over ``n_batches - warmup`` minibatches of one epoch."""
    cb = throughput_callback(warmup, sync)
    model.train(
        max_epochs=1,
        batch_size=batch_size,
        accelerator=accel,
        devices=1,
        limit_train_batches=n_batches,
        limit_val_batches=0,
        enable_progress_bar=False,
        callbacks=[cb],
        early_stopping=False,
    )
    seconds = cb.t1 - cb.t0
    return {"cells_per_s": cb.batches * batch_size / seconds, "timed_batches": cb.batches}


def latent_throughput(model, n: int, chunk: int, sync) -> float:
    """Latents per second drawn from PriorVI's p(z | c) on its device."""
    import torch

    n_types = len(model.adata.obs["cell_type"].cat.categories)
    codes = np.arange(n) % n_types
    model.module.eval()
    with torch.no_grad():
        cond = model._condition_tensors(codes[:chunk, None], None, n=chunk)
        model._sample_latent(cond)  # warm-up
        sync()
        t0 = time.perf_counter()
        for start in range(0, n, chunk):
            rows = codes[start : start + chunk, None]
            model._sample_latent(model._condition_tensors(rows, None, n=len(rows)))
        sync()
    return n / (time.perf_counter() - t0)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-cells", type=int, default=1_000_000)
    p.add_argument("--n-genes", type=int, default=2_000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--batches", type=int, default=220, help="minibatches trained per round")
    p.add_argument("--warmup", type=int, default=20, help="minibatches not timed per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--latent-cells", type=int, default=1_000_000)
    p.add_argument("--generate-cells", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu.json")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="run on the CPU at 20k cells, 30 minibatches, to check the script (no numbers kept)",
    )
    args = p.parse_args(argv)
    if args.dry_run:
        args.n_cells, args.batches, args.warmup, args.rounds = 20_000, 12, 2, 2
        args.latent_cells, args.generate_cells = 50_000, 5_000
        if args.out == RESULTS_DIR / "gpu.json":
            args.out = Path("/tmp/genvi_gpu_dry_run.json")
    return args


def main(argv=None) -> None:
    import scvi
    import torch

    args = parse_args(argv)
    quiet()
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        raise SystemExit("No CUDA device: benchmarks/gpu.py measures a GPU (--dry-run checks it).")
    accel = "gpu" if cuda and not args.dry_run else "cpu"
    device = torch.device("cuda" if accel == "gpu" else "cpu")

    def sync():
        if accel == "gpu":
            torch.cuda.synchronize()

    def peak_mb(reset: bool = True) -> float | None:
        if accel != "gpu":
            return None
        mb = torch.cuda.max_memory_allocated() / 2**20
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return mb

    scvi.settings.seed = args.seed
    t0 = time.perf_counter()
    adata = simulate_on_device(args.n_cells, args.n_genes, device, args.seed)
    data_s = time.perf_counter() - t0
    peak_mb()
    print(
        f"data: {adata.n_obs} x {adata.n_vars}, {adata.X.nnz / adata.n_obs:.0f} non-zeros/cell, "
        f"{data_s:.0f} s",
        flush=True,
    )

    models = {}
    for name in MODELS:
        t0 = time.perf_counter()
        models[name] = build_model(name, adata)
        print(f"{name}: set up in {time.perf_counter() - t0:.1f} s", flush=True)
    rounds, peaks = [], {name: 0.0 for name in MODELS}
    for r in range(args.rounds):
        order = list(MODELS[r % len(MODELS) :] + MODELS[: r % len(MODELS)])
        res = {}
        for name in order:
            res[name] = train_throughput(
                models[name], args.batches, args.warmup, args.batch_size, accel, sync
            )
            peaks[name] = max(peaks[name], peak_mb() or 0.0)
            print(f"round {r} {name}: {res[name]['cells_per_s']:,.0f} cells/s", flush=True)
        rounds.append(res)
    train = {}
    for name in MODELS:
        cps = np.array([rd[name]["cells_per_s"] for rd in rounds])
        ratio = cps / np.array([rd["SCVI"]["cells_per_s"] for rd in rounds])
        train[name] = {
            "cells_per_s": float(np.median(cps)),
            "cells_per_s_per_round": cps.tolist(),
            "ratio_to_scvi": float(np.median(ratio)),
            "ratio_to_scvi_per_round": ratio.tolist(),
            "peak_gpu_mb": peaks[name] if accel == "gpu" else None,
        }

    # partial result first: a run stopped later (the device call's limit) keeps its training numbers
    write_json(
        {
            "benchmark": "gpu",
            "partial": True,
            "device": torch.cuda.get_device_name(0) if accel == "gpu" else "cpu",
            "training": train,
            "training_rounds": rounds,
            "machine": machine_info(),
        },
        args.out,
    )
    prior = models["PriorVI"]
    latents_per_s = latent_throughput(prior, args.latent_cells, 65_536, sync)
    latent_peak = peak_mb()
    conds = [{"cell_type": f"type_{i}"} for i in range(8)]
    n_each = [args.generate_cells // 8] * 8
    prior.generate(conds, [256] * 8, seed=0, batch_size=8192)  # warm-up
    sync()
    t0 = time.perf_counter()
    gen = prior.generate(conds, n_each, seed=args.seed, batch_size=8192)
    sync()
    decoded_per_s = gen.n_obs / (time.perf_counter() - t0)
    generate_peak = peak_mb()

    measured = {
        "priorvi_vs_scvi_train_ratio": train["PriorVI"]["ratio_to_scvi"],
        "priorvi_train_cells_per_s": train["PriorVI"]["cells_per_s"],
        "latent_samples_per_s": latents_per_s,
        "decoded_cells_per_s": decoded_per_s,
    }
    goals = {
        k: {"goal": g, "measured": measured[k], "met": bool(measured[k] >= g)}
        for k, g in GOALS.items()
    }
    rows = [
        [
            name,
            f"{v['cells_per_s']:,.0f}",
            f"{v['ratio_to_scvi']:.2f}",
            "-" if v["peak_gpu_mb"] is None else f"{v['peak_gpu_mb']:,.0f}",
        ]
        for name, v in train.items()
    ]
    print(markdown_table(["model", "train cells/s", "x scVI", "peak GPU MB"], rows))
    print(
        markdown_table(
            ["goal", "measured", "target", "met"],
            [[k, f"{v['measured']:,.2f}", f"{v['goal']:,}", v["met"]] for k, v in goals.items()],
        )
    )
    result = {
        "benchmark": "gpu",
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if accel == "gpu" else "cpu",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {
            "n_cells": adata.n_obs,
            "n_genes": adata.n_vars,
            "seconds": data_s,
            "nnz_per_cell": adata.X.nnz / adata.n_obs,
            "storage": "CSR in memory",
        },
        "training": train,
        "training_rounds": rounds,
        "generation": {
            "latent_samples_per_s": latents_per_s,
            "latent_cells": args.latent_cells,
            "latent_peak_gpu_mb": latent_peak,
            "decoded_cells_per_s": decoded_per_s,
            "decoded_cells": gen.n_obs,
            "decoded_peak_gpu_mb": generate_peak,
            "decoded_means": "generate(): prior latents, decoder, sampled counts, CSR AnnData "
            "in host memory",
        },
        "goals": goals,
        "machine": machine_info(),
    }
    write_json(result, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
