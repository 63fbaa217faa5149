"""Classifier-free guidance settings of the latent priors: parsing and recording."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

GuidanceTerms = list[tuple[torch.Tensor, float]]


def guidance_terms(
    guidance: float | dict[str, float] | None,
    keys: Sequence[str],
    null_tokens_trained: bool = True,
) -> GuidanceTerms:
    """``None`` / one weight / ``{key: weight}`` as (mask of keys to drop, weight) pairs.

    Parameters
    ----------
    guidance
        No guidance, one weight for all keys jointly, or one weight per key.
    keys
        The model's condition keys (categorical first), the order of the masks.
    null_tokens_trained
        Whether condition dropout trained the null tokens that guidance contrasts with.
    """
    keys = list(keys)
    if guidance is None:
        return []
    if isinstance(guidance, dict):
        unknown = [k for k in guidance if k not in keys]
        if unknown:
            raise ValueError(
                f"guidance names unknown condition key(s) {unknown}; the model knows "
                f"{keys or 'none'}."
            )
        items = [(torch.tensor([k == key for k in keys]), w) for key, w in guidance.items()]
    else:
        if not keys:
            raise ValueError("guidance needs conditions, but the model has none.")
        items = [(torch.ones(len(keys), dtype=torch.bool), guidance)]
    terms = []
    for drop, w in items:
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"guidance weights must be numbers, got {w!r}.") from None
        if not math.isfinite(w):
            raise ValueError(f"guidance weights must be finite, got {w}.")
        terms.append((drop, w))
    if any(w != 0 for _, w in terms) and not null_tokens_trained:
        raise ValueError(
            "Guidance needs null tokens trained by condition dropout; this model was "
            "trained with condition_dropout=0 and uncond_dropout=0."
        )
    return terms


def guidance_metadata(guidance: float | dict[str, float] | None) -> float | dict[str, float]:
    """The guidance setting as recorded in ``uns["genvi"]``."""
    if guidance is None:
        return 0.0
    if isinstance(guidance, dict):
        return {str(k): float(v) for k, v in guidance.items()}
    return float(guidance)
