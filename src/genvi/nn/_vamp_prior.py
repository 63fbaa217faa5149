"""Condition-aware VampPrior: a mixture of encoder posteriors of learned pseudo-inputs."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from genvi.nn._prior_base import Encode, Prior, register_prior
from genvi.nn._priors import _mlp


@register_prior("vamp", "condition-aware VampPrior: mixture of encoded learned pseudo-cells.")
class VampPrior(Prior):
    """p(z | c) = sum_k w_k(c) q(z | u_k, c) with learned pseudo-inputs u_k.

    Components are the encoder's posteriors of ``n_pseudo`` learned pseudo-cells, each
    encoded *under the queried condition*, and the mixture weights are a function of the
    condition. A pseudo-input therefore stands for one sub-population that exists in every
    condition, shifted by the condition, and the weights say how common it is there; this
    also gives a per-cell transport between conditions (same pseudo-input, other condition)
    for counterfactuals. The encoder is shared with the VAE (Tomczak & Welling, 2018) and is
    attached with :meth:`attach_encoder`.

    Parameters
    ----------
    n_latent, n_cond
        As in :class:`~genvi.nn.Prior`.
    n_input
        Size of the encoder's expression input (genes).
    n_pseudo
        Number of pseudo-inputs (mixture components).
    n_hidden
        Width of the mixture-weight network.
    """

    has_transport = True
    # a cell moves with its most responsible pseudo-input; near the boundary of two
    # components the way back may pick the other one
    transport_invertible = False
    needs_encoder = True
    needs_data_init = True

    def __init__(
        self,
        n_latent: int,
        n_cond: int,
        n_input: int,
        n_pseudo: int = 50,
        n_hidden: int = 128,
    ):
        super().__init__(n_latent, n_cond)
        self.n_pseudo = n_pseudo
        self.pseudo_inputs = nn.Parameter(torch.rand(n_pseudo, n_input))
        self.logits_net = _mlp(n_cond, n_hidden, n_pseudo)
        nn.init.zeros_(self.logits_net[-1].weight)
        nn.init.zeros_(self.logits_net[-1].bias)
        self.__dict__["_encode"] = None  # not a submodule: the encoder belongs to the VAE

    def attach_encoder(self, encode: Encode) -> None:
        """Give the prior the VAE's encoder ``encode(x_in, c) -> Normal``."""
        self.__dict__["_encode"] = encode

    @torch.no_grad()
    def initialize_from_data(self, x_in: torch.Tensor) -> None:
        """Start the pseudo-inputs at (encoder inputs of) real training cells."""
        idx = torch.randint(0, x_in.shape[0], (self.n_pseudo,))
        self.pseudo_inputs.copy_(x_in[idx].to(self.pseudo_inputs))

    def _components(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Component locs and scales ``(n, K, d)``: every pseudo-input under each cell's c."""
        if self._encode is None:
            raise RuntimeError("VampPrior needs the VAE's encoder: call attach_encoder first.")
        # Conditions repeat within a batch: encode the pseudo-inputs once per distinct c.
        # torch.unique has a data-dependent output size, so on a GPU it waits for the device
        # once per call; its size is then known on the host (no second read-back). Encoding
        # the pseudo-inputs once per cell instead would avoid that wait but cost n / u times
        # the encoder work (n_pseudo x n cells, e.g. 128 / 8 = 16x for 8 conditions in a
        # batch of 128) and change the encoder's BatchNorm statistics.
        uniq, inverse = torch.unique(c.detach(), dim=0, return_inverse=True)
        u, k = uniq.shape[0], self.n_pseudo
        rows = torch.arange(c.shape[0], device=c.device)
        first = torch.full((u,), c.shape[0], device=c.device, dtype=rows.dtype)
        first = first.scatter_reduce(0, inverse, rows, reduce="amin")
        unique_c = c[first]  # gathered, so gradients reach the condition encoder
        x = self.pseudo_inputs.unsqueeze(0).expand(u, -1, -1).reshape(u * k, -1)
        cc = unique_c.unsqueeze(1).expand(-1, k, -1).reshape(u * k, -1)
        q = self._encode(x, cc)
        loc = q.loc.reshape(u, k, -1)[inverse]
        scale = q.scale.reshape(u, k, -1)[inverse]
        return loc, scale

    def forward(self, c: torch.Tensor) -> Distribution:
        """Return p(z | c) for condition embeddings ``(n, n_cond)``."""
        loc, scale = self._components(c)
        mix = Categorical(logits=self.logits_net(c))
        return MixtureSameFamily(mix, Independent(Normal(loc, scale), 1))

    def _responsible(self, z: torch.Tensor, c: torch.Tensor):
        loc, scale = self._components(c)
        log_w = torch.log_softmax(self.logits_net(c), -1)
        log_p = Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1) + log_w
        k = log_p.argmax(-1)
        rows = torch.arange(z.shape[0], device=z.device)
        return loc[rows, k], scale[rows, k], k

    def transport(self, z: torch.Tensor, c_from: torch.Tensor, c_to: torch.Tensor) -> torch.Tensor:
        """Move z to condition ``c_to``: same pseudo-input component, same standardised offset."""
        loc, scale, k = self._responsible(z, c_from)
        loc_to, scale_to = self._components(c_to)
        rows = torch.arange(z.shape[0], device=z.device)
        return loc_to[rows, k] + scale_to[rows, k] * (z - loc) / scale
