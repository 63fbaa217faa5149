"""Helpers every model's ``setup_anndata`` uses: key lists, fields, registration."""

from __future__ import annotations

from collections.abc import Sequence

from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    BaseAnnDataField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)

from genvi._validation import check_anndata, check_finite, check_obs_keys, get_matrix


def as_key_list(keys: Sequence[str] | str | None, name: str) -> list[str]:
    """``keys`` as a list of obs column names (a single string is one key)."""
    if keys is None:
        return []
    if isinstance(keys, str):
        return [keys]
    keys = list(keys)
    if not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{name} must be a list of obs column names.")
    return keys


def setup_condition_fields(
    cls,
    adata: AnnData,
    setup_method_args: dict,
    layer: str | None,
    categorical: BaseAnnDataField,
    categorical_keys: Sequence[str],
    continuous_keys: Sequence[str],
    batch_key: str | None,
    size_factor_key: str | None = None,
    size_factor_field: bool = True,
    missing_labels: bool = False,
    **kwargs,
) -> None:
    """Validate and register counts, batch, conditions (and size factors) for ``cls``.

    Parameters
    ----------
    cls
        The model class.
    adata
        The AnnData; only registration metadata is added to it.
    setup_method_args
        ``cls._get_setup_method_args(**locals())`` of the calling ``setup_anndata``.
    layer, batch_key, size_factor_key
        As in ``setup_anndata``.
    categorical
        The field of the categorical conditions (registered under ``cls._cat_registry_key``).
    categorical_keys
        Its columns (checked here).
    continuous_keys
        Continuous condition columns (registered under ``cls._cont_registry_key``).
    size_factor_field
        Register the (optional) size-factor field; latent priors have none.
    missing_labels
        Categorical labels may be missing (DisentVI imputes them).
    **kwargs
        Passed to :meth:`scvi.data.AnnDataManager.register_fields`.
    """
    check_anndata(adata)
    check_obs_keys(
        adata, categorical_keys, continuous_keys, batch_key, size_factor_key, missing_labels
    )
    check_finite(get_matrix(adata, layer))
    fields = [
        LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
        CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        categorical,
        NumericalJointObsField(cls._cont_registry_key, list(continuous_keys) or None),
    ]
    if size_factor_field:
        fields.append(
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, required=False)
        )
    manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
    manager.register_fields(adata, **kwargs)
    cls.register_manager(manager)
