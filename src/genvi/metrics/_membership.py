"""Membership inference: attacks that tell training cells from held-out cells.

Given the synthetic cells, an attacker scores each candidate real cell; if the training cells
(members) score higher than held-out cells of the same population (non-members), the synthetic
data leak who was in the training set. Scores are computed in a reference PCA space
(:class:`~genvi.metrics.ReferenceSpace`) fitted on members and non-members together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import linalg
from scipy.stats import mannwhitneyu
from sklearn.neighbors import NearestNeighbors

from ._space import ReferenceSpace, _get_counts

ATTACKS = ("distance", "distance_calibrated", "domias")
ATTACK_DESCRIPTIONS = {
    "distance": "GAN-Leaks (Chen et al. 2020): minus the distance to the nearest synthetic cell",
    "distance_calibrated": "GAN-Leaks calibrated: distance to the nearest reference cell minus "
    "distance to the nearest synthetic cell",
    "domias": "DOMIAS (van Breugel et al. 2023): log p_synthetic(x) - log p_reference(x), "
    "Gaussian KDEs (Scott's rule) in the PCs of the space",
}
# Conventions for the plain verdict (not derived from a model of harm): an attack that beats a
# coin flip by 10 AUROC points, or recovers 10x more members than its false-positive rate.
HIGH_AUROC = 0.6
HIGH_TPR_MULTIPLE = 10.0


class TooFewCellsError(ValueError):
    """Raised when there are too few cells for a membership-inference audit."""


# ---------------------------------------------------------------------------- density estimate
class GaussianKDE:
    """Gaussian kernel density estimate with a full bandwidth matrix.

    The estimator of :class:`scipy.stats.gaussian_kde` (used by the DOMIAS reference code): the
    kernel covariance is the data covariance times ``factor**2``, with Scott's factor
    ``n ** (-1 / (d + 4))`` by default. Log-densities are computed with a log-sum-exp, so points
    far from all data get a finite (very negative) value instead of 0. A covariance that is
    singular (e.g. fewer cells than dimensions, or collapsed samples) gets a small ridge,
    recorded in :attr:`ridge`.

    Parameters
    ----------
    data
        Points of shape ``(n, d)``, ``n >= 2``.
    bw_method
        ``"scott"``, ``"silverman"`` or a scalar factor.
    """

    def __init__(self, data: np.ndarray, bw_method: str | float = "scott") -> None:
        data = np.asarray(data, dtype=np.float64)
        if data.ndim != 2 or data.shape[0] < 2:
            raise ValueError(f"`data` must have shape (n >= 2, d), got {data.shape}.")
        n, d = data.shape
        if bw_method == "scott":
            factor = n ** (-1.0 / (d + 4))
        elif bw_method == "silverman":
            factor = (n * (d + 2) / 4.0) ** (-1.0 / (d + 4))
        elif isinstance(bw_method, int | float) and bw_method > 0:
            factor = float(bw_method)
        else:
            raise ValueError(f"`bw_method` must be 'scott', 'silverman' or > 0, got {bw_method!r}.")
        cov = np.atleast_2d(np.cov(data, rowvar=False)) * factor**2
        self.factor = float(factor)
        self.ridge = 0.0
        scale = float(np.mean(np.diag(cov))) or 1.0
        for ridge in (0.0, 1e-8, 1e-6, 1e-4, 1e-2):
            try:
                chol = linalg.cholesky(cov + ridge * scale * np.eye(d), lower=True)
            except linalg.LinAlgError:
                continue
            self.ridge = ridge * scale
            break
        else:
            raise ValueError("The kernel covariance is not positive definite, even with a ridge.")
        self._chol = chol
        self._white = self._whiten(data)
        self._sq = np.einsum("ij,ij->i", self._white, self._white)
        self._log_norm = (
            -math.log(n) - 0.5 * d * math.log(2 * math.pi) - float(np.log(np.diag(chol)).sum())
        )

    def _whiten(self, x: np.ndarray) -> np.ndarray:
        return linalg.solve_triangular(self._chol, np.asarray(x, dtype=np.float64).T, lower=True).T

    def logpdf(self, x: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """Log-density at the points ``x`` of shape ``(m, d)``."""
        w = self._whiten(x)
        out = np.empty(w.shape[0])
        for start in range(0, w.shape[0], chunk):
            q = w[start : start + chunk]
            sq = np.einsum("ij,ij->i", q, q)[:, None] + self._sq[None, :] - 2.0 * q @ self._white.T
            log_k = -0.5 * np.maximum(sq, 0.0)
            top = log_k.max(axis=1, keepdims=True)  # log-sum-exp, without underflow
            np.exp(log_k - top, out=log_k)
            out[start : start + chunk] = np.log(log_k.sum(axis=1)) + top[:, 0]
        return out + self._log_norm


# ---------------------------------------------------------------------------- statistics
def _auroc_test(member: np.ndarray, non: np.ndarray, exact_ok: bool) -> tuple[float, float]:
    """AUROC (ties count one half) and one-sided Mann-Whitney p-value for members > non."""
    res = mannwhitneyu(
        member, non, alternative="greater", method="auto" if exact_ok else "asymptotic"
    )
    return float(res.statistic / (member.size * non.size)), float(res.pvalue)


def _null_se(n1: int, n0: int) -> float:
    """Standard error of the AUROC of two samples of one distribution (no ties)."""
    return math.sqrt((n1 + n0 + 1) / (12.0 * n1 * n0))


def _tpr_at_fpr(member: np.ndarray, non: np.ndarray, fpr: float) -> float | None:
    """Fraction of members scoring above the ``1 - fpr`` quantile of the non-members.

    ``None`` when fewer than 5 non-members lie above that quantile (too few to define it).
    """
    if non.size * fpr < 5:
        return None
    threshold = np.quantile(non, 1.0 - fpr, method="higher")
    return float(np.mean(member > threshold))


# ---------------------------------------------------------------------------- input checks
def _check_genes(adata: ad.AnnData, space: ReferenceSpace, name: str) -> None:
    if not adata.var_names.is_unique:
        raise ValueError(f"`{name}.var_names` are not unique; call `var_names_make_unique()`.")
    missing = space.genes[~space.genes.isin(adata.var_names)]
    if len(missing):
        shown = ", ".join(map(str, missing[:5]))
        raise ValueError(
            f"`{name}` lacks {len(missing)} of the {space.n_genes} genes of the reference space "
            f"(e.g. {shown}). All data sets must share the space's genes (matched by name); "
            "the space is fitted on `train` unless one is given."
        )


def _check_disjoint(a: ad.AnnData, b: ad.AnnData, name_a: str, name_b: str) -> None:
    shared = a.obs_names.intersection(b.obs_names)
    if len(shared):
        raise ValueError(
            f"`{name_a}` and `{name_b}` share {len(shared)} cell names (e.g. "
            f"{', '.join(map(str, shared[:3]))}); members and non-members must be different "
            "cells. If they are different cells whose names collide, rename them first."
        )


def _donors(adata: ad.AnnData, key: str, name: str) -> np.ndarray:
    if key not in adata.obs.columns:
        raise KeyError(
            f"donor_key {key!r} is not a column of `{name}.obs`; columns: "
            f"{list(map(str, adata.obs.columns))}."
        )
    values = adata.obs[key]
    if values.isna().any():
        raise ValueError(
            f"`{name}.obs[{key!r}]` is missing for {int(values.isna().sum())} cells; every cell "
            "needs a donor for the donor-level audit."
        )
    return values.astype(str).to_numpy()


def _balanced_folds(labels: np.ndarray) -> dict[str, int]:
    """Assign each label to fold 0 or 1, largest first to the fold with fewer cells."""
    counts = pd.Series(labels).value_counts()
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    sizes, folds = [0, 0], {}
    for label, n in order:
        fold = int(sizes[1] < sizes[0])
        folds[label] = fold
        sizes[fold] += n
    return folds


def _candidate_space(
    members: ad.AnnData, nonmembers: ad.AnnData, layer: str | None, seed: int
) -> ReferenceSpace:
    """Reference space (2,000 HVGs, 50 PCs) fitted on the scored members and non-members.

    Not on the members alone, which would bias the distance attack (see
    :func:`membership_inference`).
    """
    for name, adata in (("train", members), ("holdout", nonmembers)):
        if not adata.var_names.is_unique:
            raise ValueError(f"`{name}.var_names` are not unique; call `var_names_make_unique()`.")
    genes = members.var_names.intersection(nonmembers.var_names, sort=False)
    if len(genes) < 2:
        raise ValueError(
            f"`train` and `holdout` share {len(genes)} gene names; they must be cells of the same "
            "population measured on the same genes."
        )
    parts = []
    for adata in (members, nonmembers):
        counts = _get_counts(adata, layer)[:, adata.var_names.get_indexer(genes)]
        parts.append(sp.csr_matrix(counts))
    pooled = ad.AnnData(X=sp.vstack(parts).tocsr(), var=pd.DataFrame(index=genes.copy()))
    return ReferenceSpace.fit(pooled, seed=seed)


# ---------------------------------------------------------------------------- the audit
def membership_inference(
    synthetic: ad.AnnData,
    train: ad.AnnData,
    holdout: ad.AnnData,
    donor_key: str | None = None,
    space: ReferenceSpace | None = None,
    attacks: Sequence[str] = ATTACKS,
    *,
    reference: ad.AnnData | None = None,
    density_dims: int | None = None,
    max_cells: int = 5000,
    min_cells: int = 20,
    fpr: float = 0.01,
    alpha: float = 0.01,
    layer: str | None = None,
    synthetic_layer: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Membership-inference attacks on synthetic cells, at cell and donor level.

    An attacker who holds the synthetic cells and a candidate real cell tries to tell whether
    the cell was in the training data. Members are the training cells (``train``), non-members
    held-out cells of the same population (``holdout``); each attack gives every candidate a
    score (higher = more likely a member), and the AUROC of members vs non-members measures
    how well it succeeds: 0.5 is chance, 1 is perfect identification.

    Attacks, all in a reference PCA space (2,000 HVGs, log-normalised, 50 PCs; see
    :class:`~genvi.metrics.ReferenceSpace`) fitted on the scored members and non-members
    together, never on the training cells alone: PCA projects the cells it was fitted on with
    more variance than new cells (it partly fits their noise), which puts members farther from
    every synthetic cell and biases the distance attack towards "non-member" (on Kang control
    cells, with the space of :func:`privacy` fitted on 6,000 training cells, independent real
    cells as "synthetic" gave the distance attack an AUROC of 0.32 instead of 0.5):

    - ``"distance"`` (GAN-Leaks, Chen et al. 2020): minus the Euclidean distance to the
      nearest synthetic cell, in all PCs of the space. A generator that reproduces training
      cells puts synthetic cells closer to members.
    - ``"distance_calibrated"`` (GAN-Leaks' calibrated variant): distance to the nearest
      *reference* cell minus distance to the nearest synthetic cell, which discounts cells that
      are close to everything because they lie in dense regions.
    - ``"domias"`` (van Breugel et al. 2023, the density-ratio attack "DOMIAS"): the log ratio
      of the synthetic density to the reference density, ``log p_S(x) - log p_R(x)``. Both are
      Gaussian kernel density estimates with the DOMIAS reference code's estimator
      (``scipy.stats.gaussian_kde``: bandwidth = data covariance x Scott's factor
      ``n ** (-1 / (d + 4))``), in all PCs of the space unless ``density_dims`` is given:
      DOMIAS applies it to the whole feature space, and fewer PCs were weaker on Kang
      control cells (a bootstrap copy of 6,000 training cells: AUROC 0.56, 0.70, 0.81, 0.82
      with 5, 10, 20, 50 PCs, against a bound of 0.82; 0.50 to 0.51 for independent real
      cells at any number of PCs). Implemented here (see :class:`GaussianKDE`) rather than
      taken from the ``domias`` package, whose API trains its own generators.

    The reference cells stand for the population: real cells that are neither scored members
    nor scored non-members. Unless ``reference`` is given, ``holdout`` is cross-fitted: it is
    split into two folds, and every scored cell (member or non-member) is scored against the
    fold that does not contain it. With ``donor_key``, the folds are whole donors and a cell is
    scored against the fold without its own donor: a reference holding a non-member's own
    donor would make that non-member look typical of the population and bias the attack
    towards flagging.

    Donor level (``donor_key``): each donor's score is the mean score of its scored cells (as
    in the 2025 CAMDA health-privacy challenge), and the AUROC compares member donors with
    non-member donors. It needs every donor on one side only (a split by donors); with donors
    on both sides (a split by cells) it is skipped with a reason. With few donors the donor
    AUROC is coarse and its exact p-value cannot be small (4 vs 4 donors: at least 1/70).

    Verdict: an attack is significant when its one-sided Mann-Whitney p-value (members score
    higher) is below ``alpha / n_attacks`` (Bonferroni over the attacks). ``risk`` is
    ``"high"`` when a significant attack reaches AUROC >= 0.6 or a true-positive rate at
    ``fpr`` of at least 10 x ``fpr``, ``"low"`` when significant but weaker, else
    ``"none detected"``. These cut-offs are conventions. An AUROC near 0.5 is evidence, not
    proof, of privacy: stronger attacks (more knowledge, shadow models) may succeed where these
    fail, and a small fraction of exactly copied cells barely moves the AUROC (watch
    ``tpr_at_fpr``).

    Parameters
    ----------
    synthetic
        Generated cells (counts in ``X`` or ``synthetic_layer``).
    train
        Real cells the generator was trained on: the members (counts in ``X`` or ``layer``).
    holdout
        Real cells of the same population never used for training: the non-members and,
        unless ``reference`` is given, the reference cells (cross-fitted).
    donor_key
        Column of ``train.obs`` and ``holdout.obs`` naming each cell's donor (any name);
        enables the donor-level AUROC and donor-wise reference folds.
    space
        Reference space; when ``None``, fitted (2,000 HVGs, 50 PCs, ``seed``) on the scored
        members and non-members pooled. A given space must treat members and non-members
        alike: fitted on both, or on neither (e.g. other donors), not on ``train`` alone.
    attacks
        Any of ``"distance"``, ``"distance_calibrated"``, ``"domias"``.
    reference
        Optional real cells, disjoint from ``train`` and ``holdout`` (ideally from other
        donors), used as the reference of every scored cell instead of cross-fitting.
    density_dims
        Leading PCs used by the DOMIAS density estimates; ``None``: all PCs of the space.
        Lowered (with a note in ``settings``) when a KDE would have fewer cells than PCs + 2.
    max_cells
        At most this many members and this many non-members are scored (seeded subsample).
    min_cells
        Fewest members, non-members (and synthetic cells) accepted.
    fpr
        False-positive rate at which the true-positive rate ``tpr_at_fpr`` is reported.
    alpha
        Family-wise significance level of the verdict.
    layer
        Layer of ``train``, ``holdout`` and ``reference`` holding counts; ``None`` uses ``X``.
    synthetic_layer
        Layer of ``synthetic`` holding counts; ``None`` uses ``X``.
    seed
        Seed of the space fit (when fitted here), the subsampling and the cell folds.

    Returns
    -------
    dict
        ``auroc`` (cell level, the strongest attack), ``attack`` (its name), ``p_value``,
        ``tpr_at_fpr``; ``donor_auroc``, ``donor_attack``, ``donor_p_value`` (``None`` without
        donor-level result) and ``donor_skipped`` (``None`` or the reason); ``attacks``: per
        attack ``auroc``, ``auroc_null_se``, ``p_value``, ``tpr_at_fpr``, ``significant`` and,
        with donors, ``donor_auroc``, ``donor_p_value``, ``donor_significant``,
        ``donor_scores`` (mean score per donor) ; ``risk``, ``flagged`` (``risk == "high"``),
        ``verdict`` (one plain sentence or two); counts ``n_members``, ``n_nonmembers``,
        ``n_synthetic``, ``n_reference``, ``n_member_donors``, ``n_nonmember_donors``,
        ``donor_min_p_value``; and ``settings``. Plain Python values (JSON-serialisable).

    Raises
    ------
    TooFewCellsError
        Fewer than ``min_cells`` members, non-members or synthetic cells (or too few for the
        reference folds).
    ValueError
        Unknown attacks, missing genes, shared cells between ``train`` and ``holdout``.
    KeyError
        ``donor_key`` not in ``train.obs`` or ``holdout.obs``.
    """
    attacks = [attacks] if isinstance(attacks, str) else list(attacks)
    unknown = sorted(set(attacks) - set(ATTACKS))
    if not attacks or unknown or len(set(attacks)) != len(attacks):
        raise ValueError(
            f"`attacks` must be a non-empty list of distinct names from {list(ATTACKS)}, got "
            f"{attacks}."
        )
    if not 0 < fpr < 0.5:
        raise ValueError(f"`fpr` must lie in (0, 0.5), got {fpr}.")
    if not 0 < alpha < 1:
        raise ValueError(f"`alpha` must lie in (0, 1), got {alpha}.")
    if (density_dims is not None and density_dims < 1) or max_cells < 2 or min_cells < 2:
        raise ValueError("`density_dims` must be >= 1, `max_cells` and `min_cells` >= 2.")
    for name, adata in (("train", train), ("holdout", holdout), ("synthetic", synthetic)):
        if adata.n_obs < min_cells:
            raise TooFewCellsError(
                f"`{name}` has {adata.n_obs} cells; a membership audit needs at least "
                f"min_cells={min_cells}."
            )
    _check_disjoint(train, holdout, "train", "holdout")
    if reference is not None:
        _check_disjoint(reference, train, "reference", "train")
        _check_disjoint(reference, holdout, "reference", "holdout")
        if reference.n_obs < min_cells:
            raise TooFewCellsError(
                f"`reference` has {reference.n_obs} cells, fewer than min_cells={min_cells}."
            )
    mem_donors = non_donors = None
    if donor_key is not None:
        mem_donors = _donors(train, donor_key, "train")
        non_donors = _donors(holdout, donor_key, "holdout")

    # Scored cells: at most max_cells per side, drawn without replacement.
    rng = np.random.default_rng(seed)
    mem_idx = np.sort(rng.permutation(train.n_obs)[:max_cells])
    non_idx = np.sort(rng.permutation(holdout.n_obs)[:max_cells])
    fitted = space is None
    if space is None:
        space = _candidate_space(train[mem_idx], holdout[non_idx], layer, seed)
    named = [("train", train), ("holdout", holdout), ("synthetic", synthetic)]
    for name, adata in named + ([("reference", reference)] if reference is not None else []):
        _check_genes(adata, space, name)
    x_mem = space.transform(train[mem_idx], layer=layer)
    x_hold = space.transform(holdout, layer=layer)
    x_syn = space.transform(synthetic, layer=synthetic_layer)
    if mem_donors is not None:
        mem_donors = mem_donors[mem_idx]
    n_dens = space.n_comps if density_dims is None else min(int(density_dims), space.n_comps)
    notes: list[str] = []

    # Reference of each scored cell: the given reference, or the holdout fold without it.
    if reference is not None:
        refs = [space.transform(reference, layer=layer)]
        mem_fold = np.zeros(mem_idx.size, dtype=int)
        hold_fold = np.full(holdout.n_obs, -1)  # no holdout cell is in the reference
        non_ref = np.zeros(non_idx.size, dtype=int)
        reference_kind = "given"
    else:
        by_donor = non_donors is not None and len(np.unique(non_donors)) >= 2
        if by_donor:
            folds = _balanced_folds(non_donors)
            extra = sorted(set(mem_donors) - set(folds))
            folds.update(_balanced_folds(mem_donors[np.isin(mem_donors, extra)]) if extra else {})
            hold_fold = np.array([folds[d] for d in non_donors])
            mem_fold = np.array([folds[d] for d in mem_donors])
            reference_kind = "cross-fitted holdout, folds of whole donors"
        else:
            if non_donors is not None:
                notes.append(
                    "one held-out donor: reference folds are cells of that donor, which biases "
                    "reference-based attacks towards flagging if that donor was not trained on"
                )
            hold_fold = np.zeros(holdout.n_obs, dtype=int)
            hold_fold[rng.permutation(holdout.n_obs)[: holdout.n_obs // 2]] = 1
            mem_fold = np.zeros(mem_idx.size, dtype=int)
            mem_fold[rng.permutation(mem_idx.size)[: mem_idx.size // 2]] = 1
            reference_kind = "cross-fitted holdout, random halves of cells"
        refs = [x_hold[hold_fold == 1], x_hold[hold_fold == 0]]  # reference of fold 0, fold 1
        non_ref = hold_fold[non_idx]
    needs_ref = any(a in ("distance_calibrated", "domias") for a in attacks)
    if needs_ref:
        smallest = min(r.shape[0] for r in refs)
        if smallest < min_cells:
            raise TooFewCellsError(
                f"A reference fold has {smallest} cells; the reference-based attacks need at "
                f"least min_cells={min_cells} (give more held-out cells or `reference`)."
            )
        smallest = min(smallest, x_syn.shape[0])
        if "domias" in attacks and n_dens > smallest - 2:
            n_dens = max(1, smallest - 2)
            notes.append(f"DOMIAS used {n_dens} PCs: a KDE needs more cells than dimensions")
    x_non = x_hold[non_idx]
    n_ref = sum(r.shape[0] for r in refs) if needs_ref else 0

    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    need_dist = any(a.startswith("distance") for a in attacks)
    if need_dist:
        nn_syn = NearestNeighbors(n_neighbors=1).fit(x_syn)
        d_mem = nn_syn.kneighbors(x_mem)[0][:, 0]
        d_non = nn_syn.kneighbors(x_non)[0][:, 0]
        if "distance" in attacks:
            scores["distance"] = (-d_mem, -d_non)
    if "distance_calibrated" in attacks:
        cal_mem, cal_non = np.empty_like(d_mem), np.empty_like(d_non)
        for k, ref in enumerate(refs):
            nn_ref = NearestNeighbors(n_neighbors=1).fit(ref)
            m, n = mem_fold == k, non_ref == k
            if m.any():
                cal_mem[m] = nn_ref.kneighbors(x_mem[m])[0][:, 0] - d_mem[m]
            if n.any():
                cal_non[n] = nn_ref.kneighbors(x_non[n])[0][:, 0] - d_non[n]
        scores["distance_calibrated"] = (cal_mem, cal_non)
    ridge = 0.0
    if "domias" in attacks:
        kde_syn = GaussianKDE(x_syn[:, :n_dens])
        ridge = max(ridge, kde_syn.ridge)
        dm_mem = kde_syn.logpdf(x_mem[:, :n_dens])
        dm_non = kde_syn.logpdf(x_non[:, :n_dens])
        for k, ref in enumerate(refs):
            kde_ref = GaussianKDE(ref[:, :n_dens])
            ridge = max(ridge, kde_ref.ridge)
            m, n = mem_fold == k, non_ref == k
            if m.any():
                dm_mem[m] -= kde_ref.logpdf(x_mem[m, :n_dens])
            if n.any():
                dm_non[n] -= kde_ref.logpdf(x_non[n, :n_dens])
        scores["domias"] = (dm_mem, dm_non)
    if ridge > 0:
        notes.append(f"a singular KDE covariance got a ridge of {ridge:.3g}")

    # Donor level: only when every donor is on one side.
    donor_skipped = None
    n_mem_donors = n_non_donors = 0
    donor_min_p = None
    if donor_key is None:
        donor_skipped = "no donor_key given"
    else:
        mem_set, non_set = set(mem_donors), set(non_donors[non_idx])
        n_mem_donors, n_non_donors = len(mem_set), len(non_set)
        both = sorted(mem_set & non_set)
        if both:
            donor_skipped = (
                f"{len(both)} donors have cells in both train and holdout (a split by cells); "
                "donor-level membership needs each donor on one side"
            )
        elif n_mem_donors < 2 or n_non_donors < 2:
            donor_skipped = (
                f"{n_mem_donors} member and {n_non_donors} non-member donors; need at least 2 each"
            )
        else:
            donor_min_p = 1.0 / math.comb(n_mem_donors + n_non_donors, n_mem_donors)

    n_tests = len(attacks)
    per_attack: dict[str, dict[str, Any]] = {}
    for name in attacks:
        s_mem, s_non = scores[name]
        auroc, p = _auroc_test(s_mem, s_non, exact_ok=False)
        res: dict[str, Any] = {
            "auroc": auroc,
            "auroc_null_se": _null_se(s_mem.size, s_non.size),
            "p_value": p,
            "tpr_at_fpr": _tpr_at_fpr(s_mem, s_non, fpr),
            "significant": bool(p < alpha / n_tests),
        }
        if donor_skipped is None:
            mean_mem = pd.Series(s_mem).groupby(mem_donors).mean()
            mean_non = pd.Series(s_non).groupby(non_donors[non_idx]).mean()
            d_auroc, d_p = _auroc_test(mean_mem.to_numpy(), mean_non.to_numpy(), exact_ok=True)
            donor_scores = {
                str(k): {"member": member, "score": float(v)}
                for member, means in ((True, mean_mem), (False, mean_non))
                for k, v in means.items()
            }
            res.update(
                {
                    "donor_auroc": d_auroc,
                    "donor_p_value": d_p,
                    "donor_significant": bool(d_p < alpha / n_tests),
                    "donor_scores": donor_scores,
                }
            )
        per_attack[name] = res

    best = max(attacks, key=lambda a: per_attack[a]["auroc"])
    out: dict[str, Any] = {
        "auroc": per_attack[best]["auroc"],
        "attack": best,
        "p_value": per_attack[best]["p_value"],
        "tpr_at_fpr": per_attack[best]["tpr_at_fpr"],
        "donor_auroc": None,
        "donor_attack": None,
        "donor_p_value": None,
        "donor_skipped": donor_skipped,
    }
    if donor_skipped is None:
        best_d = max(attacks, key=lambda a: per_attack[a]["donor_auroc"])
        out.update(
            {
                "donor_auroc": per_attack[best_d]["donor_auroc"],
                "donor_attack": best_d,
                "donor_p_value": per_attack[best_d]["donor_p_value"],
            }
        )
    risk = _risk(per_attack, fpr)
    out.update(
        {
            "attacks": per_attack,
            "risk": risk,
            "flagged": risk == "high",
            "verdict": _verdict(out, per_attack, risk, fpr, donor_min_p, alpha / n_tests),
            "n_members": int(mem_idx.size),
            "n_nonmembers": int(non_idx.size),
            "n_synthetic": int(synthetic.n_obs),
            "n_reference": int(n_ref),
            "n_member_donors": n_mem_donors,
            "n_nonmember_donors": n_non_donors,
            "donor_min_p_value": donor_min_p,
            "settings": {
                "space": f"{space.n_comps} PCs of {space.n_genes} genes"
                + (", fitted on the scored members and non-members" if fitted else ", given"),
                "distance": "Euclidean, all PCs",
                "density_dims": n_dens,
                "kde_bandwidth": "scott (data covariance x n^(-1/(d+4)))",
                "reference": reference_kind,
                "fpr": float(fpr),
                "alpha": float(alpha),
                "alpha_per_attack": float(alpha / n_tests),
                "max_cells": int(max_cells),
                "seed": int(seed),
                "notes": notes,
            },
        }
    )
    return out


def _risk(per_attack: dict[str, dict[str, Any]], fpr: float) -> str:
    levels = []
    for res in per_attack.values():
        for prefix in ("", "donor_"):
            if not res.get(f"{prefix}significant"):
                continue
            tpr = res.get("tpr_at_fpr") if prefix == "" else None
            strong = res[f"{prefix}auroc"] >= HIGH_AUROC or (
                tpr is not None and tpr >= HIGH_TPR_MULTIPLE * fpr
            )
            levels.append("high" if strong else "low")
    if "high" in levels:
        return "high"
    return "low" if levels else "none detected"


def _fmt_p(p: float) -> str:
    return "p < 1e-12" if p < 1e-12 else f"p = {p:.2g}"


def _verdict(
    out: dict[str, Any],
    per_attack: dict[str, dict[str, Any]],
    risk: str,
    fpr: float,
    donor_min_p: float | None,
    level: float,
) -> str:
    best = per_attack[out["attack"]]
    tpr = best["tpr_at_fpr"]
    tpr_text = "" if tpr is None else f", {tpr:.0%} of members found at {fpr:.0%} false positives"
    if best["significant"]:
        cell = (
            f"Members are identifiable at cell level: the {out['attack']} attack separates "
            f"training from held-out cells with AUROC {best['auroc']:.3f} "
            f"({_fmt_p(best['p_value'])}{tpr_text})."
        )
    else:
        cell = (
            f"No membership signal at cell level (best attack {out['attack']}: AUROC "
            f"{best['auroc']:.3f}, {_fmt_p(best['p_value'])}{tpr_text}); evidence, not proof, "
            "that the synthetic cells do not reveal their training cells."
        )
    if out["donor_skipped"] is not None:
        donor = f" Donor level not computed: {out['donor_skipped']}."
    else:
        d = per_attack[out["donor_attack"]]
        n = _donor_counts(per_attack)
        if d["donor_significant"]:
            donor = (
                f" Member donors are identifiable: donor AUROC {d['donor_auroc']:.3f} "
                f"({n}, exact {_fmt_p(d['donor_p_value'])})."
            )
        else:
            weak = (
                f"; with these donors p cannot go below {donor_min_p:.2g} (level {level:.2g})"
                if donor_min_p is not None and donor_min_p >= level
                else ""
            )
            donor = (
                f" Donor level: AUROC {d['donor_auroc']:.3f} ({n}, {_fmt_p(d['donor_p_value'])}"
                f"), not significant{weak}."
            )
    return f"Risk: {risk}. {cell}{donor}"


def _donor_counts(per_attack: dict[str, dict[str, Any]]) -> str:
    """``"a vs b donors"`` from the donor scores of any attack."""
    scores = next(iter(per_attack.values()))["donor_scores"]
    n_mem = sum(v["member"] for v in scores.values())
    return f"{n_mem} vs {len(scores) - n_mem} donors"
