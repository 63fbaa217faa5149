"""DisentVAE: known attributes and an unknown latent, adversarially disentangled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from scvi import REGISTRY_KEYS
from scvi.distributions import Normal
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import Encoder
from torch import nn
from torch.distributions import Distribution
from torch.func import functional_call

from genvi._constants import GENVI_REGISTRY_KEYS
from genvi._registry import document_options
from genvi.module._compositional_decoder import CompositionalDecoder, InteractionInput
from genvi.module._count_vae import (
    CountVAEMixin,
    GeneLikelihood,
    check_module_options,
    count_distribution,
)
from genvi.nn import PRIORS, ConditionEncoder, kl_to_prior
from genvi.nn._adversary import AttributeHeads, attribute_losses, reverse_gradient

Dispersion = Literal["gene", "gene-batch", "gene-attribute", "gene-cell"]


@document_options(prior=PRIORS)
class DisentVAE(CountVAEMixin, BaseModuleClass):
    """VAE with one representation per known attribute and an attribute-free unknown latent.

    * q(z_u | x): amortised encoder of the *unknown* latent from expression only.
    * One learned representation per known attribute: an embedding table per categorical
      attribute and a small network per ordered (continuous) attribute, so unseen values of an
      ordered attribute interpolate (:class:`~genvi.nn.ConditionEncoder`).
    * p(x | z_u, attributes, batch): count decoder (``scvi.distributions``).
    * Information penalty on z_u: the KL to a prior p(z_u) (N(0, I) by default, or any
      :data:`genvi.nn.PRIORS` prior given the attribute embedding), which also makes sampling
      and likelihoods possible.
    * Adversaries: classifiers (categorical) and regressors (ordered) predicting the attributes
      from the mean of q(z_u | x) through gradient reversal, weighted by ``adversary_weight``.
    * Attribute predictors from expression, trained on the labelled cells; for a cell whose
      categorical label is missing the decoder gets the predicted-probability-weighted embedding
      (semi-supervised training; label imputation).

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of batches (decoder only); 1 for none.
    n_cats_per_key
        Categories of each categorical attribute.
    n_ordered
        Number of ordered attributes.
    ordered_mean, ordered_std
        Training statistics used to standardise the ordered attributes.
    n_latent
        Size of the unknown latent z_u.
    n_hidden, n_layers, dropout_rate
        Encoder / decoder sizes, as in :class:`scvi.module.VAE`.
    n_embed
        Size of each attribute's representation.
    prior
        Prior on z_u (``"normal"``, independent of the attributes, by default), one of
        :data:`genvi.nn.PRIORS` given the attribute embedding:

        {prior_options}
    prior_kwargs
        The prior's own arguments; unknown ones raise.
    gene_likelihood
        ``"nb"``, ``"zinb"``, ``"poisson"`` or ``"normal"``.
    dispersion
        ``"gene"``, ``"gene-batch"``, ``"gene-attribute"`` (per gene, shifted additively by
        each attribute's representation, so a stimulated or rare cell type gets its own
        overdispersion, also in an unseen combination) or ``"gene-cell"``.
    adversary_weight
        Weight of the adversarial loss; the encoder receives its gradient reversed.
    classification_weight
        Weight of the attribute predictors' loss.
    n_hidden_adversary
        Hidden units of the adversaries and attribute predictors.
    attribute_dropout
        Probability of replacing each attribute by its null token during training (enables
        generation from partial attributes).
    adversary_mode
        ``"confusion"`` (default): the encoder makes the adversaries predict the label
        frequencies; ``"reversal"``: plain gradient reversal, the encoder maximises the
        adversaries' loss (which can re-encode the labels as confidently wrong predictions).
    interaction
        Add the interaction network to the additive decoder (:class:`CompositionalDecoder`).
    interaction_weight
        Weight of the squared interaction term per cell (shrinks interactions towards the
        additive composition of the attributes).
    interaction_input
        ``"profile"``, ``"latent"``, ``"expression"`` or ``"context"``, see
        :class:`CompositionalDecoder`.
    cat_frequencies
        Training frequencies of each categorical attribute's labels (confusion targets);
        uniform by default.
    use_size_factor_key
        Use registered size factors instead of the observed library size.
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 1,
        n_cats_per_key: Sequence[int] = (),
        n_ordered: int = 0,
        ordered_mean: Sequence[float] | None = None,
        ordered_std: Sequence[float] | None = None,
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        n_embed: int = 16,
        prior: str = "normal",
        prior_kwargs: dict | None = None,
        gene_likelihood: GeneLikelihood = "nb",
        dispersion: Dispersion = "gene-attribute",
        adversary_weight: float = 10.0,
        classification_weight: float = 10.0,
        n_hidden_adversary: int = 64,
        attribute_dropout: float = 0.0,
        adversary_mode: Literal["confusion", "reversal"] = "confusion",
        interaction: bool = True,
        interaction_weight: float = 0.1,
        interaction_input: InteractionInput = "profile",
        cat_frequencies: Sequence[Sequence[float]] | None = None,
        use_size_factor_key: bool = False,
    ):
        super().__init__()
        check_module_options(prior, gene_likelihood, dispersion, get_args(Dispersion))
        if adversary_weight < 0 or classification_weight < 0:
            raise ValueError("adversary_weight and classification_weight must be >= 0.")
        if adversary_mode not in ("confusion", "reversal"):
            raise ValueError(
                f"Unknown adversary_mode {adversary_mode!r}; use 'confusion' or 'reversal'."
            )
        if not len(n_cats_per_key) and not n_ordered:
            raise ValueError("DisentVAE needs at least one categorical or ordered attribute.")
        self.n_input = n_input
        self.n_batch = n_batch
        self.n_latent = n_latent
        self.n_cats_per_key = list(n_cats_per_key)
        self.n_ordered = n_ordered
        self.gene_likelihood = gene_likelihood
        self.dispersion = dispersion
        self.prior_name = prior
        self.adversary_weight = adversary_weight
        self.classification_weight = classification_weight
        self.use_size_factor_key = use_size_factor_key
        self.adversary_mode = adversary_mode
        self.interaction_weight = interaction_weight
        for j, n in enumerate(self.n_cats_per_key):
            freq = torch.full((n,), 1.0 / n)
            if cat_frequencies is not None:
                freq = torch.as_tensor(list(cat_frequencies[j]), dtype=torch.float32)
                freq = (freq + 1e-3) / (freq + 1e-3).sum()
            self.register_buffer(f"_log_freq_{j}", freq.log())

        self.condition_encoder = ConditionEncoder(
            n_cats_per_key, n_ordered, n_embed, ordered_mean, ordered_std, dropout=attribute_dropout
        )
        n_cond = self.condition_encoder.n_output
        self.n_embed = n_embed
        self.z_encoder = Encoder(
            n_input,
            n_latent,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            return_dist=True,
        )
        self.prior = self._build_prior(prior, n_latent, n_cond, n_input, prior_kwargs)
        self.decoder = CompositionalDecoder(
            n_latent,
            n_cond,
            n_input,
            n_batch,
            n_layers,
            n_hidden,
            interaction=interaction,
            interaction_input=interaction_input,
            n_keys=self.condition_encoder.n_keys,
        )
        self._init_dispersion(n_input, n_batch)
        if dispersion == "gene-attribute":  # starts at the per-gene dispersion
            self.px_r_attribute = nn.Linear(n_cond, n_input, bias=False)
            nn.init.zeros_(self.px_r_attribute.weight)
        self.adversary = AttributeHeads(
            n_latent, n_cats_per_key, n_ordered, n_hidden=n_hidden_adversary, dropout_rate=0.0
        )
        self.predictor = AttributeHeads(
            n_input, n_cats_per_key, n_ordered, n_hidden=n_hidden, dropout_rate=dropout_rate
        )
        uses_theta = gene_likelihood != "poisson"
        self._freeze_unused(
            None if gene_likelihood == "zinb" else self.decoder.px_dropout_decoder,
            None if dispersion == "gene-cell" and uses_theta else self.decoder.px_r_decoder,
            None if uses_theta else getattr(self, "px_r", None),
            None if uses_theta else getattr(self, "px_r_attribute", None),
            None if adversary_weight > 0 else self.adversary,
        )

    # ------------------------------------------------------------------ attributes
    def standardize_ordered(self, cond_cont: torch.Tensor) -> torch.Tensor:
        """Ordered attributes on the standardised scale the predictors work on."""
        enc = self.condition_encoder
        return (cond_cont.float() - enc.continuous_mean) / enc.continuous_std

    def unstandardize_ordered(self, values: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`standardize_ordered`."""
        enc = self.condition_encoder
        return values * enc.continuous_std + enc.continuous_mean

    def embed_conditions(
        self,
        cond_cat: torch.Tensor | None,
        cond_cont: torch.Tensor | None,
        keep: torch.Tensor | None = None,
        n: int | None = None,
        cat_probs: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Concatenated attribute representations ``(n, n_keys * n_embed)``.

        Negative categorical codes mark missing labels: they are replaced by the embedding
        averaged under ``cat_probs`` (the predictors' probabilities) when given, else by the
        attribute's null token.
        """
        enc = self.condition_encoder
        if cond_cat is None:
            return enc(None, cond_cont, keep, n=n)
        # masks are applied unconditionally: branching on `missing.any()` would synchronise the
        # host with the GPU at every step
        cond_cat = cond_cat.long()
        missing = cond_cat < 0
        if cat_probs is None:
            extra = torch.zeros(
                missing.shape[0], enc.n_continuous, dtype=torch.bool, device=missing.device
            )
            known = torch.cat([~missing, ~extra], dim=1)
            keep = known if keep is None else keep.bool() & known
        c = enc(cond_cat.clamp_min(0), cond_cont, keep)
        if cat_probs is not None:
            parts = list(c.split(enc.n_embed, dim=1))
            for j, probs in enumerate(cat_probs):
                soft = probs @ enc.embeddings[j].weight
                parts[j] = torch.where(missing[:, j : j + 1], soft, parts[j])
            c = torch.cat(parts, dim=1)
        return c

    def predictor_input(self, x: torch.Tensor) -> torch.Tensor:
        """Depth-normalised log expression for the attribute predictors."""
        if self.gene_likelihood == "normal":
            return x
        return torch.log1p(x / x.sum(1, keepdim=True).clamp_min(1.0) * 1e4)

    def encode(self, x_in: torch.Tensor, c: torch.Tensor | None = None) -> Distribution:
        """q(z_u | x) from the encoder input (``c`` is ignored: z_u sees expression only)."""
        qz, _ = self.z_encoder(x_in)
        return qz

    def predict_attributes(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Logits of each categorical attribute and standardised ordered values from x."""
        return self.predictor(self.predictor_input(x))

    # ------------------------------------------------------------------ model
    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        cond_cat: torch.Tensor | None = None,
        cond_cont: torch.Tensor | None = None,
        size_factor: torch.Tensor | None = None,
        n_samples: int = 1,
    ) -> dict:
        """Encode z_u from x, predict the attributes and embed the (observed or imputed) ones."""
        library = self.library_from_counts(x, size_factor)
        qz = self.encode(self.encoder_input(x))
        z = qz.rsample((n_samples,)) if n_samples > 1 else qz.rsample()
        logits, values = self.predict_attributes(x)
        probs = [lg.softmax(-1) for lg in logits]
        c = self.embed_conditions(cond_cat, cond_cont, n=x.shape[0], cat_probs=probs)
        return {
            "qz": qz,
            "z": z,
            "library": library,
            "c": c,
            "pred_logits": logits,
            "pred_values": values,
        }

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        c: torch.Tensor,
        batch_index: torch.Tensor,
        transform_batch: int | None = None,
    ) -> dict[str, Distribution]:
        """Decode p(x | z_u, attributes, batch); also return the prior p(z_u | c)."""
        if transform_batch is not None:
            batch_index = torch.full_like(batch_index, int(transform_batch))
        px, inter = self.decode(z, c, library, batch_index, return_interaction=True)
        return {"px": px, "pz": self.prior(c), "interaction": inter}

    def decode(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        return_interaction: bool = False,
    ):
        """p(x | z_u, attributes, batch); ``z`` may carry a leading sample dimension."""
        logits, hidden, inter = self.decoder(z, c, batch_index)
        if self.gene_likelihood == "normal":
            scale = self._dispersion(hidden, batch_index, c)
            px = Normal(logits, scale, normal_mu=logits)
        else:
            px_scale = logits.softmax(-1)
            px_rate = torch.exp(library) * px_scale
            theta = self._dispersion(hidden, batch_index, c)
            zi_logits = (
                self.decoder.px_dropout_decoder(hidden) if self.gene_likelihood == "zinb" else None
            )
            px = count_distribution(self.gene_likelihood, px_scale, px_rate, theta, zi_logits)
        return (px, inter) if return_interaction else px

    def _dispersion(
        self, hidden: torch.Tensor, batch_index: torch.Tensor, c: torch.Tensor
    ) -> torch.Tensor:
        """Inverse dispersion (NB) or scale (Normal); ``hidden`` is the decoder's basal layer."""
        if self.dispersion == "gene-attribute":
            if c.dim() < hidden.dim():
                c = c.expand(*hidden.shape[:-1], -1)
            return torch.exp(self.px_r + self.px_r_attribute(c))
        if self.dispersion == "gene-cell":  # the per-cell head runs only when it is used
            return torch.exp(self.decoder.px_r_decoder(hidden))
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
        """Negative ELBO + adversarial loss on z_u (reversed) + attribute prediction loss."""
        x = tensors[REGISTRY_KEYS.X_KEY]
        cat = tensors.get(GENVI_REGISTRY_KEYS.COND_CAT_KEY)
        cont = tensors.get(GENVI_REGISTRY_KEYS.COND_CONT_KEY)
        cat = cat.long() if cat is not None else None
        ordered = self.standardize_ordered(cont) if cont is not None else None
        qz = inference_outputs["qz"]
        rec = -generative_outputs["px"].log_prob(x).sum(-1)
        kl = kl_to_prior(qz, generative_outputs["pz"], inference_outputs["z"])
        total = rec + kl_weight * kl
        if self.adversary_weight > 0:
            total = total + self.adversary_weight * self._adversarial_loss(qz.loc, cat, ordered)
        inter = generative_outputs.get("interaction")
        if inter is not None and self.interaction_weight > 0:
            total = total + self.interaction_weight * (inter**2).sum(-1)
        if self.classification_weight > 0:
            clf = attribute_losses(
                inference_outputs["pred_logits"], inference_outputs["pred_values"], cat, ordered
            )
            total = total + self.classification_weight * clf
        return LossOutput(loss=torch.mean(total), reconstruction_loss=rec, kl_local=kl)

    def _adversarial_loss(
        self, z: torch.Tensor, cat: torch.Tensor | None, ordered: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-cell adversarial loss on the unknown latent.

        ``"reversal"``: the adversaries minimise their loss on ``reverse_gradient(z)``, so the
        encoder maximises it. ``"confusion"``: the adversaries are fitted on ``z.detach()`` and
        the encoder, through frozen copies of them, is pushed to make them predict the label
        frequencies (categorical) and the mean (ordered), i.e. nothing.
        """
        if self.adversary_mode == "reversal":
            logits, values = self.adversary(reverse_gradient(z))
            return attribute_losses(logits, values, cat, ordered)
        logits, values = self.adversary(z.detach())
        fit = attribute_losses(logits, values, cat, ordered)
        frozen = {k: v.detach() for k, v in self.adversary.named_parameters()}
        logits, values = functional_call(self.adversary, frozen, (z,))
        confusion = torch.zeros_like(fit)
        for j, lg in enumerate(logits):
            log_freq = getattr(self, f"_log_freq_{j}")
            confusion = confusion - (log_freq.exp() * lg.log_softmax(-1)).sum(-1)
        if values is not None:
            confusion = confusion + (values**2).sum(-1)
        return fit + confusion
