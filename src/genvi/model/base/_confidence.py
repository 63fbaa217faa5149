"""Predictive intervals of a condition's expression (:meth:`predict_with_confidence`).

A central interval of a discrete distribution cannot hold exactly ``ci`` of its mass: a gene
that is 0 in 70 % of the cells has no interval holding 50 % of them. Quantiles of sampled
counts then give intervals whose endpoints carry whole atoms of probability, and counting a
value on an endpoint as inside makes the intervals of lowly expressed genes cover far more
than ``ci`` whatever the model (genvi's demo on pbmc68k: 76 / 90 / 96 / 98 % at nominal
50 / 80 / 90 / 95 %).

The default intervals are those of the continuous extension of counts (Machado & Santos Silva
2005; the randomised PIT of Czado, Gneiting & Held 2009): each count ``x`` is spread uniformly
over ``[x, x + 1)``, and ``x + U`` has a continuous distribution whose central interval holds
exactly ``ci``. Such an interval means "a new cell's jittered value falls inside with
probability ``ci``": a real count strictly inside counts as covered, a count on an endpoint
for the fraction of ``[x, x + 1)`` inside (:func:`genvi.metrics.interval_coverage` with
``step=``, which :func:`genvi.metrics.calibration` uses for these intervals). For deeply
expressed genes the jitter is negligible and the interval is the usual one.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from genvi._transforms import TRANSFORMS, jittered_expression, transform_expression
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
        interval: str = "randomized",
    ) -> pd.DataFrame:
        """Per-gene predictive distribution of a condition's (normalised) expression.

        Draws ``n_samples`` cells from p(x | c) (latent, library size and count noise), applies
        ``transform`` and summarises each gene by its mean, standard deviation and central
        ``ci`` interval. The intervals are predictive: they should contain a fraction ``ci``
        of new cells of that condition (check with :func:`genvi.metrics.calibration`).

        Counts are discrete, so by default (``interval="randomized"``) the interval is that of
        the continuous extension of counts: each sampled count ``x`` is spread uniformly over
        ``[x, x + 1)`` before ``transform``. A new cell's jittered value falls inside with
        probability ``ci``; equivalently, a real count strictly inside counts as covered and a
        count on an endpoint as the fraction of ``[x, x + 1)`` inside. ``"closed"``: plain
        quantiles of the transformed counts, with a value on an endpoint read as inside; these
        over-cover lowly expressed genes (every real zero sits on an endpoint 0). Deeply
        expressed genes get nearly the same interval either way. ``mean`` and ``std`` are those
        of the un-jittered values.

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
        interval
            ``"randomized"`` (default; continuous extension of counts) or ``"closed"``.
            Models with ``gene_likelihood="normal"`` do not sample counts: plain quantiles
            either way (reported as ``"closed"``).

        Returns
        -------
        DataFrame indexed by gene with columns ``mean``, ``std``, ``lower``, ``upper``; for
        several conditions, a ``(condition, gene)`` MultiIndex. ``attrs["interval"]`` says which
        construction was used; :func:`genvi.metrics.calibration` reads it.
        """
        if not 0 < ci < 1:
            raise ValueError(f"ci must lie in (0, 1), got {ci}.")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {list(TRANSFORMS)}, got {transform!r}.")
        if interval not in INTERVALS:
            raise ValueError(f"interval must be one of {list(INTERVALS)}, got {interval!r}.")
        randomize = interval == "randomized" and self._samples_counts()
        specs = self._schema.parse(conditions)
        counts = self._n_cells_per_spec(n_samples, len(specs))
        index = pd.Index(self.var_names_, name="gene")
        frames = {
            self._schema.label(spec): summarize_draws(values, spread, ci, randomize, index)
            for spec, _, values, spread in self._iter_confidence_draws(
                specs, counts, transform, target_sum, seed, batch_size, randomize
            )
        }
        if len(frames) == 1:
            return next(iter(frames.values()))
        out = pd.concat(frames, names=["condition", "gene"])
        out.attrs["interval"] = "randomized" if randomize else "closed"
        return out

    def _iter_confidence_draws(
        self,
        specs: list[dict],
        counts: list[int],
        transform: str,
        target_sum: float,
        seed: int | None,
        batch_size: int,
        randomize: bool,
    ) -> Iterator[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(spec, x, values, spread)``: the cells :meth:`predict_with_confidence` samples.

        One seeded stream for all ``specs`` (each condition's cells, then their jitter), so a
        condition's draws depend on the conditions before it; ``x`` are the sampled counts,
        ``values`` their transform, ``spread`` the values the intervals are quantiles of
        (jittered when ``randomize``). :class:`genvi.metrics.ConformalIntervals` reads the
        same draws.
        """
        self.module.eval()
        with seeded(seed, self.module.device) as rng:
            for spec, n in zip(specs, counts):
                x = self._simulate_cells([spec], [n], None, None, rng, batch_size)["x"]
                yield (spec, x, *predictive_draws(x, transform, target_sum, randomize, rng))

    def _samples_counts(self) -> bool:
        """Whether sampled cells are counts (not ``gene_likelihood="normal"`` data)."""
        module = getattr(self, "module", None)
        return getattr(module, "gene_likelihood", None) != "normal"


INTERVALS = ("randomized", "closed")


def predictive_draws(
    x: np.ndarray,
    transform: str = "normalized",
    target_sum: float = 1e4,
    randomize: bool = True,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sampled cells ``x`` (cells x genes) as ``(values, spread)``.

    ``values``: the transformed counts; ``spread``: the values intervals are quantiles of, the
    continuous extension ``x + U`` when ``randomize`` (see the module docstring), else
    ``values``.
    """
    x = np.asarray(x, dtype=np.float64)
    values = transform_expression(x, transform, target_sum)
    # normalised by the total over all genes before any per-gene step
    spread = jittered_expression(x, transform, target_sum, rng) if randomize else values
    return values, spread


def summarize_draws(
    values: np.ndarray,
    spread: np.ndarray,
    ci: float,
    randomize: bool,
    index: pd.Index | None = None,
) -> pd.DataFrame:
    """Per-gene mean, sd (of ``values``) and central ``ci`` interval (of ``spread``)."""
    alpha = (1 - ci) / 2
    df = pd.DataFrame(
        {
            "mean": values.mean(0),
            "std": values.std(0, ddof=1),
            "lower": np.quantile(spread, alpha, axis=0),
            "upper": np.quantile(spread, 1 - alpha, axis=0),
        },
        index=index,
    )
    df.attrs["interval"] = "randomized" if randomize else "closed"
    return df


def predictive_summary(
    x: np.ndarray,
    ci: float,
    transform: str = "normalized",
    target_sum: float = 1e4,
    randomize: bool = True,
    rng: np.random.Generator | None = None,
    index: pd.Index | None = None,
) -> pd.DataFrame:
    """Per-gene mean, sd and central ``ci`` interval of sampled cells ``x`` (cells x genes).

    ``randomize``: quantiles of the continuous extension ``x + U`` (see the module docstring);
    ``False``: plain quantiles of the transformed values. ``attrs["interval"]`` records which.
    """
    values, spread = predictive_draws(x, transform, target_sum, randomize, rng)
    return summarize_draws(values, spread, ci, randomize, index)
