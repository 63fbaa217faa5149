"""Shared model class of the latent priors (LatentDiffusion, LatentFlow)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import scvi
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data.fields import CategoricalJointObsField
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner
from torch.distributions import Distribution

from genvi._constants import GENVI_REGISTRY_KEYS
from genvi._validation import check_genes, row_sums
from genvi.model.base._base_models import make_adapter
from genvi.model.base._conditioned import ConditionedModelMixin
from genvi.model.base._conditions import Conditions
from genvi.model.base._confidence import ConfidenceMixin
from genvi.model.base._counterfactual import CounterfactualMixin
from genvi.model.base._dispersion import (
    MIN_CHECK_CELLS,
    cell_theta,
    checked_dispersion,
    checked_mean_scale,
    fit_dispersion,
    fit_mean_scale,
    replace_dispersion,
    scale_mean,
)
from genvi.model.base._generation import GenerationMixin
from genvi.model.base._guidance import guidance_metadata, guidance_terms
from genvi.model.base._latent_data import LatentDataModule
from genvi.model.base._latent_io import LatentPriorIOMixin
from genvi.model.base._novelty import NoveltyMixin
from genvi.model.base._seeding import seeded
from genvi.model.base._setup import as_key_list, setup_condition_fields
from genvi.model.base._training import LatentPriorTrainingPlan
from genvi.model.base._weight_average import (
    add_ema_callback,
    check_ema_decay,
    default_ema_decay_for,
)
from genvi.nn import ConditionInputs

# Diffusion / flow-matching objectives are noisy per step: train for a number of optimizer
# steps, not of passes over small data.
DEFAULT_TRAIN_STEPS = 10_000
MAX_DEFAULT_EPOCHS = 2_000


class LatentPriorModel(
    LatentPriorIOMixin,
    GenerationMixin,
    ConfidenceMixin,
    CounterfactualMixin,
    ConditionedModelMixin,
    NoveltyMixin,
    BaseModelClass,
):
    """Base class of generative priors trained in the latent space of a trained base model.

    Stage 1 is a trained count autoencoder (``scvi.model.SCVI`` or
    :class:`genvi.model.PriorVI`); stage 2 (this model) learns p(z | conditions) over its
    posterior latents; new cells are sampled from stage 2 and decoded to counts by the stage-1
    decoder, with library sizes and nuisance covariates (batch...) taken from training cells
    of the same condition.
    """

    _module_cls: type
    #: Decay of the weights' moving average under ``train(ema_decay="default")``, in runs of
    #: at least ``_ema_min_steps`` optimizer steps: in shorter ones the average lags behind a
    #: prior that still improves quickly (simulated data, issue #20: energy 1.00 -> 1.15 after
    #: 120 steps; 0.27 -> 0.26 after 400, 0.16 -> 0.10 after 1,750).
    _ema_decay: float | None = 0.999
    _ema_min_steps: int = 400
    _cat_registry_key = GENVI_REGISTRY_KEYS.COND_CAT_KEY
    _cont_registry_key = GENVI_REGISTRY_KEYS.COND_CONT_KEY

    def _init_latent_model(self, adata: AnnData, base_model, **module_kwargs) -> None:
        if base_model is None:
            raise ValueError(f"{type(self).__name__} needs a trained base model: base_model=...")
        adapter = make_adapter(base_model)
        check_genes(adata, adapter.var_names)
        self._register_with_base(adata, base_model)
        super().__init__(adata)
        setup_batch = self.adata_manager.registry["setup_args"].get("batch_key")
        base_batch = base_model.adata_manager.registry["setup_args"].get("batch_key")
        if setup_batch is not None and setup_batch != base_batch:
            raise ValueError(
                f"batch_key={setup_batch!r} differs from the base model's batch key "
                f"({base_batch!r}); the base decoder decodes in its own batches. Pass the base "
                "model's batch key or none."
            )
        self.base_model = base_model
        self._adapter = adapter
        schema = self._schema
        cont_mean, cont_std = self._continuous_stats()
        self.module = self._module_cls(
            n_latent=adapter.n_latent,
            n_cats_per_key=[len(c) for c in schema.categorical.values()],
            n_continuous=len(schema.continuous),
            continuous_mean=cont_mean,
            continuous_std=cont_std,
            gene_likelihood=adapter.gene_likelihood,
            **module_kwargs,
        )
        self.base_class_ = adapter.class_path
        self.base_fingerprint_ = adapter.fingerprint()
        self.latent_stats_set_ = False
        self.dispersion_ = None
        self.dispersion_check_ = None
        self.mean_scale_ = None
        self._store_training_reference()
        self._model_summary_string = (
            f"{type(self).__name__} on {type(base_model).__name__} "
            f"(n_latent={adapter.n_latent}), conditions={schema.keys or 'none'}"
        )

    def _init_params_without_base(self, local_vars: dict) -> dict:
        params = self._get_init_params(local_vars)
        params["non_kwargs"].pop("base_model", None)
        return params

    @classmethod
    def from_model(
        cls,
        base_model,
        adata: AnnData | None = None,
        condition_keys: Sequence[str] | None = None,
        continuous_condition_keys: Sequence[str] | None = None,
        **model_kwargs,
    ):
        """Register ``adata`` (the base model's by default) and build the prior on ``base_model``.

        Parameters
        ----------
        base_model
            A trained ``scvi.model.SCVI`` or :class:`genvi.model.PriorVI`.
        adata
            Cells to train on (same genes as the base model); ``base_model.adata`` by default.
            Registration adds scvi-tools' metadata to ``adata.uns`` only.
        condition_keys, continuous_condition_keys
            Conditions to generate from. When both are omitted and ``adata`` was already
            registered with :meth:`setup_anndata`, that registration is used as it is.
        **model_kwargs
            Passed to the model's constructor.
        """
        adata = base_model.adata if adata is None else adata
        if adata is None:
            raise ValueError("The base model holds no AnnData; pass adata=.")
        if condition_keys is not None or continuous_condition_keys is not None:
            layer = base_model.adata_manager.registry["setup_args"].get("layer")
            cls.setup_anndata(
                adata,
                layer=layer,
                condition_keys=condition_keys,
                continuous_condition_keys=continuous_condition_keys,
            )
        elif cls._get_most_recent_anndata_manager(adata) is None:
            layer = base_model.adata_manager.registry["setup_args"].get("layer")
            cls.setup_anndata(adata, layer=layer)
        return cls(adata, base_model=base_model, **model_kwargs)

    @classmethod
    def _register_with_base(cls, adata: AnnData, base_model) -> None:
        """Make ``adata`` known to the base model without losing its registration here.

        The base model reads latents and decoder inputs from ``adata``. When ``adata`` is a copy
        of the base model's AnnData, scvi-tools re-keys it on first use by the base model, which
        would orphan this model's registration; it is then repeated with the same arguments.
        """
        manager = cls._get_most_recent_anndata_manager(adata)
        base_model._validate_anndata(adata)
        if manager is not None and cls._get_most_recent_anndata_manager(adata) is None:
            cls.setup_anndata(adata, **manager.registry["setup_args"])

    # ------------------------------------------------------------------ registry helpers
    def _library_sizes(self, adata: AnnData | None = None) -> np.ndarray:
        manager = self.get_anndata_manager(self.adata if adata is None else adata, required=True)
        X = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        return np.maximum(row_sums(X), 1.0)

    def _store_training_reference(self) -> None:
        """Library sizes, condition codes and base-decoder nuisance inputs of training cells."""
        self.train_library_ = self._library_sizes()
        codes = self._registered(self._cat_registry_key)
        self.train_codes_ = (np.zeros((self.adata.n_obs, 0)) if codes is None else codes).astype(
            np.int32
        )
        inputs = self._adapter.decoder_inputs(self.adata)
        self.train_decoder_inputs_ = inputs
        self.train_batch_ = inputs["batch"].astype(np.int64)
        base_manager = self.base_model.adata_manager
        batch_state = base_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
        self.batch_categories_ = [str(c) for c in batch_state.categorical_mapping]
        self.batch_key_ = base_manager.registry["setup_args"].get("batch_key")
        self.var_names_ = np.asarray(self.adata.var_names, dtype=str)

    def _condition_arrays(self, adata: AnnData | None = None, indices=None):
        cat = self._registered(self._cat_registry_key, adata)
        cont = self._registered(self._cont_registry_key, adata)
        if indices is not None:
            cat = cat[indices] if cat is not None else None
            cont = cont[indices] if cont is not None else None
        return cat, cont

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 256,
        train_size: float = 0.9,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        latent_batch_size: int | None = None,
        refit_dispersion: bool | str | None = None,
        ema_decay: float | None | str = "default",
        calibrate_mean: bool = True,
        **trainer_kwargs,
    ):
        """Train the prior on the base model's posterior latents of the registered cells.

        Parameters
        ----------
        max_epochs
            Passes over the cells. By default enough for about 10,000 optimizer steps (at
            most 2,000 epochs): denoising objectives need many steps, and small data sets
            have few steps per epoch.
        batch_size
            Cells per minibatch. Under DDP (``devices=N``) this is per process, as in
            scvi-tools: each optimizer step averages the gradients of N x ``batch_size``
            cells. The default number of epochs counts steps of one process.
        train_size
            Fraction of cells for training; the rest gives the validation loss.
        accelerator, devices
            Lightning device arguments.
        plan_kwargs
            Passed to :class:`scvi.train.TrainingPlan` (``lr``, ``weight_decay``...).
        latent_batch_size
            Cells per pass when encoding the data with the base model.
        refit_dispersion
            Re-estimate the base decoder's inverse dispersion (per gene, or per gene and batch)
            by maximum likelihood on the registered cells (at most 1,024, encoder and decoder
            frozen) and decode with it; the base model is not changed. ``None`` (default): for
            an ``scvi.model.SCVI`` base, whose training plan can leave each gene's dispersion
            near its random start (on pbmc3k, LatentFlow on scVI: energy 0.58 -> 0.19,
            variance R² 0.31 -> 0.66; issue #20), not for a PriorVI, which learns its own
            (refitting it raised the classifier AUROC there). ``True`` / ``False``: refit or
            not. ``"checked"``: refit on the cells the base model trained on and keep the refit
            only in the gene bins (10, by mean count) where it raises the likelihood of
            registered cells the base model did *not* train on (its validation cells), the
            outcome in ``dispersion_check_``; it gave the best held-out likelihoods on pbmc3k
            and Kang (``benchmarks/dispersion_check.py``), so prefer it where the
            likelihoods matter. No effect for Poisson / Normal decoders or
            ``dispersion="gene-cell"``. With ``calibrate_mean`` the decoded means are
            calibrated first and the dispersion fitted around them.
        ema_decay
            Keep an exponential moving average of the weights, updated after every optimizer
            step with this decay (about the last ``1 / (1 - ema_decay)`` steps), and end
            training with the average as the prior's weights (:class:`WeightEMA`; validation
            during training uses it too). ``"default"``: 0.999 (the last ~1,000 steps of the
            default ~10,000) in runs of at least 400 optimizer steps, else ``None``; shorter
            runs still improve too quickly for an average to help. One step's weights follow
            the noise of its minibatch of denoising targets; their average generated cells
            closer to the real ones (issue #20; ``benchmarks/README.md``, latent_priors
            section). ``None``: the last step's weights (the only behaviour before December 6
            2026).
        calibrate_mean
            Wherever the dispersion is refitted, also multiply each gene's decoded mean by
            the factor that makes its expected total count over the registered cells equal
            its observed total (``mean_scale_``; genes with few counts stay near 1; with
            ``"checked"``, kept per gene bin as the dispersion is). Why: a zero-inflated
            decoder (scVI's default) gives rare genes means above their counts and, its means
            summing to the library size, the abundant genes less than theirs (MALAT1, B2M,
            FTL 34-36 % short on pbmc3k after 400 epochs). With LatentFlow on four scVI
            models (pbmc3k and Kang, 400 epochs, two seeds, five generations each;
            ``benchmarks/dispersion_check.py``) it lowered the generated cells' classifier
            AUROC (mean 0.597 -> 0.579; LatentDiffusion 0.606 -> 0.580) and energy and
            raised their variance R² on 4 of 4, and raised the held-out likelihood on 4 of 4
            (issue #20). ``False``: the decoder's own means (the only behaviour until
            December 6 2026).
        **trainer_kwargs
            Passed to Lightning's ``Trainer`` (``strategy``, ``enable_progress_bar``,
            ``callbacks``...).
        """
        check_ema_decay(ema_decay)
        loc, scale = self._adapter.latent_distribution(self.adata, batch_size=latent_batch_size)
        if not self.latent_stats_set_:
            self.module.set_latent_stats(torch.as_tensor(loc.mean(0)), torch.as_tensor(loc.std(0)))
            self.latent_stats_set_ = True
        cat, cont = self._condition_arrays()
        data = LatentDataModule(
            loc, scale, cat, cont, train_size, batch_size, seed=scvi.settings.seed or 0
        )
        steps_per_epoch = max(1, math.ceil(data.n_train / batch_size))
        if max_epochs is None:
            max_epochs = int(
                min(MAX_DEFAULT_EPOCHS, math.ceil(DEFAULT_TRAIN_STEPS / steps_per_epoch))
            )
        if ema_decay == "default":
            ema_decay = default_ema_decay_for(
                self._ema_decay, self._ema_min_steps, max_epochs * steps_per_epoch
            )
        if refit_dispersion not in (None, True, False, "checked"):
            raise ValueError(
                "refit_dispersion takes None (default), True, False or 'checked', got "
                f"{refit_dispersion!r}."
            )
        if refit_dispersion is None:
            refit_dispersion = self._adapter.dispersion_is_stale
        seed = scvi.settings.seed or 0
        self.dispersion_, self.dispersion_check_, self.mean_scale_ = None, None, None
        if refit_dispersion == "checked":
            self.mean_scale_, self.dispersion_, self.dispersion_check_ = self._checked_dispersion(
                loc, scale, seed, calibrate_mean
            )
        elif refit_dispersion:
            if calibrate_mean:
                self.mean_scale_ = self._fit_mean_scale(loc, scale, seed)
            self.dispersion_ = self._fit_dispersion(loc, scale, seed, self.mean_scale_)
        plan = LatentPriorTrainingPlan(self.module, **(plan_kwargs or {}))
        trainer_kwargs.setdefault("check_val_every_n_epoch", max(1, max_epochs // 20))
        self._train_ema_decay = ema_decay  # what this training used (benchmarks record it)
        add_ema_callback(trainer_kwargs, ema_decay)
        runner = TrainRunner(
            self,
            training_plan=plan,
            data_splitter=data,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            **trainer_kwargs,
        )
        return runner()

    def _fit_dispersion(
        self, loc: np.ndarray, scale: np.ndarray, seed: int, mean_scale: np.ndarray | None = None
    ) -> np.ndarray | None:
        """The base decoder's inverse dispersion refitted on the registered cells.

        ``loc`` / ``scale`` are the cells' posteriors (as ``train`` encodes them), ``seed``
        that of the cell subset and posterior draws; fitted around the means times
        ``mean_scale`` (the decoder's own where ``None``); ``None`` where the decoder has no
        dispersion to refit.
        """
        return fit_dispersion(*self._refit_args(loc, scale), seed=seed, mean_scale=mean_scale)

    def _fit_mean_scale(self, loc: np.ndarray, scale: np.ndarray, seed: int) -> np.ndarray | None:
        """Per-gene factors on the base decoder's means from the registered cells' totals."""
        return fit_mean_scale(*self._refit_args(loc, scale), seed=seed)

    def _refit_args(self, loc: np.ndarray, scale: np.ndarray) -> tuple:
        """The first arguments of the ``_dispersion`` fits, for the registered cells.

        The base adapter, posteriors, counts, library sizes and decoder inputs.
        """
        counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        return self._adapter, loc, scale, counts, self.train_library_, self.train_decoder_inputs_

    def _checked_dispersion(
        self, loc: np.ndarray, scale: np.ndarray, seed: int, calibrate_mean: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray | None, dict | None]:
        """The mean factors and the refit, kept where cells unseen by the base prefer them.

        ``"checked"``; returns ``(mean_scale, dispersion, report)``. Falls back to fitting
        both for every gene, with a warning, when fewer than ``MIN_CHECK_CELLS`` registered
        cells are known to be unseen by the base model.
        """
        held_out = self._base_held_out()
        n_held = 0 if held_out is None else int(held_out.sum())
        reason = None
        if n_held < MIN_CHECK_CELLS:
            reason = (
                f"only {n_held} registered cells are known to be unseen by the base model's "
                f"training (its validation cells), fewer than the {MIN_CHECK_CELLS} needed"
            )
        elif n_held == len(held_out):
            reason = "none of the registered cells is one the base model trained on"
        if reason is not None:
            warnings.warn(
                f"{reason} to check the refitted dispersion against the base model's own, so "
                "every gene's is refitted. Train the base model with train_size < 1 and register "
                "its cells, or pass refit_dispersion=False to keep its own.",
                UserWarning,
                stacklevel=3,
            )
            mean_scale = self._fit_mean_scale(loc, scale, seed) if calibrate_mean else None
            return mean_scale, self._fit_dispersion(loc, scale, seed, mean_scale), None
        args = (*self._refit_args(loc, scale), held_out)
        mean_scale, scale_report = None, None
        if calibrate_mean:
            mean_scale, scale_report = checked_mean_scale(*args, seed=seed)
        theta, report = checked_dispersion(*args, seed=seed, mean_scale=mean_scale)
        if scale_report is not None:
            report = {**report, "mean_scale": scale_report}
        return mean_scale, theta, report

    def _base_held_out(self) -> np.ndarray | None:
        """Mask of the registered cells the base model did not train on, by cell name.

        ``None`` when the base model does not record its training cells or the names are
        not unique.
        """
        trained = self._adapter.trained_cell_names()
        names = self.adata.obs_names
        if trained is None or not names.is_unique:
            return None
        return ~np.isin(np.asarray(names, dtype=str), trained)

    # ------------------------------------------------------------------ generation hooks
    def _sample_latent(self, cond: ConditionInputs, **kwargs) -> torch.Tensor:
        return self.module.sample(cond, **kwargs)

    def _decode_reference(self, z, cond, log_library, batch, ref) -> Distribution:
        return self._decode_with_inputs(z, log_library, self._reference_inputs(ref, batch))

    def _reference_inputs(self, ref: np.ndarray, batch: torch.Tensor | None = None) -> dict:
        dev = self._adapter.device
        inputs = {
            k: torch.as_tensor(v[ref], device=dev) for k, v in self.train_decoder_inputs_.items()
        }
        if batch is not None:
            inputs["batch"] = batch.reshape(-1).to(dev)
        return inputs

    def _decode_with_inputs(self, z, log_library, inputs) -> Distribution:
        dev = self._adapter.device
        self.base_model.module.eval()  # a frozen base must not update BatchNorm statistics
        px = self._adapter.decode(z.to(dev), log_library.to(dev), inputs)
        factor = getattr(self, "mean_scale_", None)  # None: not calibrated, or saved before it
        if factor is not None:
            px = scale_mean(px, factor)
        theta = getattr(self, "dispersion_", None)  # None: not refitted, or saved before it
        if theta is None:
            return px
        return replace_dispersion(px, cell_theta(theta, inputs["batch"]))

    def _guidance_terms(self, guidance) -> list[tuple[torch.Tensor, float]]:
        """``None`` / a number / ``{key: weight}`` to (keys to drop, weight) pairs."""
        encoder = self.module.condition_encoder
        trained = encoder.dropout > 0 or self.module.uncond_dropout > 0
        return guidance_terms(guidance, self._schema.keys, null_tokens_trained=trained)

    def _sample_kwargs(self, n_steps, guidance, **kwargs) -> dict:
        raise NotImplementedError

    def _generate_with_prior(
        self,
        conditions: Conditions,
        n_cells: int | Sequence[int],
        library_size: float | np.ndarray | None,
        batch: str | None,
        seed: int | None,
        batch_size: int,
        progress: bool,
        out: str | os.PathLike | None,
        sample_kwargs: dict,
        guidance,
        **metadata,
    ) -> AnnData:
        """``generate`` of a trained latent prior, recording the sampler settings."""
        self._check_trained()
        return self._generate(
            conditions,
            n_cells,
            library_size,
            batch,
            seed,
            batch_size,
            sample_kwargs=sample_kwargs,
            metadata={
                "base_model": self.base_class_,
                **metadata,
                "n_steps": sample_kwargs["n_steps"],
                "guidance": guidance_metadata(guidance),
            },
            progress=progress,
            out=out,
        )

    def _check_trained(self) -> None:
        if not self.is_trained_:
            raise ValueError(f"This {type(self).__name__} is not trained yet; call .train().")

    # ------------------------------------------------------------------ public API
    def sample_latent(
        self,
        conditions: Conditions,
        n_cells: int | Sequence[int] = 100,
        n_steps: int | None = None,
        guidance: float | dict[str, float] | None = None,
        seed: int | None = None,
        batch_size: int = 4096,
        **sampler_kwargs,
    ) -> np.ndarray:
        """Latents (in the base model's space) drawn from p(z | conditions), not decoded.

        Same arguments as :meth:`generate`; rows follow the order of the conditions.
        """
        self._check_trained()
        specs = self._schema.parse(conditions)
        counts = self._n_cells_per_spec(n_cells, len(specs))
        cat, cont, keep = self._schema.encode(specs)
        rows = np.repeat(np.arange(len(specs)), counts)
        kwargs = self._sample_kwargs(n_steps, guidance, **sampler_kwargs)
        self.module.eval()
        out = []
        with seeded(seed, self.module.device), torch.no_grad():
            for start in range(0, len(rows), batch_size):
                r = rows[start : start + batch_size]
                c = self._condition_tensors(cat[r], cont[r], keep[r])
                out.append(self._sample_latent(c, **kwargs).cpu().numpy())
        return np.concatenate(out)

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Base-model posterior means of real cells (the space the prior is trained in)."""
        adata = self._validate_anndata(adata)
        loc, _ = self._adapter.latent_distribution(adata, batch_size=batch_size)
        return loc if indices is None else loc[np.asarray(indices)]

    # ------------------------------------------------------------------ counterfactuals
    def predict_counterfactual(
        self,
        adata: AnnData | None = None,
        new_conditions: dict | None = None,
        indices: Sequence[int] | None = None,
        return_mean: bool = False,
        n_steps: int | None = None,
        seed: int | None = None,
        batch_size: int = 1024,
    ) -> AnnData:
        """Each cell under other conditions, by deterministic transport through the prior.

        The cell's base latent (posterior mean) is mapped to its noise under its own
        conditions by the prior's deterministic ODE, and pushed back under the new
        conditions; counts are decoded with the cell's library size and batch.

        Parameters
        ----------
        adata
            Cells to transform (the training data by default).
        new_conditions
            Keys to change and their new values.
        indices
            Subset of cells.
        return_mean
            Expected expression instead of sampled counts.
        n_steps
            ODE steps each way.
        seed
            Seed of the count sampling.
        batch_size
            Cells per pass.
        """
        self._check_trained()
        return self._counterfactual(
            adata, new_conditions, indices, return_mean, seed, batch_size, n_steps=n_steps
        )

    def _counterfactual_distributions(
        self,
        adata: AnnData,
        indices: Sequence[int] | None,
        new: dict,
        batch_size: int | None,
        n_steps: int | None = None,
    ) -> Iterator[Distribution]:
        idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        loc, _ = self._adapter.latent_distribution(adata)
        cat, cont = self._condition_arrays(adata, idx)
        cat_new, cont_new = self._schema.substitute(cat, cont, new)
        inputs_all = self._adapter.substitute(self._adapter.decoder_inputs(adata), new)
        log_lib_all = np.log(self._library_sizes(adata)).astype(np.float32)
        batch_size = batch_size or 1024
        transport = self._transport_kwargs(n_steps)

        def batches() -> Iterator[Distribution]:
            for start in range(0, len(idx), batch_size):
                sl = slice(start, start + batch_size)
                rows = idx[sl]
                z = torch.as_tensor(loc[rows], device=self.module.device)
                old = self._condition_tensors(
                    rows_or_none(cat, sl), rows_or_none(cont, sl), n=len(rows)
                )
                target = self._condition_tensors(
                    rows_or_none(cat_new, sl), rows_or_none(cont_new, sl), n=len(rows)
                )
                noise = self.module.to_noise(z, old, **transport)
                z_new = self.module.from_noise(noise, target, **transport)
                inputs = {
                    k: torch.as_tensor(v[rows], device=self._adapter.device)
                    for k, v in inputs_all.items()
                }
                lib = torch.as_tensor(log_lib_all[rows]).unsqueeze(-1)
                yield self._decode_with_inputs(z_new, lib, inputs)

        return batches()

    def _transport_kwargs(self, n_steps: int | None) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------ setup
    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        condition_keys: Sequence[str] | None = None,
        continuous_condition_keys: Sequence[str] | None = None,
        batch_key: str | None = None,
        **kwargs,
    ):
        """Register an AnnData for a latent prior.

        Only registration metadata is added to ``adata.uns``; the data are not changed.

        Parameters
        ----------
        adata
            Cells x genes, the same genes as the base model.
        layer
            Layer holding the counts (``X`` if ``None``); used for library sizes.
        condition_keys
            Categorical obs columns to generate from.
        continuous_condition_keys
            Numeric obs columns to generate from.
        batch_key
            Optional; if given it must be the base model's batch key (the base decoder
            decodes in its own batches).
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.
        """
        condition_keys = as_key_list(condition_keys, "condition_keys")
        continuous_condition_keys = as_key_list(
            continuous_condition_keys, "continuous_condition_keys"
        )
        setup_condition_fields(
            cls,
            adata,
            cls._get_setup_method_args(**locals()),
            layer,
            CategoricalJointObsField(cls._cat_registry_key, condition_keys or None),
            condition_keys,
            continuous_condition_keys,
            batch_key,
            size_factor_field=False,
            **kwargs,
        )


def module_options(init_locals: dict) -> dict:
    """The module's options among a latent model's ``__init__`` arguments."""
    return {
        k: v
        for k, v in init_locals.items()
        if k not in ("self", "adata", "base_model", "__class__")
    }


def rows_or_none(a: np.ndarray | None, sl: slice) -> np.ndarray | None:
    """``a[sl]``, or ``None`` when there is no array."""
    return None if a is None else a[sl]
