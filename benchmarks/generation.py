"""Generation quality on PBMC3k or Kang (BENCHMARKS.md, "Generation quality").

Split the cells 80/20 stratified by the condition (``--dataset pbmc3k``: ``cell_type_coarse``;
``--dataset kang``: ``cell_type`` x ``donor``, two condition keys), train on 80%, and for every
condition with at least 30 held-out cells generate as many cells as were held out. Generated
cells are compared with the real held-out cells by :func:`genvi.metrics.compare_conditions` (energy
distance, RBF-MMD², classifier two-sample AUROC, per-gene mean / variance agreement, the
count-shape AUROC of :func:`genvi.metrics.count_profile`, each with its real-vs-real noise
floor), with scVI as the baseline of the normalised scores ``(model - floor) / (baseline -
floor)``.

Methods, all on the same split:

1. ``PriorVI(prior=...)`` with genvi's defaults, one row per prior of ``--priors`` (default
   ``gaussian,mog,flow,vamp``: conditional Gaussian, conditional mixture of Gaussians,
   conditional normalizing flow, VampPrior); the decoder input follows genvi's
   ``decode_conditions`` default (recorded in the JSON).
2. ``PriorVI(prior="normal", decode_conditions=True)``: z ~ N(0, I), condition in the decoder.
3. ``scvi.model.SCVI`` with the condition as a categorical covariate of the decoder,
   z ~ N(0, I), library sizes drawn from training cells of the condition.
4. Resampled real training cells of the condition (fidelity upper bound; fails privacy).
5. The conditional-Gaussian PriorVI without its prior: latents drawn from the posteriors
   q(z | x) of random training cells of the condition (the aggregated posterior a prior is
   trained to match), decoded with those cells' own library sizes. What the decoder and
   its count sampling reach with a perfect prior: where it ties the prior's row, the gap
   to resampling is in the decoder, not the prior.
6. Noise floor: two halves of the real held-out cells.
7. With ``--peers cfgen``: CFGen (theislab/CFGen, latent flow matching + negative binomial
   decoder) trained and sampled in its own environment (``generation_peers.py``,
   ``peers/run_cfgen.py``), one row per guidance weight.

Also records seconds per training epoch of every model vs scVI and vs the conditional
Gaussian prior (wall clock, same data and batch size). Run from the repository root::

    python benchmarks/generation.py --quick      # smoke run, ~20 epochs
    python benchmarks/generation.py              # full run, writes benchmarks/results/
    python benchmarks/generation.py --dataset kang --max-epochs 30
    python benchmarks/generation.py --priors gaussian,gaussian:decode   # decoder sees c too
    python benchmarks/generation.py --priors gaussian --n-latent 30 --out /tmp/nl30.json
    python benchmarks/generation.py --priors gaussian --gene-likelihood zinb --out /tmp/zinb.json
    python benchmarks/generation.py --priors gaussian --dispersion gene --out /tmp/gene.json
    bash benchmarks/peers/setup_envs.sh cfgen    # once, for the next line
    python benchmarks/generation.py --peers cfgen --threads 1
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RESULTS_DIR,
    add_common_args,
    load_dataset,
    machine_info,
    markdown_table,
    quiet,
    set_threads,
    stratified_split,
    timed,
    write_json,
)
from generation_peers import PEER_METHODS, library_draws  # noqa: E402

DATASETS = {
    "pbmc3k": ("pbmc3k_labeled.h5ad", ["cell_type_coarse"]),
    "kang": ("kang_ctrl_8donors.h5ad", ["cell_type", "donor"]),
}
PRIORS = ["gaussian", "mog", "flow", "vamp"]
PRIOR_NAMES = {
    "gaussian": "conditional Gaussian prior",
    "mog": "conditional mixture-of-Gaussians prior",
    "flow": "conditional normalizing-flow prior",
    "vamp": "VampPrior",
}
MIN_CELLS = 30
BATCH_SIZE = 128
QUICK_EPOCHS = 20
# On a shared 2-core CPU, 200 epochs with torch's default threads would have taken > 40 min
# for the three models; 100 epochs with --threads 1 took 16 min (pbmc3k).
DEFAULT_EPOCHS = 100

METHODS = {
    **{f"priorvi_{p}": f"PriorVI ({name}, genvi defaults)" for p, name in PRIOR_NAMES.items()},
    "priorvi_normal": "PriorVI (N(0, I) prior, condition in decoder)",
    "scvi": "scVI (N(0, I), condition in decoder)",
    "resample": "Resampled training cells",
    "priorvi_gaussian_posterior": "PriorVI (conditional Gaussian prior), training cells' "
    "posteriors decoded instead of prior draws",
}
METHODS.update({k: name for rows in PEER_METHODS.values() for k, (_, name) in rows.items()})
TABLE_METRICS = [
    ("energy", "energy"),
    ("mmd", "MMD²"),
    ("c2st_auroc", "C2ST AUROC"),
    ("mean_r2", "mean R²"),
    ("var_r2", "var R²"),
    ("mean_pearson", "mean r"),
    ("count_shape_auroc", "count-shape AUROC"),
    ("energy_score", "energy score"),
    ("mmd_score", "MMD score"),
]
FLOOR_NAMES = {
    "energy": "energy_floor",
    "mmd": "mmd_floor",
    "c2st_auroc": "c2st_floor",
    "mean_r2": "mean_r2_floor",
    "var_r2": "var_r2_floor",
    "mean_pearson": "mean_pearson_floor",
    "count_shape_auroc": "count_shape_auroc_floor",
}


def _parse_ema_decay(value: str, parser: argparse.ArgumentParser) -> float | str | None:
    """``--ema-decay``: a number, None or 'default' (the JSON records what each row used)."""
    if value.lower() == "default":
        return "default"
    if value.lower() == "none":
        return None
    from genvi.model.base import WeightEMA

    try:
        decay = float(value)
        WeightEMA(decay)  # the callback's own range check, before any data is loaded
    except ValueError as err:
        parser.error(f"--ema-decay: 'none', 'default' or a number; {err}")
    return decay


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, DEFAULT_EPOCHS)
    parser.add_argument(
        "--dataset",
        default="pbmc3k",
        choices=sorted(DATASETS),
        help="pbmc3k (by cell_type_coarse, default) or kang (by cell_type x donor)",
    )
    parser.add_argument(
        "--priors",
        default=",".join(PRIORS),
        help=f"comma list of PriorVI priors, one row each (default {','.join(PRIORS)}); "
        "'gaussian:decode' also gives the conditions to the decoder, 'gaussian:decode=donor' "
        "only the listed keys (joined by '+')",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default: benchmarks/results/generation_<dataset>.json, "
        "or generation_<dataset>_quick.json with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_EPOCHS} epochs per model"
    )
    parser.add_argument(
        "--n-latent",
        type=int,
        default=None,
        help="latent size of every PriorVI row (default: PriorVI's own default)",
    )
    parser.add_argument(
        "--gene-likelihood",
        default=None,
        choices=["nb", "zinb", "poisson"],
        help="count likelihood of every PriorVI row (default: PriorVI's own default, nb)",
    )
    parser.add_argument(
        "--dispersion",
        default=None,
        choices=["gene", "gene-batch", "gene-cell"],
        help="dispersion of every PriorVI row (default: PriorVI's own default, gene-cell)",
    )
    parser.add_argument(
        "--ema-decay",
        default="default",
        help="PriorVI.train(ema_decay=...) of every PriorVI row: a number in (0, 1), 'none' "
        "for the last step's weights, or 'default' (PriorVI's own; the JSON records what each "
        "row used)",
    )
    parser.add_argument(
        "--temperatures",
        default="",
        help="comma list of sampling temperatures other than 1 (PriorVI.generate(temperature=...)"
        "); each adds a row of the default PriorVI's cells drawn at that temperature, same model",
    )
    parser.add_argument(
        "--scvi-likelihood",
        default="nb",
        choices=["nb", "zinb", "poisson"],
        help="scVI gene likelihood (default nb, the same as PriorVI's)",
    )
    parser.add_argument(
        "--peers",
        default="",
        help=f"comma list of peer generators run in their own environments: {sorted(PEER_METHODS)}"
        " (benchmarks/peers/setup_envs.sh); slow, off by default",
    )
    parser.add_argument(
        "--peer-args",
        default="",
        help="extra options for the peers' runners, e.g. '--flow-batch-size 64 --denoiser big' "
        "(peers/run_cfgen.py: the settings of CFGen's pbmc3k / multi-attribute scripts)",
    )
    args = parser.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown_peers = sorted(set(args.peers) - set(PEER_METHODS))
    if unknown_peers:
        parser.error(f"unknown peer(s) {unknown_peers}; choose from {sorted(PEER_METHODS)}")
    if args.quick:
        args.max_epochs = min(args.max_epochs, QUICK_EPOCHS)
    args.ema_decay = _parse_ema_decay(args.ema_decay, parser)
    try:
        args.temperatures = [float(t) for t in args.temperatures.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--temperatures must be numbers, got {args.temperatures!r}")
    if any(not (t > 0 and np.isfinite(t)) or t == 1.0 for t in args.temperatures):
        parser.error("--temperatures must be positive and other than 1 (1 is the default row)")
    args.priors = [p.strip() for p in args.priors.split(",") if p.strip()]
    unknown = sorted({p.split(":")[0] for p in args.priors} - set(PRIOR_NAMES))
    bad = [
        p
        for p in args.priors
        if ":" in p and not re.fullmatch(r"decode(=[^=+]+(\+[^=+]+)*)?", p.split(":", 1)[1])
    ]
    if unknown or bad:
        parser.error(
            f"unknown prior(s) {unknown + bad}; choose from {sorted(PRIOR_NAMES)}, optionally "
            "with ':decode' (conditions also in the decoder) or ':decode=key1+key2'"
        )
    if "gaussian" not in args.priors:  # the reference of the timing ratios
        args.priors.insert(0, "gaussian")
    if args.out is None:
        suffix = "_quick" if args.quick else ""
        args.out = RESULTS_DIR / f"generation_{args.dataset}{suffix}.json"
    return args


def prior_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``--priors`` entry -> (method key, PriorVI arguments); registers the method's name.

    ``"flow"``: genvi's defaults; ``"gaussian:decode"``: the conditions also in the decoder;
    ``"gaussian:decode=donor"``: only the listed keys (``+``-separated) also in the decoder.
    """
    prior, _, decode = spec.partition(":")
    if not decode:
        return f"priorvi_{prior}", {"prior": prior}
    keys = decode.partition("=")[2]
    decoded = keys.split("+") if keys else True
    key = f"priorvi_{prior}_decode" + (f"_{'_'.join(decoded)}" if keys else "")
    what = "conditions" if decoded is True else " and ".join(decoded)
    METHODS[key] = f"PriorVI ({PRIOR_NAMES[prior]}, {what} also in the decoder)"
    return key, {"prior": prior, "decode_conditions": decoded}


def condition_labels(obs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """One string label per cell joining the condition keys with " | "."""
    return obs[keys].astype(str).agg(" | ".join, axis=1)


# ---------------------------------------------------------------------------- generators
def held_out_split(
    adata: ad.AnnData, keys: list[str], seed: int
) -> tuple[ad.AnnData, ad.AnnData, pd.Series, dict[tuple[str, ...], int], Any]:
    """The split every generation benchmark scores on.

    ``keys`` become string categoricals of ``adata.obs`` (in place); 80/20 split stratified by
    the condition; returns the training and held-out cells, the held-out cells per condition,
    the conditions scored (``>= MIN_CELLS`` held-out cells: as many generated) and the 50-PC
    reference space fitted on the training cells.
    """
    import genvi

    for key in keys:
        adata.obs[key] = adata.obs[key].astype(str).astype("category")
    labels = condition_labels(adata.obs, keys)
    train_idx, test_idx = stratified_split(labels, test_size=0.2, seed=seed)
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    held_out = condition_labels(test.obs, keys).value_counts().sort_index()
    n_cells = {tuple(str(c).split(" | ")): int(n) for c, n in held_out.items() if n >= MIN_CELLS}
    space = genvi.metrics.ReferenceSpace.fit(train, n_top_genes=2000, n_comps=50, seed=seed)
    return train, test, held_out, n_cells, space


def train_priorvi(
    train: ad.AnnData,
    keys: list[str],
    max_epochs: int,
    seed: int,
    ema_decay: float | None | str = "default",
    **model_kwargs: Any,
) -> tuple[Any, float]:
    """Fit PriorVI on a copy of ``train``; return the model and the training seconds.

    ``ema_decay`` goes to ``PriorVI.train`` (``"default"``: PriorVI's own default).
    """
    import scvi

    from genvi.model import PriorVI

    adata = train.copy()
    scvi.settings.seed = seed
    PriorVI.setup_anndata(adata, condition_keys=keys)
    model = PriorVI(adata, **model_kwargs)
    _, seconds = timed(
        lambda: model.train(
            max_epochs=max_epochs,
            batch_size=BATCH_SIZE,
            enable_progress_bar=False,
            ema_decay=ema_decay,
        )
    )
    return model, seconds


def generate_priorvi(
    model: Any,
    keys: list[str],
    n_cells: dict[tuple[str, ...], int],
    seed: int,
    temperature: float = 1.0,
) -> ad.AnnData:
    """``n_cells[c]`` cells of each condition ``c`` (a tuple, one value per key)."""
    specs = [dict(zip(keys, c, strict=True)) for c in n_cells]
    return model.generate(specs, n_cells=list(n_cells.values()), seed=seed, temperature=temperature)


def pick_training_cells(
    labels: np.ndarray, n_cells: dict[tuple[str, ...], int], rng: np.random.Generator
) -> np.ndarray:
    """``n_cells[c]`` rows whose ``labels`` are condition ``c`` (with replacement), in order.

    ``labels`` as :func:`condition_labels` writes them; the rows of all conditions are
    concatenated in the order of ``n_cells``, as ``generate`` orders its cells.
    """
    return np.concatenate(
        [rng.choice(np.flatnonzero(labels == " | ".join(c)), n) for c, n in n_cells.items()]
    )


def decode_posteriors(
    model: Any, keys: list[str], n_cells: dict[tuple[str, ...], int], seed: int
) -> ad.AnnData:
    """``n_cells[c]`` cells decoded from posteriors of training cells of each condition ``c``.

    Each generated cell takes a random training cell of its condition (with replacement), one
    draw z ~ q(z | x) of that cell and the cell's own library size; the decoder and count
    sampling are the model's, as in ``generate``. No prior is involved.
    """
    rng = np.random.default_rng(seed)
    idx = pick_training_cells(condition_labels(model.adata.obs, keys).to_numpy(), n_cells, rng)
    loc, var = model.get_latent_representation(indices=idx, return_dist=True)
    z = loc + np.sqrt(var) * rng.standard_normal(loc.shape)
    specs = [dict(zip(keys, c, strict=True)) for c in n_cells]
    # the library sizes generate() draws from: the model's stored training reference
    return model.decode_latents(
        z, specs, n_cells=list(n_cells.values()), library_size=model.train_library_[idx], seed=seed
    )


def train_scvi(
    train: ad.AnnData, keys: list[str], max_epochs: int, seed: int, gene_likelihood: str
) -> tuple[Any, float]:
    """Fit scVI with the condition as a decoder covariate, KL warm-up as PriorVI's."""
    import scvi

    from genvi.model.base import default_kl_warmup

    adata = train.copy()
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(adata, categorical_covariate_keys=keys)
    model = scvi.model.SCVI(adata, gene_likelihood=gene_likelihood)
    plan_kwargs = {"n_epochs_kl_warmup": default_kl_warmup(max_epochs)}
    _, seconds = timed(
        lambda: model.train(
            max_epochs=max_epochs,
            batch_size=BATCH_SIZE,
            enable_progress_bar=False,
            plan_kwargs=plan_kwargs,
        )
    )
    return model, seconds


def generate_scvi(
    model: Any, keys: list[str], n_cells: dict[tuple[str, ...], int], seed: int
) -> ad.AnnData:
    """Sample z ~ N(0, I) and decode with the condition covariate.

    Library sizes are drawn uniformly (with replacement) from the training cells of the same
    condition, as genvi's ``generate`` does; counts are samples of the decoder's likelihood.
    """
    import torch
    from scvi import REGISTRY_KEYS

    manager = model.adata_manager
    mappings = manager.get_state_registry(REGISTRY_KEYS.CAT_COVS_KEY).mappings
    categories = {k: [str(c) for c in mappings[k]] for k in keys}
    train_labels = condition_labels(model.adata.obs, keys).to_numpy()
    x_train = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    train_library = np.maximum(np.asarray(x_train.sum(1), dtype=np.float64).ravel(), 1.0)

    module = model.module
    module.eval()
    libraries = library_draws(train_labels, train_library, n_cells, seed)
    xs, labels = [], []
    with torch.random.fork_rng(), torch.inference_mode():
        torch.manual_seed(seed)
        for cond, n in n_cells.items():
            lib = libraries[cond]
            dev = module.device
            codes = [categories[k].index(v) for k, v in zip(keys, cond, strict=True)]
            z = torch.randn(n, module.n_latent, device=dev)
            out = module.generative(
                z=z,
                library=torch.as_tensor(np.log(lib), dtype=torch.float32, device=dev)[:, None],
                batch_index=torch.zeros(n, 1, dtype=torch.long, device=dev),
                cat_covs=torch.tensor(codes, dtype=torch.long, device=dev).repeat(n, 1),
            )
            xs.append(out["px"].sample().cpu().numpy().astype(np.float32))
            labels += [cond] * n
    obs = pd.DataFrame(
        {
            k: pd.Categorical([c[i] for c in labels], categories=categories[k])
            for i, k in enumerate(keys)
        },
        index=[f"scvi_{i}" for i in range(len(labels))],
    )
    return ad.AnnData(
        X=sp.csr_matrix(np.concatenate(xs)), obs=obs, var=pd.DataFrame(index=model.adata.var_names)
    )


def resample_training(
    train: ad.AnnData, keys: list[str], n_cells: dict[tuple[str, ...], int], seed: int
) -> ad.AnnData:
    """Real training cells of each condition (without replacement while there are enough)."""
    rng = np.random.default_rng(seed)
    labels = condition_labels(train.obs, keys).to_numpy()
    idx = []
    for cond, n in n_cells.items():
        pool = np.flatnonzero(labels == " | ".join(cond))
        idx.append(rng.choice(pool, size=n, replace=n > len(pool)))
    idx = np.concatenate(idx)
    out = ad.AnnData(
        X=sp.csr_matrix(train.X[idx]),
        obs=train.obs[keys].iloc[idx].copy(),
        var=pd.DataFrame(index=train.var_names),
    )
    out.obs_names = [f"resample_{i}" for i in range(out.n_obs)]
    return out


# ---------------------------------------------------------------------------- reporting
def _timing(epochs: int, seconds: float, load_before: float) -> dict[str, float]:
    """Training wall clock and the 1-minute load average before and after (other processes)."""
    return {
        "epochs": epochs,
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / epochs,
        "load_average_1min_before": load_before,
        "load_average_1min_after": os.getloadavg()[0],
    }


def quality_table(summaries: dict[str, pd.Series]) -> str:
    """One row per method and the noise floor (summaries: means or medians over conditions)."""
    header = ["method"] + [name for _, name in TABLE_METRICS]
    rows = []
    for key, summary in summaries.items():
        rows.append([METHODS[key]] + [summary.get(col, np.nan) for col, _ in TABLE_METRICS])
    floor = next(iter(summaries.values()))
    rows.append(
        ["Noise floor (real vs real halves)"]
        + [
            floor.get(FLOOR_NAMES.get(col, ""), 0.0 if col.endswith("_score") else np.nan)
            for col, _ in TABLE_METRICS
        ]
    )
    return markdown_table(header, rows)


def timing_table(timings: dict[str, dict[str, float]]) -> str:
    """Training wall clock per method and its ratios to scVI and to the Gaussian prior."""
    ref = timings["scvi"]["seconds_per_epoch"]
    ref_gauss = timings["priorvi_gaussian"]["seconds_per_epoch"]
    rows = [
        [
            METHODS[key],
            t["epochs"],
            t["train_seconds"],
            t["seconds_per_epoch"],
            t["seconds_per_epoch"] / ref,
            t["seconds_per_epoch"] / ref_gauss,
            f"{t['load_average_1min_before']:.1f} → {t['load_average_1min_after']:.1f}",
        ]
        for key, t in timings.items()
    ]
    header = [
        "method",
        "epochs",
        "train s",
        "s / epoch",
        "ratio vs scVI",
        "ratio vs Gaussian prior",
        "load avg 1 min",
    ]
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the tables and write the JSON."""
    args = parse_args(argv)
    dataset, keys = DATASETS[args.dataset]
    adata = load_dataset(args.data_dir, dataset)

    import scvi

    import genvi

    quiet()  # after the imports: Lightning sets its loggers' levels when imported
    if args.threads is not None:
        set_threads(args.threads)
    scvi.settings.seed = args.seed
    train, test, held_out, n_cells, space = held_out_split(adata, keys, args.seed)
    print(
        f"{dataset}: {adata.n_obs} cells x {adata.n_vars} genes; train {train.n_obs}, "
        f"test {test.n_obs}; {len(n_cells)} scored conditions of {' x '.join(keys)} "
        f"(>= {MIN_CELLS} held-out cells): "
        + ", ".join(f"{' | '.join(c)}: {n}" for c, n in n_cells.items()),
        flush=True,
    )

    synthetic: dict[str, ad.AnnData] = {}
    timings: dict[str, dict[str, float]] = {}
    # The conditional-prior models as a user gets them (decoder input: genvi's default), and the
    # standard-normal-prior ablation, which needs the condition in the decoder to be conditional.
    priorvi_kwargs: dict[str, dict[str, Any]] = dict(map(prior_variant, args.priors))
    priorvi_kwargs["priorvi_normal"] = {"prior": "normal", "decode_conditions": True}
    for option in ("n_latent", "gene_likelihood", "dispersion"):
        if getattr(args, option) is not None:
            for kwargs in priorvi_kwargs.values():
                kwargs[option] = getattr(args, option)
    decode_conditions, n_latent, likelihood, dispersion, ema = {}, {}, {}, {}, {}
    for key, kwargs in priorvi_kwargs.items():
        print(f"training {METHODS[key]} for {args.max_epochs} epochs...", flush=True)
        load = os.getloadavg()[0]
        model, seconds = train_priorvi(
            train, keys, args.max_epochs, args.seed, ema_decay=args.ema_decay, **kwargs
        )
        decode_conditions[key] = bool(model.module.decode_conditions)
        n_latent[key] = int(model.module.n_latent)
        likelihood[key] = str(model.module.gene_likelihood)
        dispersion[key] = str(model.module.dispersion)
        ema[key] = model._train_ema_decay
        timings[key] = _timing(args.max_epochs, seconds, load)
        print(f"  {seconds / args.max_epochs:.2f} s / epoch", flush=True)
        synthetic[key] = generate_priorvi(model, keys, n_cells, args.seed)
        if key == "priorvi_gaussian":
            synthetic["priorvi_gaussian_posterior"] = decode_posteriors(
                model, keys, n_cells, args.seed
            )
            for t in args.temperatures:
                METHODS[f"priorvi_gaussian_t{t:g}"] = f"{METHODS[key]}, temperature {t:g}"
                synthetic[f"priorvi_gaussian_t{t:g}"] = generate_priorvi(
                    model, keys, n_cells, args.seed, temperature=t
                )
        del model
    print(f"training {METHODS['scvi']} for {args.max_epochs} epochs...", flush=True)
    load = os.getloadavg()[0]
    model, seconds = train_scvi(train, keys, args.max_epochs, args.seed, args.scvi_likelihood)
    timings["scvi"] = _timing(args.max_epochs, seconds, load)
    synthetic["scvi"] = generate_scvi(model, keys, n_cells, args.seed)
    synthetic["resample"] = resample_training(train, keys, n_cells, args.seed)
    peer_runs = {}
    for peer in args.peers:
        from generation_peers import run_peer

        cells, peer_runs[peer] = run_peer(
            peer,
            train,
            keys,
            condition_labels(train.obs, keys).to_numpy(),
            n_cells,
            dataset=args.dataset,
            seed=args.seed,
            quick=args.quick,
            extra_args=shlex.split(args.peer_args),
        )
        synthetic.update(cells)

    tables, summaries, medians = {}, {}, {}
    for key, syn in synthetic.items():
        print(f"scoring {METHODS[key]}...", flush=True)
        df = genvi.metrics.compare_conditions(
            test,
            syn,
            keys,
            space,
            min_cells=MIN_CELLS,
            seed=args.seed,
            baseline=synthetic["scvi"],
        )
        tables[key], summaries[key] = df, genvi.metrics.summarize(df)
        medians[key] = genvi.metrics.summarize(df, statistic="median")
    attrs = dict(next(iter(tables.values())).attrs)

    machine = machine_info()
    ratio = timings["priorvi_gaussian"]["seconds_per_epoch"] / timings["scvi"]["seconds_per_epoch"]
    print()
    print(
        f"## Generation quality: {dataset}, by {' x '.join(keys)}, {args.max_epochs} epochs, "
        f"seed {args.seed} (means over {int(summaries['scvi']['n_conditions'])} conditions; "
        "scores: 0 = noise floor, 1 = scVI)"
    )
    print()
    print(quality_table(summaries))
    print()
    print("Medians over the same conditions:")
    print()
    print(quality_table(medians))
    print()
    print(
        "PriorVI decoder sees the condition: "
        + ", ".join(f"{METHODS[k]}: {v}" for k, v in decode_conditions.items())
    )
    print()
    print(f"## Training time (wall clock, batch size {BATCH_SIZE}, {train.n_obs} cells)")
    print()
    print(timing_table(timings))
    print()
    print(f"PriorVI (gaussian) / scVI seconds per epoch: {ratio:.2f}")
    print()
    print(
        f"Machine: {machine['cpu_usable']} usable CPU cores (of {machine['cpu_count']}), "
        f"torch {machine['torch']} ({machine['torch_threads']} threads), "
        f"scvi-tools {machine['scvi_tools']}, genvi {machine['genvi']}, "
        f"device: {machine['device']}, load average {machine['load_average_1_5_15min']}"
    )

    payload = {
        "benchmark": "generation",
        "dataset": dataset,
        "condition_keys": keys,
        "settings": {
            "max_epochs": args.max_epochs,
            "quick": args.quick,
            "seed": args.seed,
            "torch_threads": args.threads,
            "batch_size": BATCH_SIZE,
            "test_size": 0.2,
            "min_cells": MIN_CELLS,
            "n_train": train.n_obs,
            "n_test": test.n_obs,
            "priors": args.priors,
            "temperatures": args.temperatures,
            "held_out_cells": {str(k): int(v) for k, v in held_out.items()},
            "generated_cells": {" | ".join(k): v for k, v in n_cells.items()},
            "reference_space": {
                "n_top_genes": 2000,
                "n_comps": space.n_comps,
                "hvg_flavor": space.hvg_flavor,
                "totals_over": space.totals_over,
            },
            "priorvi": {
                key: {
                    **kwargs,
                    "decode_conditions": decode_conditions[key],
                    "n_latent": n_latent[key],
                    "gene_likelihood": likelihood[key],
                    "dispersion": dispersion[key],
                    "ema_decay": ema[key],
                }
                for key, kwargs in priorvi_kwargs.items()
            },
            "scvi": {
                "gene_likelihood": args.scvi_likelihood,
                "categorical_covariate_keys": keys,
                "n_epochs_kl_warmup": max(1, args.max_epochs // 4),
                "latent_sampling": "z ~ N(0, I); library from training cells of the condition",
            },
            "peers": peer_runs,
            "baseline_of_scores": "scvi",
            "compare_conditions_attrs": attrs,
        },
        "methods": {k: METHODS[k] for k in synthetic},
        "summaries": summaries,
        "medians": medians,
        "per_condition": tables,
        "timings": {
            **timings,
            "priorvi_gaussian_over_scvi_seconds_per_epoch": ratio,
            "over_priorvi_gaussian_seconds_per_epoch": {
                k: t["seconds_per_epoch"] / timings["priorvi_gaussian"]["seconds_per_epoch"]
                for k, t in timings.items()
            },
        },
        "machine": machine,
    }
    path = write_json(payload, args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
