"""An exponential moving average of the weights, swapped in when training ends."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import WeightAveraging


class RampedEMA:
    """``AveragedModel`` update (``multi_avg_fn``): an EMA whose decay ramps up to ``decay``.

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))``, so a short run is
    not dominated by its initial, untrained weights (a fixed 0.99 would keep 55 % of them
    after 60 steps); from a few hundred steps on it is ``decay``. A class rather than a
    closure so that the callback pickles (Lightning's ``ddp_spawn``).
    """

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)

    @torch.no_grad()
    def __call__(
        self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged
    ) -> None:
        # one fused update per device and dtype (as torch's get_ema_multi_avg_fn), not a
        # handful of kernels per tensor: this runs after every optimizer step
        n = float(num_averaged)
        d = min(self.decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            # Integer and boolean buffers are counters and indices (BatchNorm's
            # num_batches_tracked, a flow's permutations), not weights: they take the current
            # values. Averaging them and casting back truncates (9 * 0.99 + 9 * 0.01 -> 8),
            # which scrambled the flow prior's permutations (torch's get_ema_multi_avg_fn
            # does that cast).
            torch._foreach_copy_(averaged, current)


class WeightEMA(WeightAveraging):
    """Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` with an EMA.

    The average is updated after every optimizer step (parameters and floating-point
    buffers, e.g. BatchNorm statistics; integer buffers such as a flow's permutations keep
    their current values), used for validation, and copied into the model when training
    ends, so the trained model *is* the average.

    Parameters
    ----------
    decay
        Weight of the running average at each step, in ``(0, 1)``: about the last
        ``1 / (1 - decay)`` steps are averaged (0.99: ~100 steps).
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(
                f"ema_decay must lie strictly between 0 and 1 (e.g. 0.99), got {decay!r}; "
                "pass ema_decay=None to train without averaging."
            )
        super().__init__(multi_avg_fn=RampedEMA(decay))


def check_ema_decay(ema_decay: float | None | str) -> None:
    """Refuse anything but a number in (0, 1), ``None`` or ``"default"``, before training."""
    if ema_decay is None or ema_decay == "default":
        return
    if isinstance(ema_decay, str):
        raise ValueError(
            f"ema_decay must be a number in (0, 1), None or 'default', got {ema_decay!r}."
        )
    WeightEMA(ema_decay)  # its own range check, with the message users see from train()


def default_ema_decay_for(decay: float | None, min_steps: int, steps: int | None) -> float | None:
    """A model's default ``decay`` for a run of ``steps`` optimizer steps.

    ``None`` (no average) when the run is shorter than ``min_steps``: while a model still
    improves quickly, the average lags behind it. ``steps=None`` (not known in advance, e.g.
    a user's datamodule) counts as long enough.
    """
    if decay is None or steps is None or steps >= min_steps:
        return decay
    return None


def add_ema_callback(trainer_kwargs: dict[str, Any], ema_decay: float | None) -> None:
    """Put a :class:`WeightEMA` first among ``trainer_kwargs["callbacks"]`` (if a decay).

    First, so that the user's own callbacks see the averaged weights when training ends.
    """
    if ema_decay is not None:
        callbacks = trainer_kwargs.get("callbacks") or []
        trainer_kwargs["callbacks"] = [WeightEMA(ema_decay), *callbacks]
