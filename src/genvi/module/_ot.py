"""Minibatch optimal-transport pairing of noise and latents, within condition groups."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

OTSolver = Literal["auto", "exact", "device"]


def condition_groups(
    cat: torch.Tensor | None, cont: torch.Tensor | None, mask: torch.Tensor, n: int
) -> torch.Tensor:
    """One row per cell that is equal for two cells exactly when their conditions are.

    Built from the integer codes and continuous values *as the network sees them*: a key
    dropped to its null token (``mask`` False) counts as its own value, so the groups are
    those of equal condition embeddings, without comparing floating-point embeddings.

    Parameters
    ----------
    cat, cont
        Categorical codes ``(n, n_cat)`` and continuous values ``(n, n_cont)`` (or ``None``).
    mask
        ``(n, n_keys)`` bool, False where the key was replaced by its null token.
    n
        Number of cells.
    """
    parts = []
    n_cat = 0
    if cat is not None and cat.shape[1]:
        n_cat = cat.shape[1]
        parts.append(torch.where(mask[:, :n_cat], cat.long(), -1).float())
    if cont is not None and cont.shape[1]:
        keep = mask[:, n_cat:]
        parts += [torch.where(keep, cont.float(), 0.0), keep.float()]
    if not parts:
        dev = mask.device if mask is not None else None
        return torch.zeros(n, 1, device=dev)
    return torch.cat(parts, 1)


def ot_permutation(
    noise: torch.Tensor, z: torch.Tensor, groups: torch.Tensor, solver: OTSolver = "auto"
) -> torch.Tensor:
    """Indices reordering ``noise`` to a minimal-cost pairing with ``z`` within each group.

    Cells with equal rows of ``groups`` form a group and pairing never crosses groups, so the
    noise a cell of condition c receives is still distributed as N(0, I). The cost is the
    squared Euclidean distance.

    Parameters
    ----------
    noise, z
        ``(n, d)`` tensors on the same device.
    groups
        ``(n, k)`` group keys (:func:`condition_groups`, or condition embeddings).
    solver
        ``"exact"``: the Hungarian algorithm (scipy) per group, on the host; ``"device"``:
        :func:`device_assignment`, on the tensors' device without reading anything back to
        the host; ``"auto"``: exact for CPU tensors (it is also the faster there) and the
        device solver otherwise.
    """
    with torch.no_grad():
        cost = torch.cdist(z.detach(), noise.detach()).pow(2)
        if solver == "auto":
            solver = "exact" if cost.device.type == "cpu" else "device"
        if solver == "exact":
            return exact_assignment(cost, groups.detach())
        if solver == "device":
            same = (groups.detach().unsqueeze(1) == groups.detach().unsqueeze(0)).all(-1)
            return device_assignment(cost, same)
        raise ValueError(f"Unknown OT solver {solver!r}; use 'auto', 'exact' or 'device'.")


def exact_assignment(cost: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Minimal-cost permutation (row i gets column ``perm[i]``) within groups, by scipy."""
    perm = torch.arange(cost.shape[0], device=cost.device)
    _, labels = np.unique(groups.cpu().numpy(), axis=0, return_inverse=True)
    labels = labels.reshape(-1)
    cost_np = cost.cpu().numpy()
    for g in np.unique(labels):
        idx = np.flatnonzero(labels == g)
        if len(idx) < 2:
            continue
        rows, cols = linear_sum_assignment(cost_np[np.ix_(idx, idx)])
        perm[torch.as_tensor(idx[rows], device=cost.device)] = torch.as_tensor(
            idx[cols], device=cost.device
        )
    return perm


def device_assignment(
    cost: torch.Tensor,
    same: torch.Tensor,
    sinkhorn_iters: int = 20,
    sinkhorn_eps: float = 0.05,
    auction_rounds: int = 50,
    auction_eps: float = 0.01,
) -> torch.Tensor:
    """Near-optimal permutation within groups in a fixed number of tensor operations.

    No value is read back to the host, so a GPU never waits: (1) entropic OT (log-domain
    Sinkhorn, ``sinkhorn_iters`` iterations at regularisation ``sinkhorn_eps`` times the mean
    cost) gives dual potentials; (2) they start the prices of a Jacobi auction (Bertsekas),
    run for ``auction_rounds`` rounds with bid increment ``auction_eps`` times the mean cost;
    (3) rows still unassigned then are paired with the unassigned columns of their group in
    index order. On simulated 10-d latents this stayed within 1% of the exact (Hungarian)
    mean cost for 256-1024 cells in 1-40 groups (``tests/test_latent_priors.py`` checks a
    bound).

    Parameters
    ----------
    cost
        ``(n, n)`` pairing costs (row: latent, column: noise).
    same
        ``(n, n)`` bool, True where row i and column j belong to the same group (must hold
        on the diagonal).
    sinkhorn_iters, sinkhorn_eps
        Sinkhorn iterations and entropic regularisation (relative to the mean cost).
    auction_rounds, auction_eps
        Auction rounds and minimal bid increment (relative to the mean cost).
    """
    n = cost.shape[0]
    c = cost.float() / cost.float().mean().clamp_min(1e-12)
    ar = torch.arange(n, device=c.device)
    # (1) Sinkhorn dual potentials -> auction prices
    logk = torch.where(same, -c / sinkhorn_eps, -torch.inf)
    f = torch.zeros(n, device=c.device)
    g = torch.zeros(n, device=c.device)
    for _ in range(sinkhorn_iters):
        f = -torch.logsumexp(logk + g.unsqueeze(0), 1)
        g = -torch.logsumexp(logk + f.unsqueeze(1), 0)
    price = -g * sinkhorn_eps
    # (2) Jacobi auction: unassigned rows bid for their best column, the highest bid wins
    benefit = torch.where(same, -c, -1e9)
    assigned = torch.full((n,), -1, dtype=torch.long, device=c.device)  # row -> column
    owner = torch.full((n,), -1, dtype=torch.long, device=c.device)  # column -> row
    none = torch.full((n,), -torch.inf, device=c.device)
    for _ in range(auction_rounds):
        free = assigned < 0
        top = (benefit - price.unsqueeze(0)).topk(min(2, n), dim=1)
        best = top.indices[:, 0]
        gap = top.values[:, 0] - top.values[:, -1] if n > 1 else torch.zeros_like(price)
        bid = torch.where(free, price[best] + gap.clamp_max(1e3) + auction_eps, -torch.inf)
        high = none.scatter_reduce(0, best, bid, "amax")
        wins = free & (bid == high[best])
        winner = torch.full_like(owner, -1).scatter_reduce(
            0, best, torch.where(wins, ar, -1), "amax"
        )  # per column: the winning row (highest index among equal bids), -1 if none
        won = winner >= 0
        slots = torch.cat([assigned, assigned.new_full((1,), -1)])  # slot n absorbs no-ops
        slots = slots.scatter(0, torch.where(won & (owner >= 0), owner, n), -1)  # outbid
        slots = slots.scatter(0, torch.where(won, winner, n), torch.where(won, ar, -1))
        assigned = slots[:n]
        owner = torch.where(won, winner, owner)
        price = torch.where(won, high, price)
    # (3) leftover rows take the leftover columns of their group, in index order
    taken = torch.zeros(n + 1, dtype=torch.bool, device=c.device)
    taken = taken.scatter(0, torch.where(assigned >= 0, assigned, n), True)[:n]
    group = same.to(torch.uint8).argmax(1)  # first member of each cell's group
    big = n * n
    row_order = torch.where(assigned < 0, group * n + ar, big + ar).argsort()
    col_order = torch.where(~taken, group * n + ar, big + ar).argsort()
    fill = torch.empty_like(assigned).scatter(0, row_order, col_order)
    return torch.where(assigned < 0, fill, assigned)
