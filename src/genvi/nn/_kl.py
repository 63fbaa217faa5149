"""One KL helper for every prior."""

from __future__ import annotations

import torch
from torch.distributions import Distribution, Independent, Normal, kl_divergence


def kl_to_prior(qz: Distribution, pz: Distribution, z: torch.Tensor | None = None) -> torch.Tensor:
    """KL(q(z|x) || p(z|c)) per cell.

    Analytic when both sides are (independent) Normals, otherwise a one-sample Monte Carlo
    estimate ``log q(z) - log p(z)`` at the posterior sample ``z``.

    Parameters
    ----------
    qz
        Posterior, a :class:`~torch.distributions.Normal` with batch shape ``(n, d)`` (scVI
        convention) or an ``Independent`` distribution with event shape ``(d,)``.
    pz
        Prior with batch shape ``(n,)`` and event shape ``(d,)``.
    z
        Posterior sample(s), ``(n, d)`` or ``(S, n, d)``; needed for the Monte Carlo case.

    Returns
    -------
    Tensor of shape ``(n,)`` (averaged over samples when ``z`` has a sample dimension).
    """
    q = _as_independent(qz)
    if isinstance(pz, Independent) and isinstance(pz.base_dist, Normal):
        return kl_divergence(q, pz)
    if z is None:
        raise ValueError("A posterior sample z is required for a Monte Carlo KL estimate.")
    kl = q.log_prob(z) - pz.log_prob(z)
    return kl.mean(0) if kl.dim() > 1 else kl


def _as_independent(qz: Distribution) -> Distribution:
    if isinstance(qz, Normal):
        return Independent(qz, 1)
    return qz
