"""Outlier detection on PBMC3k and Kang 8 donors (BENCHMARKS.md, "Uncertainty and likelihood").

Split the cells 80/20 stratified by cell type (``cell_type_coarse`` on pbmc3k, ``cell_type``
on ``kang_ctrl_8donors.h5ad``, control cells only). For every cell type with at least 30
cells in turn, train an *unconditional* PriorVI (``setup_anndata`` without condition keys, so
that cells of any type can be scored) on the training split without that cell type, then score
all held-out cells:

- ``score_outliers``: the models' default score (``kind="expression"``, ``space="joint"``,
  ``enrichment=True``): the mean Euclidean distance from the cell to its 10 nearest training
  cells (the model's own training cells, validation cells excluded) in the first 10
  principal components of log-normalised expression (2,000 highly variable genes) fitted on
  the training cells and all held-out cells together (they are scored in one call);
  nearest-neighbour out-of-distribution detection, Sun et al. 2022; times the local
  enrichment of held-out cells: their share among the cell's 50 nearest neighbours in the
  training and held-out cells pooled, over their overall share (both plus 1/50);
- ``expression_distance``: ``score_outliers(enrichment=False)``, the distance alone (the
  default from December 3 2026 until the enrichment);
- ``expression_training``: ``score_outliers(space="training", enrichment=False)``, the same
  distance in a space fitted on the training cells alone (the default before December 3
  2026); the ``pca_knn_10`` baseline below with the model's reference cells;
- ``latent_knn``: ``score_outliers(kind="knn")``, the enriched distance between latent
  posterior means; ``latent_knn_distance`` the distance alone (``enrichment=False``, the
  default before December 3 2026, reported as ``score_outliers`` then);
- ``per_count``: ``score_outliers(kind="per_count")``, -log p(x) per count (the default
  before December 2026);
- ``-get_log_likelihood``: the raw negative log-likelihood (grows with sequencing depth),
  recovered from the same estimate as ``per_count`` (its value times the total counts);
- library size alone (total counts), a depth-only reference for the raw likelihood;
- ``latent_overlap`` (a candidate of issue #15, computed here, not a model method): the
  -log overlap of the cell's posterior q(z | x) with the aggregated posterior of the training
  cells, ``-log 1/N sum_i N(mu_x; mu_i, diag(sigma_i^2 + sigma_x^2))``; no fit, no
  bandwidth, depth enters only through the posterior widths (results before December 2026
  squared the variances that ``get_latent_representation(return_dist=True)`` returns, i.e.
  used sigma^4: a sharper kernel);
- ``pca_knn_10`` / ``pca_knn_50`` (model-free baselines, no genvi model involved): the same
  10-NN distance in the first 10 / 50 components of the reference PCA space of the generation
  benchmarks (``genvi.metrics.ReferenceSpace``: 2,000 highly variable genes, counts scaled to
  1e4 per cell, ``log1p``, PCA), fitted on the training cells; 10 components as many as the
  model's latent, 50 scanpy's default. Computed once per left-out type, whatever the priors;
- ``decoded_knn_10`` (a candidate of issue #15, computed here, not a model method): the same
  10-NN distance in the first 10 components of that same space, but between the model's
  *decoded* expression profiles (the decoder's normalised mean at the posterior mean latent)
  of the held-out cells and of the model's training cells: the latent distance with the
  decoder's geometry instead of Euclidean distance in z.

Reported: AUROC of "held-out cells of the left-out type" (positives) vs "held-out cells of the
other types" (negatives), per left-out type and the mean. ``auroc_unseen_2pct``: the two
expression scores (with and without enrichment) when the scored cells hold only a random 2 %
share of the left-out type's cells (at least 3), the other held-out cells all kept: the
transductive parts (joint space, enrichment) need the unseen cells to be visible among the
scored ones.

``--models disentvi,latentflow,latentdiffusion`` adds, per left-out type, the other models'
scores (``other_models`` in the JSON, its own table): a DisentVI trained on the same cells with
the cell type as its one known attribute (the left-out type is not among its labels; the scored
cells' labels are removed, as a user's new cells would have none), and a LatentFlow and a
LatentDiffusion trained on the PriorVI above (``--prior-epochs``, default the models' own
~10,000 steps). For each: ``score_outliers`` (default), ``expression_distance``, ``latent_knn``
and ``latent_knn_distance``, and the latent priors' ``latent_density``
(``score_outliers(kind="latent")``, LatentFlow's -log p_flow(z) at the posterior mean). Run
from the repository root::

    python benchmarks/outliers.py --threads 1                  # writes results/
    python benchmarks/outliers.py --threads 1 --dataset kang   # Kang 8 donors
    python benchmarks/outliers.py --priors gaussian,mog --max-epochs 30
    python benchmarks/outliers.py --threads 1 --models disentvi,latentflow,latentdiffusion \
        --out benchmarks/results/outliers_pbmc3k_models.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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

DATASETS = {
    "pbmc3k": ("pbmc3k_labeled.h5ad", "cell_type_coarse"),
    "kang": ("kang_ctrl_8donors.h5ad", "cell_type"),
}
MIN_CELLS = 30
BATCH_SIZE = 128
DEFAULT_EPOCHS = 50
KNN_K = 10
#: share of the scored cells that the unseen type keeps in the rare-unseen rerun
RARE_SHARE = 0.02
#: scores of the rare-unseen rerun
RARE_SCORES = {
    "score_outliers": {},
    "expression_unmatched": {"match_depth": False},
    "expression_distance": {"enrichment": False, "match_depth": False},
}
#: depth check: half of the known held-out cells also scored with their counts thinned to this
THIN_SHARE = 0.25
PCA_COMPONENTS = (10, 50)
SCORES = {
    "score_outliers": (
        f"score_outliers() (expression PCA-10 {KNN_K}-NN distance, depth-matched, joint space, "
        "enrichment)"
    ),
    "expression_unmatched": "score_outliers(match_depth=False) (no thinning)",
    "expression_distance": (
        "score_outliers(enrichment=False, match_depth=False) (joint space, distance only)"
    ),
    "expression_training": (
        "score_outliers(space='training', enrichment=False, match_depth=False) (PCA of training "
        "cells only)"
    ),
    "latent_knn": f"score_outliers(kind='knn') (latent {KNN_K}-NN distance, enrichment)",
    "latent_knn_distance": "score_outliers(kind='knn', enrichment=False) (distance only)",
    "per_count": "score_outliers(kind='per_count') (-log p per count)",
    "neg_log_likelihood": "-get_log_likelihood",
    "library_size": "library size only",
    "latent_overlap": "latent overlap (candidate)",
    **{f"pca_knn_{n}": f"PCA-{n} {KNN_K}-NN distance (baseline, no model)" for n in PCA_COMPONENTS},
    "decoded_knn_10": f"decoded expression, PCA-10 {KNN_K}-NN distance (candidate)",
}


#: models --models can add beside the PriorVI of every left-out type
OTHER_MODELS = ("disentvi", "latentflow", "latentdiffusion")
#: scores of the other models (their ``kind="latent"`` only where they offer it)
OTHER_SCORES = {
    "score_outliers": "score_outliers() (default)",
    "expression_distance": "score_outliers(enrichment=False)",
    "latent_knn": "score_outliers(kind='knn')",
    "latent_knn_distance": "score_outliers(kind='knn', enrichment=False)",
    "latent_density": "score_outliers(kind='latent') (-log p_flow(z))",
}


def latent_overlap(mu_q, var_q, mu_r, var_r) -> np.ndarray:
    """-log of the overlap of each query cell's q(z | x) with the training aggregated posterior.

    ``mu_*`` / ``var_*``: what ``get_latent_representation(..., return_dist=True)`` returns for
    the query (``q``) and training (``r``) cells (posterior means and *variances*).
    """
    from scipy.special import logsumexp

    out = np.empty(len(mu_q))
    for start in range(0, len(mu_q), 128):
        m = mu_q[start : start + 128, None, :].astype(np.float64)
        v = var_r[None] + var_q[start : start + 128, None, :]  # (b, N, d)
        log_n = -0.5 * (((m - mu_r[None]) ** 2 / v).sum(-1) + np.log(2 * np.pi * v).sum(-1))
        out[start : start + 128] = -(logsumexp(log_n, axis=1) - np.log(len(mu_r)))
    return out


def knn_distance(mu_q: np.ndarray, mu_r: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Mean distance from each query posterior mean (``mu_q``) to its ``k`` nearest in ``mu_r``."""
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=k).fit(mu_r).kneighbors(mu_q)
    return dist.mean(1)


def decoded_profiles(model: Any, cells: Any) -> Any:
    """AnnData of the decoder's normalised mean expression at each cell's posterior mean."""
    import anndata
    import scipy.sparse as sp
    import torch
    from scvi import REGISTRY_KEYS

    module = model.module
    module.eval()
    out = []
    with torch.inference_mode():
        for tensors in model._make_data_loader(adata=cells, batch_size=256):
            inf = module.inference(
                tensors[REGISTRY_KEYS.X_KEY], tensors.get("cond_cat"), tensors.get("cond_cont")
            )
            # log library 0: the decoder's per-cell proportions (the space rescales anyway)
            px = module.decode(
                inf["qz"].loc,
                inf["c"],
                torch.zeros_like(inf["library"]),
                tensors[REGISTRY_KEYS.BATCH_KEY],
            )
            out.append(px.mean.cpu().numpy() * 1e4)
    return anndata.AnnData(sp.csr_matrix(np.concatenate(out)), var=cells.var[[]])


def pca_knn(query: Any, reference: Any) -> tuple[dict[str, np.ndarray], Any]:
    """10-NN distances of ``query`` to ``reference`` in the benchmarks' reference PCA space.

    One :class:`genvi.metrics.ReferenceSpace` (the space every generation benchmark uses: HVGs,
    log-normalised, PCA) fitted on the reference cells only, as a model trained on them would
    be; ``pca_knn_<n>`` uses its first ``n`` components. Also returns that fitted space, which
    :func:`run_one` reuses for ``decoded_knn_10``.
    """
    from genvi.metrics import ReferenceSpace

    space = ReferenceSpace.fit(reference, n_comps=max(PCA_COMPONENTS), seed=0)
    qry, ref = space.transform(query), space.transform(reference)
    scores = {f"pca_knn_{n}": knn_distance(qry[:, :n], ref[:, :n]) for n in PCA_COMPONENTS}
    return scores, space


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, DEFAULT_EPOCHS)
    parser.add_argument("--dataset", default="pbmc3k", choices=sorted(DATASETS))
    parser.add_argument(
        "--priors",
        default="gaussian",
        help="comma list of PriorVI priors, one model per left-out type each (default gaussian)",
    )
    parser.add_argument(
        "--n-samples",
        type=int,
        default=50,
        help="importance samples per cell of the log-likelihood estimate (default 50)",
    )
    parser.add_argument(
        "--cell-types",
        default=None,
        help="comma list of cell types to leave out (default: all with >= 30 cells)",
    )
    parser.add_argument(
        "--models",
        default="",
        help=f"comma list of models to score beside PriorVI, of {list(OTHER_MODELS)}",
    )
    parser.add_argument(
        "--prior-epochs",
        type=int,
        default=None,
        help="epochs of LatentFlow / LatentDiffusion (default: the models' own, ~10,000 steps)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON output (default: benchmarks/results/outliers_<dataset>.json)",
    )
    args = parser.parse_args(argv)
    args.models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(OTHER_MODELS))
    if unknown:
        parser.error(f"unknown --models {unknown}; choose from {list(OTHER_MODELS)}")
    args.filename, args.cell_type_key = DATASETS[args.dataset]
    if args.out is None:
        args.out = RESULTS_DIR / f"outliers_{args.dataset}.json"
    args.priors = [p.strip() for p in args.priors.split(",") if p.strip()]
    return args


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC of ``scores`` for ``positive`` (higher score = more likely positive)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive.astype(int), scores))


def thin_counts(cells: Any, share: float, seed: int) -> Any:
    """A copy of ``cells`` with every count binomially thinned to ``share`` (renamed cells)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    out = cells.copy()
    X = sp.csr_matrix(out.X, dtype=np.float64)
    X.data = rng.binomial(np.rint(X.data).astype(np.int64), share).astype(np.float64)
    X.eliminate_zeros()
    out.X = X
    out.obs_names = [f"{name}-thinned" for name in out.obs_names]
    return out


def depth_check(model: Any, test: Any, positive: np.ndarray, seed: int) -> dict[str, Any]:
    """AUROCs with half of the known held-out cells also scored thinned to ``THIN_SHARE``.

    ``thinned_vs_original``: the thinned copies against their own originals (0.5: depth does
    not move the score); ``unseen``: the left-out type against all other scored cells, thinned
    copies included. For the default and for ``match_depth=False``, one call each.
    """
    import anndata

    rng = np.random.default_rng(seed)
    known = np.flatnonzero(~positive)
    half = np.sort(rng.choice(known, len(known) // 2, replace=False))
    cells = anndata.concat([test, thin_counts(test[half], THIN_SHARE, seed)])
    is_thinned = np.r_[np.zeros(test.n_obs, bool), np.ones(len(half), bool)]
    pair = np.r_[np.isin(np.arange(test.n_obs), half), np.ones(len(half), bool)]
    unseen = np.r_[positive, np.zeros(len(half), bool)]
    out: dict[str, Any] = {"n_thinned": len(half)}
    for name, kw in (("score_outliers", {}), ("expression_unmatched", {"match_depth": False})):
        scores = model.score_outliers(cells, n_neighbors=KNN_K, **kw)
        out[name] = {
            "thinned_vs_original": auroc(scores[pair], is_thinned[pair]),
            "unseen": auroc(scores, unseen),
        }
    return out


def rare_unseen_subset(positive: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Sorted rows keeping every negative and a random ``share`` of the scored cells positive.

    At least 3 positives, at most all of them.
    """
    rng = np.random.default_rng(seed)
    neg, pos = np.flatnonzero(~positive), np.flatnonzero(positive)
    n_pos = max(3, int(round(share * len(neg) / (1 - share))))
    pos = rng.choice(pos, min(n_pos, len(pos)), replace=False)
    return np.sort(np.concatenate([neg, pos]))


def model_scores(model: Any, query: Any, positive: np.ndarray) -> dict[str, float]:
    """AUROCs of a trained model's outlier scores of ``query`` (see :data:`OTHER_SCORES`)."""
    kinds = {
        "score_outliers": {},
        "expression_distance": {"enrichment": False},
        "latent_knn": {"kind": "knn"},
        "latent_knn_distance": {"kind": "knn", "enrichment": False},
        "latent_density": {"kind": "latent"},
    }
    return {
        name: auroc(model.score_outliers(query, n_neighbors=KNN_K, **kw), positive)
        for name, kw in kinds.items()
        if kw.get("kind", "expression") in model._outlier_kinds
    }


def other_models(
    priorvi: Any, sub: Any, query: Any, positive: np.ndarray, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    """Train the ``--models`` on the PriorVI's cells (or on the PriorVI) and score ``query``."""
    import scvi

    from genvi.model import DisentVI, LatentDiffusion, LatentFlow

    out: dict[str, dict[str, Any]] = {}
    for name in args.models:
        scvi.settings.seed = args.seed
        if name == "disentvi":
            cells = sub.copy()
            DisentVI.setup_anndata(cells, categorical_attributes=[args.cell_type_key])
            model = DisentVI(cells)
            train_kw = {"max_epochs": args.max_epochs, "batch_size": BATCH_SIZE}
            scored = query.copy()
            # a user's new cells carry no label of the type the model never saw
            scored.obs[args.cell_type_key] = np.nan
        else:
            cls = LatentFlow if name == "latentflow" else LatentDiffusion
            model = cls.from_model(priorvi)
            train_kw = {"max_epochs": args.prior_epochs}
            scored = query
        _, train_s = timed(partial(model.train, enable_progress_bar=False, **train_kw))
        scores, score_s = timed(partial(model_scores, model, scored, positive))
        out[name] = {"auroc": scores, "train_seconds": train_s, "score_seconds": score_s}
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
    return out


def run_one(
    train: Any,
    test: Any,
    left_out: str,
    prior: str,
    args: argparse.Namespace,
    baselines: dict[str, np.ndarray],
    space: Any,
) -> dict[str, Any]:
    """Train without ``left_out`` and score the held-out cells; AUROCs and timings.

    ``baselines``, ``space``: model-free scores of the held-out cells and the reference space
    they were computed in (:func:`pca_knn`), reported beside / reused for ``decoded_knn_10``.
    """
    import scvi
    import torch

    from genvi.model import PriorVI

    sub = train[train.obs[args.cell_type_key].astype(str) != left_out].copy()
    scvi.settings.seed = args.seed
    PriorVI.setup_anndata(sub)
    model = PriorVI(sub, prior=prior)
    _, train_s = timed(
        lambda: model.train(
            max_epochs=args.max_epochs, batch_size=BATCH_SIZE, enable_progress_bar=False
        )
    )
    query = test.copy()
    score, score_s = timed(lambda: model.score_outliers(query, n_neighbors=KNN_K))
    unmatched = model.score_outliers(query, n_neighbors=KNN_K, match_depth=False)
    distance = model.score_outliers(query, n_neighbors=KNN_K, enrichment=False, match_depth=False)
    training_space = model.score_outliers(
        query, n_neighbors=KNN_K, space="training", enrichment=False, match_depth=False
    )
    latent = model.score_outliers(query, kind="knn", n_neighbors=KNN_K)
    latent_distance = model.score_outliers(query, kind="knn", n_neighbors=KNN_K, enrichment=False)
    torch.manual_seed(args.seed)
    per_count, per_count_s = timed(
        lambda: model.score_outliers(query, kind="per_count", n_samples=args.n_samples)
    )
    # the default score's reference: the model's training cells, validation cells excluded
    reference = sub[model._reference_indices()].copy()
    dec_q, dec_r = (space.transform(decoded_profiles(model, c))[:, :10] for c in (query, reference))
    decoded = knn_distance(dec_q, dec_r)
    positive = test.obs[args.cell_type_key].astype(str).to_numpy() == left_out
    rare = rare_unseen_subset(positive, RARE_SHARE, args.seed)
    rare_query = test[rare].copy()
    rare_aurocs = {
        name: auroc(model.score_outliers(rare_query, n_neighbors=KNN_K, **kw), positive[rare])
        for name, kw in RARE_SCORES.items()
    }
    depth = depth_check(model, test, positive, args.seed)
    library = np.asarray(test.X.sum(1)).ravel()
    # per_count is -get_log_likelihood / max(total counts, 1): undo the division rather
    # than run the importance sampler a second time (same Monte Carlo samples for both scores).
    ll = -per_count * np.maximum(library, 1.0)
    start = time.perf_counter()
    (mu_q, var_q), (mu_r, var_r) = (
        model.get_latent_representation(cells, give_mean=True, return_dist=True)
        for cells in (query, sub)
    )
    overlap = latent_overlap(mu_q, var_q, mu_r, var_r)
    overlap_s = time.perf_counter() - start  # encoding included, as before
    values = {
        "score_outliers": score,
        "expression_unmatched": unmatched,
        "expression_distance": distance,
        "expression_training": training_space,
        "latent_knn": latent,
        "latent_knn_distance": latent_distance,
        "per_count": per_count,
        "neg_log_likelihood": -ll,
        "library_size": library,
        "latent_overlap": overlap,
        **baselines,
        "decoded_knn_10": decoded,
    }
    extra = other_models(model, sub, query, positive, args) if args.models else None
    return {
        "left_out": left_out,
        "prior": prior,
        "n_train": sub.n_obs,
        "n_positive": int(positive.sum()),
        "n_negative": int((~positive).sum()),
        "auroc": {k: auroc(v, positive) for k, v in values.items()},
        "n_positive_2pct": int(positive[rare].sum()),
        "auroc_unseen_2pct": rare_aurocs,
        "n_thinned": depth.pop("n_thinned"),
        "depth_check": depth,
        "median_score_outliers": {
            "left_out": float(np.median(score[positive])),
            "others": float(np.median(score[~positive])),
        },
        "train_seconds": train_s,
        "seconds_per_epoch": train_s / args.max_epochs,
        "score_seconds": score_s,
        "per_count_seconds": per_count_s,
        "latent_overlap_seconds": overlap_s,
        "load_average_1min_after": os.getloadavg()[0],
        **({"other_models": extra} if extra is not None else {}),
    }


def other_model_table(
    results: list[dict[str, Any]], args: argparse.Namespace
) -> tuple[list[list[Any]], dict[str, dict[str, dict[str, float]]]]:
    """Rows (per prior, type and ``--models`` model, then means) and the means per prior."""
    rows: list[list[Any]] = []
    means: dict[str, dict[str, dict[str, float]]] = {}
    for prior in args.priors:
        sel = [r for r in results if r["prior"] == prior and "other_models" in r]
        for name in args.models:
            for r in sel:
                got = r["other_models"][name]["auroc"]
                rows.append([prior, r["left_out"], name] + [got.get(k, "") for k in OTHER_SCORES])
            means.setdefault(prior, {})[name] = {
                k: float(np.mean([r["other_models"][name]["auroc"][k] for r in sel]))
                for k in OTHER_SCORES
                if sel and k in sel[0]["other_models"][name]["auroc"]
            }
            rows.append(
                [prior, "**mean**", name] + [means[prior][name].get(k, "") for k in OTHER_SCORES]
            )
    return rows, means


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write the JSON."""
    args = parse_args(argv)
    adata = load_dataset(args.data_dir, args.filename)

    import scvi

    quiet()
    if args.threads is not None:
        set_threads(args.threads)
    scvi.settings.seed = args.seed
    labels = adata.obs[args.cell_type_key].astype(str)
    train_idx, test_idx = stratified_split(labels, test_size=0.2, seed=args.seed)
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    counts = labels.value_counts()
    left_out_types = sorted(c for c, n in counts.items() if n >= MIN_CELLS)
    if args.cell_types:
        wanted = [c.strip() for c in args.cell_types.split(",")]
        left_out_types = [c for c in left_out_types if c in wanted]
    print(
        f"{args.filename}: {adata.n_obs} cells x {adata.n_vars} genes; train {train.n_obs}, "
        f"test {test.n_obs}; left-out types (>= {MIN_CELLS} cells): {left_out_types}",
        flush=True,
    )

    results: list[dict[str, Any]] = []
    # model-free scores and their fitted space: once per left-out type
    baselines: dict[str, tuple[dict[str, np.ndarray], Any]] = {}
    for prior in args.priors:
        for cell_type in left_out_types:
            print(f"{prior}: leaving out {cell_type!r}...", flush=True)
            if cell_type not in baselines:
                keep = train.obs[args.cell_type_key].astype(str) != cell_type
                baselines[cell_type] = pca_knn(test, train[keep.to_numpy()])
            res = run_one(train, test, cell_type, prior, args, *baselines[cell_type])
            print(
                "  AUROC "
                + ", ".join(f"{k} {v:.3f}" for k, v in res["auroc"].items())
                + f" ({res['seconds_per_epoch']:.2f} s / epoch)",
                flush=True,
            )
            results.append(res)

    header = ["prior", "left-out type", "held-out cells (type / others)"] + list(SCORES.values())
    rows = [
        [r["prior"], r["left_out"], f"{r['n_positive']} / {r['n_negative']}"]
        + [r["auroc"][k] for k in SCORES]
        for r in results
    ]
    means: dict[str, dict[str, float]] = {}
    for prior in args.priors:
        sel = [r for r in results if r["prior"] == prior]
        means[prior] = {k: float(np.mean([r["auroc"][k] for r in sel])) for k in SCORES}
        rows.append([prior, "**mean**", ""] + [means[prior][k] for k in SCORES])
    rare_keys = tuple(RARE_SCORES)
    rare_rows = [
        [r["prior"], r["left_out"], f"{r['n_positive_2pct']} / {r['n_negative']}"]
        + [r["auroc_unseen_2pct"][k] for k in rare_keys]
        for r in results
    ]
    rare_means: dict[str, dict[str, float]] = {}
    for prior in args.priors:
        sel = [r for r in results if r["prior"] == prior]
        rare_means[prior] = {
            k: float(np.mean([r["auroc_unseen_2pct"][k] for r in sel])) for k in rare_keys
        }
        rare_rows.append([prior, "**mean**", ""] + [rare_means[prior][k] for k in rare_keys])
    depth_keys = [
        (k, m)
        for k in ("score_outliers", "expression_unmatched")
        for m in ("thinned_vs_original", "unseen")
    ]
    depth_rows = [
        [r["prior"], r["left_out"], r["n_thinned"]]
        + [r["depth_check"][k][m] for k, m in depth_keys]
        for r in results
    ]
    depth_means: dict[str, dict[str, dict[str, float]]] = {}
    for prior in args.priors:
        sel = [r for r in results if r["prior"] == prior]
        depth_means[prior] = {}
        for k, m in depth_keys:
            depth_means[prior].setdefault(k, {})[m] = float(
                np.mean([r["depth_check"][k][m] for r in sel])
            )
        depth_rows.append(
            [prior, "**mean**", ""] + [depth_means[prior][k][m] for k, m in depth_keys]
        )
    other_rows, other_means = other_model_table(results, args)
    machine = machine_info()
    print()
    print(
        f"## Outlier detection: {args.filename}, leave one {args.cell_type_key} out, "
        "unconditional PriorVI, "
        f"{args.max_epochs} epochs, {args.n_samples} importance samples, seed {args.seed} "
        "(AUROC of left-out type vs other held-out cells; 0.5 = chance)"
    )
    print()
    print(markdown_table(header, rows))
    print()
    print(f"### The unseen type at {RARE_SHARE:.0%} of the scored cells (same models)")
    print()
    print(
        markdown_table(
            ["prior", "left-out type", "scored cells (type / others)"]
            + [SCORES[k] for k in rare_keys],
            rare_rows,
        )
    )
    print()
    print(
        f"### Depth: half of the known held-out cells also scored with {THIN_SHARE:.0%} of "
        "their counts (AUROC thinned copies vs their originals, 0.5 = depth-blind; unseen type "
        "vs all others)"
    )
    print()
    print(
        markdown_table(
            ["prior", "left-out type", "thinned cells"]
            + [f"{k}: {m.replace('_', ' ')}" for k, m in depth_keys],
            depth_rows,
        )
    )
    if other_rows:
        print()
        print("### Other models (`--models`), the same left-out types and scored cells")
        print()
        print(
            markdown_table(
                ["prior of the PriorVI", "left-out type", "model"] + list(OTHER_SCORES.values()),
                other_rows,
            )
        )
    print()
    print(
        f"Machine: {machine['cpu_usable']} usable CPU cores (of {machine['cpu_count']}), "
        f"torch {machine['torch']} ({machine['torch_threads']} threads), "
        f"scvi-tools {machine['scvi_tools']}, genvi {machine['genvi']}, "
        f"device: {machine['device']}, load average {machine['load_average_1_5_15min']}"
    )
    payload = {
        "benchmark": "outliers",
        "dataset": args.filename,
        "cell_type_key": args.cell_type_key,
        "settings": {
            "max_epochs": args.max_epochs,
            "priors": args.priors,
            "n_samples": args.n_samples,
            "seed": args.seed,
            "torch_threads": args.threads,
            "batch_size": BATCH_SIZE,
            "test_size": 0.2,
            "min_cells": MIN_CELLS,
            "rare_share": RARE_SHARE,
            "depth_check_thin_share": THIN_SHARE,
            "pca_baseline": "genvi.metrics.ReferenceSpace.fit(training cells, n_comps="
            f"{max(PCA_COMPONENTS)}), first {PCA_COMPONENTS} components, {KNN_K}-NN",
            "conditioning": "none (PriorVI.setup_anndata without condition keys)",
            "models": ["priorvi", *args.models],
            "prior_epochs": args.prior_epochs,
            "n_train": train.n_obs,
            "n_test": test.n_obs,
            "cell_type_counts": {str(k): int(v) for k, v in counts.items()},
        },
        "scores": SCORES,
        "mean_auroc": means,
        "mean_auroc_unseen_2pct": rare_means,
        "mean_depth_check": depth_means,
        **({"mean_auroc_other_models": other_means} if args.models else {}),
        "per_left_out_type": pd.DataFrame(results).to_dict(orient="records"),
        "machine": machine,
    }
    path = write_json(payload, args.out)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
