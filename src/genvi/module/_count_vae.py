"""What PriorVAE and DisentVAE share: count input handling, sampling, likelihoods."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from scvi import REGISTRY_KEYS
from scvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from torch import nn
from torch.distributions import Distribution

from genvi._constants import GENVI_REGISTRY_KEYS
from genvi.nn import PRIORS, ConditionInputs, Prior, build_prior

GeneLikelihood = Literal["nb", "zinb", "poisson", "normal"]


def check_module_options(
    prior: str, gene_likelihood: str, dispersion: str, dispersions: tuple[str, ...]
) -> None:
    """Raise a ``ValueError`` naming the valid choices for an unknown option."""
    PRIORS.entry(prior)
    if gene_likelihood not in get_args(GeneLikelihood):
        raise ValueError(
            f"Unknown gene_likelihood {gene_likelihood!r}; use 'nb', 'zinb', 'poisson' or 'normal'."
        )
    if dispersion not in dispersions:
        raise ValueError(
            f"Unknown dispersion {dispersion!r}; use one of {', '.join(map(repr, dispersions))}."
        )


def count_distribution(
    gene_likelihood: str,
    px_scale: torch.Tensor,
    px_rate: torch.Tensor,
    theta: torch.Tensor,
    zi_logits: torch.Tensor | None,
) -> Distribution:
    """The NB, ZINB or Poisson distribution of counts (``scvi.distributions``)."""
    if gene_likelihood == "nb":
        return NegativeBinomial(mu=px_rate, theta=theta, scale=px_scale)
    if gene_likelihood == "zinb":
        return ZeroInflatedNegativeBinomial(
            mu=px_rate, theta=theta, zi_logits=zi_logits, scale=px_scale
        )
    return Poisson(rate=px_rate, scale=px_scale)


class ConditionalEncoderMixin:
    """The condition embedding and the encoder q(z | x, c) of PriorVAE and HybridVAE."""

    def embed_conditions(
        self,
        cond_cat: torch.Tensor | None,
        cond_cont: torch.Tensor | None,
        keep: torch.Tensor | None = None,
        n: int | None = None,
    ) -> torch.Tensor:
        """Condition embedding c for a batch (constant input if the model is unconditional)."""
        return self.condition_encoder(cond_cat, cond_cont, keep, n=n)

    def encode(self, x_in: torch.Tensor, c: torch.Tensor) -> Distribution:
        """q(z | x, c) from the encoder input and the condition embedding."""
        qz, _ = self.z_encoder(torch.cat([x_in, c], dim=-1))
        return qz


class CountVAEMixin:
    """What the count VAEs share: tensor plumbing, priors, library sizes, dispersion, sampling.

    For modules with ``gene_likelihood``, ``use_size_factor_key``, ``n_batch``,
    ``condition_encoder``, ``embed_conditions``, ``inference(..., n_samples)`` returning
    ``qz``, ``z``, ``library``, ``c`` and ``generative(**inputs)`` returning ``px`` and ``pz``,
    where ``inputs = _get_generative_input(tensors, inference_outputs)`` (``z``, ``library``,
    ``c``, ``batch_index``; a module may add more).
    """

    # ------------------------------------------------------------------ scvi-tools plumbing
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict:
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "cond_cat": tensors.get(GENVI_REGISTRY_KEYS.COND_CAT_KEY),
            "cond_cont": tensors.get(GENVI_REGISTRY_KEYS.COND_CONT_KEY),
            "size_factor": tensors.get(REGISTRY_KEYS.SIZE_FACTOR_KEY),
        }

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            "z": inference_outputs["z"],
            "library": inference_outputs["library"],
            "c": inference_outputs["c"],
            "batch_index": tensors[REGISTRY_KEYS.BATCH_KEY],
        }

    def embed(self, cond: ConditionInputs) -> torch.Tensor:
        """The condition embedding c of :class:`~genvi.nn.ConditionInputs`."""
        return self.embed_conditions(cond.cat, cond.cont, cond.keep, n=cond.n)

    # ------------------------------------------------------------------ parts
    def _build_prior(
        self, prior: str, n_latent: int, n_cond: int, n_input: int, prior_kwargs: dict | None
    ) -> Prior:
        """The registered prior, given the encoder when its components are posteriors."""
        module = build_prior(prior, n_latent, n_cond, n_input, prior_kwargs)
        if module.needs_encoder:  # VampPrior: a mixture of encoder posteriors
            module.attach_encoder(self.encode)
        return module

    def _init_dispersion(self, n_input: int, n_batch: int) -> None:
        """Per-gene (``px_r`` of shape ``(genes,)``) or per-gene-and-batch inverse dispersion."""
        if self.dispersion == "gene-batch":
            self.px_r = nn.Parameter(torch.randn(n_input, n_batch))
        elif self.dispersion != "gene-cell":
            self.px_r = nn.Parameter(torch.randn(n_input))

    def _freeze_unused(self, *parts: nn.Module | nn.Parameter | None) -> None:
        """Exclude parts this configuration never uses from training.

        They would get no gradient anyway; frozen, they are left out of the optimizer and
        DDP need not search for unused parameters at every step (see
        :func:`genvi.model.base.configure_distributed`). Their weights stay in the state
        dict, so saved models are unchanged.
        """
        for part in parts:
            if part is not None:
                part.requires_grad_(False)

    def _batch_theta(self, batch_index: torch.Tensor) -> torch.Tensor:
        """Inverse dispersion of each cell's batch (``dispersion="gene-batch"``)."""
        onehot = nn.functional.one_hot(batch_index.long().squeeze(-1), self.n_batch).float()
        return torch.exp(onehot @ self.px_r.T)

    # ------------------------------------------------------------------ counts

    def library_from_counts(
        self, x: torch.Tensor, size_factor: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Log library size (observed), or log size factor when one is registered."""
        if self.gene_likelihood == "normal":
            return torch.zeros(x.shape[0], 1, device=x.device)
        if self.use_size_factor_key and size_factor is not None:
            return torch.log(size_factor)
        return torch.log(x.sum(1, keepdim=True).clamp_min(1.0))

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees of the expression: log1p counts, or the data for ``normal``."""
        return x if self.gene_likelihood == "normal" else torch.log1p(x)

    @torch.inference_mode()
    def sample(
        self,
        tensors: dict[str, torch.Tensor],
        n_samples: int = 1,
        max_poisson_rate: float = 1e8,
        generative_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Posterior predictive samples ``(n, genes)`` or ``(n, genes, n_samples)``.

        The signature of :meth:`scvi.module.VAE.sample`, so scvi-tools'
        ``posterior_predictive_sample`` and ``scvi.criticism`` work on genvi models.
        ``max_poisson_rate`` clips the rate of a Poisson likelihood (as scvi-tools does).
        """
        _, gen = self.forward(
            tensors,
            inference_kwargs={"n_samples": n_samples},
            generative_kwargs=generative_kwargs,
            compute_loss=False,
        )
        px = gen["px"]
        if isinstance(px, Poisson):
            px = Poisson(px.rate.clamp(max=max_poisson_rate), scale=px.scale)
        samples = px.sample()
        return samples.permute(1, 2, 0).cpu() if n_samples > 1 else samples.cpu()

    @torch.inference_mode()
    def marginal_ll(
        self,
        tensors: dict[str, torch.Tensor],
        n_mc_samples: int = 100,
        return_mean: bool = False,
        n_mc_samples_per_pass: int = 25,
    ) -> torch.Tensor | float:
        """Importance-weighted estimate of log p(x | conditions) per cell.

        The library size is observed; a missing categorical label (DisentVAE) is replaced by
        the predictors' soft assignment.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        inf_in = self._get_inference_input(tensors)
        chunks = []
        done = 0
        while done < n_mc_samples:
            s = min(n_mc_samples_per_pass, n_mc_samples - done)
            inf = self.inference(**inf_in, n_samples=max(s, 2))
            z = inf["z"][:s]
            gen = self.generative(**self._get_generative_input(tensors, {**inf, "z": z}))
            log_px = gen["px"].log_prob(x.to(z.device)).sum(-1)
            log_pz = gen["pz"].log_prob(z)
            log_qz = inf["qz"].log_prob(z).sum(-1)
            chunks.append(log_px + log_pz - log_qz)
            done += s
        log_w = torch.cat(chunks, dim=0)
        ll = torch.logsumexp(log_w, dim=0) - torch.log(torch.tensor(float(n_mc_samples)))
        return ll.mean().item() if return_mean else ll
