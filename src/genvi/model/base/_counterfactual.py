"""Counterfactuals: each cell as it would look under other conditions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from scvi import REGISTRY_KEYS
from torch.distributions import Distribution

from genvi.model.base._seeding import seeded
from genvi.nn import ConditionInputs


class CounterfactualMixin:
    """:meth:`predict_counterfactual`, written once for every genvi model.

    The shared part parses and checks the new conditions, substitutes them into each cell's
    own (:meth:`ConditionSchema.substitute`), seeds the count sampling and builds the result.
    What differs between models is how a cell's latent moves to the new conditions:

    - count VAEs encode the cells batch by batch and call :meth:`_counterfactual_latent`
      (PriorVI: prior transport; DisentVI: keep the unknown latent);
    - latent priors override :meth:`_counterfactual_distributions` (deterministic transport
      through the flow / diffusion ODE, decoded by the base model).
    """

    def predict_counterfactual(
        self,
        adata: AnnData | None = None,
        new_conditions: dict | None = None,
        indices: Sequence[int] | None = None,
        return_mean: bool = False,
        seed: int | None = None,
        batch_size: int | None = None,
    ) -> AnnData:
        """Each cell as it would look with some conditions changed.

        The cell keeps its own latent state, library size and batch; the given keys are
        replaced and the cell is decoded.

        Parameters
        ----------
        adata
            Cells to transform (the training data by default).
        new_conditions
            Keys to change and their new values, e.g. ``{"condition": "stimulated"}`` or
            ``{"dose": 50.0}``.
        indices
            Subset of cells.
        return_mean
            Return the expected expression (the likelihood's mean) instead of sampled counts.
        seed
            Random seed of the count sampling.
        batch_size
            Cells per forward pass.

        Returns
        -------
        AnnData with the counterfactual in ``X`` (sparse counts, or dense means) and ``obs``
        copied from the input with the changed conditions.
        """
        return self._counterfactual(adata, new_conditions, indices, return_mean, seed, batch_size)

    # ------------------------------------------------------------------ shared driver
    def _counterfactual(
        self,
        adata: AnnData | None,
        new_conditions: dict | None,
        indices: Sequence[int] | None,
        return_mean: bool,
        seed: int | None,
        batch_size: int | None,
        metadata: dict | None = None,
        **hook_kwargs,
    ) -> AnnData:
        new = self._parse_new_conditions(new_conditions)
        adata = self._validate_anndata(adata)
        self.module.eval()
        hook_kwargs, extra = self._prepare_counterfactual(
            adata, indices, new, batch_size, **hook_kwargs
        )
        metadata = {**(metadata or {}), **extra}
        # prepared before seeding (encoding may draw random numbers), consumed inside
        batches = self._counterfactual_distributions(adata, indices, new, batch_size, **hook_kwargs)
        xs = []
        with torch.no_grad(), seeded(seed, self.module.device):
            for px in batches:
                xs.append((px.mean if return_mean else px.sample()).cpu().numpy())
        x = np.concatenate(xs).astype(np.float32)
        return self._counterfactual_result(
            adata, indices, x, new, return_mean, seed=seed, **metadata
        )

    def _prepare_counterfactual(
        self,
        adata: AnnData,
        indices: Sequence[int] | None,
        new: dict,
        batch_size: int | None,
        **hook_kwargs,
    ) -> tuple[dict, dict]:
        """Work a model does once per call on the validated cells, before any minibatch.

        Returns the keyword arguments for :meth:`_counterfactual_distributions` and extra
        ``uns["genvi"]`` metadata (DisentVI: its response-transfer table and report).
        """
        return hook_kwargs, {}

    def _parse_new_conditions(self, new_conditions: dict | None) -> dict:
        """Validated ``{key: value}``; a missing (None / NaN) value is an error here."""
        if not new_conditions:
            raise ValueError(
                "new_conditions must name at least one attribute (condition key) to change, e.g. "
                "{'condition': 'stimulated'}."
            )
        schema = self._schema
        for key, value in new_conditions.items():
            if key in schema.keys and (value is None or pd.isna(value)):
                options = schema.categorical.get(key, "a finite number")
                raise ValueError(
                    f"The counterfactual value of {key!r} is missing; give one of {options}."
                )
        return schema.parse(new_conditions)[0]

    # ------------------------------------------------------------------ count-VAE hooks
    def _counterfactual_distributions(
        self,
        adata: AnnData,
        indices: Sequence[int] | None,
        new: dict,
        batch_size: int | None,
        **latent_kwargs,
    ) -> Iterator[Distribution]:
        """p(x) of the counterfactual cells, one minibatch at a time (lazily).

        ``latent_kwargs`` go to :meth:`_counterfactual_decode` (by default to
        :meth:`_counterfactual_latent`).
        """
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        schema = self._schema
        dev = self.module.device

        def batches() -> Iterator[Distribution]:
            for tensors in loader:
                inf = self.module.inference(**self.module._get_inference_input(tensors))
                cat = tensors.get(self._cat_registry_key)
                cont = tensors.get(self._cont_registry_key)
                cat = cat.to(dev).long() if cat is not None else None
                cont = cont.to(dev).float() if cont is not None else None
                source = ConditionInputs(cat, cont)
                target = ConditionInputs(*schema.substitute(cat, cont, new))
                batch_index = tensors[REGISTRY_KEYS.BATCH_KEY].to(dev)
                yield self._counterfactual_decode(
                    inf, target, batch_index, source=source, **latent_kwargs
                )

        return batches()

    def _counterfactual_decode(
        self,
        inference: dict,
        target: ConditionInputs,
        batch_index: torch.Tensor,
        source: ConditionInputs | None = None,
        **kwargs,
    ) -> Distribution:
        """p(x) of one minibatch's counterfactual.

        Its latent (:meth:`_counterfactual_latent`) decoded under the new conditions
        (``source``: the cells' own conditions). A model whose decoder needs more than
        ``(z, c, library, batch)`` (HybridVI: the mean predictor's mean) overrides this.
        """
        z, c_new = self._counterfactual_latent(inference, target, **kwargs)
        return self.module.decode(z, c_new, inference["library"], batch_index)

    def _counterfactual_latent(
        self, inference: dict, target: ConditionInputs, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent to decode and the new condition embedding (defined by the model)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ result
    def _counterfactual_result(
        self,
        adata: AnnData,
        indices: Sequence[int] | None,
        x: np.ndarray,
        new: dict,
        return_mean: bool,
        **metadata,
    ) -> AnnData:
        """AnnData of counterfactual cells.

        ``obs`` keeps the conditions (the changed ones set to their new values) and the batch;
        per-cell QC columns that no longer hold (``n_counts``, ``n_genes``...) are recomputed
        from the counterfactual (counts-based ones are dropped for expected values); every
        other column describes the cell the counterfactual came from and is renamed
        ``source_<column>``. ``genvi_counterfactual`` marks the cells and
        ``genvi_source_cell`` names the input cell.
        """
        obs = adata.obs.iloc[np.asarray(indices)] if indices is not None else adata.obs
        # scvi-tools' registration columns describe the input, not the counterfactual
        obs = obs.loc[:, [c for c in obs.columns if not str(c).startswith("_scvi")]].copy()
        schema = self._schema
        kept = {*schema.keys, self.batch_key_}
        out = pd.DataFrame(index=obs.index.copy())
        for col in obs.columns:
            if col in new:
                if col in schema.categorical:
                    cats = schema.categorical[col]
                    out[col] = pd.Categorical([new[col]] * len(obs), categories=cats)
                else:
                    out[col] = float(new[col])
            elif col in kept:
                out[col] = obs[col]
            elif col in _QC_COLUMNS:
                if col in _COUNT_ONLY_QC and return_mean:
                    continue
                out[col] = _QC_COLUMNS[col](x)
            else:
                out[f"source_{col}"] = obs[col]
        for key, value in new.items():  # conditions absent from the input's obs
            if key not in out.columns:
                out[key] = (
                    pd.Categorical([value] * len(obs), categories=schema.categorical[key])
                    if key in schema.categorical
                    else float(value)
                )
        out["genvi_counterfactual"] = True
        out["genvi_source_cell"] = obs.index.astype(str).to_numpy()
        result = AnnData(
            X=x if return_mean else sparse.csr_matrix(x), obs=out, var=adata.var.copy()
        )
        result.uns["genvi"] = self._run_metadata(
            method="predict_counterfactual",
            new_conditions={k: str(v) for k, v in new.items()},
            return_mean=return_mean,
            **metadata,
        )
        return result


def _totals(x: np.ndarray) -> np.ndarray:
    return x.sum(1).astype(np.float64)


def _detected(x: np.ndarray) -> np.ndarray:
    return (x > 0).sum(1).astype(np.int64)


# per-cell QC columns scanpy / scvi-tools users carry; recomputed for counterfactual cells
_QC_COLUMNS = {
    "n_counts": _totals,
    "total_counts": _totals,
    "log1p_total_counts": lambda x: np.log1p(_totals(x)),
    "n_genes": _detected,
    "n_genes_by_counts": _detected,
    "log1p_n_genes_by_counts": lambda x: np.log1p(_detected(x)),
}
# detected genes are not defined for expected values (every mean is positive)
_COUNT_ONLY_QC = {"n_genes", "n_genes_by_counts", "log1p_n_genes_by_counts"}
