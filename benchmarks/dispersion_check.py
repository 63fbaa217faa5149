"""Which inverse dispersion a latent prior on a user's scVI should decode with (issue #20).

Same split and scoring as ``latent_priors.py`` (80/20 stratified by the condition, generated
cells against the real held-out ones in a 50-PC space). One plain scVI (no conditions) and one
``LatentFlow`` on it, defaults; the flow then decodes with three dispersions:

- ``own``: the scVI model's trained ``px_r`` (``refit_dispersion=False``);
- ``refit``: every gene's refitted by maximum likelihood on the registered cells (the default
  on an scVI base, ``refit_dispersion=None`` or ``True``);
- ``checked``: ``refit_dispersion="checked"``: the refit, fitted on the cells scVI trained on,
  kept only in the gene bins (10, by mean count) where it raises the log-likelihood of scVI's
  own validation cells.

Each is scored by the held-out cells' log-likelihood per cell (one posterior draw per cell,
their own library sizes), by the generated cells (energy, classifier AUROC, variance R²,
count-shape AUROC; medians and means over conditions) and by the posterior predictive (held-out
cells encoded, decoded). Run from the repository root::

    python benchmarks/dispersion_check.py --dataset pbmc3k --max-epochs 400 --threads 1
    python benchmarks/dispersion_check.py --dataset kang --max-epochs 400 --seed 1 --threads 1

``--model-dir DIR`` saves the trained scVI + LatentFlow there and reuses them on a later run
(training is deterministic at a given seed, so a reused pair equals a retrained one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

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
    stratified_split,
    write_json,
)
from generation import DATASETS, MIN_CELLS, condition_labels  # noqa: E402
from latent_priors import (  # noqa: E402
    generate,
    posterior_predictive,
    train_latent,
    train_plain_scvi,
    with_dispersion,
)

METRICS = ["energy", "c2st_auroc", "var_r2", "count_shape_auroc"]
VARIANTS = {
    "own": "scVI's own dispersion (refit_dispersion=False)",
    "refit": "every gene refitted (default, refit_dispersion=True)",
    "checked": "refit kept where scVI's validation cells prefer it ('checked')",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, 400)
    parser.add_argument("--dataset", default="pbmc3k", choices=sorted(DATASETS))
    parser.add_argument("--model-dir", type=Path, default=None, help="save / reuse the models")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.out is None:
        name = f"dispersion_check_{args.dataset}_{args.max_epochs}ep_s{args.seed}.json"
        args.out = RESULTS_DIR / name
    return args


def held_out_log_lik(flow, cells, thetas: dict, seed: int) -> dict[str, float]:
    """Log-likelihood per cell of ``cells`` under the base decoder with each of ``thetas``."""
    from genvi.model.base._dispersion import _gene_log_lik

    adapter = flow._adapter
    loc, scale = adapter.latent_distribution(cells)
    library = np.maximum(np.asarray(cells.X.sum(1)).ravel(), 1.0)
    own = np.exp(adapter.log_dispersion.numpy())
    tables = [own if t is None else t for t in thetas.values()]
    inputs = adapter.decoder_inputs(cells)
    ll = _gene_log_lik(adapter, loc, scale, cells.X, library, inputs, tables, seed)
    return {name: float(row.sum() / cells.n_obs) for name, row in zip(thetas, ll, strict=True)}


def models(args, train, keys):
    """The plain scVI and the LatentFlow on it: trained, or loaded from ``--model-dir``."""
    import scvi

    from genvi.model import LatentFlow

    flow_dir = None if args.model_dir is None else args.model_dir / "flow"
    if flow_dir is not None and flow_dir.exists():
        return LatentFlow.load(flow_dir, adata=train.copy())
    base, _ = train_plain_scvi(train, args.max_epochs, args.seed)
    scvi.settings.seed = args.seed
    flow, _ = train_latent(LatentFlow, base, keys, None, args.seed)
    if flow_dir is not None:
        flow.save(flow_dir, overwrite=True)
    return flow


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table and write the JSON."""
    args = parse_args(argv)
    dataset, keys = DATASETS[args.dataset]
    adata = load_dataset(args.data_dir, dataset)

    import genvi

    quiet()
    if args.threads is not None:
        set_threads(args.threads)
    for key in keys:
        adata.obs[key] = adata.obs[key].astype(str).astype("category")
    labels = condition_labels(adata.obs, keys)
    train_idx, test_idx = stratified_split(labels, test_size=0.2, seed=args.seed)
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    held = condition_labels(test.obs, keys).value_counts().sort_index()
    n_cells = {tuple(str(c).split(" | ")): int(n) for c, n in held.items() if n >= MIN_CELLS}
    space = genvi.metrics.ReferenceSpace.fit(train, n_top_genes=2000, n_comps=50, seed=args.seed)
    flow = models(args, train, keys)
    loc, scale = flow._adapter.latent_distribution(flow.adata)
    checked, report = flow._checked_dispersion(loc, scale, args.seed)
    thetas = {"own": None, "refit": flow._fit_dispersion(loc, scale, args.seed), "checked": checked}

    log_lik = held_out_log_lik(flow, test, thetas, args.seed)
    results = {}
    for name, theta in thetas.items():
        row: dict[str, Any] = {"held_out_log_lik": log_lik[name]}
        syn = with_dispersion(flow, theta, lambda: generate(flow, keys, n_cells, args.seed))
        pp = with_dispersion(flow, theta, lambda: posterior_predictive(flow, test, keys, args.seed))
        for tag, cells in (("generated", syn), ("posterior_predictive", pp)):
            df = genvi.metrics.compare_conditions(
                test, cells, keys, space, min_cells=MIN_CELLS, seed=args.seed
            )
            med, mean = (genvi.metrics.summarize(df, statistic=s) for s in ("median", "mean"))
            row[tag] = {m: {"median": float(med[m]), "mean": float(mean[m])} for m in METRICS}
        results[name] = row

    header = ["dispersion", "held-out log-lik / cell"] + [
        f"{tag} {m} (median)" for tag in ("gen", "pp") for m in ("energy", "c2st_auroc")
    ]
    rows = [
        [VARIANTS[k], r["held_out_log_lik"]]
        + [r[t][m]["median"] for t in ("generated", "posterior_predictive") for m in METRICS[:2]]
        for k, r in results.items()
    ]
    title = f"LatentFlow on a plain scVI, {dataset}, {args.max_epochs} epochs, seed {args.seed}"
    print(f"\n## {title}\n")
    print(markdown_table(header, rows))
    kept = sum(report.get("refitted", []))
    print(f"\nchecked refit kept in {kept} of {len(report.get('refitted', []))} gene bins")
    payload = {
        "benchmark": "dispersion_check",
        "dataset": dataset,
        "condition_keys": keys,
        "settings": {
            "max_epochs": args.max_epochs,
            "seed": args.seed,
            "torch_threads": args.threads,
            "n_train": train.n_obs,
            "n_test": test.n_obs,
        },
        "variants": VARIANTS,
        "results": results,
        "check_report": report,
        "machine": machine_info(),
    }
    print(f"\nwrote {write_json(payload, args.out)}")
    return payload


if __name__ == "__main__":
    main()
