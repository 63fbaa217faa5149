"""ODE solvers of the flow-matching prior, registered by name (``generate(method=...)``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchdiffeq import odeint

from genvi._registry import Registry


@dataclass(frozen=True)
class ODEMethod:
    """A torchdiffeq solver: its torchdiffeq name and whether it chooses its own steps."""

    torchdiffeq_name: str
    adaptive: bool = False


#: Solvers of :class:`~genvi.module.LatentFlowModule`.
ODE_METHODS: Registry[ODEMethod] = Registry("ODE method")
ODE_METHODS.register("euler", "explicit Euler, one evaluation per step.")(ODEMethod("euler"))
ODE_METHODS.register("heun", "Heun (2nd order), two evaluations per step (default).")(
    ODEMethod("heun2")
)
ODE_METHODS.register("midpoint", "explicit midpoint (2nd order).")(ODEMethod("midpoint"))
ODE_METHODS.register("rk4", "classical Runge-Kutta (4th order).")(ODEMethod("rk4"))
ODE_METHODS.register("dopri5", "adaptive Dormand-Prince (rtol / atol; n_steps ignored).")(
    ODEMethod("dopri5", adaptive=True)
)


def integrate(
    field: Callable,
    state,
    t0: float,
    t1: float,
    method: str,
    n_steps: int,
    rtol: float = 1e-5,
    atol: float = 1e-5,
):
    """Solve ``d state / dt = field(t, state)`` from ``t0`` to ``t1``; the state at ``t1``.

    ``state`` is a tensor or a tuple of tensors (torchdiffeq's convention). Fixed-step methods
    take ``n_steps`` equal steps; adaptive ones use ``rtol``/``atol``.
    """
    spec = ODE_METHODS[method]
    first = state[0] if isinstance(state, tuple) else state
    if spec.adaptive:
        grid = torch.tensor([t0, t1], device=first.device, dtype=first.dtype)
        kwargs = {"rtol": rtol, "atol": atol}
    else:
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}.")
        grid = torch.linspace(t0, t1, n_steps + 1, device=first.device, dtype=first.dtype)
        kwargs = {}
    path = odeint(field, state, grid, method=spec.torchdiffeq_name, **kwargs)
    if isinstance(path, tuple):
        return tuple(p[-1] for p in path)
    return path[-1]
