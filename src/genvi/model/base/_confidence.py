"""Predictive intervals of a condition's expression (:meth:`predict_with_confidence`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from genvi._transforms import TRANSFORMS, transform_expression
from genvi.model.base._conditions import Conditions
from genvi.model.base._seeding import seeded


class ConfidenceMixin:
    """Per-gene predictive distributions (cells sampled by ``GenerationMixin``)."""

    def predict_with_confidence(
        self,
        conditions: Conditions,
        n_samples: int = 1000,
        ci: float = 0.95,
        transform: str = "normalized",
        target_sum: float = 1e4,
        seed: int | None = 0,
        batch_size: int = 1024,
    ) -> pd.DataFrame:
        """Per-gene predictive distribution of a condition's (normalised) expression.

        Draws ``n_samples`` cells from p(x | c) (latent, library size and count noise), applies
        ``transform`` and summarises each gene by its mean, standard deviation and central
        ``ci`` interval. The intervals are predictive: they should contain a fraction ``ci``
        of new cells of that condition (use :func:`genvi.metrics` to check coverage).

        Parameters
        ----------
        conditions
            One condition (dict) or several (list / DataFrame).
        n_samples
            Cells sampled per condition.
        ci
            Central interval mass in (0, 1).
        transform
            ``"normalized"`` (counts / total * ``target_sum``), ``"log1p"`` (log1p of that)
            or ``"counts"``.
        target_sum
            Total counts after normalisation.
        seed
            Random seed.
        batch_size
            Cells decoded per forward pass.

        Returns
        -------
        DataFrame indexed by gene with columns ``mean``, ``std``, ``lower``, ``upper``; for
        several conditions, a ``(condition, gene)`` MultiIndex.
        """
        if not 0 < ci < 1:
            raise ValueError(f"ci must lie in (0, 1), got {ci}.")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {list(TRANSFORMS)}, got {transform!r}.")
        specs = self._schema.parse(conditions)
        counts = self._n_cells_per_spec(n_samples, len(specs))
        self.module.eval()
        frames = {}
        with seeded(seed, self.module.device) as rng:
            for spec, n in zip(specs, counts):
                x = self._simulate_cells([spec], [n], None, None, rng, batch_size)["x"]
                x = transform_expression(x, transform, target_sum)
                alpha = (1 - ci) / 2
                frames[self._schema.label(spec)] = pd.DataFrame(
                    {
                        "mean": x.mean(0),
                        "std": x.std(0, ddof=1),
                        "lower": np.quantile(x, alpha, axis=0),
                        "upper": np.quantile(x, 1 - alpha, axis=0),
                    },
                    index=pd.Index(self.var_names_, name="gene"),
                )
        if len(frames) == 1:
            return next(iter(frames.values()))
        return pd.concat(frames, names=["condition", "gene"])
