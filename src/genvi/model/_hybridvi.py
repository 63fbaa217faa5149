"""HybridVI: any predictor of mean expression, wrapped with a learned count-level distribution."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data.fields import CategoricalJointObsField
from scvi.utils import setup_anndata_dsp
from torch.distributions import Distribution

from genvi._registry import document_options
from genvi.model._additive_mean import AdditiveMeanModel
from genvi.model._mean_predictor import MeanPredictorAdapter, predictor_name
from genvi.model._mean_table import MeanTable
from genvi.model.base import CountModelBase, as_key_list, setup_condition_fields
from genvi.model.base._conditions import Conditions
from genvi.model.base._io import ADATA_FILENAME, MODEL_FILENAME, model_from_payload, read_model_file
from genvi.module import HybridVAE
from genvi.nn import PRIORS, ConditionInputs

logger = logging.getLogger(__name__)

#: genvi's own predictors: their parameters are arrays, saved inside the model file.
SAFE_PREDICTORS: dict[str, type] = {"AdditiveMeanModel": AdditiveMeanModel, "MeanTable": MeanTable}
# training conditions whose predicted means are kept to compare a predictor given at load
_N_REFERENCE = 256
# expression-weighted mean |log ratio| above which another predictor is reported as different
_SWAP_TOLERANCE = 0.05
# posterior draws averaged by a transported counterfactual's expected counts
_N_MEAN_SAMPLES = 64


@document_options(prior=PRIORS)
class HybridVI(CountModelBase):
    """Any predictor of mean expression, wrapped with a learned count-level residual distribution.

    A supervised *mean predictor* (a foundation model, a linear model, CPA's or scGen's point
    predictions, a table, anything) gives the expected expression of each condition; HybridVI
    learns the distribution of cells around it, so the predictor's accuracy is kept and
    samples, predictive intervals, likelihoods, outlier scores and counterfactual cells come on
    top. The predictor can be improved or swapped (:meth:`set_mean_predictor`) without
    retraining the residual model.

    The model (:class:`~genvi.module.HybridVAE`): counts are NB (or ZINB / Poisson) with mean
    ``library * rho(c) * exp(W z - log m(c))`` (times a centred batch offset), where
    ``rho(c)`` is the predictor's expression of the cell's conditions rescaled to proportions,
    ``z`` a latent cell state with a learned conditional prior p(z | c), ``W`` learned gene
    loadings and ``m_g(c) = E_{z ~ p(z | c)}[exp(w_g . z)]`` the exact centring, so the
    expected counts of a condition are *exactly* ``library * rho(c)``: the residual shapes
    cell-to-cell variation, gene-gene correlation (through the shared ``z``) and
    overdispersion (``theta``), never the mean. In sampled cells the per-gene mean of
    normalised expression matches the predictor up to sampling noise (tested on simulated
    data, ``tests/test_hybridvi.py``: 3,000 cells of a condition, seen or an unseen
    combination, are within 4% of it on average over genes above 5 per 1e4, measured 1-2%,
    and their log-scale Pearson r with it is above 0.999).

    A mean predictor is ``"auto"`` (:class:`~genvi.model.AdditiveMeanModel` fitted on the
    training cells: a Poisson log-linear model of condition main effects, continuous slopes
    and ridge-shrunk interactions of observed pairs of values, on pseudo-bulk counts; it
    predicts unseen combinations additively on the log scale), any object with
    ``predict(obs) -> array (n_rows, n_genes)`` (scikit-learn convention) or a callable
    ``f(obs)``: ``obs`` is a DataFrame with one row per condition and a column per condition
    key, the output the expected expression per 1e4 counts in the model's gene order (see
    :mod:`genvi.model._mean_predictor`). Its output is checked (shape, genes, finite,
    non-negative) on every training condition when the model is built, and on every
    condition before generating or transforming cells.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (raw counts).
    mean_predictor
        ``"auto"``, a predictor object or a callable (see above).
    n_latent
        Dimension of the latent cell state (rank of the log-scale residual).
    n_hidden, n_layers, dropout_rate
        Encoder sizes.
    prior
        A registered prior p(z | c) (:data:`genvi.nn.PRIORS`); the centring is exact for
        ``gaussian`` (default), ``normal``, ``mog`` and ``vamp``, a Monte Carlo estimate with
        ``n_centering_samples`` draws per condition for ``flow``:

        {prior_options}
    gene_likelihood
        ``"nb"``, ``"zinb"`` or ``"poisson"``.
    dispersion
        ``"gene-condition"`` (default: a per-gene inverse dispersion shifted additively by each
        condition key, so an unseen combination composes them), ``"gene"`` or
        ``"gene-batch"``.
    n_embed
        Embedding size per condition key.
    prior_kwargs
        Extra arguments of the prior (see :func:`genvi.nn.prior_options`).
    n_centering_samples
        Monte Carlo draws per condition for priors without a closed-form centring.

    Examples
    --------
    >>> genvi.model.HybridVI.setup_anndata(adata, condition_keys=["cell_type", "condition"])
    >>> model = genvi.model.HybridVI(adata, mean_predictor=my_model)  # my_model.predict(obs)
    >>> model.train(max_epochs=200)
    >>> model.predict_mean({"cell_type": "B cells", "condition": "stimulated"})
    >>> cells = model.generate({"cell_type": "B cells", "condition": "stimulated"}, n_cells=500)
    """

    _module_cls = HybridVAE

    def __init__(
        self,
        adata: AnnData,
        mean_predictor: Any = "auto",
        n_latent: int = 10,
        n_hidden: int = 128,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        prior: str = "gaussian",
        gene_likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        dispersion: Literal["gene", "gene-batch", "gene-condition"] = "gene-condition",
        n_embed: int = 16,
        prior_kwargs: dict | None = None,
        n_centering_samples: int = 256,
    ):
        super().__init__(adata)
        if gene_likelihood == "normal":
            raise ValueError(
                "HybridVI models counts around a predicted mean: use gene_likelihood 'nb', "
                "'zinb' or 'poisson' on raw counts (PriorVI supports 'normal' for log data)."
            )
        self._check_data(gene_likelihood)
        auto = isinstance(mean_predictor, str)
        if auto and mean_predictor != "auto":
            raise ValueError(
                f"mean_predictor={mean_predictor!r}: use 'auto' (genvi's AdditiveMeanModel fitted "
                "on the training cells), an object with predict(obs) or a callable."
            )
        schema = self._schema
        cont_mean, cont_std = self._continuous_stats()
        self.module = self._module_cls(
            **self._data_sizes(),
            n_continuous=len(schema.continuous),
            continuous_mean=cont_mean,
            continuous_std=cont_std,
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            n_embed=n_embed,
            prior=prior,
            prior_kwargs=prior_kwargs,
            gene_likelihood=gene_likelihood,
            dispersion=dispersion,
            batch_weights=self._batch_frequencies(),
            n_centering_samples=n_centering_samples,
        )
        self._finish_init(
            f"HybridVI: prior={prior}, gene_likelihood={gene_likelihood}, n_latent={n_latent}, "
            f"conditions={schema.keys or 'none'}"
        )
        cont = self._registered(self._cont_registry_key)
        self.train_cont_ = (
            np.zeros((adata.n_obs, 0), np.float32)
            if cont is None
            else cont.astype(np.float32).reshape(adata.n_obs, -1)
        )
        predictor = self._fit_auto_predictor() if auto else mean_predictor
        self._use_predictor(predictor, "auto" if auto else None)
        self.predictor_reference_ = self._reference_means()
        self._initialize_dispersion()
        self._model_summary_string += f", mean predictor={self._predictor.name}"
        mean_predictor = "auto" if auto else f"given: {predictor_name(predictor)}"
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ the mean predictor
    def _batch_frequencies(self) -> list[float]:
        batch = np.asarray(self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
        counts = np.bincount(batch.astype(int), minlength=self.summary_stats.n_batch)
        return (counts / counts.sum()).tolist()

    def _training_obs(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Condition codes and continuous values of the training cells."""
        cat = self._registered(self._cat_registry_key)
        cat = None if cat is None else cat.astype(np.int64)
        return cat, (self.train_cont_ if self.train_cont_.shape[1] else None)

    def _fit_auto_predictor(self) -> AdditiveMeanModel:
        """The ``"auto"`` predictor: an AdditiveMeanModel fitted on the training cells."""
        schema = self._schema
        cat, cont = self._training_obs()
        adapter = MeanPredictorAdapter(lambda obs: None, schema, self.var_names_)
        obs = adapter.frame(cat, cont)
        if not len(obs.columns):
            obs = pd.DataFrame(index=pd.RangeIndex(self.adata.n_obs))
        counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        return AdditiveMeanModel().fit(
            counts,
            obs,
            categorical_keys=list(schema.categorical),
            continuous_keys=list(schema.continuous),
            var_names=self.var_names_,
        )

    def _use_predictor(self, predictor: Any, kind: str | None) -> None:
        """Check ``predictor`` on every training condition and hand it to the module."""
        adapter = MeanPredictorAdapter(predictor, self._schema, self.var_names_)
        cat, cont = self._training_obs()
        parts = [a.astype(np.float64) for a in (cat, cont) if a is not None and a.shape[1]]
        if parts:  # every distinct training condition, in chunks
            _, first = np.unique(np.concatenate(parts, axis=1), axis=0, return_index=True)
            for start in range(0, len(first), 4096):
                rows = np.sort(first[start : start + 4096])
                adapter.unique_log_proportions(
                    None if cat is None else cat[rows], None if cont is None else cont[rows]
                )
        else:
            adapter.unique_log_proportions(None, None)
        self._predictor = adapter
        self.module.set_mean_function(self._module_log_means)
        name = type(predictor).__name__
        if kind is None:
            kind = "genvi" if type(predictor) in SAFE_PREDICTORS.values() else "user"
        state: dict[str, Any] = {"kind": kind, "class": name}
        if kind != "user":
            state["state"] = predictor.to_state()
        self.predictor_state_ = state

    def _initialize_dispersion(self, max_cells: int = 5000) -> None:
        """Start theta at its moment estimate around the predictor's means (NB likelihoods).

        Per gene, ``1 / theta = sum((x - mu)^2 - mu) / sum(mu^2)`` over (up to 5,000) training
        cells with ``mu = library * rho(c)``: the overdispersion left by the mean alone, which
        the latent residual then partly explains (theta rises from there). Training from this
        start reached the simulated truth's per-gene variance in a third of the epochs of a
        random start. Overwritten by the saved weights on load.
        """
        module = self.module
        if module.gene_likelihood == "poisson" or not hasattr(module, "px_r"):
            return
        X = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        rng = np.random.default_rng(0)
        n = X.shape[0]
        idx = np.sort(rng.choice(n, size=min(max_cells, n), replace=False))
        x = X[idx]
        x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
        cat, cont = self._training_obs()
        logp = self._predictor.log_proportions(
            None if cat is None else cat[idx], None if cont is None else cont[idx], n=len(idx)
        )
        mu = x.sum(1, keepdims=True) * np.exp(logp.astype(np.float64))
        phi = ((x - mu) ** 2 - mu).sum(0) / np.maximum((mu**2).sum(0), 1e-12)
        log_theta = -np.log(np.clip(phi, 1e-3, 1e3))
        with torch.no_grad():
            value = torch.as_tensor(log_theta, dtype=module.px_r.dtype, device=module.px_r.device)
            module.px_r.copy_(
                value.reshape(-1, 1).expand_as(module.px_r) if module.px_r.dim() == 2 else value
            )

    def _reference_means(self) -> dict[str, np.ndarray]:
        """The predictor's log proportions on (up to 256) training conditions."""
        cat, cont = self._training_obs()
        parts = [a.astype(np.float64) for a in (cat, cont) if a is not None and a.shape[1]]
        if parts:
            _, rows = np.unique(np.concatenate(parts, axis=1), axis=0, return_index=True)
            rows = np.sort(rows)[:_N_REFERENCE]
        else:
            rows = np.zeros(1, dtype=np.int64)
        cat_r = np.zeros((len(rows), 0), np.int64) if cat is None else cat[rows]
        cont_r = self.train_cont_[rows]
        logp = self._predictor.log_proportions(cat_r, cont_r, n=len(rows))
        return {"cat": cat_r, "cont": cont_r, "log_proportions": logp.astype(np.float32)}

    def _difference_from_reference(self) -> float:
        """Expression-weighted mean |log ratio| of the predictor vs the one trained with."""
        ref = self.predictor_reference_
        logp = self._predictor.log_proportions(ref["cat"], ref["cont"], n=len(ref["cat"]))
        old = np.asarray(ref["log_proportions"], dtype=np.float64)
        weights = np.exp(old)
        return float(np.max((weights * np.abs(logp - old)).sum(1) / weights.sum(1)))

    @property
    def mean_predictor(self) -> Any:
        """The mean predictor in use."""
        return self._predictor.predictor

    def set_mean_predictor(self, predictor: Any) -> None:
        """Use another mean predictor, keeping the trained residual model.

        The new predictor is checked on every training condition (shape, genes, finite,
        non-negative). The residual model was trained around the previous predictor's means on
        the training conditions; where the new one differs there, a warning says by how much
        (its predictions for conditions never trained on are what a swap is usually for).

        Parameters
        ----------
        predictor
            ``"auto"`` is not accepted here; give an object with ``predict(obs)`` or a
            callable (e.g. a :class:`~genvi.model.MeanTable` or
            :class:`~genvi.model.AdditiveMeanModel`).
        """
        if isinstance(predictor, str):
            raise ValueError(
                "set_mean_predictor takes a predictor object or callable; to refit genvi's "
                "own, pass genvi.model.AdditiveMeanModel().fit(counts, obs, ...)."
            )
        self._use_predictor(predictor, None)
        self._warn_if_different("set_mean_predictor")

    def _warn_if_different(self, where: str) -> None:
        diff = self._difference_from_reference()
        if diff > _SWAP_TOLERANCE:
            warnings.warn(
                f"{where}: the mean predictor ({self._predictor.name}) differs from the one the "
                f"residual model was trained with on the training conditions (expression-"
                f"weighted mean |log ratio| up to {diff:.3f}). The model's means now follow the "
                "new predictor; if it disagrees with the training cells, retrain the model with "
                "it to refit the residual distribution.",
                UserWarning,
                stacklevel=3,
            )

    def _module_log_means(
        self, cat: torch.Tensor | None, cont: torch.Tensor | None
    ) -> torch.Tensor:
        """The module's mean function: ``log rho`` of a batch's conditions, on its device."""
        device = (
            next(t.device for t in (cat, cont) if t is not None)
            if (cat is not None or cont is not None)
            else self.module.device
        )
        n = next((t.shape[0] for t in (cat, cont) if t is not None), 1)
        logp = self._predictor.log_proportions(
            None if cat is None else cat.detach().cpu().numpy(),
            None if cont is None else cont.detach().cpu().numpy(),
            n=n,
        )
        return torch.as_tensor(logp, device=device)

    def _log_means(self, cond: ConditionInputs) -> torch.Tensor:
        return self._module_log_means(cond.cat, cond.cont)

    # ------------------------------------------------------------------ point prediction
    def predict_mean(self, conditions: Conditions, target_sum: float = 1e4) -> pd.DataFrame:
        """The mean predictor's expected expression of each condition (no sampling).

        Rescaled to ``target_sum`` counts over the model's genes (what the model's sampled
        cells average to in normalised expression).

        Parameters
        ----------
        conditions
            A dict, list of dicts or DataFrame giving a value for every condition key.
        target_sum
            Total of a row.

        Returns
        -------
        DataFrame: one row per condition (named like ``"B cells|stimulated"``), one column
        per gene.
        """
        schema = self._schema
        specs = schema.parse(conditions)
        for spec in specs:
            absent = [k for k in schema.keys if k not in spec]
            if absent:
                raise ValueError(
                    f"predict_mean needs a value for every condition key; {absent} missing in "
                    f"{spec}. (generate() draws unspecified keys from matching training cells.)"
                )
        cat, cont, _ = schema.encode(specs)
        obs = self._predictor.frame(cat if cat.shape[1] else None, cont if cont.shape[1] else None)
        if not len(obs.columns):
            obs = pd.DataFrame(index=pd.RangeIndex(len(specs)))
        props = self._predictor.proportions(obs) * target_sum
        return pd.DataFrame(
            props,
            index=pd.Index([schema.label(s) for s in specs], name="condition"),
            columns=pd.Index(self.var_names_, name="gene"),
        )

    # ------------------------------------------------------------------ generation hooks
    def _check_temperature(self, temperature: float) -> float:
        """Only ``temperature=1``: the residual is centred under p(z | c) itself.

        At another temperature E[exp(W z)] is no longer ``m(c)``, so the generated means would
        leave the predictor's by a per-gene factor: the one thing HybridVI promises.
        """
        temperature = super()._check_temperature(temperature)
        if temperature != 1.0:
            raise ValueError(
                f"HybridVI.generate takes only temperature=1 (got {temperature!r}): its residual "
                "is centred under the prior itself, so a scaled noise would move the generated "
                "means away from the predictor's. Use predict_mean for typical expression."
            )
        return temperature

    def _check_conditional_dropout(self, keep: np.ndarray) -> None:
        """Unspecified keys are drawn from the reference cells (no null tokens): no warning."""

    def _prepare_cells(
        self,
        specs: list[dict],
        n_cells: Sequence[int],
        library_size: float | np.ndarray | None,
        batch: str | None,
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        """Per-cell conditions: unspecified keys take the value of the cell's reference cell.

        The predictor needs a full condition, so a key left out is drawn (with the library
        size and batch) from the training cells matching the specified keys: the generated
        cells follow the training distribution of that key. The predictor's mean of every
        generated condition is computed (and checked) here, before any sampling.
        """
        prep = super()._prepare_cells(specs, n_cells, library_size, batch, rng)
        rows, ref = prep["rows"], prep["ref"]
        n_cat = len(self._schema.categorical)
        keep = prep["keep"][rows]
        cat = prep["cat"][rows]
        cont = prep["cont"][rows]
        if n_cat:
            cat = np.where(keep[:, :n_cat], cat, self.train_codes_[ref].astype(np.int64))
        if cont.shape[1]:
            cont = np.where(keep[:, n_cat:], cont, self.train_cont_[ref]).astype(np.float32)
        self._predictor.unique_log_proportions(cat, cont)
        prep.update(cat=cat, cont=cont, keep=np.ones_like(keep), rows=np.arange(len(rows)))
        return prep

    def _decode_reference(
        self,
        z: torch.Tensor,
        cond: ConditionInputs,
        log_library: torch.Tensor,
        batch: torch.Tensor,
        ref: np.ndarray,
    ) -> Distribution:
        return self.module.decode(
            z, self.module.embed(cond), log_library, batch, self._log_means(cond)
        )

    # ------------------------------------------------------------------ counterfactuals
    def predict_counterfactual(
        self,
        adata: AnnData | None = None,
        new_conditions: dict | None = None,
        indices: Sequence[int] | None = None,
        return_mean: bool = False,
        transport: bool = False,
        seed: int | None = None,
        batch_size: int | None = None,
    ) -> AnnData:
        """Each cell as it would look under other conditions: its residual, the new mean.

        The cell is encoded with its own conditions; its latent state is kept, and its
        counts are drawn around the predictor's mean of the new conditions with its own
        library size and batch: ``library * rho(c_new) * exp(W z - log m(c_own))``. The
        cell's deviation from its own condition's mean is carried over to the new one, so
        the counterfactual cells average to the predictor's new mean (to the extent that the
        cells' latents follow their prior) and vary like the cells given.

        Parameters
        ----------
        adata
            Cells to transform (the training data by default).
        new_conditions
            Keys to change and their new values, e.g. ``{"condition": "stimulated"}``.
        indices
            Subset of cells.
        return_mean
            Expected counts (averaged over the cell's posterior q(z | x, c)) instead of
            sampled counts (one latent drawn from q(z | x, c) per cell).
        transport
            Move z with the prior's map to the new condition (``prior.transport``: the same
            standardised position under p(z | c_new)) and centre it there, so the cells take
            the new condition's variation; ``False`` (default) keeps z and its centring.
        seed
            Random seed.
        batch_size
            Cells per forward pass.

        Returns
        -------
        AnnData with the counterfactual in ``X`` and ``obs`` copied from the input with the
        changed conditions.
        """
        if transport and not self.module.prior.has_transport:
            raise ValueError(
                f"The {self.module.prior_name!r} prior has no transport; use transport=False."
            )
        return self._counterfactual(
            adata,
            new_conditions,
            indices,
            return_mean,
            seed,
            batch_size,
            metadata={"transport": transport, "mean_predictor": self._predictor.name},
            transport=transport,
            expected=return_mean,
        )

    def _counterfactual_distributions(
        self,
        adata: AnnData,
        indices: Sequence[int] | None,
        new: dict,
        batch_size: int | None,
        transport: bool = False,
        expected: bool = False,
    ) -> Iterator[Any]:
        """The shared driver's batches, after checking the predictor on every target condition.

        The predictor's mean of each cell's new conditions is computed (and checked) before
        any cell is encoded, so a predictor that does not know a target fails early.
        """
        cat = self._registered(self._cat_registry_key, adata)
        cont = self._registered(self._cont_registry_key, adata)
        if indices is not None:
            idx = np.asarray(indices)
            cat = None if cat is None else cat[idx]
            cont = None if cont is None else cont[idx]
        cat, cont = self._schema.substitute(
            None if cat is None else cat.astype(np.int64), cont, new
        )
        self._predictor.unique_log_proportions(cat, cont)
        return super()._counterfactual_distributions(
            adata, indices, new, batch_size, transport=transport, expected=expected
        )

    def _counterfactual_decode(
        self,
        inference: dict,
        target: ConditionInputs,
        batch_index: torch.Tensor,
        source: ConditionInputs | None = None,
        transport: bool = False,
        expected: bool = False,
    ) -> Any:
        """p(x) (or expected counts) of a minibatch around the predictor's new mean.

        ``source`` (the cells' own conditions) is unused: the encoder's ``inference["c"]``
        already holds them.
        """
        module = self.module
        c_own, c_new = inference["c"], module.embed(target)
        log_rho = self._log_means(target)
        qz, library = inference["qz"], inference["library"]
        if not transport:
            if expected:  # E_q[exp(W z)] = exp(W loc + W^2 scale^2 / 2)
                px = module.decode(
                    qz.loc, c_new, library, batch_index, log_rho, c_center=c_own, z_scale=qz.scale
                )
                return _ExpectedCounts(px.mean)
            return module.decode(qz.sample(), c_new, library, batch_index, log_rho, c_center=c_own)
        if not expected:
            z = module.prior.transport(qz.sample(), c_own, c_new)
            return module.decode(z, c_new, library, batch_index, log_rho)
        z = qz.sample((_N_MEAN_SAMPLES,))  # (S, n, d): the expectation by Monte Carlo
        rep = lambda t: t.repeat(_N_MEAN_SAMPLES, 1)  # noqa: E731
        z = module.prior.transport(z.reshape(-1, z.shape[-1]), rep(c_own), rep(c_new))
        z = z.reshape(_N_MEAN_SAMPLES, -1, z.shape[-1])
        px = module.decode(z, c_new, library, batch_index, log_rho)
        return _ExpectedCounts(px.mean.mean(0))

    # ------------------------------------------------------------------ save / load
    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        mean_predictor: Any = None,
    ) -> HybridVI:
        """Load a model saved with :meth:`save`.

        genvi's own predictors (``"auto"``, :class:`~genvi.model.AdditiveMeanModel`,
        :class:`~genvi.model.MeanTable`) are stored as arrays in the model file and rebuilt.
        Any other predictor is never pickled: pass it again as ``mean_predictor``. A given
        predictor is refused if its output does not have the model's genes (shape, declared
        ``var_names`` or DataFrame columns); if it predicts other means on the training
        conditions than the one the model was trained with, a warning says so.

        Parameters
        ----------
        dir_path
            Folder given to :meth:`save`.
        adata
            AnnData with the model's genes (in order) and setup columns; the AnnData saved
            with ``save_anndata=True`` by default.
        accelerator, device
            Where to put the model.
        prefix
            File name prefix used when saving.
        mean_predictor
            The predictor to use (required when the model was trained around a user's
            predictor; otherwise the saved one is rebuilt).
        """
        dir_path = os.fspath(dir_path)
        path = os.path.join(dir_path, f"{prefix or ''}{MODEL_FILENAME}")
        payload = read_model_file(path)
        state = payload["decoded"]["attributes"].get("predictor_state_", {})
        kind = state.get("kind")
        rebuilt = mean_predictor is None
        if rebuilt:
            if kind == "user" or state.get("class") not in SAFE_PREDICTORS:
                raise ValueError(
                    f"This HybridVI was trained around a user mean predictor ({state.get('class')})"
                    ", which genvi does not store (a pickled object could run code when loaded). "
                    "Pass it again: HybridVI.load(dir_path, adata, mean_predictor=predictor)."
                )
            mean_predictor = SAFE_PREDICTORS[state["class"]].from_state(state["state"])
        if adata is None:
            adata_path = os.path.join(dir_path, f"{prefix or ''}{ADATA_FILENAME}")
            if not os.path.exists(adata_path):
                raise ValueError(
                    "HybridVI.load needs adata= (no AnnData was saved with the model; save with "
                    "save_anndata=True to store one)."
                )
            import anndata

            adata = anndata.read_h5ad(adata_path)
        model = model_from_payload(
            cls,
            payload,
            adata,
            accelerator,
            device,
            init_extra={"mean_predictor": mean_predictor},
            path=path,
        )
        model._use_predictor(mean_predictor, kind if rebuilt else None)
        if not rebuilt:
            model._warn_if_different("HybridVI.load")
        return model

    # ------------------------------------------------------------------ setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        condition_keys: Sequence[str] | None = None,
        continuous_condition_keys: Sequence[str] | None = None,
        batch_key: str | None = None,
        **kwargs,
    ):
        """Register an AnnData for HybridVI.

        Only registration metadata is added to ``adata.uns``; the data are not changed.

        Parameters
        ----------
        adata
            Cells x genes, raw counts.
        layer
            Layer holding the counts (``X`` if ``None``).
        condition_keys
            Categorical obs columns the mean predictor and the prior read (cell type,
            treatment, donor...).
        continuous_condition_keys
            Numeric obs columns the mean predictor and the prior read (dose, time, age...).
        batch_key
            Nuisance batch column: a per-gene log offset, centred over the training batches.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.
        """
        condition_keys = as_key_list(condition_keys, "condition_keys")
        continuous_condition_keys = as_key_list(
            continuous_condition_keys, "continuous_condition_keys"
        )
        setup_condition_fields(
            cls,
            adata,
            cls._get_setup_method_args(**locals()),
            layer,
            CategoricalJointObsField(cls._cat_registry_key, condition_keys or None),
            condition_keys,
            continuous_condition_keys,
            batch_key,
            None,
            size_factor_field=False,
            **kwargs,
        )


class _ExpectedCounts:
    """Expected counts of counterfactual cells (the shared driver reads ``.mean``)."""

    def __init__(self, mean: torch.Tensor):
        self.mean = mean
