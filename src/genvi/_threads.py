"""Keep torch's CPU thread count across calls into numba-backed libraries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore ``torch.get_num_threads()`` after the block.

    scanpy's numba kernels (normalisation, highly variable genes, Wilcoxon ranking, UMAP) run on
    numba's OpenMP layer, which shares torch's ``libgomp`` and resets its thread count to the
    number of cores. A user's ``torch.set_num_threads(1)`` was silently undone by a metric call;
    two such processes on a 2-core machine then ran 2-5x slower, with idle OpenMP workers
    spinning beside the training threads.
    """
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
