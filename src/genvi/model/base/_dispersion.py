"""Maximum-likelihood re-estimation of a frozen base decoder's inverse dispersion.

Why: scvi-tools initialises each gene's log inverse dispersion ``px_r`` at a random N(0, 1)
draw and trains it with the rest of the model by Adam at ``lr`` = 1e-3, which moves a
parameter by at most about ``lr`` per step. In a typical run (a few thousand steps) ``px_r``
stays close to its random start, so counts *sampled* from the decoder get a per-gene variance
set by chance even where the decoded means are right (issue #20). A latent prior decodes
with its base model, so it inherits that error; re-estimating the dispersion with the encoder
and decoder frozen fixes it without touching the user's model.
"""

from __future__ import annotations

import numpy as np
import torch
from scvi.distributions import ZeroInflatedNegativeBinomial
from torch.distributions import Distribution

from genvi.module._count_vae import count_distribution

#: bounds of the refitted inverse dispersion: below, variance explodes; above, the counts are
#: Poisson for every practical purpose and float32 lgamma differences lose precision
THETA_BOUNDS = (1e-4, 1e4)


def replace_dispersion(px: Distribution, theta: torch.Tensor) -> Distribution:
    """``px`` (NB or ZINB) with its inverse dispersion replaced by ``theta`` (broadcast)."""
    zi = px.zi_logits if isinstance(px, ZeroInflatedNegativeBinomial) else None
    return _nb(px.mu, theta.to(px.mu.device, px.mu.dtype), zi, px.scale)


def cell_theta(theta: torch.Tensor | np.ndarray, batch: torch.Tensor) -> torch.Tensor:
    """Per-cell inverse dispersion, ``(cells or 1, genes)``, from a ``(genes, groups)`` table.

    One group means one value per gene; otherwise the groups are the base model's batches.
    """
    theta = torch.as_tensor(theta, device=batch.device)
    if theta.shape[1] == 1:
        return theta[:, 0].unsqueeze(0)
    return theta[:, batch.reshape(-1).long()].T


def fit_dispersion(
    adapter,
    loc: np.ndarray,
    scale: np.ndarray,
    counts,
    library: np.ndarray,
    decoder_inputs: dict[str, np.ndarray],
    n_cells: int = 1024,
    gene_chunk: int = 2048,
    batch_size: int = 512,
    max_iter: int = 30,
    seed: int = 0,
) -> np.ndarray | None:
    """The inverse dispersion maximising the likelihood of ``counts`` under the frozen decoder.

    For each cell a latent is drawn from its q(z | x) (as generated cells are drawn from a
    prior, not from posterior means) and decoded with the cell's own library size and batch;
    the log inverse dispersion of each gene (and batch, for ``dispersion="gene-batch"``) is
    then fitted by Newton's method with the decoded means (and zero-inflation) fixed, starting
    from the base model's own. Genes are independent, so each takes its own step (halved
    until its likelihood does not fall) and they are fitted in chunks to bound memory.

    Parameters
    ----------
    adapter
        The base model's :class:`~genvi.model.base._base_models.BaseModelAdapter`.
    loc, scale
        Posterior means and standard deviations of the cells (cells x latent).
    counts
        The cells' counts (cells x genes, dense or scipy sparse).
    library
        The cells' library sizes.
    decoder_inputs
        The cells' nuisance inputs of the base decoder (``adapter.decoder_inputs``).
    n_cells
        At most this many cells (a seeded random subset) enter the fit.
    gene_chunk, batch_size
        Genes fitted together and cells decoded together.
    max_iter
        Newton iterations per gene chunk.
    seed
        Seed of the cell subset and the posterior draws.

    Returns
    -------
    ``(genes, groups)`` float32 inverse dispersions, or ``None`` when the base decoder has
    none to refit (Poisson or Normal likelihoods, ``dispersion="gene-cell"``).
    """
    own = adapter.log_dispersion
    if adapter.gene_likelihood not in ("nb", "zinb") or own is None:
        return None
    rng = np.random.default_rng(seed)
    idx = np.arange(len(loc))
    if len(idx) > n_cells:
        idx = np.sort(rng.choice(idx, n_cells, replace=False))
    z = _posterior_draw(loc[idx], scale[idx], seed)
    x_all = counts[idx]
    lib = np.log(library[idx]).astype(np.float32)
    inputs = {k: v[idx] for k, v in decoder_inputs.items()}
    n_groups = own.shape[1]
    group = torch.as_tensor(inputs["batch"]).long().reshape(-1)
    if n_groups == 1:
        group = torch.zeros_like(group)
    n_genes = x_all.shape[1]
    out = np.empty((n_genes, n_groups), dtype=np.float32)
    for g0 in range(0, n_genes, gene_chunk):
        genes = slice(g0, min(g0 + gene_chunk, n_genes))
        mu, zi = _decoded_chunk(adapter, z, lib, inputs, genes, batch_size)
        x = _dense(x_all[:, genes])

        def objective(u, cols, mu=mu, zi=zi, x=x):
            """Log-likelihood per (gene, group) of genes ``cols``: independent problems."""
            px = _nb(mu[:, cols], cell_theta(u.exp(), group), _cols(zi, cols))
            lp = px.log_prob(x[:, cols])
            return torch.zeros(n_groups, lp.shape[1]).index_add_(0, group, lp).T

        out[genes] = torch.exp(_newton(objective, own[genes].clone(), max_iter)).numpy()
    return out


#: fewest cells unseen by the base model for :func:`checked_dispersion` to judge a refit
MIN_CHECK_CELLS = 50


def checked_dispersion(
    adapter,
    loc: np.ndarray,
    scale: np.ndarray,
    counts,
    library: np.ndarray,
    decoder_inputs: dict[str, np.ndarray],
    held_out: np.ndarray,
    n_bins: int = 10,
    n_cells: int = 1024,
    seed: int = 0,
) -> tuple[np.ndarray | None, dict]:
    """A refit of the inverse dispersion, kept only where held-out cells prefer it.

    The refit (:func:`fit_dispersion`) uses the cells the base model trained on; the
    ``held_out`` ones (which it did not train on, at most ``n_cells`` of them) then score it
    against the base model's own dispersion: genes are grouped into ``n_bins`` bins of equal
    size by their mean count, and a bin keeps the refit only if it raises the bin's summed
    log-likelihood of the held-out cells (one posterior draw each, the cells' own library
    sizes). Bins rather than single genes: a few hundred cells cannot judge one rare gene.

    Parameters
    ----------
    adapter, loc, scale, counts, library, decoder_inputs
        As in :func:`fit_dispersion`, for every registered cell.
    held_out
        Boolean mask of the cells the base model did not train on.
    n_bins
        Gene bins by mean count.
    n_cells
        At most this many cells fit the refit, and at most this many held-out cells score it.
    seed
        Seed of the cell subsets and posterior draws.

    Returns
    -------
    The inverse dispersions to decode with, ``(genes, groups)`` — the refit in the bins that
    kept it, the base model's own elsewhere — or ``None`` when no bin kept it (or the decoder
    has none to refit); and a report: the bins' upper mean-count edges, the change of the
    held-out log-likelihood per cell in each bin and whether the bin kept the refit.
    """
    held_out = np.asarray(held_out, dtype=bool)
    fit_idx, check_idx = np.flatnonzero(~held_out), np.flatnonzero(held_out)

    def subset(idx):
        return loc[idx], scale[idx], counts[idx], library[idx], _take(decoder_inputs, idx)

    refit = fit_dispersion(adapter, *subset(fit_idx), n_cells=n_cells, seed=seed)
    if refit is None:
        return None, {}
    if len(check_idx) > n_cells:
        rng = np.random.default_rng(seed + 1)
        check_idx = np.sort(rng.choice(check_idx, n_cells, replace=False))
    own = torch.exp(adapter.log_dispersion).numpy()
    args = (adapter, *subset(check_idx))
    ll_refit, ll_own = _gene_log_lik(*args, [refit, own], seed)
    gain = ll_refit - ll_own
    mean = np.asarray(counts[check_idx].mean(0)).ravel()
    order = np.argsort(mean, kind="stable")
    bins = np.array_split(order, min(n_bins, len(order)))
    theta = own.copy()
    report = {"n_held_out_cells": len(check_idx), "upper_mean": [], "gain_per_cell": []}
    report["refitted"] = []
    for genes in bins:
        bin_gain = float(gain[genes].sum() / len(check_idx))
        keep = bin_gain > 0
        if keep:
            theta[genes] = refit[genes]
        report["upper_mean"].append(float(mean[genes].max()))
        report["gain_per_cell"].append(bin_gain)
        report["refitted"].append(bool(keep))
    return (theta if any(report["refitted"]) else None), report


def _take(inputs: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in inputs.items()}


def _posterior_draw(loc, scale, seed: int) -> torch.Tensor:
    """One seeded draw per cell from q(z | x) = N(loc, scale²)."""
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(np.shape(loc), generator=gen)
    return torch.as_tensor(loc) + torch.as_tensor(scale) * eps


def _gene_log_lik(
    adapter, loc, scale, counts, library, decoder_inputs, thetas, seed, gene_chunk=2048
) -> np.ndarray:
    """Summed log-likelihood per gene of ``counts`` under the frozen decoder, per theta.

    One posterior draw per cell (seeded) decoded once with the cell's own library size and
    nuisance inputs, then scored with each inverse dispersion table in ``thetas``; returns
    ``(len(thetas), genes)``.
    """
    z = _posterior_draw(loc, scale, seed)
    lib = np.log(library).astype(np.float32)
    group = torch.as_tensor(decoder_inputs["batch"]).long().reshape(-1)
    thetas = [torch.as_tensor(t) for t in thetas]
    n_genes = counts.shape[1]
    out = np.empty((len(thetas), n_genes))
    for g0 in range(0, n_genes, gene_chunk):
        genes = slice(g0, min(g0 + gene_chunk, n_genes))
        mu, zi = _decoded_chunk(adapter, z, lib, decoder_inputs, genes, 512)
        x = _dense(counts[:, genes])
        for k, theta in enumerate(thetas):
            px = _nb(mu, cell_theta(theta[genes], group), zi)
            out[k, genes] = px.log_prob(x).sum(0).numpy()
    return out


def _nb(mu, theta, zi, scale=None) -> Distribution:
    """NB, or ZINB where there are zero-inflation logits, with ``theta`` broadcast to ``mu``."""
    likelihood = "nb" if zi is None else "zinb"
    return count_distribution(likelihood, scale, mu, theta.expand_as(mu), zi)


def _cols(a: torch.Tensor | None, cols: torch.Tensor) -> torch.Tensor | None:
    return None if a is None else a[:, cols]


def _newton(objective, u: torch.Tensor, max_iter: int, tol: float = 1e-2) -> torch.Tensor:
    """Maximise independent 1-d objectives, one per entry of ``u`` (genes x groups).

    A gene drops out once its step is below ``tol`` (a 1% change of theta) or its likelihood
    no longer rises, so later iterations only touch the genes still moving.
    """
    lo, hi = (float(np.log(b)) for b in THETA_BOUNDS)
    u = u.clamp(lo, hi)
    active = torch.arange(u.shape[0])
    for _ in range(max_iter):
        if len(active) == 0:
            break
        ua = u[active].clone().requires_grad_(True)
        f = objective(ua, active)
        (g,) = torch.autograd.grad(f.sum(), ua, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), ua)  # the Hessian's diagonal: independent entries
        g, f, ua = g.detach(), f.detach(), ua.detach()
        # Newton where the objective is concave, else a unit ascent step
        step = torch.where(h < -1e-8, -g / h.clamp(max=-1e-8), torch.sign(g)).clamp(-2.0, 2.0)
        t = torch.ones_like(ua)
        moved = torch.zeros_like(ua, dtype=torch.bool)
        with torch.no_grad():
            for _ in range(4):  # halve each entry's step until its likelihood does not fall
                cand = (ua + t * step).clamp(lo, hi)
                ok = ~moved & (objective(cand, active) >= f)
                ua = torch.where(ok, cand, ua)
                moved |= ok
                if moved.all():
                    break
                t = torch.where(moved, t, t / 2)
        u[active] = ua
        change = (t * step * moved).abs().amax(1)
        active = active[change >= tol]
    return u


def _dense(x) -> torch.Tensor:
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return torch.as_tensor(x, dtype=torch.float32)


def _decoded_chunk(adapter, z, lib, inputs, genes, batch_size):
    """Decoded means and zero-inflation logits of some genes."""
    dev = adapter.device
    mus, zis = [], []
    with torch.no_grad():
        for start in range(0, z.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            px = adapter.decode(
                z[sl].to(dev),
                torch.as_tensor(lib[sl], device=dev).unsqueeze(-1),
                {k: torch.as_tensor(v[sl], device=dev) for k, v in inputs.items()},
            )
            mus.append(px.mu[:, genes].cpu())
            if isinstance(px, ZeroInflatedNegativeBinomial):
                zis.append(px.zi_logits[:, genes].cpu())
    return torch.cat(mus), (torch.cat(zis) if zis else None)
