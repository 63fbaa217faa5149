"""An exponential moving average of the weights, swapped in when training ends."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging


class RampedEMA:
    """``AveragedModel`` update: an EMA whose decay ramps up to ``decay``.

    After ``n`` updates the decay is ``min(decay, (1 + n) / (10 + n))``, so a short run is
    not dominated by its initial, untrained weights (a fixed 0.99 would keep 55 % of them
    after 60 steps); from a few hundred steps on it is ``decay``. A class rather than a
    closure so that the callback pickles (Lightning's ``ddp_spawn``).
    """

    def __init__(self, decay: float) -> None:
        self.decay = float(decay)

    def __call__(
        self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor
    ) -> torch.Tensor:
        # tensor arithmetic on the weights' device: no host sync per parameter and step
        n = num_averaged.to(averaged.dtype)
        d = torch.clamp((1.0 + n) / (10.0 + n), max=self.decay)
        return averaged * d + current * (1.0 - d)


class WeightEMA(WeightAveraging):
    """Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` with an EMA.

    The average is updated after every optimizer step (parameters and buffers, e.g.
    BatchNorm statistics), used for validation, and copied into the model when training
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
        super().__init__(avg_fn=RampedEMA(decay))
        self.decay = float(decay)
