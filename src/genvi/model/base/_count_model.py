"""The base class of genvi's count VAEs: every capability mixin, composed once."""

from __future__ import annotations

from scvi import REGISTRY_KEYS
from scvi.model.base import BaseModelClass, RNASeqMixin, VAEMixin

from genvi._constants import GENVI_REGISTRY_KEYS
from genvi._validation import check_counts
from genvi.model.base._conditioned import ConditionedModelMixin
from genvi.model.base._confidence import ConfidenceMixin
from genvi.model.base._counterfactual import CounterfactualMixin
from genvi.model.base._generation import GenerationMixin
from genvi.model.base._io import LoadMixin
from genvi.model.base._likelihood import LikelihoodMixin
from genvi.model.base._reference import TrainingReferenceMixin
from genvi.model.base._training import GenviTrainingPlan
from genvi.model.base._training_mixin import KLWarmupTrainingMixin


class CountModelBase(
    LoadMixin,
    GenerationMixin,
    ConfidenceMixin,
    LikelihoodMixin,
    CounterfactualMixin,
    TrainingReferenceMixin,
    ConditionedModelMixin,
    RNASeqMixin,
    VAEMixin,
    KLWarmupTrainingMixin,
    BaseModelClass,
):
    """Base of the count VAE models (PriorVI, DisentVI).

    Generation, intervals, likelihoods, counterfactuals, safe save/load and scvi-tools'
    RNA-seq methods, composed once. Subclasses set ``_module_cls``, define
    ``setup_anndata`` and ``_counterfactual_latent``, and build their module in ``__init__``
    between :meth:`_check_data` and :meth:`_finish_init`.
    """

    _training_plan_cls = GenviTrainingPlan
    _cat_registry_key = GENVI_REGISTRY_KEYS.COND_CAT_KEY
    _cont_registry_key = GENVI_REGISTRY_KEYS.COND_CONT_KEY

    def _check_data(self, gene_likelihood: str) -> None:
        """Count likelihoods need raw counts (checked in chunks, never densified)."""
        if gene_likelihood != "normal":
            check_counts(self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY))

    def _data_sizes(self) -> dict:
        """Module arguments read from the registered data."""
        return {
            "n_input": self.summary_stats.n_vars,
            "n_batch": self.summary_stats.n_batch,
            "n_cats_per_key": [len(c) for c in self._schema.categorical.values()],
            "use_size_factor_key": REGISTRY_KEYS.SIZE_FACTOR_KEY
            in self.adata_manager.data_registry,
        }

    def _finish_init(self, summary: str) -> None:
        """Data-dependent prior initialisation, training reference and summary string."""
        self._initialize_prior_from_data()
        self._store_training_reference()
        self._model_summary_string = summary
