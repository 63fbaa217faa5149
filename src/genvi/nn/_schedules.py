"""Noise schedules for latent diffusion."""

from __future__ import annotations

import math

import torch


class CosineSchedule:
    """Variance-preserving cosine schedule in continuous time (Nichol & Dhariwal 2021).

    ``z_t = alpha(t) z_0 + sigma(t) eps`` with ``alpha(t)^2 + sigma(t)^2 = 1`` and
    ``alpha(t) = cos(pi/2 * (t + s) / (1 + s)) / cos(pi/2 * s / (1 + s))``; ``t`` is clipped
    to ``[t_min, t_max]`` so that the log-SNR stays finite at both ends.

    Parameters
    ----------
    s
        Offset that keeps the noise level away from zero near ``t = 0``.
    t_min, t_max
        Clipping of ``t``.
    """

    def __init__(self, s: float = 0.008, t_min: float = 1e-4, t_max: float = 0.9946):
        self.s = s
        self.t_min = t_min
        self.t_max = t_max
        self._norm = math.cos(math.pi / 2 * s / (1 + s))

    def _clip(self, t: torch.Tensor) -> torch.Tensor:
        return t.clamp(self.t_min, self.t_max)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """Signal scale ``alpha(t)``."""
        t = self._clip(t)
        return (torch.cos(math.pi / 2 * (t + self.s) / (1 + self.s)) / self._norm).clamp(0, 1)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise scale ``sigma(t) = sqrt(1 - alpha(t)^2)``."""
        return (1 - self.alpha(t) ** 2).clamp_min(1e-12).sqrt()

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t) = log(alpha / sigma)`` (half the log signal-to-noise ratio)."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))
