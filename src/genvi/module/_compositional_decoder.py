"""The DisentVAE decoder: basal state + additive attribute effects + a small interaction term."""

from __future__ import annotations

from typing import Literal

import torch
from scvi.nn import FCLayers
from torch import nn

InteractionInput = Literal["latent", "expression", "profile", "context"]


class CompositionalDecoder(nn.Module):
    """Expression logits = basal(z_u) + additive(attributes) + interaction(z_u, attributes).

    The attribute main effects are additive in log-expression space (a linear map of each
    attribute's representation), so attributes compose; a small network of z_u and all
    attributes adds interactions (cell-type-specific responses), penalised in
    :meth:`DisentVAE.loss` so that it only explains what the additive part cannot.

    Parameters
    ----------
    n_latent
        Size of z_u.
    n_cond
        Size of the concatenated attribute representations.
    n_output
        Number of genes.
    n_batch
        Number of batches (one-hot, injected in every layer).
    n_layers, n_hidden
        Sizes of the basal and interaction networks.
    interaction
        Whether to include the interaction network.
    interaction_input
        What the interaction network sees: ``"latent"`` (z_u and the attributes),
        ``"expression"`` (the standardised log-proportions of the additive part and the
        attributes), ``"profile"`` (those log-proportions only: an interaction is then a
        function of the expression profile the attributes produce, so attribute values with
        similar profiles, e.g. two monocyte types, respond alike, including to a combination
        never seen in training) or ``"context"`` (one network per attribute, seeing that
        attribute and the profile set by z_u and the other attributes).
    n_keys
        Number of attributes (the representation ``c`` is ``n_keys`` equal blocks); used by
        ``"context"``.
    """

    def __init__(
        self,
        n_latent: int,
        n_cond: int,
        n_output: int,
        n_batch: int = 1,
        n_layers: int = 1,
        n_hidden: int = 128,
        interaction: bool = True,
        interaction_input: InteractionInput = "latent",
        n_keys: int = 1,
    ):
        super().__init__()
        if interaction_input not in ("expression", "latent", "profile", "context"):
            raise ValueError(
                f"Unknown interaction_input {interaction_input!r}; use 'latent', 'expression', "
                "'profile' or 'context'."
            )
        self.interaction_input = interaction_input
        self.basal = FCLayers(
            n_latent,
            n_hidden,
            [n_batch],
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=0.0,
            use_batch_norm=False,
        )
        self.basal_out = nn.Linear(n_hidden, n_output)
        self.additive = nn.Linear(n_cond, n_output, bias=False)
        self.interaction = None
        self.n_keys = n_keys
        if interaction:
            n_in = {
                "latent": n_latent + n_cond,
                "expression": n_output + n_cond,
                "profile": n_output,
                "context": n_output + n_cond // n_keys,
            }[interaction_input]
            n_nets = n_keys if interaction_input == "context" else 1
            self.interaction = nn.ModuleList(
                FCLayers(
                    n_in,
                    n_hidden,
                    [n_batch],
                    n_layers=n_layers,
                    n_hidden=n_hidden,
                    dropout_rate=0.0,
                    use_batch_norm=False,
                )
                for _ in range(n_nets)
            )
            self.interaction_out = nn.ModuleList(
                nn.Linear(n_hidden, n_output) for _ in range(n_nets)
            )
            for layer in self.interaction_out:  # start from the purely additive decoder
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.px_r_decoder = nn.Linear(n_hidden, n_output)
        self.px_dropout_decoder = nn.Linear(n_hidden, n_output)

    def forward(
        self, z: torch.Tensor, c: torch.Tensor, batch_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Logits, the basal hidden layer and the interaction term (``None`` if disabled)."""
        if z.dim() == 3:
            c = c.expand(z.shape[0], -1, -1)
        hidden = self.basal(z, batch_index)
        basal = self.basal_out(hidden)
        if self.interaction_input == "context" and self.interaction is not None:
            return self._context_forward(basal, hidden, c, batch_index)
        logits = basal + self.additive(c)
        inter = None
        if self.interaction is not None:
            if self.interaction_input == "latent":
                state = torch.cat([z, c], -1)
            else:
                profile = _profile(logits)
                state = (
                    profile if self.interaction_input == "profile" else torch.cat([profile, c], -1)
                )
            inter = self.interaction_out[0](self.interaction[0](state, batch_index))
            logits = logits + inter
        return logits, hidden, inter

    def _context_forward(
        self, basal: torch.Tensor, hidden: torch.Tensor, c: torch.Tensor, batch_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits where each attribute's interaction depends on its context.

        The context of an attribute is the expression profile set by z_u and the *other*
        attributes, so a response learned in one context transfers to similar ones.
        """
        n_embed = c.shape[-1] // self.n_keys
        parts = c.split(n_embed, -1)
        weights = self.additive.weight.split(n_embed, -1)
        effects = [nn.functional.linear(part, w) for part, w in zip(parts, weights, strict=True)]
        logits = basal + sum(effects)
        inter = torch.zeros_like(logits)
        for k, (net, out) in enumerate(zip(self.interaction, self.interaction_out, strict=True)):
            context = _profile(logits - effects[k])
            inter = inter + out(net(torch.cat([context, parts[k]], -1), batch_index))
        return logits + inter, hidden, inter


def _profile(logits: torch.Tensor) -> torch.Tensor:
    """Log-proportions standardised per cell: the profile's shape, not its scale."""
    return nn.functional.layer_norm(logits.log_softmax(-1), logits.shape[-1:])
