"""Samplers of the latent diffusion prior, registered by name (``generate(sampler=...)``).

A sampler turns one denoising prediction into the next latent: given the current latent ``z``
at time ``t``, the predicted clean latent ``z0`` and noise ``eps``, it returns the latent at
``t_next``. The loop over times, guidance and the final clean prediction belong to
:meth:`genvi.module.LatentDiffusionModule.sample`; a new sampler is one registered class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from genvi._registry import Registry
from genvi.nn import CosineSchedule


class DiffusionSampler(ABC):
    """One sampling run (a fresh instance per run, so multistep samplers may keep state).

    Parameters
    ----------
    schedule
        The noise schedule of the model.
    """

    #: whether the map from the starting noise to the sample is deterministic (usable for
    #: DDIM-style inversion and reproducible transport)
    deterministic: bool = True

    def __init__(self, schedule: CosineSchedule):
        self.schedule = schedule

    @abstractmethod
    def step(
        self,
        z: torch.Tensor,
        z0: torch.Tensor,
        eps: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
    ) -> torch.Tensor:
        """The latent at ``t_next`` (times are ``(n,)`` tensors, ``t_next < t``)."""


#: Samplers of :class:`~genvi.module.LatentDiffusionModule`.
SAMPLERS: Registry[type[DiffusionSampler]] = Registry("sampler")


def _ab(schedule: CosineSchedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return schedule.alpha(t).unsqueeze(-1), schedule.sigma(t).unsqueeze(-1)


@SAMPLERS.register("ddpm", "ancestral DDPM, stochastic; needs hundreds of steps.")
class DDPMSampler(DiffusionSampler):
    """Ancestral sampling from the exact Gaussian posterior q(z_next | z, z0)."""

    deterministic = False

    def step(self, z, z0, eps, t, t_next):  # noqa: D102
        a, s = _ab(self.schedule, t_next)
        a_t, s_t = _ab(self.schedule, t)
        a_ts = a_t / a
        var_ts = s_t**2 - a_ts**2 * s**2
        mean = (a_ts * s**2 / s_t**2) * z + (a * var_ts / s_t**2) * z0
        return mean + (var_ts * s**2 / s_t**2).clamp_min(0).sqrt() * torch.randn_like(z)


@SAMPLERS.register("ddim", "deterministic DDIM (also used for inversion).")
class DDIMSampler(DiffusionSampler):
    """DDIM with eta = 0: keep the predicted noise, move the clean prediction."""

    def step(self, z, z0, eps, t, t_next):  # noqa: D102
        a, s = _ab(self.schedule, t_next)
        return a * z0 + s * eps


@SAMPLERS.register("dpm++", "DPM-Solver++(2M), deterministic, accurate in 10-25 steps (default).")
class DPMSolverPP2M(DiffusionSampler):
    """Second-order multistep data-prediction solver in log-SNR (Lu et al. 2022)."""

    def __init__(self, schedule: CosineSchedule):
        super().__init__(schedule)
        self._z0_prev: torch.Tensor | None = None
        self._h_prev: torch.Tensor | None = None

    def step(self, z, z0, eps, t, t_next):  # noqa: D102
        sch = self.schedule
        lam, lam_next = sch.log_snr(t[:1]), sch.log_snr(t_next[:1])
        h = lam_next - lam
        d = z0
        if self._z0_prev is not None:
            r = self._h_prev / h
            d = (1 + 1 / (2 * r)) * z0 - (1 / (2 * r)) * self._z0_prev
        a, s = _ab(sch, t_next)
        s_t = sch.sigma(t).unsqueeze(-1)
        self._z0_prev, self._h_prev = z0, h
        return (s / s_t) * z - a * torch.expm1(-h) * d
