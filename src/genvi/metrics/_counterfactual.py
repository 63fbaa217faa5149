"""Counterfactual recovery: predicted vs observed response to a perturbation."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from genvi._threads import keep_torch_threads

from ._expression import _pearson, mean_var_agreement
from ._space import _check_unique_genes, _get_counts, _normalize_log1p

DEFAULT_TOP_K: tuple[int, ...] = (20, 50, 100)


def _log_normalized(
    adata: ad.AnnData,
    genes: pd.Index,
    layer: str | None,
    target_sum: float,
    name: str,
    already: bool = False,
) -> np.ndarray:
    """``log1p`` of counts scaled to ``target_sum`` per cell (all-gene totals), by gene name.

    With ``already=True`` the matrix is taken as log-normalised expression and only subset.
    """
    _check_unique_genes(adata)
    idx = adata.var_names.get_indexer(genes)
    if (idx < 0).any():
        missing = list(genes[idx < 0][:5])
        raise ValueError(f"{int((idx < 0).sum())} genes missing from `{name}`, e.g. {missing}.")
    if adata.n_obs < 2:
        raise ValueError(f"`{name}` needs at least 2 cells, got {adata.n_obs}.")
    if already:  # log-space predictions may hold negative values: no count checks
        x = adata.X if layer is None else adata.layers[layer]
        x = x[:, idx]
        return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
    counts = _get_counts(adata, layer)
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    return _normalize_log1p(counts[:, idx], totals, target_sum)


def rank_degs(
    control: ad.AnnData,
    stimulated: ad.AnnData,
    layer: str | None = None,
    target_sum: float = 1e4,
) -> pd.DataFrame:
    """Rank genes by differential expression between two sets of real cells (Wilcoxon).

    ``scanpy.tl.rank_genes_groups(method="wilcoxon", tie_correct=True)`` on log-normalised
    expression (``normalize_total`` to ``target_sum`` + ``log1p``), ``stimulated`` against the
    ``control`` reference. Genes are ranked by the absolute Wilcoxon z-score, so strongly up-
    and down-regulated genes both come first.

    Parameters
    ----------
    control
        Real control cells, counts in ``X`` or ``layer``.
    stimulated
        Real perturbed cells, counts in ``X`` or ``layer``, with the genes of ``control``.
    layer
        Layer holding counts; ``None`` uses ``X``.
    target_sum
        Library size each cell is scaled to.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene (order of ``control.var_names``): ``score`` (z, positive = up in
        ``stimulated``), ``pval_adj`` (Benjamini-Hochberg), ``rank`` (0 = most differential).
    """
    genes = pd.Index(control.var_names.astype(str))
    ctrl = _log_normalized(control, genes, layer, target_sum, "control")
    stim = _log_normalized(stimulated, genes, layer, target_sum, "stimulated")
    return _rank_degs(ctrl, stim, genes)


def _rank_degs(ctrl: np.ndarray, stim: np.ndarray, genes: pd.Index) -> pd.DataFrame:
    import scanpy as sc  # slow to import; only needed here

    group = np.repeat(["control", "stimulated"], [ctrl.shape[0], stim.shape[0]])
    tmp = ad.AnnData(
        X=np.vstack([ctrl, stim]).astype(np.float32),
        obs=pd.DataFrame({"group": pd.Categorical(group)}, index=map(str, range(len(group)))),
        var=pd.DataFrame(index=genes),
    )
    tmp.uns["log1p"] = {"base": None}  # tells scanpy the data are natural-log transformed
    with keep_torch_threads():
        sc.tl.rank_genes_groups(
            tmp,
            "group",
            groups=["stimulated"],
            reference="control",
            method="wilcoxon",
            tie_correct=True,
            n_genes=len(genes),
        )
    res = sc.get.rank_genes_groups_df(tmp, group="stimulated").set_index("names")
    out = pd.DataFrame(
        {"score": res["scores"].astype(np.float64), "pval_adj": res["pvals_adj"]},
        index=res.index.astype(str),
    ).reindex(genes)
    order = np.argsort(-np.abs(out["score"].to_numpy()), kind="stable")
    rank = np.empty(len(out), dtype=np.int64)
    rank[order] = np.arange(len(out))
    out["rank"] = rank
    out.index.name = "gene"
    return out


def counterfactual_lfc(
    control: ad.AnnData,
    predicted: ad.AnnData,
    observed: ad.AnnData,
    *,
    layer: str | None = None,
    predicted_layer: str | None = None,
    target_sum: float = 1e4,
    predicted_log_normalized: bool = False,
) -> pd.DataFrame:
    """Per-gene predicted and observed response to a perturbation.

    All three sets are log-normalised (counts / total over all genes * ``target_sum``,
    ``log1p``). The log-fold change of a gene is the difference of its mean log-normalised
    expression, ``mean(log1p(x_stim)) - mean(log1p(x_control))`` (natural log, i.e. the log
    ratio of pseudocounted geometric means): ``lfc_observed`` uses the real stimulated cells,
    ``lfc_predicted`` the predicted ones, both against the same real control cells.

    Parameters
    ----------
    control
        Real control cells the prediction starts from (counts in ``X`` or ``layer``).
    predicted
        Predicted perturbed cells (counts in ``X`` or ``predicted_layer``), e.g. from
        ``model.predict_counterfactual(control, {"condition": "stimulated"})``.
    observed
        Real perturbed cells (counts in ``X`` or ``layer``), never seen by the model.
    layer
        Layer of ``control`` and ``observed`` holding counts; ``None`` uses ``X``.
    predicted_layer
        Layer of ``predicted`` holding counts; ``None`` uses ``X``.
    target_sum
        Library size each cell is scaled to.
    predicted_log_normalized
        ``predicted`` already holds log-normalised expression (``log1p`` of counts per
        ``target_sum``, e.g. the predicted means of a method trained on log-normalised data);
        it is then used as is, not normalised again (negative values, which a Gaussian
        model in log space can predict, are kept).

    Returns
    -------
    pandas.DataFrame
        Indexed by gene (order of ``observed.var_names``): ``mean_control``,
        ``mean_observed``, ``mean_predicted``, ``var_observed``, ``var_predicted`` (of
        log-normalised expression), ``lfc_observed``, ``lfc_predicted``, ``deg_score``,
        ``deg_rank`` (from :func:`rank_degs` of ``control`` vs ``observed``).
    """
    return _prepare(
        control, predicted, observed, layer, predicted_layer, target_sum, predicted_log_normalized
    )[0]


def _prepare(
    control: ad.AnnData,
    predicted: ad.AnnData,
    observed: ad.AnnData,
    layer: str | None,
    predicted_layer: str | None,
    target_sum: float,
    predicted_log_normalized: bool = False,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Per-gene table, and observed and predicted log-normalised expression."""
    genes = pd.Index(observed.var_names.astype(str))
    ctrl = _log_normalized(control, genes, layer, target_sum, "control")
    obs = _log_normalized(observed, genes, layer, target_sum, "observed")
    pred = _log_normalized(
        predicted, genes, predicted_layer, target_sum, "predicted", predicted_log_normalized
    )
    degs = _rank_degs(ctrl, obs, genes)
    mean_ctrl = ctrl.mean(axis=0)
    df = pd.DataFrame(
        {
            "mean_control": mean_ctrl,
            "mean_observed": obs.mean(axis=0),
            "mean_predicted": pred.mean(axis=0),
            "var_observed": obs.var(axis=0, ddof=1),
            "var_predicted": pred.var(axis=0, ddof=1),
            "lfc_observed": obs.mean(axis=0) - mean_ctrl,
            "lfc_predicted": pred.mean(axis=0) - mean_ctrl,
            "deg_score": degs["score"].to_numpy(),
            "deg_rank": degs["rank"].to_numpy(),
        },
        index=pd.Index(genes, name="gene"),
    )
    df.attrs.update({"target_sum": target_sum, "lfc": "difference of mean log1p expression"})
    return df, obs, pred


def _lfc_agreement(observed: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    centred = observed - observed.mean()
    denom = centred @ centred
    # Least-squares slope of predicted on observed LFC: 1 = full response, 0 = no response.
    slope = float(centred @ (predicted - predicted.mean()) / denom) if denom > 0 else np.nan
    moved = observed != 0
    sign = (
        float(np.mean(np.sign(predicted[moved]) == np.sign(observed[moved])))
        if moved.any()
        else np.nan
    )
    return {
        "lfc_slope": slope,
        "lfc_pearson": _pearson(observed, predicted),
        "sign_agreement": sign,
    }


def counterfactual_scores(
    control: ad.AnnData,
    predicted: ad.AnnData,
    observed: ad.AnnData,
    top_k: Sequence[int] = DEFAULT_TOP_K,
    *,
    layer: str | None = None,
    predicted_layer: str | None = None,
    target_sum: float = 1e4,
    predicted_log_normalized: bool = False,
) -> pd.DataFrame:
    """How well a counterfactual prediction recovers an observed perturbation response.

    Genes are ranked by Wilcoxon between the real ``control`` and real ``observed`` cells
    (:func:`rank_degs`). On the top ``k`` DEGs for each ``k`` and on all genes, reports the
    agreement of per-gene means and variances of log-normalised expression, predicted vs
    observed (:func:`~genvi.metrics.mean_var_agreement`: R² with the observed values as truth,
    and Pearson r), and of the log-fold changes against control
    (:func:`counterfactual_lfc`): the least-squares slope of predicted on observed LFC (1 = full
    response, 0 = none, as for the identity prediction ``predicted = control``), their Pearson
    r, and the sign agreement (fraction of genes with a nonzero observed LFC whose predicted LFC
    has the same sign; a zero predicted LFC counts as a miss). ``lfc_pearson`` of the
    ``"top100"`` row is scPerturBench's *Pearson delta* on the top-100 DEGs
    (:func:`pearson_delta`).

    Parameters
    ----------
    control
        Real control cells the prediction starts from (counts in ``X`` or ``layer``).
    predicted
        Predicted perturbed cells (counts in ``X`` or ``predicted_layer``).
    observed
        Real perturbed cells (counts in ``X`` or ``layer``), held out from training.
    top_k
        Numbers of top DEGs; values above the number of genes are capped.
    layer
        Layer of ``control`` and ``observed`` holding counts; ``None`` uses ``X``.
    predicted_layer
        Layer of ``predicted`` holding counts; ``None`` uses ``X``.
    target_sum
        Library size each cell is scaled to.
    predicted_log_normalized
        ``predicted`` already holds log-normalised expression; used as is (see
        :func:`counterfactual_lfc`).

    Returns
    -------
    pandas.DataFrame
        Indexed by gene set (``"top20"``, ``"top50"``, ``"top100"``, ..., ``"all"``), columns
        ``n_genes``, ``mean_r2``, ``var_r2``, ``mean_pearson``, ``var_pearson``, ``lfc_slope``,
        ``lfc_pearson``, ``sign_agreement``. The per-gene values behind it come from
        :func:`counterfactual_lfc` (plotted by :func:`genvi.pl.counterfactual_scatter`).
    """
    ks = [int(k) for k in top_k]
    if any(k < 2 for k in ks):
        raise ValueError(f"`top_k` values must be at least 2, got {ks}.")
    per_gene, obs, pred = _prepare(
        control, predicted, observed, layer, predicted_layer, target_sum, predicted_log_normalized
    )
    order = np.argsort(per_gene["deg_rank"].to_numpy())
    sets = {f"top{k}": order[: min(k, len(order))] for k in ks}
    sets["all"] = order
    rows = {}
    lfc_obs = per_gene["lfc_observed"].to_numpy()
    lfc_pred = per_gene["lfc_predicted"].to_numpy()
    for name, idx in sets.items():
        rows[name] = {
            "n_genes": len(idx),
            **mean_var_agreement(obs[:, idx], pred[:, idx]),
            **_lfc_agreement(lfc_obs[idx], lfc_pred[idx]),
        }
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "gene_set"
    df.attrs.update({"top_k": ks, "target_sum": target_sum})
    return df


def pearson_delta(
    control: ad.AnnData,
    predicted: ad.AnnData,
    observed: ad.AnnData,
    top_k: int | None = 100,
    *,
    layer: str | None = None,
    predicted_layer: str | None = None,
    target_sum: float = 1e4,
    predicted_log_normalized: bool = False,
) -> float:
    """Pearson delta: correlation of the predicted and the observed change from control.

    The measure scPerturBench reports for counterfactuals (there on the top-100 DEGs). All
    three sets are log-normalised (counts / total over all genes * ``target_sum``, ``log1p``);
    per gene, the observed change is ``mean(observed) - mean(control)`` and the predicted change
    ``mean(predicted) - mean(control)``, both against the same real control cells; the result is
    the Pearson r of the two across the ``top_k`` genes most differential between ``control``
    and ``observed`` (:func:`rank_degs`: Wilcoxon on the real cells, ranked by absolute z-score,
    so up- and down-regulated genes both count). It equals ``lfc_pearson`` in the
    ``f"top{top_k}"`` row of :func:`counterfactual_scores`.

    Unlike the R² of means, it ignores a common offset and scale of the predicted change: a
    prediction whose response has the right pattern but half the size scores 1. Read it next
    to the LFC slope.

    Parameters
    ----------
    control
        Real control cells the prediction starts from (counts in ``X`` or ``layer``).
    predicted
        Predicted perturbed cells (counts in ``X`` or ``predicted_layer``; log-normalised
        expression with ``predicted_log_normalized=True``).
    observed
        Real perturbed cells (counts in ``X`` or ``layer``), held out from training.
    top_k
        Number of top DEGs (capped at the number of genes); ``None`` uses all genes.
    layer
        Layer of ``control`` and ``observed`` holding counts; ``None`` uses ``X``.
    predicted_layer
        Layer of ``predicted``; ``None`` uses ``X``.
    target_sum
        Library size each cell is scaled to.
    predicted_log_normalized
        ``predicted`` already holds log-normalised expression; used as is.

    Returns
    -------
    float
        Pearson r in [-1, 1]; NaN when either change is constant across the genes.
    """
    if top_k is not None and int(top_k) < 2:
        raise ValueError(f"`top_k` must be at least 2, got {top_k}.")
    per_gene = counterfactual_lfc(
        control,
        predicted,
        observed,
        layer=layer,
        predicted_layer=predicted_layer,
        target_sum=target_sum,
        predicted_log_normalized=predicted_log_normalized,
    )
    order = np.argsort(per_gene["deg_rank"].to_numpy())
    if top_k is not None:
        order = order[: min(int(top_k), len(order))]
    return _pearson(
        per_gene["lfc_observed"].to_numpy()[order], per_gene["lfc_predicted"].to_numpy()[order]
    )
