"""Response transfer without a model: how to weigh the other cell types' responses.

The probe behind ``transfer_method`` (``DisentVI.predict_counterfactual``, issue #14). On
Kang IFN-beta, each cell type's stimulated cells are held out in turn; the held-out type's
response is predicted from the other types' real responses (mean log-normalised stimulated
minus control expression, pseudo-bulk) by :func:`genvi.model.base.transfer_response` on
their control pseudo-bulk profiles (2,000 most variable genes, chosen without the held-out
cells), added to each real control cell of the held-out type on the ``log1p`` scale (the
additive baseline's construction) and scored against the real stimulated cells by
:func:`genvi.metrics.counterfactual_scores` (top-20 DEG mean R², Pearson delta on the
top-100 DEGs). Rows: the plain mean response (the additive baseline), kernel ridge (ridge
by leave-one-type-out among the sources), the simplex (synthetic control), and the simplex
with each source's decreases taken as fractions of its own control level and applied to the
held-out type's (``transfer_response(levels=..., target_level=...)``). Two more rows are
ceilings, not methods: they choose the weights *with the held-out type's own response*
(least squares on its top-20 DEGs, the genes of the top-20 scores, ranked by
:func:`genvi.metrics.rank_degs` as the scores rank them): the best mix on the simplex
(decreases as fractions, as above), and the best non-negative combination of any total size
(a "cone", which can also scale the sources' responses up). No weighting of the other types'
responses chosen from their profiles can beat the first; a method that only rescales and
mixes them cannot beat the second. Two more rows measure the response on another scale:
``plog``, the same simplex with each source's response taken as the change of ``log1p`` of its
pseudo-bulk mean (counts per 10,000) instead of the change of its mean ``log1p`` (a gene that
only some cells of a type induce moves the mean ``log1p`` less than the ``log1p`` of the mean),
and ``stacked``, a non-negative combination of the default's and ``plog``'s responses whose two
coefficients are fitted with the sources alone: each source in turn is predicted from the
others both ways and the coefficients fit its real response on its ``--stack-genes`` largest
responses (least squares over the sources); the held-out type's response is never used. No
training:
it isolates the weighting from the model, so it runs in seconds on every type of
``kang_ifnb_muscat_subset.h5ad`` (5 types) and ``kang_ifnb_harmony_2k.h5ad`` (8 types; every
stimulated cell there has a transferred label, so all cells are scored).

Run from the repository root::

    python benchmarks/transfer_probe.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    RESULTS_DIR,
    default_data_dir,
    load_dataset,
    machine_info,
    markdown_table,
    quiet,
    set_threads,
    write_json,
)
from counterfactual import (  # noqa: E402
    CELL_TYPE,
    CONDITION,
    STIMULATED,
    _dense,
    _log_norm,
    shifted_control,
)
from genvi.model.base._response_transfer import STACK_GENES  # noqa: E402

FILES = ("kang_ifnb_muscat_subset.h5ad", "kang_ifnb_harmony_2k.h5ad")
N_GENES = 2000
METHODS = {
    "mean": "mean response",
    "ridge": "kernel ridge",
    "simplex": "simplex",
    "fraction": "simplex, decreases as fractions",
    "plog": "simplex, log1p of the mean",
    "stacked": "stacked on the sources",
    "oracle_simplex": "ceiling: best simplex mix",
    "oracle_cone": "ceiling: best non-negative combination",
}
#: DEGs of the held-out type on which the ceilings' weights are fitted
ORACLE_GENES = 20


def oracle_weights(responses: np.ndarray, observed: np.ndarray, simplex: bool) -> np.ndarray:
    """Non-negative weights of the sources' responses nearest the observed response.

    ``simplex=True``: also summing to one, by the solver the transfer uses for the profiles.
    """
    from genvi.model.base._response_transfer import _simplex_weights

    return _simplex_weights(observed, responses) if simplex else nnls(responses.T, observed)[0]


def probe(adata, stack_genes: int = STACK_GENES) -> dict[str, dict[str, dict[str, float]]]:
    """Scores of every held-out type and weighting, ``{type: {method: scores}}``."""
    from genvi.metrics import counterfactual_scores, rank_degs
    from genvi.model.base import stack_responses, transfer_response
    from genvi.model.base._response_transfer import _fractional_decreases

    x = _dense(adata.X)
    y = _log_norm(x)
    per_10k = x / np.maximum(x.sum(1, keepdims=True), 1.0) * 1e4
    types_of = adata.obs[CELL_TYPE].astype(str).to_numpy()
    stim = (adata.obs[CONDITION] == STIMULATED).to_numpy()
    types = sorted(set(types_of))
    ctrl_mean = {t: y[(types_of == t) & ~stim].mean(0) for t in types}
    stim_mean = {t: y[(types_of == t) & stim].mean(0) for t in types}
    # log1p of the pseudo-bulk mean: a gene induced in only some of a type's cells moves it
    # more than the mean log1p
    ctrl_log_mean = {t: np.log1p(per_10k[(types_of == t) & ~stim].mean(0)) for t in types}
    stim_log_mean = {t: np.log1p(per_10k[(types_of == t) & stim].mean(0)) for t in types}
    response = {t: stim_mean[t] - ctrl_mean[t] for t in types}
    log_mean_response = {t: stim_log_mean[t] - ctrl_log_mean[t] for t in types}
    out = {}
    for held in types:
        others = [t for t in types if t != held]
        keep = ~((types_of == held) & stim)
        genes = np.argsort(-y[keep].var(0))[:N_GENES]
        profiles = np.stack([ctrl_mean[t][genes] for t in others])
        responses = np.stack([response[t] for t in others])
        target = ctrl_mean[held][genes]
        shifts = {"mean": (responses.mean(0), None)}
        for method in ("ridge", "simplex"):
            fit = transfer_response(target, profiles, responses, method=method)
            shifts[method] = (fit.response, dict(zip(others, fit.weights.round(3).tolist())))
        # the same simplex, each source's decrease taken as a fraction of its own level
        levels = np.stack([ctrl_mean[t] for t in others])
        fit = transfer_response(
            target, profiles, responses, levels=levels, target_level=ctrl_mean[held]
        )
        shifts["fraction"] = (fit.response, dict(zip(others, fit.weights.round(3).tolist())))
        # the same simplex on log1p of the mean, and the two stacked (fitted on the sources)
        log_mean_responses = np.stack([log_mean_response[t] for t in others])
        log_mean_levels = np.stack([ctrl_log_mean[t] for t in others])
        fit = transfer_response(
            target,
            profiles,
            log_mean_responses,
            levels=log_mean_levels,
            target_level=ctrl_log_mean[held],
        )
        shifts["plog"] = (fit.response, dict(zip(others, fit.weights.round(3).tolist())))
        fit, coef = stack_responses(
            target,
            profiles,
            responses,
            levels,
            ctrl_mean[held],
            log_mean_responses,
            log_mean_levels,
            ctrl_log_mean[held],
            n_genes=stack_genes,
        )
        shifts["stacked"] = (
            fit.response,
            {"fraction": round(float(coef[0]), 3), "plog": round(float(coef[1]), 3)},
        )
        ctrl, observed = adata[(types_of == held) & ~stim], adata[(types_of == held) & stim]
        # ceilings: weights fitted on the held-out type's own response (its top DEGs)
        degs = rank_degs(ctrl, observed)["rank"].to_numpy()
        top = np.argsort(degs)[:ORACLE_GENES]
        truth = stim_mean[held][top] - ctrl_mean[held][top]
        w = oracle_weights(responses[:, top], truth, simplex=True)
        shift = _fractional_decreases(w, responses, levels, ctrl_mean[held])
        shifts["oracle_simplex"] = (shift, dict(zip(others, w.round(3).tolist())))
        w = oracle_weights(responses[:, top], truth, simplex=False)
        shifts["oracle_cone"] = (w @ responses, dict(zip(others, w.round(3).tolist())))
        out[held] = {}
        for method, (shift, weights) in shifts.items():
            s = counterfactual_scores(ctrl, shifted_control(ctrl, shift), observed)
            out[held][method] = {
                "top20_mean_r2": float(s.loc["top20", "mean_r2"]),
                "pearson_delta_top100": float(s.loc["top100", "lfc_pearson"]),
                "weights": weights,
            }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "transfer_probe.json")
    parser.add_argument(
        "--stack-genes",
        type=int,
        default=STACK_GENES,
        help="each source's largest responses the stacked row's coefficients are fitted on",
    )
    args = parser.parse_args(argv)
    set_threads(args.threads)
    quiet()
    payload = {
        "machine": machine_info(),
        "n_genes": N_GENES,
        "stack_genes": args.stack_genes,
        "results": {},
    }
    for filename in FILES:
        res = probe(load_dataset(args.data_dir, filename), args.stack_genes)
        payload["results"][filename] = res
        keys = ("top20_mean_r2", "pearson_delta_top100")
        rows = [[held] + [res[held][m][k] for k in keys for m in METHODS] for held in res]
        for label, fn in (("median", np.median), ("worst", np.min)):
            rows.append(
                [f"**{label}**"]
                + [fn([r[m][k] for r in res.values()]) for k in keys for m in METHODS]
            )
        header = ["held out"] + [f"top-20 mean R², {m}" for m in METHODS]
        header += [f"Pearson Δ, {m}" for m in METHODS]
        print(f"\n## {filename}\n")
        print(markdown_table(header, rows))
    write_json(payload, args.out)
    print(f"\nwrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
