"""HybridVAE: counts around a given mean, with a centred latent residual and a learned prior."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import Encoder
from torch import nn
from torch.distributions import Distribution

from genvi._constants import GENVI_REGISTRY_KEYS
from genvi._registry import document_options
from genvi.module._count_vae import ConditionalEncoderMixin, CountVAEMixin, count_distribution
from genvi.nn import PRIORS, ConditionEncoder, kl_to_prior, log_mgf_linear

HybridLikelihood = Literal["nb", "zinb", "poisson"]
HybridDispersion = Literal["gene", "gene-batch", "gene-condition"]
#: ``(cond_cat, cond_cont) -> (n, genes)`` log proportions of the cells' conditions
LogMeanFunction = Callable[[torch.Tensor | None, torch.Tensor | None], torch.Tensor]

# a log residual beyond this is numerically meaningless (a factor of e^30) and would overflow
_MAX_LOG_RESIDUAL = 30.0


@document_options(prior=PRIORS)
class HybridVAE(ConditionalEncoderMixin, CountVAEMixin, BaseModuleClass):
    """Counts distributed around a given mean expression, with a latent cell state.

    For a cell with conditions ``c``, log library ``l``, latent state ``z`` and batch ``b``::

        z          ~ p(z | c)                                  learned prior
        log rate_g = l + log rho_g(c) + w_g . z - log m_g(c) + beta_{b,g}
        m_g(c)     = E_{z ~ p(z | c)}[exp(w_g . z)]             exact centring
        x_g        ~ NB(rate_g, theta_g(c))                    (or ZINB / Poisson)

    (``m`` from :func:`~genvi.nn.log_mgf_linear`.)

    ``rho(c)`` are the proportions of a given mean predictor (one row per cell, supplied by
    the model through :meth:`set_mean_function`), ``W = (w_g)`` are learned gene loadings
    (``loadings``): a rank-``n_latent`` log-scale residual. Dividing by ``m_g(c)`` centres the
    residual, so for every condition and gene ``E[x_g | c, l] = exp(l) * rho_g(c)`` *exactly*
    (averaged over the latent cell state; batch offsets ``beta`` are centred over the
    training batches' frequencies): the latent can only shape the distribution around the
    predictor's mean (cell-to-cell variation, gene-gene correlation), never move it.
    Overdispersion is the NB's ``theta``; with ``zinb`` the NB mean is raised by ``1 / (1 -
    pi_g)`` so the zero-inflated mean stays ``rate_g``.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of batches (nuisance); 1 for none.
    n_cats_per_key
        Categories of each categorical condition key.
    n_continuous
        Number of continuous condition keys.
    continuous_mean, continuous_std
        Training statistics used to standardise continuous conditions.
    n_latent, n_hidden, n_layers, dropout_rate
        Latent size and encoder sizes (the residual decoder is linear).
    n_embed
        Embedding size per condition key.
    prior
        A registered prior p(z | c) (:data:`genvi.nn.PRIORS`); the centring is exact for
        ``normal``, ``gaussian``, ``mog`` and ``vamp``, a Monte Carlo estimate for ``flow``:

        {prior_options}
    prior_kwargs
        The prior's own arguments; unknown ones raise.
    gene_likelihood
        ``"nb"``, ``"zinb"`` or ``"poisson"``.
    dispersion
        ``"gene"``, ``"gene-batch"`` or ``"gene-condition"`` (a per-gene log inverse
        dispersion plus a linear function of the condition embedding, which is additive over
        the condition keys, so an unseen combination composes the keys' effects).
    use_size_factor_key
        Use registered size factors instead of the observed library size.
    batch_weights
        Frequencies of the training batches, over which the batch offsets are centred.
    n_centering_samples
        Monte Carlo draws per distinct condition for priors without a closed-form centring.
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
        prior: str = "gaussian",
        prior_kwargs: dict | None = None,
        gene_likelihood: HybridLikelihood = "nb",
        dispersion: HybridDispersion = "gene-condition",
        use_size_factor_key: bool = False,
        batch_weights: Sequence[float] | None = None,
        n_centering_samples: int = 256,
    ):
        super().__init__()
        PRIORS.entry(prior)
        if gene_likelihood not in get_args(HybridLikelihood):
            raise ValueError(
                f"Unknown gene_likelihood {gene_likelihood!r} for HybridVAE; use 'nb', 'zinb' or "
                "'poisson' (the mean predictor gives expected counts, so the data must be counts)."
            )
        if dispersion not in get_args(HybridDispersion):
            raise ValueError(
                f"Unknown dispersion {dispersion!r}; use one of "
                f"{', '.join(map(repr, get_args(HybridDispersion)))}."
            )
        self.n_input = n_input
        self.n_batch = n_batch
        self.n_latent = n_latent
        self.gene_likelihood = gene_likelihood
        self.dispersion = dispersion
        self.use_size_factor_key = use_size_factor_key
        self.prior_name = prior
        self.n_centering_samples = n_centering_samples
        self._log_mean_fn: LogMeanFunction | None = None

        self.condition_encoder = ConditionEncoder(
            n_cats_per_key, n_continuous, n_embed, continuous_mean, continuous_std, dropout=0.0
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
        self.loadings = nn.Parameter(0.05 * torch.randn(n_input, n_latent))
        if n_batch > 1:
            self.batch_offsets = nn.Parameter(torch.zeros(n_input, n_batch))
            weights = torch.full((n_batch,), 1.0 / n_batch)
            if batch_weights is not None:
                weights = torch.as_tensor(list(batch_weights), dtype=torch.float32)
                weights = weights / weights.sum()
            self.register_buffer("batch_weights", weights)
        self._init_dispersion(n_input, n_batch)
        if dispersion == "gene-condition":  # px_r (per gene) comes from _init_dispersion
            self.dispersion_condition = nn.Linear(n_cond, n_input, bias=False)
            nn.init.zeros_(self.dispersion_condition.weight)
        if gene_likelihood == "zinb":
            self.zi_logits = nn.Parameter(torch.full((n_input,), -3.0))
        if gene_likelihood == "poisson":  # no dispersion: nothing for DDP to search for
            self._freeze_unused(
                getattr(self, "px_r", None), getattr(self, "dispersion_condition", None)
            )

    # ------------------------------------------------------------------ the given mean
    def set_mean_function(self, fn: LogMeanFunction | None) -> None:
        """Give the module the log proportions ``log rho(c)`` of the cells' conditions.

        ``fn(cond_cat, cond_cont)`` takes a batch's condition codes and values and returns
        ``(n, genes)`` log proportions (rows of ``rho`` sum to 1). The model sets it from its
        mean predictor; it is not a weight and is not saved.
        """
        self._log_mean_fn = fn

    def log_mean(self, cond_cat: torch.Tensor | None, cond_cont: torch.Tensor | None):
        """``log rho(c)`` of a batch, from the mean function."""
        if self._log_mean_fn is None:
            raise RuntimeError(
                "HybridVAE has no mean function; build it through genvi.model.HybridVI, which "
                "turns its mean predictor into one (set_mean_function)."
            )
        return self._log_mean_fn(cond_cat, cond_cont)

    # ------------------------------------------------------------------ scvi-tools plumbing
    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        out = super()._get_generative_input(tensors, inference_outputs)
        cat = tensors.get(GENVI_REGISTRY_KEYS.COND_CAT_KEY)
        cont = tensors.get(GENVI_REGISTRY_KEYS.COND_CONT_KEY)
        out["log_rho"] = self.log_mean(
            None if cat is None else cat.long(), None if cont is None else cont.float()
        )
        return out

    # ------------------------------------------------------------------ model
    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        cond_cat: torch.Tensor | None = None,
        cond_cont: torch.Tensor | None = None,
        size_factor: torch.Tensor | None = None,
        n_samples: int = 1,
    ) -> dict[str, torch.Tensor | Distribution]:
        """Encode x (and c) into q(z | x, c)."""
        library = self.library_from_counts(x, size_factor)
        c = self.embed_conditions(cond_cat, cond_cont, n=x.shape[0])
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
        log_rho: torch.Tensor,
        transform_batch: int | None = None,
    ) -> dict[str, Distribution]:
        """p(x | z, c, batch) around the given mean; also return the prior p(z | c)."""
        if transform_batch is not None:
            batch_index = torch.full_like(batch_index, int(transform_batch))
        return {"px": self.decode(z, c, library, batch_index, log_rho), "pz": self.prior(c)}

    def log_centering(self, c: torch.Tensor) -> torch.Tensor:
        """``log m(c) = log E_{z ~ p(z | c)}[exp(W z)]`` per cell ``(n, genes)``.

        Computed once per distinct condition embedding of the batch (Monte Carlo priors then
        use ``n_centering_samples`` draws per condition, shared by its cells).
        """
        # torch.unique's output size is data-dependent (one device wait on a GPU); reading
        # the size off ``uniq`` avoids a second read-back of ``inverse.max()``
        uniq, inverse = torch.unique(c.detach(), dim=0, return_inverse=True)
        n_unique = uniq.shape[0]
        first = torch.full((n_unique,), c.shape[0], dtype=torch.long, device=c.device)
        first = first.scatter_reduce(
            0, inverse, torch.arange(c.shape[0], device=c.device), reduce="amin"
        )
        log_m = log_mgf_linear(self.prior(c[first]), self.loadings, self.n_centering_samples)
        return log_m[inverse]

    def log_residual(
        self,
        z: torch.Tensor,
        c_center: torch.Tensor,
        batch_index: torch.Tensor,
        z_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``W z - log m(c_center) + beta_batch``; ``z`` may carry a leading sample dimension.

        With ``z_scale``, z is read as N(z, z_scale^2) and the result is the log of the
        residual's expectation over it (``+ W^2 z_scale^2 / 2``).
        """
        r = z @ self.loadings.T - self.log_centering(c_center)
        if z_scale is not None:
            r = r + 0.5 * z_scale.pow(2) @ self.loadings.pow(2).T
        if self.n_batch > 1:
            beta = self.batch_offsets - (self.batch_offsets @ self.batch_weights).unsqueeze(-1)
            r = r + beta.T[batch_index.long().reshape(-1)]
        return r.clamp(-_MAX_LOG_RESIDUAL, _MAX_LOG_RESIDUAL)

    def decode(
        self,
        z: torch.Tensor,
        c: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        log_rho: torch.Tensor | None = None,
        c_center: torch.Tensor | None = None,
        z_scale: torch.Tensor | None = None,
    ) -> Distribution:
        """p(x | z, c, batch) around the proportions ``exp(log_rho)``.

        Parameters
        ----------
        z
            Latents ``(n, d)`` or ``(S, n, d)``.
        c
            Condition embeddings of the cells (dispersion, and the centring by default).
        library
            Log library sizes ``(n, 1)``.
        batch_index
            Batches ``(n, 1)``.
        log_rho
            Log proportions of the mean predictor for the cells' conditions ``(n, genes)``.
        c_center
            Condition whose prior centres the residual (``c`` by default). A counterfactual
            that keeps a cell's z centres it under the cell's own condition.
        z_scale
            Posterior standard deviations of z: the distribution then has the expected rate
            over z ~ N(z, z_scale^2) (for means only; its variance ignores the spread of z).
        """
        if log_rho is None:
            raise ValueError(
                "HybridVAE.decode needs log_rho, the mean predictor's log proportions of the "
                "cells' conditions."
            )
        center = c if c_center is None else c_center
        log_scale = log_rho + self.log_residual(z, center, batch_index, z_scale)
        scale = torch.exp(log_scale)
        rate = torch.exp(library + log_scale)
        theta = self._theta(c, batch_index)
        zi = None
        if self.gene_likelihood == "zinb":
            zi = self.zi_logits.expand_as(rate)
            # NB mean / (1 - pi): the zero-inflated mean stays the rate
            rate = rate * (1.0 + torch.exp(self.zi_logits))
        return count_distribution(self.gene_likelihood, scale, rate, theta, zi)

    def _theta(self, c: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        if self.dispersion == "gene-batch":
            return self._batch_theta(batch_index)
        if self.dispersion == "gene-condition":
            return torch.exp(self.px_r + self.dispersion_condition(c))
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
