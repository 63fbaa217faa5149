"""Adapters giving the latent priors one interface to different trained count autoencoders."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from torch.distributions import Distribution

SUPPORTED_BASES = ("scvi.model.SCVI", "genvi.model.PriorVI")


class BaseModelAdapter:
    """What a latent prior needs from a trained base model: encode, decode, nuisance inputs.

    Parameters
    ----------
    model
        A trained ``scvi.model.SCVI`` or :class:`genvi.model.PriorVI`.
    """

    def __init__(self, model):
        self.model = model
        if not getattr(model, "is_trained_", False):
            raise ValueError(
                f"The base model ({type(model).__name__}) is not trained; call its .train() "
                "first. A latent prior learns the latent space of a trained autoencoder."
            )

    # ------------------------------------------------------------------ identity
    @property
    def class_path(self) -> str:
        """Import path of the base model class (recorded on save)."""
        cls = type(self.model)
        return f"{cls.__module__.split('.')[0]}.model.{cls.__name__}"

    def fingerprint(self) -> str:
        """SHA-256 of the base model's weights: identifies the exact trained model."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.model.module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    @property
    def n_latent(self) -> int:
        """Latent dimension."""
        return int(self.model.module.n_latent)

    @property
    def var_names(self) -> np.ndarray:
        """Genes of the base model."""
        names = getattr(self.model, "var_names_", None)
        if names is None:
            names = self.model.adata.var_names
        return np.asarray(names, dtype=str)

    @property
    def gene_likelihood(self) -> str:
        """The base decoder's likelihood."""
        return str(self.model.module.gene_likelihood)

    #: whether the base model's training leaves its inverse dispersion near its random start
    dispersion_is_stale = False

    @property
    def log_dispersion(self) -> torch.Tensor | None:
        """The decoder's log inverse dispersion, ``(genes, groups)`` on the CPU.

        One group for ``dispersion="gene"``, one per batch for ``"gene-batch"``; ``None``
        where the decoder predicts it per cell (``"gene-cell"``).
        """
        px_r = getattr(self.model.module, "px_r", None)
        if px_r is None:
            return None
        px_r = px_r.detach().cpu()
        return px_r.reshape(px_r.shape[0], -1)

    def trained_cell_names(self) -> np.ndarray | None:
        """Names of the cells the base model's training fitted (not its validation cells).

        ``None`` when the model does not record them (no AnnData or no training split).
        """
        adata, idx = self.model.adata, getattr(self.model, "train_indices", None)
        if adata is None or idx is None:
            return None
        return np.asarray(adata.obs_names[np.asarray(idx)], dtype=str)

    @property
    def device(self) -> torch.device:
        """Device of the base model."""
        return self.model.module.device

    # ------------------------------------------------------------------ encode
    def latent_distribution(
        self, adata: AnnData, batch_size: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and standard deviations of q(z | x) for every cell."""
        self.model.module.eval()
        # scvi-tools' return_dist=True gives the posterior *variance* (qz.scale ** 2)
        loc, var = self.model.get_latent_representation(
            adata, give_mean=True, return_dist=True, batch_size=batch_size
        )
        return np.asarray(loc, np.float32), np.sqrt(np.asarray(var, np.float32))

    # ------------------------------------------------------------------ decode
    def decoder_inputs(self, adata: AnnData) -> dict[str, np.ndarray]:
        """Per-cell nuisance inputs of the decoder (batch and covariates) of ``adata``."""
        raise NotImplementedError

    def decode(
        self, z: torch.Tensor, log_library: torch.Tensor, inputs: dict[str, torch.Tensor]
    ) -> Distribution:
        """p(x | z, nuisance) with the given log library sizes."""
        raise NotImplementedError

    def substitute(self, inputs: dict[str, np.ndarray], new: dict) -> dict[str, np.ndarray]:
        """Decoder inputs of cells for a counterfactual to ``new`` (``{key: value}``).

        The base model's own inputs are kept by default (scVI's covariates are nuisance
        inputs the latent prior does not change); the arrays are not modified.
        """
        return inputs


class SCVIAdapter(BaseModelAdapter):
    """``scvi.model.SCVI``: batch and categorical / continuous covariates enter the decoder."""

    # scvi-tools trains px_r (random N(0, 1) start) at the common Adam rate: after 100 epochs
    # on pbmc3k it still had Spearman 0.97 with its initial values (issue #20)
    dispersion_is_stale = True

    def __init__(self, model):
        super().__init__(model)
        module = model.module
        if getattr(module, "dispersion", "gene") == "gene-label":
            raise ValueError(
                "SCVI models with dispersion='gene-label' need cell labels to decode and are "
                "not supported as a base model; use 'gene', 'gene-batch' or 'gene-cell'."
            )

    def decoder_inputs(self, adata: AnnData) -> dict[str, np.ndarray]:
        manager = self.model.get_anndata_manager(adata, required=True)
        registry = manager.data_registry
        out = {"batch": np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()}
        for name, key in (
            ("cat_covs", REGISTRY_KEYS.CAT_COVS_KEY),
            ("cont_covs", REGISTRY_KEYS.CONT_COVS_KEY),
        ):
            if key in registry:
                out[name] = np.asarray(manager.get_from_registry(key), dtype=np.float32)
        return out

    def decode(self, z, log_library, inputs) -> Distribution:
        cat = inputs.get("cat_covs")
        return self.model.module.generative(
            z=z,
            library=log_library,
            batch_index=inputs["batch"].long().unsqueeze(-1),
            cont_covs=inputs.get("cont_covs"),
            cat_covs=cat.long() if cat is not None else None,
            size_factor=log_library,
        )["px"]


class PriorVIAdapter(BaseModelAdapter):
    """:class:`genvi.model.PriorVI`: the batch, and its conditions where the decoder sees them.

    A PriorVI with ``decode_conditions`` decodes a latent together with the conditions (the
    codes registered by PriorVI's own ``setup_anndata``). They are decoder inputs like scVI's
    covariates: a generated cell takes them from its reference cell (a training cell of the
    requested condition), a counterfactual from the cell itself, with the keys being changed
    replaced where the base model has them too.
    """

    def _condition_fields(self) -> tuple[tuple[str, str], ...]:
        model = self.model
        if not model.module.decode_conditions:
            return ()
        return (("cond_cat", model._cat_registry_key), ("cond_cont", model._cont_registry_key))

    def decoder_inputs(self, adata: AnnData) -> dict[str, np.ndarray]:
        manager = self.model.get_anndata_manager(adata, required=True)
        out = {"batch": np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()}
        for name, key in self._condition_fields():
            if key in manager.data_registry:
                out[name] = np.asarray(manager.get_from_registry(key))
        return out

    def substitute(self, inputs: dict[str, np.ndarray], new: dict) -> dict[str, np.ndarray]:
        schema = self.model._schema
        mine = {k: v for k, v in new.items() if k in schema.keys}
        if not self._condition_fields() or not mine:
            return inputs
        cat, cont = schema.substitute(inputs.get("cond_cat"), inputs.get("cond_cont"), mine)
        out = dict(inputs)
        for name, value in (("cond_cat", cat), ("cond_cont", cont)):
            if value is not None:
                out[name] = value
        return out

    def decode(self, z, log_library, inputs) -> Distribution:
        module = self.model.module
        batch = inputs["batch"].long().unsqueeze(-1)
        if module.decode_conditions:
            cat, cont = inputs.get("cond_cat"), inputs.get("cond_cont")
            c = module.embed_conditions(
                None if cat is None else cat.long(),
                None if cont is None else cont.float(),
                n=z.shape[-2],
            )
        else:
            c = torch.ones(z.shape[-2], 1, device=z.device)  # unused by a z-only decoder
        return module.decode(z, c, log_library, batch)


def make_adapter(model) -> BaseModelAdapter:
    """The adapter for a trained base model, or a clear error for an unsupported one."""
    import scvi

    from genvi.model._priorvi import PriorVI

    if isinstance(model, PriorVI):
        return PriorVIAdapter(model)
    if isinstance(model, scvi.model.SCVI):
        return SCVIAdapter(model)
    raise TypeError(
        f"Unsupported base model {type(model).__name__}; use one of {list(SUPPORTED_BASES)}."
    )
