"""Ground-truth count simulator whose conditional distribution ``p(x | conditions)`` is known.

Generative model, for a cell of type ``k`` under treatment ``t`` (and age ``a``)::

    z      ~ Normal(0, I_F)                              hidden factors
    s      ~ Categorical(substate_proportions[k])       hidden sub-state
    eta_g  = base_g + celltype_effects[k, g] + treatment_effects[t, k, g]
             + age_effect_g * (a - age_center) / age_scale
             + (z @ loadings)_g + substate_programs[k, s, g]
    rho    = softmax(eta)                                expression proportions
    L      ~ LogNormal(library_log_mean[k], library_log_sd)
    x_g    ~ NB(mean = L * rho_g, inverse dispersion = theta_g)   (Gamma-Poisson)

All parameters live in ``adata.uns["simulation"]`` and every sampling path
(:func:`simulate`, :func:`sample_truth`, :func:`true_means`) goes through the same private
functions (:func:`_draw_conditions`, :func:`_draw_latents`, :func:`_logits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

_UNS_KEY = "simulation"
_AGE_RANGE = (20.0, 80.0)
# cells per block when materialising cells × genes arrays; bounds memory for large simulations
_CHUNK_SIZE = 4096
_CONDITION_KEYS = ("cell_type", "treatment", "age")


@dataclass(frozen=True)
class _Truth:
    """The parameters of a simulation (the content of ``uns["simulation"]``)."""

    seed: int
    cell_types: tuple[str, ...]
    treatments: tuple[str, ...]
    continuous_covariate: bool
    base: np.ndarray  # (G,)
    celltype_effects: np.ndarray  # (K, G)
    treatment_shared: np.ndarray  # (T, G)
    treatment_effects: np.ndarray  # (T, K, G), includes the shared part
    age_effect: np.ndarray  # (G,)
    age_range: np.ndarray  # (2,)
    age_center: float
    age_scale: float
    loadings: np.ndarray  # (F, G)
    substate_programs: np.ndarray  # (K, S, G)
    substate_proportions: np.ndarray  # (K, S)
    theta: np.ndarray  # (G,)
    library_log_mean: np.ndarray  # (K,)
    library_log_sd: float

    @property
    def n_genes(self) -> int:
        return self.base.shape[0]

    @property
    def n_factors(self) -> int:
        return self.loadings.shape[0]

    @property
    def n_substates(self) -> int:
        return self.substate_proportions.shape[1]

    @property
    def gene_names(self) -> list[str]:
        return [f"gene_{g}" for g in range(self.n_genes)]

    def to_uns(self) -> dict[str, Any]:
        """Plain numpy arrays and python scalars only, so ``write_h5ad`` works."""
        return {
            "seed": int(self.seed),
            "cell_type_categories": np.asarray(self.cell_types, dtype=str),
            "treatment_categories": np.asarray(self.treatments, dtype=str),
            "continuous_covariate": bool(self.continuous_covariate),
            "base": self.base,
            "celltype_effects": self.celltype_effects,
            "treatment_shared": self.treatment_shared,
            "treatment_effects": self.treatment_effects,
            "age_effect": self.age_effect,
            "age_range": self.age_range,
            "age_center": float(self.age_center),
            "age_scale": float(self.age_scale),
            "loadings": self.loadings,
            "substate_programs": self.substate_programs,
            "substate_proportions": self.substate_proportions,
            "theta": self.theta,
            "library_log_mean": self.library_log_mean,
            "library_log_sd": float(self.library_log_sd),
        }

    @classmethod
    def from_adata(cls, adata: ad.AnnData) -> _Truth:
        """Read the truth back, tolerating the type changes of an h5ad round trip."""
        if _UNS_KEY not in adata.uns:
            raise ValueError(
                f'adata.uns has no "{_UNS_KEY}" entry; pass an AnnData made by genvi.data.simulate'
            )
        uns = adata.uns[_UNS_KEY]

        def arr(key: str) -> np.ndarray:
            return np.asarray(uns[key], dtype=np.float64)

        n_genes = arr("base").shape[0]
        return cls(
            seed=int(uns["seed"]),
            cell_types=tuple(str(c) for c in np.asarray(uns["cell_type_categories"]).ravel()),
            treatments=tuple(str(c) for c in np.asarray(uns["treatment_categories"]).ravel()),
            continuous_covariate=bool(uns["continuous_covariate"]),
            base=arr("base"),
            celltype_effects=arr("celltype_effects"),
            treatment_shared=arr("treatment_shared"),
            treatment_effects=arr("treatment_effects"),
            age_effect=arr("age_effect"),
            age_range=arr("age_range"),
            age_center=float(uns["age_center"]),
            age_scale=float(uns["age_scale"]),
            # an empty (0, G) array may come back with a collapsed shape
            loadings=arr("loadings").reshape(-1, n_genes),
            substate_programs=arr("substate_programs"),
            substate_proportions=arr("substate_proportions"),
            theta=arr("theta"),
            library_log_mean=arr("library_log_mean"),
            library_log_sd=float(uns["library_log_sd"]),
        )


def _treatment_names(n_treatments: int) -> tuple[str, ...]:
    if n_treatments == 2:
        return ("control", "treated")
    return ("control", *(f"treated_{i}" for i in range(1, n_treatments)))


def _sparse_normal(
    rng: np.random.Generator, scale: float, shape: tuple[int, ...], density: float
) -> np.ndarray:
    """Normal(0, scale) entries, each kept with probability ``density`` (else 0)."""
    values = rng.normal(0.0, scale, size=shape)
    return values * (rng.random(shape) < density)


def _draw_truth(
    rng: np.random.Generator,
    *,
    n_genes: int,
    n_cell_types: int,
    n_treatments: int,
    continuous_covariate: bool,
    n_hidden_factors: int,
    n_substates: int,
    library_size_mean: float,
    library_size_sd: float,
    dispersion_range: tuple[float, float],
    effect_size: float,
    factor_scale: float,
    substate_effect_size: float,
    age_effect_size: float,
    seed: int,
) -> _Truth:
    n_types, n_treat = n_cell_types, n_treatments
    # Draw order is fixed and the optional parts come last, so switching on the covariate,
    # factors or sub-states leaves base, cell-type and treatment effects unchanged.
    base = rng.normal(0.0, 1.0, n_genes)
    # a few genes dominate the library (as ribosomal/mitochondrial genes do), most are low
    n_high = max(1, round(0.05 * n_genes))
    highly_expressed = rng.choice(n_genes, size=n_high, replace=False)
    base[highly_expressed] += rng.uniform(2.0, 4.0, size=n_high)

    theta_low, theta_high = dispersion_range
    theta = np.exp(rng.uniform(np.log(theta_low), np.log(theta_high), size=n_genes))

    type_shift = rng.normal(0.0, 0.2, size=n_types)
    type_shift -= type_shift.mean()
    # -sd^2/2 makes the LogNormal mean (not its median) equal library_size_mean
    library_log_mean = np.log(library_size_mean) - library_size_sd**2 / 2 + type_shift

    celltype_effects = effect_size * _sparse_normal(rng, 1.0, (n_types, n_genes), 0.3)
    treatment_shared = effect_size * _sparse_normal(rng, 0.8, (n_treat, n_genes), 0.15)
    treatment_specific = effect_size * _sparse_normal(rng, 0.8, (n_treat, n_types, n_genes), 0.15)
    treatment_shared[0] = 0.0
    treatment_specific[0] = 0.0
    treatment_effects = treatment_shared[:, None, :] + treatment_specific

    age_effect = age_effect_size * _sparse_normal(rng, 1.0, (n_genes,), 0.2)
    if not continuous_covariate:
        age_effect[:] = 0.0

    loadings = factor_scale * rng.normal(0.0, 1.0, size=(n_hidden_factors, n_genes))

    if n_substates > 1:
        programs = substate_effect_size * _sparse_normal(
            rng, 1.0, (n_types, n_substates, n_genes), 0.15
        )
        # unequal but bounded away from 0 (each sub-state keeps >= half its uniform share)
        proportions = 0.5 * rng.dirichlet(np.full(n_substates, 2.0), size=n_types)
        proportions += 0.5 / n_substates
    else:
        programs = np.zeros((n_types, 1, n_genes))
        proportions = np.ones((n_types, 1))

    age_low, age_high = _AGE_RANGE
    return _Truth(
        seed=seed,
        cell_types=tuple(f"type_{k}" for k in range(n_types)),
        treatments=_treatment_names(n_treat),
        continuous_covariate=continuous_covariate,
        base=base,
        celltype_effects=celltype_effects,
        treatment_shared=treatment_shared,
        treatment_effects=treatment_effects,
        age_effect=age_effect,
        age_range=np.array(_AGE_RANGE),
        age_center=(age_low + age_high) / 2,
        # the sd of Uniform(20, 80), so the standardised age has unit variance
        age_scale=(age_high - age_low) / np.sqrt(12.0),
        loadings=loadings,
        substate_programs=programs,
        substate_proportions=proportions,
        theta=theta,
        library_log_mean=library_log_mean,
        library_log_sd=library_size_sd,
    )


# ---------------------------------------------------------------------------------------------
# The generative core: shared by simulate(), sample_truth() and true_means().
# ---------------------------------------------------------------------------------------------


def _draw_ages(truth: _Truth, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(truth.age_range[0], truth.age_range[1], size=n)


def _draw_conditions(
    truth: _Truth,
    n: int,
    rng: np.random.Generator,
    cell_type: int | None = None,
    treatment: int | None = None,
    age: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per-cell condition indices; unspecified ones follow the design (uniform) distribution."""
    if cell_type is None:
        cell_types = rng.integers(len(truth.cell_types), size=n)
    else:
        cell_types = np.full(n, cell_type)
    if treatment is None:
        treatments = rng.integers(len(truth.treatments), size=n)
    else:
        treatments = np.full(n, treatment)
    ages = None
    if truth.continuous_covariate:
        ages = _draw_ages(truth, n, rng) if age is None else np.full(n, float(age))
    return cell_types, treatments, ages


def _draw_latents(
    truth: _Truth,
    cell_types: np.ndarray,
    rng: np.random.Generator,
    substate: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hidden factors, sub-states and library sizes given the cell types.

    The factors are drawn first so that, for a fixed ``rng`` state, they do not depend on
    whether the sub-state is drawn or fixed (common random numbers in :func:`true_means`).
    """
    n = cell_types.shape[0]
    factors = rng.standard_normal((n, truth.n_factors))
    if substate is not None:
        substates = np.full(n, substate)
    elif truth.n_substates == 1:
        substates = np.zeros(n, dtype=np.int64)
    else:
        cumulative = np.cumsum(truth.substate_proportions[cell_types], axis=1)
        substates = (rng.random(n)[:, None] > cumulative).sum(axis=1)
        substates = np.minimum(substates, truth.n_substates - 1)
    library = np.exp(rng.normal(truth.library_log_mean[cell_types], truth.library_log_sd))
    return factors, substates, library


def _logits(
    truth: _Truth,
    cell_types: np.ndarray,
    treatments: np.ndarray,
    ages: np.ndarray | None,
    factors: np.ndarray,
    substates: np.ndarray,
) -> np.ndarray:
    """Cells × genes log-expression logits ``eta``."""
    eta = (
        truth.base[None, :]
        + truth.celltype_effects[cell_types]
        + truth.treatment_effects[treatments, cell_types]
        + factors @ truth.loadings
        + truth.substate_programs[cell_types, substates]
    )
    if ages is not None:
        standardized = (ages - truth.age_center) / truth.age_scale
        eta += standardized[:, None] * truth.age_effect[None, :]
    return eta


def _softmax(eta: np.ndarray) -> np.ndarray:
    shifted = np.exp(eta - eta.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _generate(
    truth: _Truth,
    cell_types: np.ndarray,
    treatments: np.ndarray,
    ages: np.ndarray | None,
    rng: np.random.Generator,
) -> ad.AnnData:
    """Draw the hidden variables and counts for cells with the given conditions."""
    n = cell_types.shape[0]
    factors, substates, library = _draw_latents(truth, cell_types, rng)
    blocks = []
    for start in range(0, n, _CHUNK_SIZE):
        block = slice(start, min(start + _CHUNK_SIZE, n))
        eta = _logits(
            truth,
            cell_types[block],
            treatments[block],
            None if ages is None else ages[block],
            factors[block],
            substates[block],
        )
        mean = library[block, None] * _softmax(eta)
        rate = rng.gamma(shape=truth.theta[None, :], scale=mean / truth.theta[None, :])
        blocks.append(sp.csr_matrix(rng.poisson(rate).astype(np.float32)))
    counts = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, truth.n_genes))
    counts = counts.astype(np.float32)

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical.from_codes(cell_types, categories=list(truth.cell_types)),
            "treatment": pd.Categorical.from_codes(treatments, categories=list(truth.treatments)),
        },
        index=[f"cell_{i}" for i in range(n)],
    )
    if ages is not None:
        obs["age"] = ages.astype(np.float64)
    if truth.n_substates > 1:
        obs["substate"] = pd.Categorical.from_codes(
            substates, categories=[f"substate_{s}" for s in range(truth.n_substates)]
        )
    obs["true_library"] = library
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=truth.gene_names))
    # a separate copy so in-place normalisation of X (e.g. sc.pp.normalize_total) keeps counts
    adata.layers["counts"] = counts.copy()
    adata.obsm["hidden_factors"] = factors
    adata.uns[_UNS_KEY] = truth.to_uns()
    return adata


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def simulate(
    n_cells: int = 2000,
    n_genes: int = 200,
    n_cell_types: int = 4,
    n_treatments: int = 2,
    continuous_covariate: bool = False,
    n_hidden_factors: int = 2,
    n_substates: int = 1,
    library_size_mean: float = 3000.0,
    dispersion_range: tuple[float, float] = (2.0, 20.0),
    effect_size: float = 1.0,
    seed: int = 0,
    *,
    library_size_sd: float = 0.4,
    factor_scale: float = 0.25,
    substate_effect_size: float = 1.5,
    age_effect_size: float = 0.5,
) -> ad.AnnData:
    """Simulate single-cell counts from a known conditional generative model.

    See the module docstring for the model. Cells are assigned to cell types and treatments
    independently with equal probabilities; ages (if enabled) are Uniform(20, 80).

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Number of genes.
    n_cell_types
        Number of cell types, named ``"type_0"``, ``"type_1"``, ...
    n_treatments
        Number of treatments including the control: ``"control"``, ``"treated"`` for two,
        else ``"control"``, ``"treated_1"``, ... The control has zero effect; each other
        treatment has a shared effect plus a cell-type-specific one (both sparse).
    continuous_covariate
        Add ``obs["age"]`` ~ Uniform(20, 80), with an effect linear in the logits (of the
        standardised age) on ~20 % of the genes.
    n_hidden_factors
        Number of per-cell standard-normal hidden factors with dense gene loadings
        (within-condition heterogeneity), stored in ``obsm["hidden_factors"]``.
    n_substates
        If > 1, each cell type has this many discrete hidden sub-states, each with its own
        sparse expression program and unequal proportions (a multimodal ``p(x | c)``);
        stored in ``obs["substate"]`` (hidden truth, not a condition). Sub-state labels are
        per cell type: ``"substate_0"`` of two cell types are unrelated programs.
    library_size_mean
        Mean library size (LogNormal, per-cell-type log-means differing with sd ~0.2).
    dispersion_range
        Range of the NB inverse dispersion ``theta`` (log-uniform per gene), with
        ``var = mu + mu**2 / theta`` (scvi-tools convention).
    effect_size
        Scale of the cell-type and treatment effects on the logits.
    seed
        Random seed. The parameters do not depend on ``n_cells`` (separate random stream).
    library_size_sd
        Standard deviation of the log library size within a cell type.
    factor_scale
        Standard deviation of the hidden-factor loadings.
    substate_effect_size
        Standard deviation of the nonzero entries of the sub-state programs.
    age_effect_size
        Standard deviation of the nonzero per-gene age effects (per sd of age).

    Returns
    -------
    anndata.AnnData
        ``X`` and ``layers["counts"]``: float32 CSR counts (independent copies).
        ``obs``: ``cell_type``, ``treatment`` (categorical), ``age`` (if enabled),
        ``substate`` (if ``n_substates > 1``), ``true_library``. ``obsm["hidden_factors"]``.
        ``var_names``: ``"gene_0"``, ... ``uns["simulation"]``: all true parameters, used
        by :func:`sample_truth` and :func:`true_means`.
    """
    _check_positive_int(n_cells=n_cells, n_genes=n_genes, n_cell_types=n_cell_types)
    _check_positive_int(n_treatments=n_treatments, n_substates=n_substates)
    if n_hidden_factors < 0:
        raise ValueError(f"n_hidden_factors must be >= 0, got {n_hidden_factors}")
    low, high = dispersion_range
    if not 0 < low <= high:
        raise ValueError(f"dispersion_range must satisfy 0 < low <= high, got {dispersion_range}")
    if library_size_mean <= 0 or library_size_sd < 0:
        raise ValueError("library_size_mean must be > 0 and library_size_sd >= 0")

    truth_seed, cells_seed = np.random.SeedSequence(seed).spawn(2)
    truth = _draw_truth(
        np.random.default_rng(truth_seed),
        n_genes=n_genes,
        n_cell_types=n_cell_types,
        n_treatments=n_treatments,
        continuous_covariate=continuous_covariate,
        n_hidden_factors=n_hidden_factors,
        n_substates=n_substates,
        library_size_mean=library_size_mean,
        library_size_sd=library_size_sd,
        dispersion_range=(float(low), float(high)),
        effect_size=effect_size,
        factor_scale=factor_scale,
        substate_effect_size=substate_effect_size,
        age_effect_size=age_effect_size,
        seed=seed,
    )
    rng = np.random.default_rng(cells_seed)
    cell_types, treatments, ages = _draw_conditions(truth, n_cells, rng)
    return _generate(truth, cell_types, treatments, ages, rng)


def sample_truth(
    adata_sim: ad.AnnData,
    conditions: Mapping[str, Any],
    n_cells: int,
    seed: int = 0,
) -> ad.AnnData:
    """Draw new cells from the true ``p(x | conditions)`` of a simulated dataset.

    Hidden factors, sub-states and library sizes are drawn from their true distributions.

    Parameters
    ----------
    adata_sim
        An AnnData made by :func:`simulate` (or read back from h5ad).
    conditions
        Mapping with keys among ``"cell_type"``, ``"treatment"`` and, if the simulation has
        the covariate, ``"age"`` (a number). A key left out is drawn from the simulation's
        design distribution (uniform categories, age ~ Uniform(20, 80)).
    n_cells
        Number of cells to draw.
    seed
        Random seed.

    Returns
    -------
    anndata.AnnData
        Same layout as :func:`simulate` (``obs``, ``obsm``, ``var_names``, ``uns``).

    Raises
    ------
    ValueError
        For unknown condition keys or categories, or a non-finite age.
    """
    _check_positive_int(n_cells=n_cells)
    truth = _Truth.from_adata(adata_sim)
    cell_type, treatment, age = _resolve_conditions(truth, conditions)
    rng = np.random.default_rng(seed)
    cell_types, treatments, ages = _draw_conditions(truth, n_cells, rng, cell_type, treatment, age)
    return _generate(truth, cell_types, treatments, ages, rng)


def true_means(
    adata_sim: ad.AnnData,
    conditions: Mapping[str, Any] | None = None,
    n_mc: int = 20000,
    seed: int = 0,
) -> pd.DataFrame | np.ndarray:
    """True expected normalised expression ``E[rho | conditions]`` of a simulated dataset.

    Sub-states are summed over exactly with their true proportions; hidden factors and an
    unspecified age are integrated by Monte Carlo with ``n_mc`` draws (exact, one draw,
    when there are neither factors nor an age to integrate). The same random draws are used
    for every condition, so differences between conditions have little Monte Carlo noise.

    Parameters
    ----------
    adata_sim
        An AnnData made by :func:`simulate` (or read back from h5ad).
    conditions
        ``None`` for all (cell_type, treatment) combinations, or a mapping as in
        :func:`sample_truth`; keys left out are averaged over the design distribution
        (uniform over categories, age ~ Uniform(20, 80)).
    n_mc
        Number of Monte Carlo draws per condition (and sub-state).
    seed
        Random seed of the Monte Carlo draws.

    Returns
    -------
    pandas.DataFrame or numpy.ndarray
        With ``conditions=None``: a DataFrame with a ``(cell_type, treatment)``
        :class:`pandas.MultiIndex` (levels named so, all combinations in category order),
        one column per gene (``var_names`` of the simulation), age averaged out. Otherwise
        a 1-D float64 array over genes. Each row sums to 1.

    Raises
    ------
    ValueError
        For unknown condition keys or categories, or a non-finite age.
    """
    _check_positive_int(n_mc=n_mc)
    truth = _Truth.from_adata(adata_sim)
    if conditions is None:
        rows = [
            _expected_proportions(truth, k, t, None, n_mc, seed)
            for k in range(len(truth.cell_types))
            for t in range(len(truth.treatments))
        ]
        index = pd.MultiIndex.from_product(
            [list(truth.cell_types), list(truth.treatments)], names=["cell_type", "treatment"]
        )
        return pd.DataFrame(np.vstack(rows), index=index, columns=truth.gene_names)

    cell_type, treatment, age = _resolve_conditions(truth, conditions)
    # left-out categorical conditions: uniform mixture, as in the simulation design
    type_indices = range(len(truth.cell_types)) if cell_type is None else [cell_type]
    treatment_indices = range(len(truth.treatments)) if treatment is None else [treatment]
    means = [
        _expected_proportions(truth, k, t, age, n_mc, seed)
        for k in type_indices
        for t in treatment_indices
    ]
    return np.mean(means, axis=0)


def _expected_proportions(
    truth: _Truth, cell_type: int, treatment: int, age: float | None, n_mc: int, seed: int
) -> np.ndarray:
    """``E[rho | cell_type, treatment, age]``; ``age=None`` averages over its distribution."""
    integrate_age = truth.continuous_covariate and age is None
    n_draws = n_mc if truth.n_factors > 0 or integrate_age else 1
    expected = np.zeros(truth.n_genes)
    for substate, weight in enumerate(truth.substate_proportions[cell_type]):
        # a fresh generator per sub-state: identical factor/age draws (common random numbers)
        rng = np.random.default_rng(seed)
        cell_types, treatments, ages = _draw_conditions(
            truth, n_draws, rng, cell_type, treatment, age
        )
        factors, substates, _ = _draw_latents(truth, cell_types, rng, substate=substate)
        total = np.zeros(truth.n_genes)
        for start in range(0, n_draws, _CHUNK_SIZE):
            block = slice(start, min(start + _CHUNK_SIZE, n_draws))
            eta = _logits(
                truth,
                cell_types[block],
                treatments[block],
                None if ages is None else ages[block],
                factors[block],
                substates[block],
            )
            total += _softmax(eta).sum(axis=0)
        expected += weight * total / n_draws
    return expected


def _resolve_conditions(
    truth: _Truth, conditions: Mapping[str, Any]
) -> tuple[int | None, int | None, float | None]:
    """Validate a conditions mapping into (cell-type index, treatment index, age)."""
    if not isinstance(conditions, Mapping):
        raise TypeError(f"conditions must be a mapping, got {type(conditions).__name__}")
    known = [key for key in _CONDITION_KEYS if key != "age" or truth.continuous_covariate]
    unknown = [key for key in conditions if key not in known]
    if unknown:
        raise ValueError(f"unknown condition key(s) {unknown}; known keys: {known}")

    def category(key: str, categories: tuple[str, ...]) -> int | None:
        if key not in conditions:
            return None
        value = conditions[key]
        if not isinstance(value, str) or value not in categories:
            raise ValueError(f"unknown {key} {value!r}; known categories: {list(categories)}")
        return categories.index(value)

    cell_type = category("cell_type", truth.cell_types)
    treatment = category("treatment", truth.treatments)
    age = None
    if "age" in conditions:
        try:
            age = float(conditions["age"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"age must be a number, got {conditions['age']!r}") from err
        if not np.isfinite(age):
            raise ValueError(f"age must be finite, got {age}")
    return cell_type, treatment, age


def _check_positive_int(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
