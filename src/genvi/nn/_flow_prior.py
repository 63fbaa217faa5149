"""Conditional normalizing-flow prior p(z | c) built from pyro-ppl transforms."""

from __future__ import annotations

import pyro.distributions.transforms as T
import torch
from torch import nn
from torch.distributions import Distribution, TransformedDistribution

from genvi.nn._prior_base import Prior, register_prior
from genvi.nn._priors import ConditionalGaussianPrior


@register_prior("flow", "conditional normalizing flow (pyro couplings and splines).")
class ConditionalFlowPrior(Prior):
    """p(z | c): a conditional Gaussian base pushed through conditional flow layers.

    Each layer is a pyro conditional affine coupling (dependence between latent dimensions)
    followed by a fixed permutation; ``n_splines > 0`` adds element-wise conditional spline
    layers at the end, which bend the marginals (multimodality per dimension). Every
    transform is conditioned on the condition embedding, so the prior can represent
    sub-populations inside a condition. ``log_prob`` is exact (change of variables),
    ``rsample`` is reparameterised; the KL to it is estimated by Monte Carlo.

    Parameters
    ----------
    n_latent, n_cond
        As in :class:`~genvi.nn.Prior`.
    n_flows
        Number of coupling + permutation layers.
    n_hidden
        Width of the conditioner networks.
    n_splines
        Number of element-wise conditional spline layers appended.
    count_bins, bound
        Spline resolution and the interval ``[-bound, bound]`` it acts on.
    seed
        Seed of the fixed permutations.
    """

    has_noise_map = True
    has_transport = True

    def __init__(
        self,
        n_latent: int,
        n_cond: int,
        n_flows: int = 4,
        n_hidden: int = 64,
        n_splines: int = 1,
        count_bins: int = 8,
        bound: float = 5.0,
        seed: int = 0,
    ):
        super().__init__(n_latent, n_cond)
        if n_latent < 2:
            raise ValueError("A coupling flow needs n_latent >= 2.")
        self.base = ConditionalGaussianPrior(n_latent, n_cond, n_hidden=n_hidden)
        self.couplings = nn.ModuleList(
            T.conditional_affine_coupling(n_latent, n_cond, hidden_dims=[n_hidden, n_hidden])
            for _ in range(n_flows)
        )
        self.splines = nn.ModuleList(
            T.conditional_spline(
                n_latent, n_cond, hidden_dims=[n_hidden], count_bins=count_bins, bound=bound
            )
            for _ in range(n_splines)
        )
        generator = torch.Generator().manual_seed(seed)
        # permutations are buffers: pyro's Permute is not part of the state dict
        for i in range(n_flows):
            self.register_buffer(f"perm_{i}", torch.randperm(n_latent, generator=generator))
        self._identity_init()

    def _identity_init(self) -> None:
        """Start every layer near the identity so early training matches the base prior."""
        for coupling in self.couplings:
            last = coupling.nn.layers[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def _transforms(self, c: torch.Tensor) -> list:
        transforms = []
        for i, coupling in enumerate(self.couplings):
            transforms.append(coupling.condition(c))
            transforms.append(T.Permute(getattr(self, f"perm_{i}")))
        transforms.extend(spline.condition(c) for spline in self.splines)
        return transforms

    def forward(self, c: torch.Tensor) -> Distribution:
        """Return p(z | c) for condition embeddings ``(n, n_cond)``."""
        return TransformedDistribution(self.base(c), self._transforms(c))

    def to_noise(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Invert the flow and standardise under the base: the exogenous noise of z."""
        for t in reversed(self._transforms(c)):
            z = t.inv(z)
        return self.base.to_noise(z, c)

    def from_noise(self, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_noise`."""
        z = self.base.from_noise(u, c)
        for t in self._transforms(c):
            z = t(z)
        return z
