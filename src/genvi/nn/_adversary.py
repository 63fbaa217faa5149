"""Gradient reversal and attribute prediction heads (adversaries and label predictors)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-scale`` in the backward pass.

    A classifier trained on ``reverse_gradient(z)`` learns to predict its target from ``z``
    while the network producing ``z`` is pushed to make that prediction fail (Ganin & Lempitsky,
    2015).
    """
    return _ReverseGradient.apply(x, scale)


class AttributeHeads(nn.Module):
    """A shared MLP with one output head per known attribute.

    Categorical attributes get logits over their categories, ordered (continuous) attributes
    a single standardised value. Used both as adversaries on the unknown latent (behind
    :func:`reverse_gradient`) and as attribute predictors from expression (label imputation).

    Parameters
    ----------
    n_input
        Input size.
    n_cats_per_key
        Categories of each categorical attribute.
    n_ordered
        Number of ordered attributes.
    n_hidden
        Hidden units.
    n_layers
        Hidden layers of the shared trunk.
    dropout_rate
        Dropout in the trunk.
    """

    def __init__(
        self,
        n_input: int,
        n_cats_per_key: Sequence[int] = (),
        n_ordered: int = 0,
        n_hidden: int = 64,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        d = n_input
        for _ in range(n_layers):
            layers += [nn.Linear(d, n_hidden), nn.LayerNorm(n_hidden), nn.ReLU()]
            if dropout_rate > 0:
                layers.append(nn.Dropout(dropout_rate))
            d = n_hidden
        self.trunk = nn.Sequential(*layers)
        self.cat_heads = nn.ModuleList(nn.Linear(d, n) for n in n_cats_per_key)
        self.ordered_head = nn.Linear(d, n_ordered) if n_ordered else None

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Logits per categorical attribute and standardised values ``(n, n_ordered)``."""
        h = self.trunk(x)
        logits = [head(h) for head in self.cat_heads]
        values = self.ordered_head(h) if self.ordered_head is not None else None
        return logits, values


def attribute_losses(
    logits: Sequence[torch.Tensor],
    values: torch.Tensor | None,
    cat: torch.Tensor | None,
    ordered_std: torch.Tensor | None,
) -> torch.Tensor:
    """Per-cell sum of cross-entropies (labelled entries only) and squared errors.

    Parameters
    ----------
    logits
        One ``(n, n_categories)`` tensor per categorical attribute.
    values
        Predicted standardised ordered attributes ``(n, n_ordered)``.
    cat
        Integer codes ``(n, n_categorical)``; negative codes mark missing labels (no loss).
    ordered_std
        Standardised true ordered attributes ``(n, n_ordered)``.

    Returns
    -------
    Tensor of shape ``(n,)``.
    """
    n = logits[0].shape[0] if logits else values.shape[0]
    device = logits[0].device if logits else values.device
    total = torch.zeros(n, device=device)
    for j, lg in enumerate(logits):
        y = cat[:, j]
        labelled = y >= 0
        ce = nn.functional.cross_entropy(lg, y.clamp_min(0), reduction="none")
        total = total + torch.where(labelled, ce, torch.zeros_like(ce))
    if values is not None and ordered_std is not None:
        total = total + ((values - ordered_std) ** 2).sum(-1)
    return total
