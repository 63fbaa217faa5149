"""Latent diffusion / flow-matching priors on trained scVI and PriorVI models (issue #4).

BENCHMARKS.md "Generation quality" protocol: split 80/20 stratified by the condition, train on
80%, generate as many cells per condition as were held out (conditions with >= 30 held-out
cells), compare with the real held-out cells (:func:`genvi.metrics.compare_conditions`: energy
distance, MMD², C2ST AUROC, mean / variance agreement, each with its real-vs-real noise floor;
normalised scores use scVI-with-condition-covariates as the baseline).

Methods, same split:

1. Base models: ``scvi.model.SCVI`` *without* conditions (a user's plain scVI model) and
   ``PriorVI`` (conditional Gaussian prior).
2. ``LatentDiffusion`` and ``LatentFlow`` on each base (4 rows), default settings.
3. Baselines: PriorVI itself; scVI with the condition as a decoder covariate and z ~ N(0, I);
   resampled training cells (fidelity bound); the noise floor.

Also: sampling throughput of both latent priors on the scVI base for n_steps in
{1, 5, 10, 20, 50, 100} (cells/s with counts decoded) and its ratio to one VAE decode pass
(z ~ N(0, I) through the same decoder); a guidance sweep (energy distance and the accuracy of
a classifier that predicts the requested condition from the generated cells). Run from the
repository root::

    python benchmarks/latent_priors.py --quick
    python benchmarks/latent_priors.py --threads 1          # pbmc3k
    python benchmarks/latent_priors.py --dataset kang --max-epochs 40 --threads 1

``--decode-conditions`` trains the PriorVI base with the conditions in its decoder as well
(``decode_conditions=True``); ``--bases priorvi`` skips the scVI base (and with it the throughput
and guidance sweeps, which run on the scVI base's priors). ``--draws N`` scores N independent
generations of every row (seeds ``--seed + 1000 k``; the first is the single-draw run's) and
prints the mean and standard deviation of their medians over conditions: one draw's median
classifier AUROC moves by a few hundredths with the generation seed alone. ``--model-dir DIR``
saves every trained model under ``DIR/<row>`` and reuses those found there (training is
deterministic at a given seed, so a reused model equals a retrained one)::

    python benchmarks/latent_priors.py --bases priorvi --max-epochs 400 --draws 5 \
        --model-dir models/pbmc3k_priorvi_400ep --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import anndata as ad
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
    timed,
    write_json,
)
from generation import (  # noqa: E402
    BATCH_SIZE,
    DATASETS,
    FLOOR_NAMES,
    MIN_CELLS,
    TABLE_METRICS,
    _parse_ema_decay,
    condition_labels,
    generate_priorvi,
    generate_scvi,
    held_out_split,
    pick_training_cells,
    resample_training,
    train_priorvi,
    train_scvi,
)

DEFAULT_EPOCHS = 100
QUICK_EPOCHS = 10
STEPS = [1, 5, 10, 20, 50, 100]
GUIDANCE = [0.0, 0.5, 1.0, 2.0, 4.0]
#: metrics kept per draw (``--draws``): medians and means over conditions
DRAW_METRICS = ("energy", "c2st_auroc", "var_r2", "count_shape_auroc")
METHODS = {
    "scvi_diffusion": "LatentDiffusion on scVI (no conditions)",
    "scvi_flow": "LatentFlow on scVI (no conditions)",
    "priorvi_diffusion": "LatentDiffusion on PriorVI",
    "priorvi_flow": "LatentFlow on PriorVI",
    "scvi_flow_own_disp": "LatentFlow on scVI, scVI's own means and dispersion (refit off)",
    "priorvi_flow_refit": "LatentFlow on PriorVI, calibrated means, refitted dispersion (refit on)",
    "scvi_postpred": "scVI posterior predictive (held-out cells encoded, decoded)",
    "scvi_postpred_refit": "scVI posterior predictive, calibrated means, refitted dispersion",
    "priorvi_postpred": "PriorVI posterior predictive",
    "priorvi_postpred_refit": "PriorVI posterior predictive, calibrated means, refitted dispersion",
    "scvi_target": "scVI, training cells' posterior draws, decoded as generated (priors' target)",
    "priorvi_target": "PriorVI, training cells' posterior draws, decoded as generated (target)",
    "priorvi": "PriorVI (conditional Gaussian prior)",
    "scvi_cond": "scVI (N(0, I), condition in decoder)",
    "resample": "Resampled training cells",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, DEFAULT_EPOCHS)
    parser.add_argument("--dataset", default="pbmc3k", choices=sorted(DATASETS))
    parser.add_argument(
        "--latent-epochs",
        type=int,
        default=None,
        help="epochs of the latent priors (default: the models' own, ~10,000 steps)",
    )
    parser.add_argument(
        "--latent-ema-decay",
        default="default",
        help="train(ema_decay=...) of the latent priors: a number in (0, 1), 'none' (the last "
        "step's weights, the only behaviour before December 6 2026) or 'default' (the models' "
        "own: 0.999 in runs of at least 400 optimizer steps); priors loaded from --model-dir keep "
        "what they were trained with",
    )
    parser.add_argument(
        "--bases",
        default="scvi,priorvi",
        help="comma list of base models for the latent priors: scvi, priorvi (default both)",
    )
    parser.add_argument(
        "--decode-conditions",
        action="store_true",
        help="PriorVI base (and row) with decode_conditions=True",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=1,
        help="independent generations scored per row (seeds --seed + 1000 k; default 1)",
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="save / reuse the models")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run: few epochs")
    args = parser.parse_args(argv)
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, got {args.draws}")
    args.latent_ema_decay = _parse_ema_decay(args.latent_ema_decay, parser)
    args.bases = [b.strip() for b in args.bases.split(",") if b.strip()]
    unknown = sorted(set(args.bases) - {"scvi", "priorvi"})
    if unknown or not args.bases:
        parser.error(f"--bases takes scvi and / or priorvi, got {args.bases}")
    if args.quick:
        args.max_epochs = min(args.max_epochs, QUICK_EPOCHS)
        args.latent_epochs = QUICK_EPOCHS
    if args.out is None:
        tag = "_decode" if args.decode_conditions else ""
        args.out = (
            RESULTS_DIR / f"latent_priors_{args.dataset}{tag}{'_quick' if args.quick else ''}.json"
        )
    return args


def train_plain_scvi(train: ad.AnnData, max_epochs: int, seed: int) -> tuple[Any, float]:
    """The user's scVI model: no conditions, KL warm-up as PriorVI's."""
    import scvi

    from genvi.model.base import default_kl_warmup

    adata = train.copy()
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    plan = {"n_epochs_kl_warmup": default_kl_warmup(max_epochs)}
    _, seconds = timed(
        lambda: model.train(
            max_epochs=max_epochs,
            batch_size=BATCH_SIZE,
            enable_progress_bar=False,
            plan_kwargs=plan,
        )
    )
    return model, seconds


def reuse_or_train(
    model_dir: Path | None, name: str, train_fn, base=None, cls=None
) -> tuple[Any, float | None]:
    """``train_fn()`` (a model and its training seconds), or the model saved in
    ``model_dir / name`` (seconds ``None``); a trained model is saved there.

    ``base`` and ``cls``: for a latent prior, its base model and class (it is loaded onto
    ``base`` and registered on ``base``'s AnnData); base models are saved with their AnnData.
    """
    import scvi

    from genvi.model import PriorVI

    path = None if model_dir is None else model_dir / name
    if path is not None and path.exists():
        if cls is not None:
            return cls.load(path, adata=base.adata, base_model=base), None
        loader = PriorVI if name == "priorvi" else scvi.model.SCVI
        return loader.load(path), None
    model, seconds = train_fn()
    if path is not None:
        if cls is not None:
            model.save(path, overwrite=True)
        else:
            model.save(path, overwrite=True, save_anndata=True)
    return model, seconds


def train_latent(
    cls, base, keys, epochs, seed, ema_decay: float | str | None = "default"
) -> tuple[Any, float]:
    """A latent prior on ``base``'s own AnnData."""
    import scvi

    scvi.settings.seed = seed
    model = cls.from_model(base, condition_keys=keys)
    _, seconds = timed(
        lambda: model.train(max_epochs=epochs, enable_progress_bar=False, ema_decay=ema_decay)
    )
    return model, seconds


def generate(model, keys, n_cells, seed, **kwargs) -> ad.AnnData:
    specs = [dict(zip(keys, c, strict=True)) for c in n_cells]
    return model.generate(specs, n_cells=list(n_cells.values()), seed=seed, **kwargs)


def dispersions(model, seed: int) -> dict[str, Any]:
    """The base decoder as it is and as ``train`` refits it: ``(mean factors, dispersion)``.

    ``"own"`` is ``(None, None)``; ``"refit"`` the calibrated means and the dispersion fitted
    around them (``None`` where the decoder has no dispersion to refit).
    """
    if model.dispersion_ is not None:
        return {
            "own": (None, None),
            "refit": (getattr(model, "mean_scale_", None), model.dispersion_),
        }
    loc, scale = model._adapter.latent_distribution(model.adata)
    factor = model._fit_mean_scale(loc, scale, seed)
    refit = (factor, model._fit_dispersion(loc, scale, seed, factor))
    return {"own": (None, None), "refit": None if refit[1] is None else refit}


def with_dispersion(model, decoding, fn):
    """``fn()`` with the latent prior decoding with ``decoding``: ``(mean factors, theta)``.

    ``(None, None)`` is the base decoder as it is.
    """
    saved = (getattr(model, "mean_scale_", None), model.dispersion_)
    model.mean_scale_, model.dispersion_ = decoding
    try:
        return fn()
    finally:
        model.mean_scale_, model.dispersion_ = saved


def posterior_predictive(model, test: ad.AnnData, keys, seed: int) -> ad.AnnData:
    """Held-out cells encoded by the base model (a posterior sample) and decoded by ``model``.

    The reference a prior can at best reach with this decoder (issue #20): the latents are the
    cells' own, the library sizes too; decoding goes through the latent prior, so it uses the
    refitted dispersion where ``model.dispersion_`` holds one.
    """
    import scipy.sparse as sp
    import torch

    adapter = model._adapter
    cells = test.copy()
    loc, scale = adapter.latent_distribution(cells)
    gen = torch.Generator().manual_seed(seed)
    z = torch.as_tensor(loc) + torch.as_tensor(scale) * torch.randn(loc.shape, generator=gen)
    lib = np.log(np.maximum(np.asarray(cells.X.sum(1)).ravel(), 1.0)).astype(np.float32)
    inputs = {k: torch.as_tensor(v) for k, v in adapter.decoder_inputs(cells).items()}
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        px = model._decode_with_inputs(z, torch.as_tensor(lib).unsqueeze(-1), inputs)
        x = px.sample().cpu().numpy()
    return ad.AnnData(sp.csr_matrix(x), obs=test.obs[keys].copy(), var=test.var[[]].copy())


def training_posteriors(model, keys) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The registered cells' posteriors on ``model``'s base and their condition labels.

    What the latent prior ``model`` was trained on; encoded once per run, since the base is
    frozen and the encoder deterministic.
    """
    loc, scale = model._adapter.latent_distribution(model.adata)
    return loc, scale, condition_labels(model.adata.obs, keys).to_numpy()


def target_latents(posteriors, n_cells, seed: int) -> np.ndarray:
    """What a latent prior learns, drawn as many times as it generates.

    For each condition, ``n_cells[c]`` registered (training) cells of the condition, drawn with
    replacement, and one posterior draw each (``posteriors`` from :func:`training_posteriors`):
    a sample of the aggregated posterior the prior is trained on, in the rows' order of
    :func:`generate`.
    """
    import torch

    loc, scale, labels = posteriors
    rows = pick_training_cells(labels, n_cells, np.random.default_rng(seed))
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(rows), loc.shape[1], generator=gen).numpy()
    return loc[rows] + scale[rows] * noise


def posterior_target(model, posteriors, keys, n_cells, seed: int) -> ad.AnnData:
    """:func:`target_latents` decoded as ``model`` decodes its own samples.

    The cells a perfect latent prior would generate (library sizes drawn from training cells
    of the condition, as in ``generate``): the level the prior's own row can at best reach.
    """
    specs = [dict(zip(keys, c, strict=True)) for c in n_cells]
    z = target_latents(posteriors, n_cells, seed)
    return model.decode_latents(z, specs, n_cells=list(n_cells.values()), seed=seed)


def latent_fit(
    synthetic: dict[str, ad.AnnData], posteriors: dict[str, tuple], n_cells, seed: int
) -> dict[str, float]:
    """Energy distance in the base's latent space between each prior's samples and its target.

    Median over conditions, for the latent priors on each base, PriorVI's own prior (on the
    PriorVI base) and, as the floor, a second independent draw of the target.
    """
    import genvi

    out = {}
    sizes = list(n_cells.values())
    bounds = np.cumsum([0, *sizes])
    for base_name, posterior in posteriors.items():
        target = synthetic[f"{base_name}_target"].obsm["X_genvi_latent"]
        others = {k: synthetic[k] for k in (f"{base_name}_flow", f"{base_name}_diffusion")}
        if base_name == "priorvi":
            others["priorvi"] = synthetic["priorvi"]
        samples = {k: np.asarray(v.obsm["X_genvi_latent"]) for k, v in others.items()}
        samples[f"{base_name}_target_redrawn"] = target_latents(posterior, n_cells, seed + 7)
        for key, z in samples.items():
            out[key] = float(
                np.median(
                    [
                        genvi.metrics.energy_distance(z[a:b], np.asarray(target[a:b]), seed=seed)
                        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
                    ]
                )
            )
    return out


def decode_pass_seconds(model, n: int, seed: int) -> float:
    """One VAE decode pass: z ~ N(0, I) through the base decoder, counts sampled."""
    import torch

    adapter = model._adapter
    ref = np.random.default_rng(seed).integers(0, len(model.train_library_), n)
    inputs = model._reference_inputs(ref)
    lib = torch.as_tensor(np.log(model.train_library_[ref]), dtype=torch.float32).unsqueeze(-1)
    start = time.perf_counter()
    with torch.no_grad():
        z = torch.randn(n, adapter.n_latent)
        model._decode_with_inputs(z, lib, inputs).sample().cpu()
    return time.perf_counter() - start


def throughput(model, keys, n_cells, seed, n: int = 2000) -> list[dict[str, float]]:
    """Cells/s of ``generate`` (counts decoded) per n_steps, vs one decode pass."""
    conds = list(n_cells)
    share = {c: n // len(conds) for c in conds}
    decode = decode_pass_seconds(model, sum(share.values()), seed)
    rows = []
    for steps in STEPS:
        _, seconds = timed(lambda s=steps: generate(model, keys, share, seed, n_steps=s))
        rows.append(
            {
                "n_steps": steps,
                "seconds": seconds,
                "cells_per_s": sum(share.values()) / seconds,
                "ratio_to_decode_pass": seconds / decode,
                "decode_pass_seconds": decode,
            }
        )
    return rows


def guidance_sweep(model, keys, n_cells, seed, test, space) -> list[dict[str, float]]:
    """Energy distance and condition-classifier accuracy of generated cells per weight."""
    from sklearn.linear_model import LogisticRegression

    import genvi

    labels = condition_labels(model.adata.obs, keys)
    clf = LogisticRegression(max_iter=3000).fit(space.transform(model.adata), labels)
    rows = []
    for w in GUIDANCE:
        syn = generate(model, keys, n_cells, seed, guidance=w)
        acc = float((clf.predict(space.transform(syn)) == condition_labels(syn.obs, keys)).mean())
        df = genvi.metrics.compare_conditions(
            test, syn, keys, space, min_cells=MIN_CELLS, seed=seed
        )
        rows.append({"guidance": w, "energy": float(df["energy"].mean()), "accuracy": acc})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and write the JSON."""
    args = parse_args(argv)
    if args.decode_conditions:
        for key in [k for k in METHODS if k.startswith("priorvi")]:
            METHODS[key] += " [decoder also sees the conditions]"
    dataset, keys = DATASETS[args.dataset]
    adata = load_dataset(args.data_dir, dataset)

    import scvi

    import genvi
    from genvi.model import LatentDiffusion, LatentFlow

    quiet()
    if args.threads is not None:
        set_threads(args.threads)
    scvi.settings.seed = args.seed
    train, test, held_out, n_cells, space = held_out_split(adata, keys, args.seed)
    print(
        f"{dataset}: train {train.n_obs}, test {test.n_obs}, {len(n_cells)} conditions", flush=True
    )

    timings, models = {}, {}
    print("training base models...", flush=True)
    bases = {}
    if "scvi" in args.bases:
        bases["scvi"], timings["base_scvi"] = reuse_or_train(
            args.model_dir, "scvi", lambda: train_plain_scvi(train, args.max_epochs, args.seed)
        )
    base_pvi, timings["priorvi"] = reuse_or_train(
        args.model_dir,
        "priorvi",
        lambda: train_priorvi(
            train, keys, args.max_epochs, args.seed, decode_conditions=args.decode_conditions
        ),
    )
    if "priorvi" in args.bases:
        bases["priorvi"] = base_pvi
    scvi_cond, timings["scvi_cond"] = reuse_or_train(
        args.model_dir,
        "scvi_cond",
        lambda: train_scvi(train, keys, args.max_epochs, args.seed, "nb"),
    )
    # every row as a function of the generation seed, so that it can be drawn again
    makers: dict[str, Any] = {
        "priorvi": lambda s: generate_priorvi(base_pvi, keys, n_cells, s),
        "scvi_cond": lambda s: generate_scvi(scvi_cond, keys, n_cells, s),
        "resample": lambda s: resample_training(train, keys, n_cells, s),
    }
    posteriors: dict[str, tuple] = {}  # per base: what its latent priors were trained on
    for base_name, base in bases.items():
        for prior_name, cls in (("diffusion", LatentDiffusion), ("flow", LatentFlow)):
            key = f"{base_name}_{prior_name}"
            print(f"training {METHODS[key]}...", flush=True)
            models[key], timings[key] = reuse_or_train(
                args.model_dir,
                key,
                lambda c=cls, b=base: train_latent(
                    c, b, keys, args.latent_epochs, args.seed, args.latent_ema_decay
                ),
                base=base,
                cls=cls,
            )
            makers[key] = lambda s, m=models[key]: generate(m, keys, n_cells, s)
        # the default decodes scVI with calibrated means and a refitted dispersion, PriorVI
        # with its own: the other choice, and the posterior predictive (cells' own latents)
        # with both
        flow = models[f"{base_name}_flow"]
        disp = dispersions(flow, args.seed)
        # no refit where the decoder predicts each cell's dispersion ("gene-cell"): its rows
        # would repeat the own-dispersion ones
        postpred = {"postpred": disp["own"]}
        if disp["refit"] is not None:
            other = "own" if flow.dispersion_ is not None else "refit"
            makers[f"{base_name}_flow_{'own_disp' if other == 'own' else 'refit'}"] = (
                lambda s, f=flow, t=disp[other]: with_dispersion(
                    f, t, lambda: generate(f, keys, n_cells, s)
                )
            )
            postpred["postpred_refit"] = disp["refit"]
        for name, theta in postpred.items():
            makers[f"{base_name}_{name}"] = lambda s, f=flow, t=theta: with_dispersion(
                f, t, lambda: posterior_predictive(f, test, keys, s)
            )
        posteriors[base_name] = training_posteriors(flow, keys)
        makers[f"{base_name}_target"] = lambda s, f=flow, p=posteriors[base_name]: posterior_target(
            f, p, keys, n_cells, s
        )

    draw_seeds = [args.seed + 1000 * k for k in range(args.draws)]
    tables: dict[str, Any] = {}
    draws: dict[str, dict[str, list[float]]] = {
        key: {f"{m}_{stat}": [] for m in DRAW_METRICS for stat in ("median", "mean")}
        for key in makers
    }
    summaries: dict[str, Any] = {}
    fits: dict[str, list[float]] = {}
    for k, draw_seed in enumerate(draw_seeds):
        synthetic = {key: make(draw_seed) for key, make in makers.items()}
        for key, value in latent_fit(synthetic, posteriors, n_cells, draw_seed).items():
            fits.setdefault(key, []).append(value)
        for key, syn in synthetic.items():
            df = genvi.metrics.compare_conditions(
                test,
                syn,
                keys,
                space,
                min_cells=MIN_CELLS,
                seed=args.seed,
                baseline=synthetic["scvi_cond"],
            )
            if k == 0:  # the single-draw run's table and summaries
                tables[key], summaries[key] = df, genvi.metrics.summarize(df)
            for m in DRAW_METRICS:
                if m in df:
                    draws[key][f"{m}_median"].append(float(df[m].median()))
                    draws[key][f"{m}_mean"].append(float(df[m].mean()))

    print("throughput and guidance...", flush=True)
    on_scvi = [k for k in ("scvi_diffusion", "scvi_flow") if k in models]
    speed = {k: throughput(models[k], keys, n_cells, args.seed) for k in on_scvi}
    sweep = {k: guidance_sweep(models[k], keys, n_cells, args.seed, test, space) for k in on_scvi}

    header = ["method"] + [name for _, name in TABLE_METRICS]
    rows = [
        [METHODS[k]] + [s.get(c, np.nan) for c, _ in TABLE_METRICS] for k, s in summaries.items()
    ]
    floor = summaries["scvi_cond"]
    rows.append(
        ["Noise floor (real vs real halves)"]
        + [
            floor.get(FLOOR_NAMES.get(c, ""), 0.0 if c.endswith("_score") else np.nan)
            for c, _ in TABLE_METRICS
        ]
    )
    machine = machine_info()
    print(
        f"\n## Generation quality: {dataset} by {' x '.join(keys)} (scores: 0 = floor, 1 = scVI)\n"
    )
    print(markdown_table(header, rows))
    print("\n## Sampling throughput (2,000 cells, counts decoded)\n")
    srows = [
        [METHODS[k], r["n_steps"], r["cells_per_s"], r["ratio_to_decode_pass"]]
        for k, rs in speed.items()
        for r in rs
    ]
    print(markdown_table(["method", "n_steps", "cells / s", "time / one decode pass"], srows))
    print("\n## Guidance sweep (one weight for all keys)\n")
    grows = [
        [METHODS[k], r["guidance"], r["energy"], r["accuracy"]]
        for k, rs in sweep.items()
        for r in rs
    ]
    print(markdown_table(["method", "guidance", "energy", "condition accuracy"], grows))
    if args.draws > 1:
        print(f"\n## Medians over conditions, mean ± sd over {args.draws} draws\n")
        drows = [
            [METHODS[k]]
            + [
                f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}" if v else "-"
                for v in (d[f"{m}_median"] for m in DRAW_METRICS)
            ]
            for k, d in draws.items()
        ]
        print(markdown_table(["method", *DRAW_METRICS], drows))
    print("\n## Latent space: energy distance to the target (conditions' median, draws' mean)\n")
    frows = [[METHODS.get(k, k), float(np.mean(v))] for k, v in fits.items()]
    print(markdown_table(["samples", "energy to the target's latents"], frows))
    print("\n## Training time (s; None: a reused model)\n")
    trows = [[k, v] for k, v in timings.items()]
    print(markdown_table(["model", "train s"], trows))
    print(f"\nMachine: {machine}")
    payload = {
        "benchmark": "latent_priors",
        "dataset": dataset,
        "condition_keys": keys,
        "settings": {
            "max_epochs": args.max_epochs,
            "latent_epochs": args.latent_epochs or "model default (~10,000 steps)",
            "latent_ema_decay": args.latent_ema_decay,
            # what each latent prior trained with (None: loaded from --model-dir, unknown)
            "latent_ema_decay_used": {
                k: getattr(m, "_train_ema_decay", None)
                for k, m in models.items()
                if k.endswith(("_flow", "_diffusion"))
            },
            "seed": args.seed,
            "torch_threads": args.threads,
            "n_train": train.n_obs,
            "n_test": test.n_obs,
            "generated_cells": {" | ".join(k): v for k, v in n_cells.items()},
            "generation": "defaults: LatentDiffusion dpm++ 25 steps, LatentFlow heun 20 steps",
            "bases": args.bases,
            "priorvi_decode_conditions": args.decode_conditions,
            "draw_seeds": draw_seeds,
            "model_dir": None if args.model_dir is None else str(args.model_dir),
        },
        "methods": {k: METHODS[k] for k in makers},
        "summaries": summaries,
        "draws": draws if args.draws > 1 else None,
        # per draw: each prior's latent samples against its target (the aggregated posterior of
        # the training cells), `<base>_target_redrawn` a second draw of the target (the floor)
        "latent_fit_to_target": fits,
        "per_condition": tables,
        "throughput": speed,
        "guidance_sweep": sweep,
        "train_seconds": timings,
        "machine": machine,
    }
    path = write_json(payload, args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
