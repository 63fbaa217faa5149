"""Local seeding of generation and sampling calls."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[np.random.Generator]:
    """Seed torch (CPU and the model's GPU) locally, leaving the global RNG state untouched.

    Yields a numpy generator seeded the same way (``None``: fresh entropy, torch unseeded).
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield np.random.default_rng(seed)
