"""The prior interface: one abstract base class, one registry, one builder.

A prior p(z | c) is a :class:`Prior`: a ``torch.nn.Module`` whose ``forward(c)`` returns a
``torch.distributions.Distribution`` over z with batch shape ``(n,)`` and event shape
``(n_latent,)`` (the zuko ``LazyDistribution`` convention; scvi-tools' ``Prior`` plays the same
role). What a model may do with it beyond ``log_prob``/``rsample`` is declared, not guessed:

``has_noise_map``
    :meth:`Prior.to_noise` / :meth:`Prior.from_noise` are a bijection between z and an
    exogenous N(0, I) noise u given c.
``has_transport``
    :meth:`Prior.transport` moves a latent from one condition to another (counterfactuals).
    The default is ``from_noise(to_noise(z, c_from), c_to)`` for priors with a noise map.
    ``transport_invertible`` says whether moving there and back always returns z.
``needs_encoder``
    The prior's components are encoder posteriors (VampPrior): the VAE hands it its encoder
    with :meth:`Prior.attach_encoder`.
``needs_data_init``
    :meth:`Prior.initialize_from_data` starts some parameters at real cells.

Every prior takes explicit constructor arguments: ``n_latent`` and ``n_cond`` always, and
``n_input`` (number of genes) if it needs it. :func:`build_prior` supplies those three and
refuses any ``prior_kwargs`` the prior does not take, naming the ones it does.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from torch.distributions import Distribution, Normal

from genvi._registry import Registry

Encode = Callable[[torch.Tensor, torch.Tensor], Normal]

#: Priors accepted by the models' ``prior=`` option.
PRIORS: Registry[type[Prior]] = Registry("prior")

# what the models pass to every prior: the prior's own arguments come from ``prior_kwargs``
MODEL_ARGUMENTS = ("n_latent", "n_cond", "n_input")


class Prior(nn.Module, ABC):
    """Base class of the priors p(z | c) (see the module docstring for the contract).

    Parameters
    ----------
    n_latent
        Dimension of z.
    n_cond
        Size of the condition embedding c.
    """

    has_noise_map: ClassVar[bool] = False
    has_transport: ClassVar[bool] = False
    transport_invertible: ClassVar[bool] = True
    needs_encoder: ClassVar[bool] = False
    needs_data_init: ClassVar[bool] = False

    def __init__(self, n_latent: int, n_cond: int):
        super().__init__()
        self.n_latent = n_latent
        self.n_cond = n_cond

    @abstractmethod
    def forward(self, c: torch.Tensor) -> Distribution:
        """p(z | c) for condition embeddings ``(n, n_cond)``: batch ``(n,)``, event ``(d,)``."""

    def to_noise(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The exogenous noise u of z under c (z = ``from_noise(u, c)``)."""
        raise NotImplementedError(f"{type(self).__name__} has no noise map (has_noise_map).")

    def from_noise(self, u: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_noise`."""
        raise NotImplementedError(f"{type(self).__name__} has no noise map (has_noise_map).")

    def transport(self, z: torch.Tensor, c_from: torch.Tensor, c_to: torch.Tensor) -> torch.Tensor:
        """Move z from condition ``c_from`` to ``c_to`` keeping its exogenous noise."""
        if not self.has_noise_map:
            raise NotImplementedError(f"{type(self).__name__} has no transport (has_transport).")
        return self.from_noise(self.to_noise(z, c_from), c_to)

    def attach_encoder(self, encode: Encode) -> None:
        """Receive the VAE's encoder ``encode(x_in, c) -> Normal`` (``needs_encoder`` priors)."""
        raise NotImplementedError(f"{type(self).__name__} does not use an encoder.")

    def initialize_from_data(self, x_in: torch.Tensor) -> None:
        """Data-dependent initialisation from encoder inputs of cells (``needs_data_init``)."""
        raise NotImplementedError(f"{type(self).__name__} has no data-dependent initialisation.")


def register_prior(name: str, description: str) -> Callable[[type[Prior]], type[Prior]]:
    """Register a :class:`Prior` subclass under ``name`` (the models' ``prior=`` value)."""

    def add(cls: type[Prior]) -> type[Prior]:
        if not (isinstance(cls, type) and issubclass(cls, Prior)):
            raise TypeError(f"{cls!r} is not a subclass of genvi.nn.Prior.")
        return PRIORS.register(name, description)(cls)

    return add


def prior_options(name: str) -> list[str]:
    """The ``prior_kwargs`` a registered prior accepts."""
    params = inspect.signature(PRIORS[name].__init__).parameters
    return [p for p in list(params)[1:] if p not in MODEL_ARGUMENTS]


def build_prior(
    name: str,
    n_latent: int,
    n_cond: int,
    n_input: int,
    prior_kwargs: dict[str, Any] | None = None,
) -> Prior:
    """Instantiate the registered prior ``name``; unknown ``prior_kwargs`` raise.

    Parameters
    ----------
    name
        A key of :data:`PRIORS`.
    n_latent, n_cond, n_input
        Latent size, condition-embedding size and number of genes (passed to the priors
        whose constructor takes them).
    prior_kwargs
        The prior's own options.
    """
    cls = PRIORS[name]
    kwargs = dict(prior_kwargs or {})
    allowed = prior_options(name)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown prior_kwargs {unknown} for prior {name!r}; it accepts {allowed or 'none'}."
        )
    params = inspect.signature(cls.__init__).parameters
    given = {"n_latent": n_latent, "n_cond": n_cond, "n_input": n_input}
    return cls(**{k: v for k, v in given.items() if k in params}, **kwargs)
