"""Embedding of categorical and continuous conditions with per-key null tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn


class ConditionInputs(NamedTuple):
    """Raw conditions of a batch of cells, the one input type of every condition hook.

    Attributes
    ----------
    cat
        Integer codes ``(n, n_categorical_keys)``, or ``None`` without categorical keys.
    cont
        Raw continuous values ``(n, n_continuous_keys)``, or ``None``.
    keep
        Boolean mask ``(n, n_keys)`` (categorical keys first): ``False`` replaces that key by
        its null token. ``None`` keeps every key.
    """

    cat: torch.Tensor | None
    cont: torch.Tensor | None
    keep: torch.Tensor | None = None

    @property
    def n(self) -> int:
        """Number of cells."""
        for t in self:
            if t is not None:
                return t.shape[0]
        raise ValueError("ConditionInputs holds no tensor; the number of cells is unknown.")

    def to(self, device: torch.device | str) -> ConditionInputs:
        """The same inputs on ``device``."""
        return ConditionInputs(*(None if t is None else t.to(device) for t in self))


class ConditionEncoder(nn.Module):
    """Embed any number of categorical and continuous conditions.

    Each categorical key has its own embedding table and each continuous key its own small
    network; the per-key embeddings are concatenated. Every key also owns a learned *null*
    token that replaces its embedding when the key is dropped, so the same network can be
    queried with any subset of the conditions (generation from partial conditions and
    classifier-free guidance).

    Parameters
    ----------
    n_cats_per_key
        Number of categories of each categorical key.
    n_continuous
        Number of continuous keys.
    n_embed
        Size of the embedding of each key.
    continuous_mean, continuous_std
        Statistics used to standardise the continuous keys (training-data values); unit
        scale by default.
    dropout
        Probability of replacing each key's embedding with its null token during training,
        independently per cell and key.
    """

    def __init__(
        self,
        n_cats_per_key: Sequence[int] = (),
        n_continuous: int = 0,
        n_embed: int = 16,
        continuous_mean: Sequence[float] | None = None,
        continuous_std: Sequence[float] | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.n_cats_per_key = list(n_cats_per_key)
        self.n_continuous = n_continuous
        self.n_embed = n_embed
        self.dropout = dropout
        self.n_keys = len(self.n_cats_per_key) + n_continuous
        self.embeddings = nn.ModuleList(nn.Embedding(n, n_embed) for n in self.n_cats_per_key)
        self.continuous_nets = nn.ModuleList(
            nn.Sequential(nn.Linear(1, n_embed), nn.SiLU(), nn.Linear(n_embed, n_embed))
            for _ in range(n_continuous)
        )
        self.null_tokens = nn.Parameter(torch.zeros(self.n_keys, n_embed))
        if self.n_keys == 0:  # an unconditional model has no token to learn
            self.null_tokens.requires_grad_(False)
        mean = (
            torch.zeros(n_continuous)
            if continuous_mean is None
            else torch.as_tensor(list(continuous_mean), dtype=torch.float32)
        )
        std = (
            torch.ones(n_continuous)
            if continuous_std is None
            else torch.as_tensor(list(continuous_std), dtype=torch.float32)
        )
        self.register_buffer("continuous_mean", mean)
        self.register_buffer("continuous_std", std.clamp_min(1e-6))

    @property
    def n_output(self) -> int:
        """Size of the concatenated embedding (1 when there are no conditions)."""
        # an unconditional model still gets a constant input so prior networks keep a bias
        return max(self.n_keys * self.n_embed, 1)

    def forward(
        self,
        cat: torch.Tensor | None,
        cont: torch.Tensor | None,
        keep: torch.Tensor | None = None,
        n: int | None = None,
        return_mask: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Embed conditions.

        Parameters
        ----------
        cat
            Integer codes, shape ``(n, n_categorical_keys)``.
        cont
            Raw continuous values, shape ``(n, n_continuous)``.
        keep
            Boolean mask ``(n, n_keys)``: ``False`` replaces that key by its null token.
            Keys are ordered categorical first, then continuous. During training, keys are
            additionally dropped at random with probability ``dropout``.
        n
            Number of cells; needed only when no tensor is given (no condition keys).
        return_mask
            Also return the ``(n, n_keys)`` mask actually applied (``keep`` and the random
            dropout): False where a key got its null token.

        Returns
        -------
        Tensor of shape ``(n, n_output)``; a column of ones when there are no condition keys
        (so prior networks keep a bias). With ``return_mask``, ``(embedding, mask)``.
        """
        n = _n_rows(cat, cont, keep, n=n)
        if self.n_keys == 0:
            ones = torch.ones(n, 1, device=self.null_tokens.device)
            if return_mask:
                return ones, torch.ones(n, 0, dtype=torch.bool, device=ones.device)
            return ones
        parts = []
        for i, emb in enumerate(self.embeddings):
            parts.append(emb(cat[:, i].long()))
        for j, net in enumerate(self.continuous_nets):
            x = (cont[:, j : j + 1].float() - self.continuous_mean[j]) / self.continuous_std[j]
            parts.append(net(x))
        h = torch.stack(parts, dim=1)  # (n, n_keys, n_embed)
        mask = torch.ones(n, self.n_keys, dtype=torch.bool, device=h.device)
        if keep is not None:
            mask = mask & keep.to(h.device).bool()
        if self.training and self.dropout > 0:
            mask = mask & (torch.rand(n, self.n_keys, device=h.device) >= self.dropout)
        h = torch.where(mask.unsqueeze(-1), h, self.null_tokens.unsqueeze(0).expand_as(h))
        return (h.reshape(n, -1), mask) if return_mask else h.reshape(n, -1)

    def embed(self, inputs: ConditionInputs, n: int | None = None) -> torch.Tensor:
        """:meth:`forward` of a :class:`ConditionInputs`."""
        return self(inputs.cat, inputs.cont, inputs.keep, n=n)


def _n_rows(*tensors: torch.Tensor | None, n: int | None = None) -> int:
    for t in tensors:
        if t is not None:
            return t.shape[0]
    if n is None:
        raise ValueError("ConditionEncoder needs a condition tensor or n to infer the batch size.")
    return n
