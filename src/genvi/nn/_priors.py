"""Priors p(z | c): modules whose ``forward(c)`` returns a torch Distribution over z."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from genvi.nn._prior_base import Prior, register_prior


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, n_hidden),
        nn.SiLU(),
        nn.Linear(n_hidden, n_hidden),
        nn.SiLU(),
        nn.Linear(n_hidden, n_out),
    )


@register_prior("normal", "N(0, I), ignoring the conditions (scVI's prior).")
class StandardNormalPrior(Prior):
    """N(0, I), ignoring the conditions (the scVI prior).

    Parameters
    ----------
    n_latent, n_cond
        As in :class:`~genvi.nn.Prior` (``n_cond`` is not used).
    """

    has_noise_map = True
    has_transport = True

    def __init__(self, n_latent: int, n_cond: int = 1):
        super().__init__(n_latent, n_cond)
        self.register_buffer("_zero", torch.zeros(1))

    def forward(self, c: torch.Tensor) -> Distribution:
        """Return the prior for a batch of (ignored) condition embeddings ``(n, n_cond)``."""
        loc = self._zero.expand(c.shape[0], self.n_latent)
        return Independent(Normal(loc, torch.ones_like(loc)), 1)

    def to_noise(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Map z to the exogenous noise u with z = f(u; c) (identity here)."""
        return z

    def from_noise(self, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_noise`."""
        return u


@register_prior("gaussian", "conditional diagonal Gaussian N(mu(c), sigma(c)^2) (default).")
class ConditionalGaussianPrior(Prior):
    """Diagonal Gaussian N(mu(c), diag sigma(c)^2) with a small network on the condition embedding.

    Its transport (``from_noise(to_noise(z, c_from), c_to)``) is the optimal-transport map
    between the two Gaussians: the standardised offset is kept.

    Parameters
    ----------
    n_latent, n_cond
        As in :class:`~genvi.nn.Prior`.
    n_hidden
        Width of the prior network.
    """

    has_noise_map = True
    has_transport = True

    def __init__(self, n_latent: int, n_cond: int, n_hidden: int = 128):
        super().__init__(n_latent, n_cond)
        self.net = _mlp(n_cond, n_hidden, 2 * n_latent)
        # start at N(0, I) so early training behaves like scVI
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _params(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(c).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale + 0.5413) + 1e-4  # softplus(0.5413) = 1

    def forward(self, c: torch.Tensor) -> Distribution:
        """Return p(z | c) for condition embeddings ``(n, n_cond)``."""
        loc, scale = self._params(c)
        return Independent(Normal(loc, scale), 1)

    def to_noise(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Standardise z under p(z | c): the exogenous noise u with z = mu(c) + sigma(c) u."""
        loc, scale = self._params(c)
        return (z - loc) / scale

    def from_noise(self, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_noise`."""
        loc, scale = self._params(c)
        return loc + scale * u


@register_prior("mog", "conditional mixture of diagonal Gaussians (sub-populations).")
class MixtureOfGaussiansPrior(Prior):
    """Conditional mixture of diagonal Gaussians.

    Component means are learned and shifted by a condition-dependent offset; the mixture
    weights are a function of the condition, so each condition can use its own subset of
    components (sub-populations inside a condition). It has a transport but no noise map: a
    mixture is not a bijective image of one Gaussian.

    Parameters
    ----------
    n_latent, n_cond
        As in :class:`~genvi.nn.Prior`.
    n_components
        Number of mixture components.
    n_hidden
        Width of the networks on the condition embedding.
    """

    has_transport = True

    def __init__(self, n_latent: int, n_cond: int, n_components: int = 10, n_hidden: int = 128):
        super().__init__(n_latent, n_cond)
        self.n_components = n_components
        self.locs = nn.Parameter(torch.randn(n_components, n_latent))
        self.raw_scales = nn.Parameter(torch.zeros(n_components, n_latent))
        self.logits_net = _mlp(n_cond, n_hidden, n_components)
        self.shift_net = _mlp(n_cond, n_hidden, n_latent)
        nn.init.zeros_(self.logits_net[-1].weight)
        nn.init.zeros_(self.logits_net[-1].bias)
        nn.init.zeros_(self.shift_net[-1].weight)
        nn.init.zeros_(self.shift_net[-1].bias)

    def forward(self, c: torch.Tensor) -> Distribution:
        """Return p(z | c) for condition embeddings ``(n, n_cond)``."""
        n = c.shape[0]
        loc = self.locs.unsqueeze(0) + self.shift_net(c).unsqueeze(1)  # (n, K, d)
        scale = (nn.functional.softplus(self.raw_scales) + 1e-4).unsqueeze(0).expand_as(loc)
        mix = Categorical(logits=self.logits_net(c))
        comp = Independent(Normal(loc, scale), 1)
        assert comp.batch_shape == (n, self.n_components)
        return MixtureSameFamily(mix, comp)

    def transport(self, z: torch.Tensor, c_from: torch.Tensor, c_to: torch.Tensor) -> torch.Tensor:
        """Move z by the change of the condition's shift of the component means.

        This transports the shared location change exactly; a change of mixture weights
        between conditions has no per-cell map and is not transported.
        """
        return z - self.shift_net(c_from) + self.shift_net(c_to)
