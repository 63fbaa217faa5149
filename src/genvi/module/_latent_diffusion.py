"""LatentDiffusionModule: a conditional diffusion model of a base model's latents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from tqdm.auto import tqdm

from genvi._registry import document_options
from genvi.module._diffusion_samplers import SAMPLERS
from genvi.module._latent_prior import LatentPriorModule
from genvi.nn import ConditionInputs, CosineSchedule


@document_options(sampler=SAMPLERS)
class LatentDiffusionModule(LatentPriorModule):
    """Variance-preserving diffusion (cosine schedule) over standardised latents.

    Trained with the simple denoising objective in continuous time; the network predicts
    the noise (``prediction="eps"``) or the velocity ``v = alpha * eps - sigma * z0``
    (``"v"``). Samplers (:data:`genvi.module.SAMPLERS`), each with any number of steps chosen
    at generation time:

    {sampler_options}

    Parameters
    ----------
    prediction
        ``"eps"`` or ``"v"``.
    **kwargs
        See :class:`~genvi.module.LatentPriorModule`.
    """

    #: name of the training objective in ``history`` (``denoising_loss_train``...)
    objective = "denoising_loss"

    def __init__(self, *args, prediction: Literal["eps", "v"] = "v", **kwargs):
        super().__init__(*args, **kwargs)
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}.")
        self.prediction = prediction
        self.schedule = CosineSchedule()

    def per_cell_loss(
        self, z: torch.Tensor, c: torch.Tensor, groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Squared error of the eps / v prediction at a uniformly drawn time."""
        t = torch.rand(z.shape[0], device=z.device)
        eps = torch.randn_like(z)
        a = self.schedule.alpha(t).unsqueeze(-1)
        s = self.schedule.sigma(t).unsqueeze(-1)
        out = self.net(a * z + s * eps, t, c)
        target = eps if self.prediction == "eps" else a * eps - s * z
        return ((out - target) ** 2).sum(-1)

    def denoise(
        self,
        zt: torch.Tensor,
        t: torch.Tensor,
        cond: ConditionInputs,
        guidance: Sequence[tuple[torch.Tensor, float]] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted clean latent and noise ``(z0, eps)`` at ``(zt, t)``, with guidance."""
        out = self.guided(self.net, zt, t, cond, guidance)
        a = self.schedule.alpha(t).unsqueeze(-1)
        s = self.schedule.sigma(t).unsqueeze(-1)
        if self.prediction == "eps":
            return (zt - s * out) / a, out
        return a * zt - s * out, s * zt + a * out

    @torch.no_grad()
    def sample(
        self,
        cond: ConditionInputs,
        n_steps: int = 50,
        sampler: str = "dpm++",
        guidance: Sequence[tuple[torch.Tensor, float]] = (),
        progress: bool = False,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample latents (in the base model's space) for the given conditions.

        Parameters
        ----------
        cond
            Conditions of the cells to sample (one row per cell).
        n_steps
            Network evaluations (times the number of guidance variants).
        sampler
            A name in :data:`genvi.module.SAMPLERS`.
        guidance
            Guidance terms ``(keys to drop, weight)``; see :meth:`guided`.
        progress
            Show a progress bar over the steps.
        noise
            Starting noise (standard normal by default); with ``"ddim"`` the map from noise
            to latents is deterministic.
        """
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}.")
        step = SAMPLERS[sampler](self.schedule).step
        n = cond.keep.shape[0]
        dev = self.latent_mean.device
        times = torch.linspace(self.schedule.t_max, 0.0, n_steps + 1, device=dev)
        z = torch.randn(n, self.n_latent, device=dev) if noise is None else noise.to(dev)
        for i in tqdm(range(n_steps), disable=not progress, desc=f"{sampler} sampling"):
            t, t_next = times[i].expand(n), times[i + 1].expand(n)
            z0, eps = self.denoise(z, t, cond, guidance)
            # the last step lands on the clean prediction
            z = z0 if i == n_steps - 1 else step(z, z0, eps, t, t_next)
        return self.unstandardize(z)

    @torch.no_grad()
    def from_noise(self, noise: torch.Tensor, cond: ConditionInputs, n_steps: int = 50):
        """Deterministic (DDIM) map from noise to latents (base space) under ``cond``."""
        return self.sample(cond, n_steps=n_steps, sampler="ddim", noise=noise)

    @torch.no_grad()
    def to_noise(self, z: torch.Tensor, cond: ConditionInputs, n_steps: int = 50):
        """DDIM inversion: latents (base space) to the noise that generates them under ``cond``."""
        x = self.standardize(z)
        n = x.shape[0]
        step = SAMPLERS["ddim"](self.schedule).step
        times = torch.linspace(0.0, self.schedule.t_max, n_steps + 1, device=x.device)
        for i in range(n_steps):
            t, t_next = times[i].expand(n), times[i + 1].expand(n)
            z0, eps = self.denoise(x, t, cond)
            x = step(x, z0, eps, t, t_next)
        return x
