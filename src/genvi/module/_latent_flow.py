"""LatentFlowModule: conditional flow matching over a base model's latents."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, get_args

import torch

from genvi._registry import document_options
from genvi.module._latent_prior import LatentPriorModule
from genvi.module._ode import ODE_METHODS, integrate
from genvi.module._ot import OTSolver, ot_permutation
from genvi.nn import ConditionInputs


@document_options(ode=ODE_METHODS)
class LatentFlowModule(LatentPriorModule):
    """Conditional flow matching on the linear path from N(0, I) to standardised latents.

    ``z_t = (1 - t) z_0 + t z_1`` with ``z_0 ~ N(0, I)``; the network regresses the velocity
    ``z_1 - z_0``. Samples integrate the learned ODE from ``t = 0`` to ``1`` (fixed-step or
    adaptive with torchdiffeq); log-densities follow from the continuous change of
    variables (exact trace or Hutchinson's estimator). Solvers
    (:data:`genvi.module.ODE_METHODS`):

    {ode_options}

    Parameters
    ----------
    ot_pairing
        Pair noise and latents inside each minibatch by optimal transport (per condition
        group, so the noise stays N(0, I) given the condition): straighter paths, fewer
        steps needed.
    ot_solver
        ``"auto"`` (default): the exact Hungarian assignment (scipy) when training on the
        CPU, and on a GPU an auction solver that runs on the device with no host
        synchronisation (within about 1% of the exact pairing cost); ``"exact"`` or
        ``"device"`` force one (see :func:`genvi.module._ot.ot_permutation`).
    **kwargs
        See :class:`~genvi.module.LatentPriorModule`.
    """

    #: name of the training objective in ``history`` (``flow_matching_loss_train``...)
    objective = "flow_matching_loss"

    def __init__(self, *args, ot_pairing: bool = True, ot_solver: OTSolver = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        if ot_solver not in get_args(OTSolver):
            raise ValueError(f"Unknown ot_solver {ot_solver!r}; use 'auto', 'exact' or 'device'.")
        self.ot_pairing = ot_pairing
        self.ot_solver = ot_solver

    def per_cell_loss(
        self, z: torch.Tensor, c: torch.Tensor, groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Squared error of the regressed velocity at a uniformly drawn time."""
        noise = torch.randn_like(z)
        if self.ot_pairing:
            keys = c if groups is None else groups
            noise = noise[ot_permutation(noise, z, keys, self.ot_solver)]
        t = torch.rand(z.shape[0], device=z.device)
        zt = (1 - t).unsqueeze(-1) * noise + t.unsqueeze(-1) * z
        return ((self.net(zt, t, c) - (z - noise)) ** 2).sum(-1)

    def velocity(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        cond: ConditionInputs,
        guidance: Sequence[tuple[torch.Tensor, float]] = (),
    ) -> torch.Tensor:
        """Guided velocity at ``(z, t)``; ``t`` scalar or ``(n,)``."""
        t = t.expand(z.shape[0]) if t.dim() == 0 else t
        return self.guided(self.net, z, t, cond, guidance)

    def _integrate(self, z, t0, t1, cond, guidance, n_steps, method, rtol, atol):
        def field(t, x):
            return self.velocity(x, t, cond, guidance)

        return integrate(field, z, t0, t1, method, n_steps, rtol, atol)

    @torch.no_grad()
    def sample(
        self,
        cond: ConditionInputs,
        n_steps: int = 20,
        method: str = "heun",
        guidance: Sequence[tuple[torch.Tensor, float]] = (),
        rtol: float = 1e-5,
        atol: float = 1e-5,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Integrate the ODE from noise to latents (base model's space).

        Parameters
        ----------
        cond
            Conditions, one row per cell.
        n_steps
            Steps of a fixed-step ``method`` (ignored by ``"dopri5"``).
        method
            A name in :data:`genvi.module.ODE_METHODS`.
        guidance
            Guidance terms ``(keys to drop, weight)``.
        rtol, atol
            Tolerances of ``"dopri5"``.
        temperature
            Scale of the starting noise, ``temperature * u`` with u ~ N(0, I).
        """
        n = cond.keep.shape[0]
        z = temperature * torch.randn(n, self.n_latent, device=self.latent_mean.device)
        z = self._integrate(z, 0.0, 1.0, cond, guidance, n_steps, method, rtol, atol)
        return self.unstandardize(z)

    @torch.no_grad()
    def to_noise(
        self,
        z: torch.Tensor,
        cond: ConditionInputs,
        n_steps: int = 20,
        method: str = "heun",
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> torch.Tensor:
        """Invert the flow: latents (base space) to their noise under ``cond``."""
        z = self.standardize(z)
        return self._integrate(z, 1.0, 0.0, cond, (), n_steps, method, rtol, atol)

    @torch.no_grad()
    def from_noise(
        self,
        noise: torch.Tensor,
        cond: ConditionInputs,
        n_steps: int = 20,
        method: str = "heun",
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> torch.Tensor:
        """Push noise through the flow under ``cond`` (base model's latent space)."""
        z = self._integrate(noise, 0.0, 1.0, cond, (), n_steps, method, rtol, atol)
        return self.unstandardize(z)

    def log_prob(
        self,
        z: torch.Tensor,
        cond: ConditionInputs,
        trace: Literal["exact", "hutchinson"] = "exact",
        method: str = "heun",
        n_steps: int = 20,
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> torch.Tensor:
        """Log-density p(z | c) of base-space latents (continuous change of variables).

        Integrates ``d/dt [z, delta] = [v, div v]`` from ``t = 1`` back to 0 so that
        ``log p_1(z) = log N(z_0; 0, I) + delta(0)``, then accounts for the standardisation.

        Parameters
        ----------
        z
            Latents, ``(n, n_latent)``.
        cond
            Their conditions.
        trace
            ``"exact"`` divergence (one backward pass per latent dimension) or
            ``"hutchinson"`` (one Rademacher probe, unbiased, fixed along the path).
        method, n_steps, rtol, atol
            ODE solver settings. Heun with 20 steps matched adaptive dopri5 (rtol 1e-5) to
            0.03 nats on average (0.1 at most) on simulated 10-d latents, with an eighth of
            the network evaluations.
        """
        if trace not in ("exact", "hutchinson"):
            raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}.")
        x1 = self.standardize(z.detach())
        probe = torch.randint(0, 2, x1.shape, device=x1.device).to(x1.dtype) * 2 - 1

        def field(t, state):
            x = state[0]
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                v = self.velocity(x, t, cond)
                if trace == "exact":
                    div = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
                    for i in range(x.shape[1]):
                        g = torch.autograd.grad(v[:, i].sum(), x, retain_graph=True)[0]
                        div = div + g[:, i]
                else:
                    g = torch.autograd.grad((v * probe).sum(), x)[0]
                    div = (g * probe).sum(-1)
            return v.detach(), div.detach()

        delta0 = torch.zeros(x1.shape[0], device=x1.device, dtype=x1.dtype)
        x0, delta = integrate(field, (x1, delta0), 1.0, 0.0, method, n_steps, rtol, atol)
        d = x0.shape[1]
        log_base = -0.5 * (x0**2).sum(-1) - 0.5 * d * math.log(2 * math.pi)
        return log_base + delta + self.log_det_standardize()
