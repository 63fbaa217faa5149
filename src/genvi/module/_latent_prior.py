"""Shared parts of the second-stage generative priors trained on a base model's latents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data

from genvi._constants import GENVI_REGISTRY_KEYS
from genvi.module._ot import condition_groups
from genvi.nn import ConditionalDenoiser, ConditionEncoder, ConditionInputs

LATENT_LOC_KEY = "genvi_latent_loc"
LATENT_SCALE_KEY = "genvi_latent_scale"


class LatentPriorModule(BaseModuleClass):
    """A conditional generative model of a base model's (standardised) latents.

    Subclasses define the training objective (:meth:`per_cell_loss`) and samplers. This
    class holds what they share: the :class:`~genvi.nn.ConditionEncoder` with per-key null
    tokens, the :class:`~genvi.nn.ConditionalDenoiser` network, the latent standardisation
    and classifier-free guidance.

    Parameters
    ----------
    n_latent
        Dimension of the base model's latent space.
    n_cats_per_key, n_continuous, continuous_mean, continuous_std
        Conditions, as in :class:`~genvi.nn.ConditionEncoder`.
    n_embed
        Embedding size per condition key.
    condition_dropout
        Probability of dropping each key independently during training.
    uncond_dropout
        Extra probability of dropping all keys at once (the unconditional model used by
        joint guidance).
    n_hidden, n_layers, dropout_rate
        Size of the denoiser / vector field.
    latent_target
        ``"mean"``: train on posterior means of the base encoder; ``"sample"``: on a fresh
        posterior sample every time a cell is seen.
    gene_likelihood
        The base model's likelihood (recorded in generated data).
    """

    #: name of the training objective in ``history``; set by subclasses
    objective = "loss"

    def __init__(
        self,
        n_latent: int,
        n_cats_per_key: Sequence[int] = (),
        n_continuous: int = 0,
        continuous_mean: Sequence[float] | None = None,
        continuous_std: Sequence[float] | None = None,
        n_embed: int = 16,
        condition_dropout: float = 0.2,
        uncond_dropout: float = 0.1,
        n_hidden: int = 256,
        n_layers: int = 3,
        dropout_rate: float = 0.0,
        latent_target: Literal["mean", "sample"] = "sample",
        gene_likelihood: str = "nb",
    ):
        super().__init__()
        if latent_target not in ("mean", "sample"):
            raise ValueError(f"latent_target must be 'mean' or 'sample', got {latent_target!r}.")
        for name, p in (
            ("condition_dropout", condition_dropout),
            ("uncond_dropout", uncond_dropout),
        ):
            if not 0 <= p < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {p}.")
        self.n_latent = n_latent
        self.latent_target = latent_target
        self.gene_likelihood = gene_likelihood
        self.uncond_dropout = uncond_dropout
        self.condition_encoder = ConditionEncoder(
            n_cats_per_key,
            n_continuous,
            n_embed,
            continuous_mean,
            continuous_std,
            dropout=condition_dropout,
        )
        self.net = ConditionalDenoiser(
            n_latent,
            self.condition_encoder.n_output,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout=dropout_rate,
        )
        self.register_buffer("latent_mean", torch.zeros(n_latent))
        self.register_buffer("latent_std", torch.ones(n_latent))

    # ------------------------------------------------------------------ latents
    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the standardisation of latents (training data statistics)."""
        self.latent_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.latent_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-4))

    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        """Base-model latents to the unit-scale space the prior is trained in."""
        return (z - self.latent_mean) / self.latent_std

    def unstandardize(self, z: torch.Tensor) -> torch.Tensor:
        """Back to the base model's latent space."""
        return z * self.latent_std + self.latent_mean

    def log_det_standardize(self) -> torch.Tensor:
        """The log-Jacobian of :meth:`standardize`, to move densities between the two spaces."""
        return -torch.log(self.latent_std).sum()

    # ------------------------------------------------------------------ conditions
    @property
    def n_keys(self) -> int:
        """Number of condition keys."""
        return self.condition_encoder.n_keys

    def embed_conditions(
        self,
        cat: torch.Tensor | None,
        cont: torch.Tensor | None,
        keep: torch.Tensor | None = None,
        n: int | None = None,
    ) -> torch.Tensor:
        """Condition embedding (a constant when the model is unconditional)."""
        return self.condition_encoder(cat, cont, keep, n=n)

    def embed(self, cond: ConditionInputs) -> torch.Tensor:
        """The condition embedding of :class:`~genvi.nn.ConditionInputs`."""
        return self.embed_conditions(cond.cat, cond.cont, cond.keep, n=cond.n)

    def guided(
        self,
        fn,
        z: torch.Tensor,
        t: torch.Tensor,
        cond: ConditionInputs,
        guidance: Sequence[tuple[torch.Tensor, float]] = (),
    ) -> torch.Tensor:
        """Evaluate ``fn(z, t, c)`` with classifier-free guidance.

        ``out = f(c) + sum_k w_k * (f(c) - f(c without keys k))``: every guidance term
        drops its keys (boolean mask over keys) to their null tokens and pushes the
        prediction away from that weaker condition. All variants run in one batched pass.
        """
        n = z.shape[0]
        variants = [cond.keep]
        weights = []
        for drop, w in guidance:
            if w == 0:
                continue
            variants.append(cond.keep & ~drop.to(cond.keep.device))
            weights.append(w)
        m = len(variants)
        keep = torch.cat(variants, dim=0)
        cat = cond.cat.repeat(m, 1) if cond.cat is not None else None
        cont = cond.cont.repeat(m, 1) if cond.cont is not None else None
        c = self.embed_conditions(cat, cont, keep, n=n * m)
        out = fn(z.repeat(m, 1), t.repeat(m) if t.dim() else t, c)
        full = out[:n]
        result = full
        for i, w in enumerate(weights, start=1):
            result = result + w * (full - out[i * n : (i + 1) * n])
        return result

    # ------------------------------------------------------------------ scvi-tools plumbing
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            "z_loc": tensors[LATENT_LOC_KEY],
            "z_scale": tensors[LATENT_SCALE_KEY],
            "cat": tensors.get(GENVI_REGISTRY_KEYS.COND_CAT_KEY),
            "cont": tensors.get(GENVI_REGISTRY_KEYS.COND_CONT_KEY),
        }

    @auto_move_data
    def inference(self, z_loc, z_scale, cat=None, cont=None) -> dict:
        """Standardised training latent and the (dropout-augmented) condition embedding."""
        z = z_loc
        if self.latent_target == "sample" and self.training:
            z = z_loc + z_scale * torch.randn_like(z_scale)
        n = z.shape[0]
        keep = None
        if self.training and self.uncond_dropout > 0 and self.n_keys:
            joint = torch.rand(n, 1, device=z.device) >= self.uncond_dropout
            keep = joint.expand(n, self.n_keys)
        cat = cat.long() if cat is not None else None
        c, mask = self.condition_encoder(cat, cont, keep, n=n, return_mask=True)
        return {"z": self.standardize(z), "c": c, "groups": condition_groups(cat, cont, mask, n)}

    def _get_generative_input(self, tensors, inference_outputs) -> dict:
        return {}

    def generative(self) -> dict:
        """No generative pass during training: the objective is in :meth:`loss`."""
        return {}

    def loss(self, tensors, inference_outputs, generative_outputs) -> LossOutput:
        """Mean of :meth:`per_cell_loss` (reported as the reconstruction term)."""
        per_cell = self.per_cell_loss(
            inference_outputs["z"], inference_outputs["c"], inference_outputs.get("groups")
        )
        return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell)

    def per_cell_loss(
        self, z: torch.Tensor, c: torch.Tensor, groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Training objective per cell; defined by subclasses.

        ``groups``: rows equal exactly for cells of the same condition (as embedded, null
        tokens included), see :func:`genvi.module._ot.condition_groups`.
        """
        raise NotImplementedError

    def sample(self, cond: ConditionInputs, **kwargs) -> torch.Tensor:
        """Latents in the base model's space for the given conditions; by subclasses."""
        raise NotImplementedError
