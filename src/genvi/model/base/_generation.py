"""Generation, predictive intervals, likelihoods and counterfactuals shared by genvi models."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from scvi import REGISTRY_KEYS
from torch.distributions import Distribution
from tqdm.auto import tqdm

from genvi._validation import check_genes, row_sums
from genvi.model.base._conditions import Conditions, ConditionSchema
from genvi.model.base._reference import draw_reference_cells
from genvi.model.base._streaming import read_backed, write_h5ad_stream


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[np.random.Generator]:
    """Seed torch (CPU and the model's GPU) locally, leaving the global RNG state untouched."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield np.random.default_rng(seed)


class GenerativeMixin:
    """Condition-driven generation for models whose module has a prior p(z | c).

    Requires the model to define ``_schema`` (:class:`ConditionSchema`), the training
    reference arrays ``train_codes_``, ``train_log_library_``, ``train_batch_``, and
    ``batch_categories_``; and the module to define ``embed_conditions``, ``prior`` and
    ``decode``. Models with another latent sampler override :meth:`_sample_latent`.
    """

    _cat_registry_key: str
    _cont_registry_key: str

    @property
    def _schema(self) -> ConditionSchema:
        """Condition keys and training categories, read from the AnnData registry."""
        manager = self.adata_manager
        registry = manager.data_registry
        categorical, continuous = {}, []
        if self._cat_registry_key in registry:
            state = manager.get_state_registry(self._cat_registry_key)
            categorical = {k: [str(c) for c in state.mappings[k]] for k in state.field_keys}
        if self._cont_registry_key in registry:
            continuous = list(manager.get_state_registry(self._cont_registry_key).columns)
        return ConditionSchema(categorical, continuous)

    # ------------------------------------------------------------------ training reference
    def _continuous_values(self) -> np.ndarray | None:
        if self._cont_registry_key not in self.adata_manager.data_registry:
            return None
        return np.asarray(self.adata_manager.get_from_registry(self._cont_registry_key), float)

    def _initialize_pseudo_inputs(self, max_cells: int = 5000) -> None:
        """Start VampPrior pseudo-inputs at real cells (overwritten by weights on load)."""
        X = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(X.shape[0], size=min(max_cells, X.shape[0]), replace=False))
        rows = X[idx]
        rows = rows.toarray() if hasattr(rows, "toarray") else np.asarray(rows)
        x = torch.as_tensor(rows, dtype=torch.float32)
        self.module.prior.initialize_pseudo_inputs(self.module.encoder_input(x))

    def _store_training_reference(self) -> None:
        """Keep per-cell library sizes, condition codes and batches of the training data.

        Generation draws reference cells (library size, batch) from these arrays.
        """
        manager = self.adata_manager
        registry = manager.data_registry
        X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        totals = row_sums(X)
        if REGISTRY_KEYS.SIZE_FACTOR_KEY in registry:
            totals = np.asarray(manager.get_from_registry(REGISTRY_KEYS.SIZE_FACTOR_KEY)).ravel()
        self.train_library_ = np.maximum(totals, 1.0).astype(np.float64)
        if self._cat_registry_key in registry:
            codes = np.asarray(manager.get_from_registry(self._cat_registry_key))
        else:
            codes = np.zeros((len(totals), 0))
        self.train_codes_ = codes.astype(np.int32)  # -1 = missing label (never matched)
        batch = np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
        self.train_batch_ = batch.astype(np.int64)
        batch_state = manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
        self.batch_categories_ = [str(c) for c in batch_state.categorical_mapping]
        self.batch_key_ = manager.registry["setup_args"].get("batch_key")
        self.var_names_ = np.asarray(self.adata.var_names, dtype=str)

    # ------------------------------------------------------------------ hooks
    def _sample_latent(self, c: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.module.prior(c).sample()

    def _decode(
        self, z: torch.Tensor, c: torch.Tensor, log_library: torch.Tensor, batch: torch.Tensor
    ) -> Distribution:
        return self.module.decode(z, c, log_library, batch)

    def _decode_reference(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        log_library: torch.Tensor,
        batch: torch.Tensor,
        ref: np.ndarray,
    ) -> Distribution:
        """Decode generated cells; ``ref`` are the training cells their nuisances come from."""
        return self._decode(z, c, log_library, batch)

    # ------------------------------------------------------------------ helpers
    def _condition_tensors(self, cat, cont, keep) -> torch.Tensor:
        dev = self.module.device
        cat_t = torch.as_tensor(cat, device=dev) if cat.shape[1] else None
        cont_t = torch.as_tensor(cont, device=dev) if cont.shape[1] else None
        keep_t = torch.as_tensor(keep, device=dev)
        return self.module.embed_conditions(cat_t, cont_t, keep_t, n=cat.shape[0])

    def _batch_code(self, batch: str | None) -> int | None:
        if batch is None:
            return None
        cats = list(self.batch_categories_)
        if str(batch) not in cats:
            raise ValueError(f"Unknown batch {batch!r}. Known batches: {cats}.")
        return cats.index(str(batch))

    def _check_conditional_dropout(self, keep: np.ndarray) -> None:
        if not keep.all() and self.module.condition_encoder.dropout == 0:
            import warnings

            warnings.warn(
                "Some condition keys are unspecified, but the model was trained with "
                "condition_dropout=0, so their null tokens were never trained. Specify every "
                "key or retrain with condition_dropout > 0.",
                UserWarning,
                stacklevel=3,
            )

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
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(counts, latents)`` for ``batch_size`` cells at a time, on the CPU."""
        rows, cat, cont, keep = prep["rows"], prep["cat"], prep["cont"], prep["keep"]
        dev = self.module.device
        starts = range(0, len(rows), batch_size)
        for start in tqdm(starts, disable=not progress or len(starts) < 2, desc="generating"):
            sl = slice(start, start + batch_size)
            r = rows[sl]
            with torch.inference_mode():
                c = self._condition_tensors(cat[r], cont[r], keep[r])
                z = self._sample_latent(c, **(sample_kwargs or {}))
                px = self._decode_reference(
                    z,
                    c,
                    torch.as_tensor(prep["log_library"][sl], device=dev).unsqueeze(-1),
                    torch.as_tensor(prep["batch"][sl], device=dev).unsqueeze(-1),
                    prep["ref"][sl],
                )
                x = px.sample().cpu().numpy().astype(np.float32, copy=False)
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
    ) -> dict[str, np.ndarray]:
        """Sample latents, library sizes and observations for each spec; arrays on the CPU."""
        prep = self._prepare_cells(specs, n_cells, library_size, batch, rng)
        xs, zs = [], []
        for x, z in self._iter_cells(prep, batch_size, sample_kwargs, progress):
            xs.append(x)
            zs.append(z)
        return {
            "x": np.concatenate(xs).astype(np.float32),
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
            Total counts per generated cell. By default, drawn from the training cells of the
            same condition (its specified categorical keys).
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
        Memory. In memory, a cohort costs its dense count chunks while decoding plus the
        final CSR matrix (~8 bytes per non-zero count). With ``out=...`` each decoded batch
        is appended to the file's on-disk CSR matrix (anndata's sparse ``append``, in
        writes of ~16k cells), so memory stays flat in ``n_cells``: one write chunk plus
        ``obs`` and a few numbers per cell (~50 bytes). The file is written under a
        temporary name and renamed when complete. The same ``seed`` gives the same cells
        either way.
        """
        return self._generate(conditions, n_cells, library_size, batch, seed, batch_size, out=out)

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
                obs = self._generated_obs(specs, counts, prep)
                write_h5ad_stream(
                    out,
                    obs,
                    var,
                    {"genvi": uns},
                    self._iter_cells(prep, batch_size, sample_kwargs, progress),
                )
                return read_backed(out)
            sim = self._simulate_cells(
                specs, counts, library_size, batch, rng, batch_size, sample_kwargs, progress
            )
        adata = AnnData(
            X=sparse.csr_matrix(sim["x"]), obs=self._generated_obs(specs, counts, sim), var=var
        )
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

    def _run_metadata(self, **extra) -> dict:
        import genvi

        meta = {
            "model": type(self).__name__,
            "genvi_version": genvi.__version__,
            "gene_likelihood": getattr(self.module, "gene_likelihood", None),
            "condition_keys": list(self._schema.categorical),
            "continuous_condition_keys": list(self._schema.continuous),
        }
        if hasattr(self.module, "prior_name"):
            meta["prior"] = self.module.prior_name
        meta.update({k: ("None" if v is None else v) for k, v in extra.items()})
        return meta

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
        if transform not in ("normalized", "log1p", "counts"):
            raise ValueError("transform must be 'normalized', 'log1p' or 'counts'.")
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

    @torch.inference_mode()
    def get_log_likelihood(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 100,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Per-cell importance-weighted estimate of log p(x | c).

        Low values flag cells the model finds implausible for their condition (outliers,
        unseen populations). Values scale with sequencing depth: compare cells of similar
        library size, or use the depth-free :meth:`score_outliers`.

        Parameters
        ----------
        adata
            Cells to score (the training data by default); same genes as the model.
        indices
            Subset of cells.
        n_samples
            Importance samples per cell.
        batch_size
            Cells per forward pass.

        Returns
        -------
        Array of shape ``(n_cells,)``.
        """
        adata = self._validate_anndata(adata)
        self.module.eval()
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        out = [
            self.module.marginal_ll(tensors, n_mc_samples=n_samples).cpu().numpy()
            for tensors in loader
        ]
        return np.concatenate(out)

    def score_outliers(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 100,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Per-cell outlier scores: negative log-likelihood per count (per gene for ``normal``).

        :meth:`get_log_likelihood` grows in magnitude with sequencing depth (a deep cell has
        more counts to explain), so raw values flag deep cells. Dividing by the cell's total
        count gives the average surprise per observed molecule; higher means less plausible
        for the cell's condition under the model. This removes the linear growth with depth,
        not all depth dependence: on real data the per-count score tends to fall with depth,
        so compare cells of similar library size.

        Read the scores relative to held-out cells the model should find typical (e.g. flag
        cells above their 99th percentile); absolute values depend on the dataset and genes.

        Parameters
        ----------
        adata
            Cells to score (the training data by default); same genes as the model.
        indices
            Subset of cells.
        n_samples
            Importance samples per cell.
        batch_size
            Cells per forward pass.

        Returns
        -------
        Array of shape ``(n_cells,)``.
        """
        ll = self.get_log_likelihood(adata, indices, n_samples, batch_size)
        if self.module.gene_likelihood == "normal":  # no counts: per gene instead
            return -ll / len(self.var_names_)
        adata = self._validate_anndata(adata)
        X = self.get_anndata_manager(adata, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)
        totals = row_sums(X)
        if indices is not None:
            totals = totals[np.asarray(indices)]
        return -ll / np.maximum(totals, 1.0)

    @torch.inference_mode()
    def predict_counterfactual(
        self,
        adata: AnnData | None = None,
        new_conditions: dict | None = None,
        indices: Sequence[int] | None = None,
        return_mean: bool = False,
        transport: bool = True,
        seed: int | None = None,
        batch_size: int | None = None,
    ) -> AnnData:
        """Each cell as it would look under other conditions (encode, swap, decode).

        The cell is encoded with its own conditions; the given keys are replaced and the cell
        is decoded with its own library size and batch.

        Parameters
        ----------
        adata
            Cells to transform (the training data by default).
        new_conditions
            Keys to change and their new values, e.g. ``{"condition": "stimulated"}``.
        indices
            Subset of cells.
        return_mean
            Return expected expression (the likelihood's mean) instead of sampled counts.
        transport
            Keep the cell's position *relative to its prior*: z is moved with the prior's
            map between the two conditions (``prior.transport``: the optimal-transport map
            for Gaussian priors, the same exogenous noise for flows, the same component for
            mixtures). With ``False`` z is kept as is, which only changes anything when the
            decoder also sees the conditions.
        seed
            Random seed for the count sampling.
        batch_size
            Cells per forward pass.

        Returns
        -------
        AnnData with the counterfactual in ``X`` and ``obs`` copied from the input with the
        changed conditions.
        """
        if not new_conditions:
            raise ValueError("new_conditions must name at least one condition key to change.")
        new = self._schema.parse(new_conditions)[0]
        prior = self.module.prior
        decodes_c = getattr(self.module, "decode_conditions", True)
        if not decodes_c and (not transport or not hasattr(prior, "transport")):
            raise ValueError(
                "This model's decoder does not see the conditions, so a counterfactual must move "
                "z through the prior (transport=True with a prior that supports it)."
            )
        if not decodes_c and self.module.prior_name == "normal":
            raise ValueError(
                "With prior='normal' and decode_conditions=False the model does not represent "
                "conditions at all; use prior='gaussian' or decode_conditions=True."
            )
        adata = self._validate_anndata(adata)
        self.module.eval()
        ncat, ncont, nkeep = self._schema.encode([new])
        keys = self._schema.keys
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        xs = []
        with seeded(seed, self.module.device):
            for tensors in loader:
                inf = self.module.inference(**self.module._get_inference_input(tensors))
                z, c_old = inf["qz"].loc, inf["c"]
                cat = tensors.get(self._cat_registry_key)
                cont = tensors.get(self._cont_registry_key)
                cat = cat.long().clone() if cat is not None else None
                cont = cont.float().clone() if cont is not None else None
                for j, key in enumerate(keys):
                    if key not in new:
                        continue
                    if j < ncat.shape[1]:
                        cat[:, j] = int(ncat[0, j])
                    else:
                        cont[:, j - ncat.shape[1]] = float(ncont[0, j - ncat.shape[1]])
                c_new = self.module.embed_conditions(cat, cont, None, n=z.shape[0])
                if transport and hasattr(prior, "transport"):
                    z = prior.transport(z, c_old, c_new)
                batch_index = tensors[REGISTRY_KEYS.BATCH_KEY].to(z.device)
                px = self._decode(z, c_new, inf["library"], batch_index)
                xs.append((px.mean if return_mean else px.sample()).cpu().numpy())
        x = np.concatenate(xs).astype(np.float32)
        return self._counterfactual_result(
            adata, indices, x, new, return_mean, transport=transport, seed=seed
        )

    def _counterfactual_result(
        self,
        adata: AnnData,
        indices: Sequence[int] | None,
        x: np.ndarray,
        new: dict,
        return_mean: bool,
        **metadata,
    ) -> AnnData:
        """AnnData of counterfactual cells: obs of the input with the changed conditions."""
        obs = adata.obs.iloc[np.asarray(indices)] if indices is not None else adata.obs
        # scvi-tools' registration columns describe the input, not the counterfactual
        obs = obs.loc[:, [c for c in obs.columns if not str(c).startswith("_scvi")]].copy()
        categorical = self._schema.categorical
        for key, value in new.items():
            if key in categorical:
                obs[key] = pd.Categorical([value] * len(obs), categories=categorical[key])
            else:
                obs[key] = float(value)
        result = AnnData(
            X=x if return_mean else sparse.csr_matrix(x), obs=obs, var=adata.var.copy()
        )
        result.uns["genvi"] = self._run_metadata(
            method="predict_counterfactual",
            new_conditions={k: str(v) for k, v in new.items()},
            return_mean=return_mean,
            **metadata,
        )
        return result

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True):
        if adata is not None:
            check_genes(adata, self.var_names_)
            self._schema.check_obs(adata.obs)
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)


def _check_out_path(out: str | os.PathLike) -> str:
    out = os.fspath(out)
    if not out.endswith(".h5ad"):
        raise ValueError(f"out must be a path ending in .h5ad, got {out!r}.")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise ValueError(f"The folder of out ({parent}) does not exist; create it first.")
    return out


def transform_expression(x: np.ndarray, transform: str, target_sum: float = 1e4) -> np.ndarray:
    """Counts to ``"counts"``, ``"normalized"`` (to ``target_sum`` per cell) or ``"log1p"``."""
    if transform == "counts":
        return x
    totals = np.maximum(x.sum(1, keepdims=True), 1.0)
    x = x / totals * target_sum
    return np.log1p(x) if transform == "log1p" else x
