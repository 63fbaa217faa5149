"""LatentFlow: a conditional flow-matching prior on a trained count autoencoder."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from torch.distributions import Normal
from tqdm.auto import tqdm

from genvi._registry import document_options
from genvi.model.base._conditions import Conditions
from genvi.model.base._generation import validate_temperature
from genvi.model.base._latent_model import LatentPriorModel, module_options, rows_or_none
from genvi.model.base._likelihood import LikelihoodMixin
from genvi.module import ODE_METHODS, LatentFlowModule


@document_options(ode=ODE_METHODS)
class LatentFlow(LikelihoodMixin, LatentPriorModel):
    """Flow-matching prior p(z | conditions) in the latent space of a trained base model.

    A conditional vector field (residual MLP) is trained by flow matching on the linear path
    from N(0, I) to the base model's standardised posterior latents, with minibatch
    optimal-transport pairing by default. Sampling integrates the ODE with a fixed-step
    (Euler, Heun, midpoint, RK4) or adaptive (dopri5, torchdiffeq) solver, with per-key
    classifier-free guidance. The flow is a continuous normalizing flow, so latent
    log-densities are exact up to the ODE tolerance, and :meth:`get_log_likelihood` combines
    them with the base decoder into an importance-weighted log p(x | c).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`, with the base model's genes.
    base_model
        A trained ``scvi.model.SCVI`` or :class:`genvi.model.PriorVI` (kept frozen).
    n_hidden, n_layers
        Width and number of residual blocks of the vector field.
    n_embed
        Embedding size per condition key.
    condition_dropout
        Per-key probability of training with that key's null token.
    uncond_dropout
        Probability of dropping all keys at once.
    latent_target
        ``"sample"`` (default): train on a fresh posterior sample of the base encoder each
        time a cell is seen, i.e. on the aggregate posterior the decoder was trained on;
        ``"mean"``: on posterior means, a narrower cloud (on simulated data with sub-states
        LatentFlow reached energy distance 0.043 with samples vs 0.072 with means).
    ot_pairing
        Minibatch optimal-transport pairing of noise and latents within each condition.
    ot_solver
        How the pairing is solved: ``"auto"`` (default) takes the exact Hungarian assignment
        on the CPU and, on a GPU, an auction solver that runs on the device without waiting
        for the host (within about 1% of the exact pairing cost); ``"exact"`` or
        ``"device"`` force one.
    dropout_rate
        Dropout inside the vector field.

    Examples
    --------
    >>> prior = genvi.model.LatentFlow.from_model(scvi_model, condition_keys=["cell_type"])
    >>> prior.train()
    >>> cells = prior.generate({"cell_type": "B cells"}, n_cells=500, n_steps=10)
    >>> ll = prior.get_log_likelihood(adata_new)
    """

    _module_cls = LatentFlowModule
    _outlier_kinds = ("expression", "knn", "per_count", "latent")

    def __init__(
        self,
        adata: AnnData,
        base_model=None,
        n_hidden: int = 256,
        n_layers: int = 3,
        n_embed: int = 16,
        condition_dropout: float = 0.2,
        uncond_dropout: float = 0.1,
        latent_target: Literal["mean", "sample"] = "sample",
        ot_pairing: bool = True,
        ot_solver: Literal["auto", "exact", "device"] = "auto",
        dropout_rate: float = 0.0,
    ):
        self._init_latent_model(adata, base_model, **module_options(locals()))
        self.init_params_ = self._init_params_without_base(locals())

    def _sample_kwargs(self, n_steps, guidance, method: str = "heun", **kwargs):
        return {
            "n_steps": 20 if n_steps is None else int(n_steps),
            "method": method,
            "guidance": self._guidance_terms(guidance),
            **kwargs,
        }

    def _transport_kwargs(self, n_steps):
        return {"n_steps": 50 if n_steps is None else int(n_steps)}

    def generate(
        self,
        conditions: Conditions,
        n_cells: int | list[int] = 100,
        n_steps: int = 20,
        guidance: float | dict[str, float] | None = None,
        method: str = "heun",
        library_size: float | np.ndarray | None = None,
        batch: str | None = None,
        seed: int | None = None,
        batch_size: int = 4096,
        progress: bool = False,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        out: str | os.PathLike | None = None,
        temperature: float = 1.0,
    ) -> AnnData:
        """Sample new cells of the given conditions.

        Parameters
        ----------
        conditions
            A dict, a list of dicts or a DataFrame; unspecified keys use their null token.
        n_cells
            Cells per condition.
        n_steps
            Steps of a fixed-step solver (Heun uses two network evaluations per step).
        guidance
            Classifier-free guidance: one weight for all keys jointly, or ``{key: weight}``.
        method
            ODE solver (:data:`genvi.module.ODE_METHODS`):

            {ode_options}
        library_size
            Library size the counts are decoded with; drawn from training cells of the
            condition by default. The base decoder's mean sums to it; with a zero-inflated
            (``"zinb"``) base, scVI's default, the counts would total less by the inflated
            zeros' share (0.89 of it on pbmc3k, 0.97 on Kang), which the means calibrated by
            ``train`` (``mean_scale_``) make up: generated cells of a default scVI then summed
            to 0.996 of it on pbmc3k and 0.999 on Kang.
        batch
            Base-model batch to decode in; by default that of the matched training cells.
        seed
            Random seed.
        batch_size
            Cells per pass.
        progress
            Progress bar over batches of cells.
        rtol, atol
            Tolerances of ``"dopri5"``.
        out
            Path of an ``.h5ad`` file to stream the cells to with flat memory; a backed
            AnnData of that file is returned (see :meth:`genvi.model.PriorVI.generate`).
        temperature
            Scale of the starting noise: the ODE is integrated from ``temperature * u``, u ~
            N(0, I). 1 (default) samples the learned prior; below 1 draws nearer the flow's
            typical latents (less diversity), as :meth:`genvi.model.PriorVI.generate`'s.

        Returns
        -------
        AnnData as :meth:`genvi.model.PriorVI.generate`; latents (base space) in
        ``obsm["X_genvi_latent"]``.
        """
        temperature = validate_temperature(temperature)
        return self._generate_with_prior(
            conditions,
            n_cells,
            library_size,
            batch,
            seed,
            batch_size,
            progress,
            out,
            self._sample_kwargs(
                n_steps, guidance, method, rtol=rtol, atol=atol, temperature=temperature
            ),
            guidance,
            ode_method=method,
            temperature=temperature,
        )

    def get_latent_log_prob(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        trace: Literal["exact", "hutchinson"] = "exact",
        batch_size: int = 1024,
        progress: bool = True,
    ) -> np.ndarray:
        """The flow's log p(z | c) at the cells' base posterior means (latent space only).

        One ODE solve per cell, with the exact divergence by default; ``progress`` shows a bar
        over batches of cells.
        """
        self._check_trained()
        adata = self._validate_anndata(adata)
        idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        loc, _ = self._adapter.latent_distribution(adata)
        cat, cont = self._condition_arrays(adata, idx)
        self.module.eval()
        out = []
        starts = range(0, len(idx), batch_size)
        for start in tqdm(starts, desc="latent log-density", disable=not progress):
            sl = slice(start, start + batch_size)
            z = torch.as_tensor(loc[idx[sl]], device=self.module.device)
            cond = self._condition_tensors(rows_or_none(cat, sl), rows_or_none(cont, sl), n=len(z))
            out.append(self.module.log_prob(z, cond, trace=trace).cpu().numpy())
        return np.concatenate(out)

    def get_log_likelihood(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 20,
        batch_size: int | None = None,
        trace: Literal["exact", "hutchinson"] = "exact",
        n_steps: int = 20,
        progress: bool = True,
    ) -> np.ndarray:
        """Importance-weighted log p(x | c) per cell: flow prior times base decoder.

        ``log p(x | c) ~ log mean_k p(x | z_k) p_flow(z_k | c) / q(z_k | x)`` with ``z_k`` drawn
        from the base encoder; the flow density is exact (continuous change of variables).
        Like :meth:`genvi.model.PriorVI.get_log_likelihood`, values scale with sequencing
        depth; :meth:`score_outliers` divides by the total count.

        Parameters
        ----------
        adata
            Cells to score (the training data by default).
        indices
            Subset of cells.
        n_samples
            Importance samples per cell (each needs one ODE solve).
        batch_size
            Cells per pass.
        trace
            Divergence: ``"exact"`` (one backward pass per latent dimension) or
            ``"hutchinson"`` (one, unbiased but noisy).
        n_steps
            Heun steps of the change-of-variables ODE.
        progress
            Show a progress bar over batches of cells (each needs ``n_samples`` ODE solves).
        """
        batch_size = batch_size or 256
        self._check_trained()
        adata = self._validate_anndata(adata)
        idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        loc, scale = self._adapter.latent_distribution(adata)
        cat, cont = self._condition_arrays(adata, idx)
        manager = self.get_anndata_manager(adata, required=True)
        X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        inputs_all = self._adapter.decoder_inputs(adata)
        self.module.eval()
        dev, base_dev = self.module.device, self._adapter.device
        out = []
        with torch.no_grad():
            starts = range(0, len(idx), batch_size)
            for start in tqdm(starts, desc="log-likelihood", disable=not progress):
                sl = slice(start, start + batch_size)
                rows = idx[sl]
                n, k = len(rows), n_samples
                x = X[rows]
                x = torch.as_tensor(x.toarray() if hasattr(x, "toarray") else np.asarray(x))
                x = x.float().to(base_dev)
                q = Normal(torch.as_tensor(loc[rows]), torch.as_tensor(scale[rows]))
                z = q.sample((k,))  # (k, n, d)
                log_q = q.log_prob(z).sum(-1)
                cond = self._condition_tensors(
                    _tile(rows_or_none(cat, sl), k), _tile(rows_or_none(cont, sl), k), n=n * k
                )
                log_pz = self.module.log_prob(
                    z.reshape(k * n, -1).to(dev), cond, trace=trace, n_steps=n_steps
                )
                inputs = {
                    key: torch.as_tensor(
                        np.tile(v[rows], (k,) + (1,) * (v.ndim - 1)), device=base_dev
                    )
                    for key, v in inputs_all.items()
                }
                log_lib = torch.log(x.sum(-1, keepdim=True).clamp_min(1.0)).repeat(k, 1)
                px = self._decode_with_inputs(z.reshape(k * n, -1), log_lib, inputs)
                log_px = px.log_prob(x.repeat(k, 1)).sum(-1)
                w = (log_px.cpu() + log_pz.cpu()).reshape(k, n) - log_q
                out.append((torch.logsumexp(w, 0) - math.log(k)).numpy())
        return np.concatenate(out)

    def _other_outlier_scores(
        self,
        kind: str,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        n_samples: int | None,
        batch_size: int | None,
    ) -> np.ndarray:
        """``kind="latent"``: ``-log p_flow(z | c)`` at the base posterior mean.

        The novelty of the cell's state under the flow; free of sequencing depth (the base
        decoder, not z, carries library size), one ODE solve per cell. With a cell type left
        out of training it separated that type from held-out known cells with AUROC 0.99 on
        simulated data (``-log p(x | c)`` 0.85, per count 0.54); not yet measured on real data.
        """
        if kind != "latent":
            return super()._other_outlier_scores(kind, adata, indices, n_samples, batch_size)
        return -self.get_latent_log_prob(
            adata, indices, batch_size=batch_size or 1024, progress=False
        )


def _tile(a: np.ndarray | None, k: int) -> np.ndarray | None:
    return None if a is None else np.tile(a, (k, 1))
