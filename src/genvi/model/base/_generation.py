"""Generation of new cells from p(x | c): in memory or streamed to an ``.h5ad`` file."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from torch.distributions import Distribution
from tqdm.auto import tqdm

from genvi.model.base._conditions import Conditions
from genvi.model.base._reference import draw_reference_cells
from genvi.model.base._seeding import seeded
from genvi.model.base._streaming import read_backed, write_h5ad_stream
from genvi.nn import ConditionInputs


class GenerationMixin:
    """Condition-driven generation (:meth:`generate`).

    Requires :class:`~genvi.model.base.ConditionedModelMixin` and the training reference
    (:class:`~genvi.model.base.TrainingReferenceMixin`). Two hooks say how a model draws
    latents and decodes them; count VAEs use their prior p(z | c) and decoder (the defaults),
    latent priors override both.
    """

    # ------------------------------------------------------------------ hooks
    def _sample_latent(
        self, cond: ConditionInputs, temperature: float = 1.0, **kwargs
    ) -> torch.Tensor:
        """Latents of cells with conditions ``cond``.

        ``temperature`` != 1 draws z = ``from_noise(temperature * u, c)`` with u ~ N(0, I), the
        prior's noise map (checked by :meth:`generate`); 1 draws from p(z | c) itself.
        """
        c = self.module.embed(cond)
        if temperature == 1.0:  # the prior's own sampler: the cells of every earlier release
            return self.module.prior(c).sample()
        u = torch.randn(c.shape[0], self.module.n_latent, device=c.device, dtype=c.dtype)
        return self.module.prior.from_noise(temperature * u, c)

    def _decode_reference(
        self,
        z: torch.Tensor,
        cond: ConditionInputs,
        log_library: torch.Tensor,
        batch: torch.Tensor,
        ref: np.ndarray,
    ) -> Distribution:
        """p(x | z, c) of generated cells.

        ``ref`` are the training cells their nuisances (library size, batch...) come from.
        """
        return self.module.decode(z, self.module.embed(cond), log_library, batch)

    # ------------------------------------------------------------------ helpers
    def _prepare_cells(
        self,
        specs: list[dict],
        n_cells: Sequence[int],
        library_size: float | np.ndarray | None,
        batch: str | None,
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        """Per generated cell: condition codes, reference cell, library size and batch.

        Small arrays (a few numbers per cell): computed up front even for streamed cohorts.
        """
        cat, cont, keep = self._schema.encode(specs)
        self._check_conditional_dropout(keep)
        n_cat = cat.shape[1]
        rows = np.repeat(np.arange(len(specs)), n_cells)
        ref = np.concatenate(
            [
                draw_reference_cells(self.train_codes_, cat[i], keep[i, :n_cat], n, rng)
                for i, n in enumerate(n_cells)
            ]
        )
        lib = self.train_library_[ref]
        if library_size is not None:
            lib = np.broadcast_to(np.asarray(library_size, dtype=np.float64), rows.shape)
            if np.any(lib <= 0) or not np.all(np.isfinite(lib)):
                raise ValueError("library_size must be positive and finite.")
        batch_code = self._batch_code(batch)
        batch_idx = self.train_batch_[ref] if batch_code is None else np.full(len(rows), batch_code)
        return {
            "cat": cat,
            "cont": cont,
            "keep": keep,
            "rows": rows,
            "ref": ref,
            "library": np.asarray(lib, dtype=np.float64),
            "log_library": np.log(lib).astype(np.float32),
            "batch": batch_idx,
        }

    def _iter_cells(
        self,
        prep: dict[str, np.ndarray],
        batch_size: int,
        sample_kwargs: dict | None = None,
        progress: bool = False,
        as_csr: bool = False,
    ) -> Iterator[tuple[np.ndarray | sparse.csr_matrix, np.ndarray]]:
        """Yield ``(counts, latents)`` for ``batch_size`` cells at a time, on the CPU.

        With ``as_csr``, counts come as CSR matrices, made on the model's device: only the
        non-zeros cross to the host.
        """
        rows, cat, cont, keep = prep["rows"], prep["cat"], prep["cont"], prep["keep"]
        dev = self.module.device
        starts = range(0, len(rows), batch_size)
        for start in tqdm(starts, disable=not progress or len(starts) < 2, desc="generating"):
            sl = slice(start, start + batch_size)
            r = rows[sl]
            with torch.inference_mode():
                cond = self._condition_tensors(cat[r], cont[r], keep[r])
                if "latents" in prep:  # decode_latents: given, not sampled
                    z = torch.as_tensor(prep["latents"][sl], device=dev)
                else:
                    z = self._sample_latent(cond, **(sample_kwargs or {}))
                px = self._decode_reference(
                    z,
                    cond,
                    torch.as_tensor(prep["log_library"][sl], device=dev).unsqueeze(-1),
                    torch.as_tensor(prep["batch"][sl], device=dev).unsqueeze(-1),
                    prep["ref"][sl],
                )
                x = px.sample().to(torch.float32)
                x = _host_csr(x) if as_csr else x.cpu().numpy()
            yield x, z.cpu().numpy()

    def _simulate_cells(
        self,
        specs: list[dict],
        n_cells: Sequence[int],
        library_size: float | np.ndarray | None,
        batch: str | None,
        rng: np.random.Generator,
        batch_size: int,
        sample_kwargs: dict | None = None,
        progress: bool = False,
        latents: np.ndarray | None = None,
        as_csr: bool = False,
    ) -> dict[str, np.ndarray | sparse.csr_matrix]:
        """Sample latents (unless given), library sizes and observations; arrays on the CPU.

        ``x`` is dense, or CSR with ``as_csr`` (see :meth:`_iter_cells`).
        """
        prep = self._prepare_cells(specs, n_cells, library_size, batch, rng)
        if latents is not None:
            prep["latents"] = latents
        xs, zs = [], []
        for x, z in self._iter_cells(prep, batch_size, sample_kwargs, progress, as_csr):
            xs.append(x)
            zs.append(z)
        return {
            "x": sparse.vstack(xs, format="csr") if as_csr else np.concatenate(xs),
            "z": np.concatenate(zs),
            "library": prep["library"],
            "batch": prep["batch"],
        }

    @staticmethod
    def _n_cells_per_spec(n_cells: int | Sequence[int], n_specs: int) -> list[int]:
        counts = [n_cells] * n_specs if np.isscalar(n_cells) else list(n_cells)
        if len(counts) != n_specs:
            raise ValueError(f"n_cells has {len(counts)} entries for {n_specs} conditions.")
        for n in counts:
            if int(n) != n or n < 1:
                raise ValueError(f"n_cells must be a positive integer, got {n!r}.")
        return [int(n) for n in counts]

    # ------------------------------------------------------------------ public API
    def generate(
        self,
        conditions: Conditions,
        n_cells: int | Sequence[int] = 100,
        library_size: float | np.ndarray | None = None,
        batch: str | None = None,
        seed: int | None = None,
        batch_size: int = 1024,
        out: str | os.PathLike | None = None,
        temperature: float = 1.0,
    ) -> AnnData:
        """Sample new cells from p(x | c).

        Parameters
        ----------
        conditions
            A dict such as ``{"cell_type": "B cells", "treatment": "stimulated"}``, a list of
            such dicts, or a DataFrame with one condition per row. Keys left out (or NaN) are
            unspecified: their null token is used, i.e. cells are drawn from the condition
            marginalised over that key.
        n_cells
            Cells per condition (an int, or one per condition).
        library_size
            Library size each cell is decoded with: the decoder's mean is the cell's
            expression proportions times it, so with NB and Poisson likelihoods the counts
            total about this much, with ``"zinb"`` less by the inflated zeros' share. By
            default, drawn from the training cells of the same condition (its specified
            categorical keys).
        batch
            Batch category to decode in; by default, drawn with the library size from the
            matched training cells.
        seed
            Random seed; the same seed gives the same cells.
        batch_size
            Cells decoded per forward pass.
        out
            Path of an ``.h5ad`` file to stream the cells to (see Notes). By default the
            cells are returned in memory.
        temperature
            Scale of the prior's noise: latents are z = f(temperature * u; c), u ~ N(0, I),
            where z = f(u; c) is the prior's noise map (``prior="gaussian"``: z = mu(c) +
            temperature * sigma(c) * u; ``"flow"``: the base noise is scaled before the
            flow). 1 (default) samples p(z | c) itself; below 1 draws nearer the prior's
            centre (typical cells, less diversity). Needs a prior with a noise map
            (``"gaussian"``, ``"flow"``, ``"normal"``); the mixture and VampPrior have none.
            Measured by ``benchmarks/temperature.py``: it helps some data sets and hurts
            others, so check :func:`genvi.metrics.evaluate` on held-out cells before
            lowering it.

        Returns
        -------
        AnnData with sampled counts in ``X`` (CSR, float32 holding integers; real values for
        ``gene_likelihood="normal"``), the conditions in ``obs`` as categoricals with the
        training categories, ``obs["library_size"]``, latents in
        ``obsm["X_genvi_latent"]`` and run metadata in ``uns["genvi"]``. With ``out``, the
        same AnnData opened read-only in backed mode from ``out`` (``X`` stays on disk; call
        ``.to_memory()`` to load it).

        Notes
        -----
        Memory. In memory, a cohort costs one dense chunk of ``batch_size`` cells on the
        model's device (each chunk is compressed to CSR there) plus its CSR matrix (~8 bytes
        per non-zero count, twice while the chunks are stacked). With ``out=...`` each decoded batch
        is appended to the file's on-disk CSR matrix (anndata's sparse ``append``, in
        writes of ~16k cells), so memory stays flat in ``n_cells``: one write chunk plus
        ``obs`` and a few numbers per cell (~50 bytes). The file is written under a
        temporary name and renamed when complete. The same ``seed`` gives the same cells
        either way.
        """
        sample_kwargs = None
        if self._check_temperature(temperature) != 1.0:
            sample_kwargs = {"temperature": float(temperature)}
        return self._generate(
            conditions,
            n_cells,
            library_size,
            batch,
            seed,
            batch_size,
            sample_kwargs=sample_kwargs,
            metadata={"temperature": float(temperature)},
            out=out,
        )

    def _check_temperature(self, temperature: float) -> float:
        """``temperature`` as a float; a clear error where the prior cannot scale its noise."""
        temperature = validate_temperature(temperature)
        prior = self.module.prior
        if temperature != 1.0 and not getattr(prior, "has_noise_map", False):
            raise ValueError(
                f"temperature={temperature!r} needs a prior with a noise map (z = f(u; c)); "
                f"this model's {type(prior).__name__} has none. Use prior='gaussian' or "
                "prior='flow', or temperature=1."
            )
        return temperature

    def decode_latents(
        self,
        latents: np.ndarray,
        conditions: Conditions,
        n_cells: int | Sequence[int] | None = None,
        library_size: float | np.ndarray | None = None,
        batch: str | None = None,
        seed: int | None = None,
        batch_size: int = 1024,
    ) -> AnnData:
        """Decode given latents as cells of the given conditions.

        Everything :meth:`generate` does after drawing latents: library sizes (and batches) from
        training cells of each condition, the model's decoder, sampled counts. Useful to decode
        latents from elsewhere: another prior (e.g. scVI's N(0, I), to compare with the learned
        prior), an interpolation, or edited latents.

        Parameters
        ----------
        latents
            ``(n, n_latent)`` latents in the model's latent space, rows in the order of the
            conditions (``n_cells`` rows for the first condition, then the next...).
        conditions
            As in :meth:`generate`.
        n_cells
            Rows per condition; by default ``n / len(conditions)`` each.
        library_size, batch, seed, batch_size
            As in :meth:`generate`.

        Returns
        -------
        AnnData as :meth:`generate`, with ``latents`` in ``obsm["X_genvi_latent"]``.
        """
        specs = self._schema.parse(conditions)
        latents = np.asarray(latents, dtype=np.float32)
        n_latent = int(self.module.n_latent)
        if latents.ndim != 2 or latents.shape[1] != n_latent:
            raise ValueError(f"latents must have shape (n_cells, {n_latent}), got {latents.shape}.")
        if n_cells is None:
            if len(latents) % len(specs):
                raise ValueError(
                    f"{len(latents)} latents do not split evenly over {len(specs)} conditions; "
                    "pass n_cells."
                )
            n_cells = len(latents) // len(specs)
        counts = self._n_cells_per_spec(n_cells, len(specs))
        if sum(counts) != len(latents):
            raise ValueError(
                f"n_cells sums to {sum(counts)} but {len(latents)} latents were given."
            )
        if not np.all(np.isfinite(latents)):
            raise ValueError("latents contain NaN or infinite values.")
        return self._generate(
            specs,
            counts,
            library_size,
            batch,
            seed,
            batch_size,
            metadata={"latents": "given (decode_latents)"},
            latents=latents,
        )

    def _generate(
        self,
        conditions: Conditions,
        n_cells: int | Sequence[int],
        library_size: float | np.ndarray | None,
        batch: str | None,
        seed: int | None,
        batch_size: int,
        sample_kwargs: dict | None = None,
        metadata: dict | None = None,
        progress: bool = False,
        out: str | os.PathLike | None = None,
        latents: np.ndarray | None = None,
    ) -> AnnData:
        specs = self._schema.parse(conditions)
        counts = self._n_cells_per_spec(n_cells, len(specs))
        if out is not None:
            out = _check_out_path(out)
        self.module.eval()
        uns = self._run_metadata(
            method="generate",
            seed=seed,
            library_size="given" if library_size is not None else "training cells of condition",
            **(metadata or {}),
        )
        var = pd.DataFrame(index=pd.Index(self.var_names_, dtype=str))
        with seeded(seed, self.module.device) as rng:
            if out is not None:
                prep = self._prepare_cells(specs, counts, library_size, batch, rng)
                if latents is not None:
                    prep["latents"] = latents
                obs = self._generated_obs(specs, counts, prep)
                write_h5ad_stream(
                    out,
                    obs,
                    var,
                    {"genvi": uns},
                    self._iter_cells(prep, batch_size, sample_kwargs, progress, as_csr=True),
                )
                return read_backed(out)
            sim = self._simulate_cells(
                specs,
                counts,
                library_size,
                batch,
                rng,
                batch_size,
                sample_kwargs,
                progress,
                latents=latents,
                as_csr=True,
            )
        adata = AnnData(X=sim["x"], obs=self._generated_obs(specs, counts, sim), var=var)
        adata.obsm["X_genvi_latent"] = sim["z"]
        adata.uns["genvi"] = uns
        return adata

    def _generated_obs(self, specs: list[dict], counts: list[int], out: dict) -> pd.DataFrame:
        obs = self._schema.to_obs(specs, counts)
        if self.batch_key_ is not None:
            obs[self.batch_key_] = pd.Categorical(
                np.asarray(self.batch_categories_)[out["batch"]], categories=self.batch_categories_
            )
        obs["library_size"] = out["library"]
        obs["genvi_condition"] = pd.Categorical(
            np.repeat([self._schema.label(s) for s in specs], counts)
        )
        obs.index = [f"gen_{i}" for i in range(len(obs))]
        return obs


def validate_temperature(temperature: float) -> float:
    """``generate``'s ``temperature`` as a float; a clear error unless positive and finite."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)):
        raise TypeError(f"temperature must be a number, got {temperature!r}.")
    if not (np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}.")
    return float(temperature)


def _host_csr(x: torch.Tensor) -> sparse.csr_matrix:
    """Dense ``(cells, genes)`` tensor as a host CSR matrix, compressed where ``x`` lives.

    On a GPU this moves only the non-zeros (~15% of sampled counts) and skips the host's
    dense-to-CSR pass, which dominated generation time (28k cells/s on an H200).
    """
    with warnings.catch_warnings():
        # torch flags its sparse CSR layout as beta; only its dense -> CSR conversion is used
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        s = x.to_sparse_csr()
    return sparse.csr_matrix(
        (s.values().cpu().numpy(), s.col_indices().cpu().numpy(), s.crow_indices().cpu().numpy()),
        shape=tuple(x.shape),
    )


def _check_out_path(out: str | os.PathLike) -> str:
    out = os.fspath(out)
    if not out.endswith(".h5ad"):
        raise ValueError(f"out must be a path ending in .h5ad, got {out!r}.")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ValueError(f"The folder of out ({parent}) does not exist; create it first.")
    return out
