"""PriorVAE: a count VAE whose prior p(z | c) is learned from the conditions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from scvi import REGISTRY_KEYS
from scvi.distributions import Normal
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import DecoderSCVI, Encoder
from torch import nn
from torch.distributions import Distribution

from genvi._registry import document_options
from genvi.module._count_vae import (
    ConditionalEncoderMixin,
    CountVAEMixin,
    GeneLikelihood,
    check_module_options,
    count_distribution,
)
from genvi.nn import PRIORS, ConditionEncoder, kl_to_prior

Dispersion = Literal["gene", "gene-batch", "gene-cell"]


@document_options(prior=PRIORS)
class PriorVAE(ConditionalEncoderMixin, CountVAEMixin, BaseModuleClass):
    """Conditional-prior VAE for expression data.

    Encoder q(z | x, c), decoder p(x | z, batch) (or p(x | z, c, batch)) with a count
    likelihood (or Normal for log-scale data) and a learned prior p(z | c). The conditions
    c are embedded once by a shared :class:`~genvi.nn.ConditionEncoder`; a key dropped by
    condition dropout is dropped for the encoder, decoder and prior alike, which is what
    makes generation from partial conditions consistent.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of batches (nuisance, decoder only); 1 for none.
    n_cats_per_key
        Categories of each categorical condition key.
    n_continuous
        Number of continuous condition keys.
    continuous_mean, continuous_std
        Training statistics used to standardise continuous conditions.
    n_latent, n_hidden, n_layers, dropout_rate
        Network sizes, as in :class:`scvi.module.VAE`.
    n_embed
        Embedding size per condition key.
    condition_dropout
        Probability of dropping each condition key during training (replaced by its null token).
    prior
        A registered prior (:data:`genvi.nn.PRIORS`):

        {prior_options}
    prior_kwargs
        The prior's own arguments (e.g. ``n_components`` for ``"mog"``); unknown ones raise.
    gene_likelihood
        ``"nb"``, ``"zinb"``, ``"poisson"`` or ``"normal"``.
    dispersion
        ``"gene-cell"`` (default; the decoder predicts it per cell), ``"gene"`` or
        ``"gene-batch"``.
    use_size_factor_key
        Use registered size factors instead of the observed library size.
    decode_conditions
        Give the conditions to the decoder as well (p(x | z, c)); with ``False`` the
        decoder sees z only and every condition effect must pass through the prior. A
        sequence of key positions (categorical keys first, then continuous) gives the decoder
        the embeddings of those keys only.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 1,
        n_cats_per_key: Sequence[int] = (),
        n_continuous: int = 0,
        continuous_mean: Sequence[float] | None = None,
        continuous_std: Sequence[float] | None = None,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        n_embed: int = 16,
        condition_dropout: float = 0.1,
        prior: str = "gaussian",
        prior_kwargs: dict | None = None,
        gene_likelihood: GeneLikelihood = "nb",
        dispersion: Dispersion = "gene-cell",
        use_size_factor_key: bool = False,
        decode_conditions: bool | Sequence[int] = False,
    ):
        super().__init__()
        check_module_options(prior, gene_likelihood, dispersion, get_args(Dispersion))
        self.n_input = n_input
        self.n_batch = n_batch
        self.n_latent = n_latent
        self.gene_likelihood = gene_likelihood
        self.dispersion = dispersion
        self.use_size_factor_key = use_size_factor_key
        self.prior_name = prior

        self.condition_encoder = ConditionEncoder(
            n_cats_per_key,
            n_continuous,
            n_embed,
            continuous_mean,
            continuous_std,
            dropout=condition_dropout,
        )
        n_cond = self.condition_encoder.n_output
        self.z_encoder = Encoder(
            n_input + n_cond,
            n_latent,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            return_dist=True,
        )
        self.prior = self._build_prior(prior, n_latent, n_cond, n_input, prior_kwargs)
        n_keys = self.condition_encoder.n_keys
        if isinstance(decode_conditions, bool):
            decoded = list(range(n_keys)) if decode_conditions else []
        else:
            decoded = sorted({int(i) for i in decode_conditions})
            if any(i < 0 or i >= n_keys for i in decoded):
                raise ValueError(f"decode_conditions positions {decoded} outside 0..{n_keys - 1}.")
        # all keys (or an unconditional model's constant column): the whole embedding
        self.decode_conditions = bool(decode_conditions) and (decoded != [] or n_keys == 0)
        subset = self.decode_conditions and len(decoded) < n_keys
        cols = [k * n_embed + j for k in decoded for j in range(n_embed)] if subset else []
        # which embedding columns the decoder sees (not saved: rebuilt from the init argument)
        self.register_buffer("_decode_columns", torch.tensor(cols, dtype=torch.long), False)
        n_decoded = (len(cols) if subset else n_cond) if self.decode_conditions else 0
        self.decoder = DecoderSCVI(
            n_latent + n_decoded,
            n_input,
            n_cat_list=[n_batch],
            n_layers=n_layers,
            n_hidden=n_hidden,
        )
        if gene_likelihood == "normal":
            # log-scale data: an unconstrained mean instead of library x softmax proportions
            self.normal_loc = nn.Linear(n_hidden, n_input)
        self._init_dispersion(n_input, n_batch)
        uses_theta = gene_likelihood != "poisson"
        self._freeze_unused(
            None if gene_likelihood == "zinb" else self.decoder.px_dropout_decoder,
            None if dispersion == "gene-cell" and uses_theta else self.decoder.px_r_decoder,
            self.decoder.px_scale_decoder if gene_likelihood == "normal" else None,
            None if uses_theta else getattr(self, "px_r", None),
        )

    # ------------------------------------------------------------------ model
    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        cond_cat: torch.Tensor | None = None,
        cond_cont: torch.Tensor | None = None,
        size_factor: torch.Tensor | None = None,
        n_samples: int = 1,
        keep: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | Distribution]:
        """Encode x (and c) into q(z | x, c)."""
        library = self.library_from_counts(x, size_factor)
        c = self.embed_conditions(cond_cat, cond_cont, keep, n=x.shape[0])
        qz = self.encode(self.encoder_input(x), c)
        z = qz.rsample((n_samples,)) if n_samples > 1 else qz.rsample()
        return {"qz": qz, "z": z, "library": library, "c": c}

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        c: torch.Tensor,
        batch_index: torch.Tensor,
        transform_batch: int | None = None,
    ) -> dict[str, Distribution]:
        """Decode z into p(x | z, c, batch); also return the prior p(z | c)."""
        if transform_batch is not None:
            batch_index = torch.full_like(batch_index, int(transform_batch))
        return {"px": self.decode(z, c, library, batch_index), "pz": self.prior(c)}

    def decode(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
    ) -> Distribution:
        """p(x | z, c, batch); ``z`` may carry a leading sample dimension."""
        if self.decode_conditions:
            if self._decode_columns.numel():
                c = c.index_select(-1, self._decode_columns)
            c_z = c.expand(z.shape[0], -1, -1) if z.dim() == 3 else c
            dec_in = torch.cat([z, c_z], dim=-1)
        else:
            dec_in = z
        if self.gene_likelihood == "normal":
            hidden = self.decoder.px_decoder(dec_in, batch_index)
            loc = self.normal_loc(hidden)
            scale = self._dispersion(None, batch_index, hidden)
            return Normal(loc, scale, normal_mu=loc)
        px_scale, px_r, px_rate, px_dropout = self.decoder(
            self.dispersion, dec_in, library, batch_index
        )
        theta = self._dispersion(px_r, batch_index)
        return count_distribution(self.gene_likelihood, px_scale, px_rate, theta, px_dropout)

    def _dispersion(
        self,
        px_r: torch.Tensor | None,
        batch_index: torch.Tensor,
        hidden: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.dispersion == "gene-cell":
            if px_r is None:  # the Normal head reuses the scVI dispersion decoder for log-scale
                px_r = self.decoder.px_r_decoder(hidden)
            return torch.exp(px_r)
        if self.dispersion == "gene-batch":
            return self._batch_theta(batch_index)
        return torch.exp(self.px_r)

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Negative ELBO with a warm-up weight on the KL term."""
        x = tensors[REGISTRY_KEYS.X_KEY]
        rec = -generative_outputs["px"].log_prob(x).sum(-1)
        kl = kl_to_prior(inference_outputs["qz"], generative_outputs["pz"], inference_outputs["z"])
        loss = torch.mean(rec + kl_weight * kl)
        return LossOutput(loss=loss, reconstruction_loss=rec, kl_local=kl)
