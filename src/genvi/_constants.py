"""Registry keys used by genvi models (scvi-tools ``REGISTRY_KEYS`` style)."""

from typing import NamedTuple


class _GenviRegistryKeys(NamedTuple):
    COND_CAT_KEY: str = "genvi_condition_categorical"
    COND_CONT_KEY: str = "genvi_condition_continuous"


GENVI_REGISTRY_KEYS = _GenviRegistryKeys()
