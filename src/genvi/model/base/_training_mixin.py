"""The one ``train()`` of the count VAEs: scvi-tools' trainer with a KL warm-up that finishes."""

from __future__ import annotations

import math

from scvi.model._utils import get_max_epochs_heuristic
from scvi.model.base import UnsupervisedTrainingMixin

from genvi.model.base._training import default_kl_warmup
from genvi.model.base._weight_average import (
    add_ema_callback,
    check_ema_decay,
    default_ema_decay_for,
)


class KLWarmupTrainingMixin(UnsupervisedTrainingMixin):
    """``train()`` with a KL warm-up of a quarter of the epochs by default."""

    #: Default learning-rate multiplier of the dispersion parameters (see
    #: :class:`~genvi.model.base.GenviTrainingPlan`); a model raises it where it was measured
    #: to help (PriorVI), the others keep scvi-tools' single learning rate.
    _dispersion_lr_factor: float = 1.0
    #: Default decay of the weights' exponential moving average (:class:`WeightEMA`); None
    #: trains without one, as scvi-tools does. A model sets it where it was measured to help.
    _ema_decay: float | None = None
    #: ``ema_decay="default"`` averages only runs of at least this many optimizer steps: while
    #: the model still improves quickly the average lags behind it (PriorVI, pbmc3k, issue
    #: #20: median energy 1.17 -> 1.91 after 300 steps, 0.26 -> 0.29 after 750; gains from
    #: ~4,500 steps on).
    _ema_min_steps: int = 0

    def train(
        self,
        max_epochs: int | None = None,
        n_epochs_kl_warmup: int | None = None,
        batch_size: int = 128,
        plan_kwargs: dict | None = None,
        ema_decay: float | None | str = "default",
        **kwargs,
    ):
        """Train with scvi-tools' Lightning trainer.

        Parameters
        ----------
        max_epochs
            Epochs; scvi-tools' heuristic from the number of cells by default.
        n_epochs_kl_warmup
            Epochs over which the KL weight rises from 0 to 1 (a quarter of ``max_epochs`` by
            default; scvi-tools' default of 400 would never finish warming up on large data).
        batch_size
            Cells per minibatch. Under DDP (``devices=N``) this is per process, as in
            scvi-tools: each optimizer step averages the gradients of N x ``batch_size``
            cells, and an epoch has N times fewer steps than on one process.
        plan_kwargs
            Passed to :class:`~genvi.model.base.GenviTrainingPlan` and on to
            :class:`scvi.train.TrainingPlan` (``lr``, ``weight_decay``...).
            ``dispersion_lr_factor`` multiplies the learning rate of the per-gene dispersion
            (default: the model's, e.g. 10 for PriorVI; 1 = scvi-tools' behaviour).
        ema_decay
            Keep an exponential moving average of the weights, updated after every optimizer
            step with this decay (about the last ``1 / (1 - ema_decay)`` steps), and end
            training with the average as the model's weights (:class:`WeightEMA`, Lightning's
            ``WeightAveraging``; parameters and floating-point buffers such as BatchNorm's
            statistics, while integer buffers keep their current values); validation during
            training uses the average too. ``None``:
            the last step's weights, as in scvi-tools. ``"default"``: the model's own
            default (``None`` unless the model's documentation says otherwise; a model may
            average only runs long enough for it to help, see :meth:`default_ema_decay`).
        **kwargs
            Passed to :meth:`scvi.model.base.UnsupervisedTrainingMixin.train` and Lightning's
            ``Trainer`` (``accelerator``, ``devices``, ``strategy``, ``early_stopping``...).
        """
        if max_epochs is None:
            max_epochs = get_max_epochs_heuristic(self.adata.n_obs)
        check_ema_decay(ema_decay)
        if ema_decay == "default":
            ema_decay = self.default_ema_decay(
                max_epochs, batch_size, kwargs.get("train_size"), kwargs.get("datamodule")
            )
        self._train_ema_decay = ema_decay  # what this training used (benchmarks record it)
        add_ema_callback(kwargs, ema_decay)
        plan_kwargs = dict(plan_kwargs or {})
        plan_kwargs.setdefault("dispersion_lr_factor", self._dispersion_lr_factor)
        if "n_steps_kl_warmup" not in plan_kwargs:
            plan_kwargs.setdefault(
                "n_epochs_kl_warmup",
                default_kl_warmup(max_epochs) if n_epochs_kl_warmup is None else n_epochs_kl_warmup,
            )
        return super().train(
            max_epochs=max_epochs, batch_size=batch_size, plan_kwargs=plan_kwargs, **kwargs
        )

    def default_ema_decay(
        self,
        max_epochs: int,
        batch_size: int = 128,
        train_size: float | None = None,
        datamodule=None,
    ) -> float | None:
        """The decay ``train(ema_decay="default")`` uses for a run of ``max_epochs``.

        The model's default decay if the run takes at least the model's minimum number of
        optimizer steps (``max_epochs`` times the minibatches of the training split,
        ``train_size`` of the cells, scvi-tools' 0.9 by default), else ``None``. A run on a
        user's ``datamodule`` counts as long enough.
        """
        steps = None
        if datamodule is None:
            n_train = self.adata.n_obs * (0.9 if train_size is None else float(train_size))
            steps = max_epochs * max(1, math.ceil(n_train / batch_size))
        return default_ema_decay_for(self._ema_decay, self._ema_min_steps, steps)
