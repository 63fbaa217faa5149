"""Named registries of interchangeable parts (priors, diffusion samplers, ODE solvers).

A registry maps a user-facing option name (``PriorVI(prior="flow")``, ``generate(sampler=
"ddim")``) to the object that implements it and a one-line description. Model options,
error messages and docstrings all read the same registry, so adding an entry is one decorator
and nothing else needs editing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered part."""

    name: str
    obj: T
    description: str


class Registry(Mapping[str, T]):
    """An ordered ``name -> object`` mapping with descriptions and clear errors.

    Parameters
    ----------
    kind
        What the entries are (``"prior"``, ``"sampler"``...); used in messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"A {self.kind} named {name!r} is already registered.")
            self._entries[name] = Entry(name, obj, description)
            return obj

        return add

    def __getitem__(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        """The entry of ``name``; a ``ValueError`` listing the choices if unknown."""
        if name not in self._entries:
            raise ValueError(f"Unknown {self.kind} {name!r}; choose one of {self.names}.")
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._entries)

    def describe(self, indent: int = 8) -> str:
        """An RST bullet list ``- ``name``: description`` for docstrings."""
        pad = " " * indent
        return "\n".join(f"{pad}- ``{e.name}``: {e.description}" for e in self._entries.values())


def document_options(**registries: Registry) -> Callable[[T], T]:
    """Fill ``{<name>_options}`` placeholders of a docstring from registries.

    ``@document_options(prior=PRIORS)`` replaces ``{prior_options}`` in the decorated object's
    docstring with the registry's bullet list, so the docs always list what is registered.
    """

    def fill(obj: T) -> T:
        doc = obj.__doc__ or ""
        for key, registry in registries.items():
            pattern = re.compile(r"^([ \t]*)\{" + key + r"_options\}", flags=re.MULTILINE)
            doc = pattern.sub(lambda m, r=registry: r.describe(indent=len(m.group(1))), doc)
        obj.__doc__ = doc
        return obj

    return fill
