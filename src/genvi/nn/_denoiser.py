"""Residual MLP denoiser / vector field over latents, conditioned on time and metadata."""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalTimeEmbedding(nn.Module):
    """Sinusoidal features of a scalar time in [0, 1] (Transformer-style frequencies).

    Parameters
    ----------
    n_features
        Output size (even).
    max_period
        Longest period, in units of ``t * 1000``.
    """

    def __init__(self, n_features: int = 64, max_period: float = 10_000.0):
        super().__init__()
        if n_features % 2:
            raise ValueError(f"n_features must be even, got {n_features}.")
        half = n_features // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed times of shape ``(n,)`` (or ``(n, 1)``) into ``(n, n_features)``."""
        args = 1000.0 * t.reshape(-1, 1).float() * self.freqs
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _ResidualBlock(nn.Module):
    def __init__(self, n_hidden: int, n_context: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(n_hidden)
        # scale and shift from (time, condition): FiLM conditioning of every block
        self.film = nn.Linear(n_context, 2 * n_hidden)
        self.net = nn.Sequential(
            nn.SiLU(),
            nn.Linear(n_hidden, n_hidden),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(n_hidden, n_hidden),
        )

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(context).chunk(2, dim=-1)
        return h + self.net(self.norm(h) * (1 + scale) + shift)


class ConditionalDenoiser(nn.Module):
    """Residual MLP ``f(z, t, c)`` with sinusoidal time embedding and FiLM conditioning.

    Used as the noise/velocity predictor of :class:`~genvi.module.LatentDiffusionModule`
    and the vector field of :class:`~genvi.module.LatentFlowModule`. The condition input is
    the output of a :class:`~genvi.nn.ConditionEncoder` (null tokens included), so one
    network serves conditional and unconditional predictions.

    Parameters
    ----------
    n_latent
        Dimension of z (input and output).
    n_cond
        Size of the condition embedding.
    n_hidden
        Width of the residual stream.
    n_layers
        Residual blocks.
    n_time
        Size of the sinusoidal time embedding.
    dropout
        Dropout inside the blocks.
    """

    def __init__(
        self,
        n_latent: int,
        n_cond: int,
        n_hidden: int = 256,
        n_layers: int = 3,
        n_time: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.time_embedding = SinusoidalTimeEmbedding(n_time)
        n_context = n_hidden
        self.context = nn.Sequential(
            nn.Linear(n_time + n_cond, n_context), nn.SiLU(), nn.Linear(n_context, n_context)
        )
        self.input = nn.Linear(n_latent, n_hidden)
        self.blocks = nn.ModuleList(
            _ResidualBlock(n_hidden, n_context, dropout) for _ in range(n_layers)
        )
        self.output = nn.Sequential(
            nn.LayerNorm(n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_latent)
        )
        # start as the zero function: training begins from a neutral prediction
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Predict for latents ``z`` ``(n, d)`` at times ``t`` ``(n,)`` under conditions ``c``."""
        if t.dim() == 0:
            t = t.expand(z.shape[0])
        context = self.context(torch.cat([self.time_embedding(t), c], dim=-1))
        h = self.input(z)
        for block in self.blocks:
            h = block(h, context)
        return self.output(h)
