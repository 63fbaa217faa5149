"""Training plan and defaults shared by genvi models (including multi-process training)."""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from lightning.pytorch.strategies import DDPStrategy
from scvi.train import TrainingPlan

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


class GenviTrainingPlan(TrainingPlan):
    """scvi-tools' ``TrainingPlan`` with genvi's fixes for multi-process and faulty training.

    - Puts the module in train mode at every fit (Lightning 2.6 no longer does this and
      scvi-tools calls ``module.eval()`` after training and loading, so a second ``train()``
      call would otherwise run with dropout off).
    - Stops at the first NaN / infinite loss with :class:`NonFiniteLossError` naming the
      likely causes, instead of training on to a model of NaN weights.
    - Distributed data parallel (any Lightning ``DDPStrategy``: ``strategy="ddp"``,
      ``"ddp_spawn"``, ``"ddp_notebook"``..., or ``devices > 1`` with no strategy): see
      :func:`configure_distributed`.
    """

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        configure_distributed(self.trainer)

    def on_train_start(self) -> None:
        super().on_train_start()
        self.module.train()

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        check_finite_loss(self, loss)
        return loss


class LatentPriorTrainingPlan(GenviTrainingPlan):
    """The plan of the latent priors: their objective is logged under its own name.

    scvi-tools' plan logs ELBO terms (``elbo_train``, ``reconstruction_loss_train``...), which
    would mislabel a flow-matching or denoising loss; ``history`` has
    ``<module.objective>_train`` / ``_validation`` instead (besides ``train_loss`` and
    ``validation_loss``).
    """

    def compute_and_log_metrics(self, loss_output, metrics, mode: str) -> None:
        self.log(
            f"{self.module.objective}_{mode}",
            loss_output.loss,
            on_step=self.on_step,
            on_epoch=self.on_epoch,
            batch_size=loss_output.n_obs_minibatch,
            sync_dist=self.use_sync_dist,
        )


def check_finite_loss(plan, loss: torch.Tensor) -> None:
    """Raise :class:`NonFiniteLossError` (on every process) if ``loss`` is NaN or infinite."""
    bad = not bool(torch.isfinite(loss.detach()).all())
    trainer = plan.trainer
    if trainer is not None and trainer.world_size > 1:
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
    if not bad:
        return
    lr = None
    with contextlib.suppress(AttributeError, IndexError, KeyError, RuntimeError, TypeError):
        lr = plan.optimizers().param_groups[0]["lr"]
    raise NonFiniteLossError(
        f"Training stopped: the loss became {float(loss.detach()):.4g} at epoch "
        f"{plan.current_epoch}, step {plan.global_step}. Likely causes: (1) a learning rate "
        f"too high for these data (lr={lr}): retry with e.g. plan_kwargs={{'lr': 1e-4}} and/or "
        "train(..., gradient_clip_val=10); (2) continuous covariates on a large scale (e.g. "
        "raw counts or ages in days): standardise them (zero mean, unit variance) before "
        "setup_anndata; (3) data that are not raw counts (normalised, log-transformed or "
        "scaled values, or huge outliers) under a count likelihood: pass raw integer counts "
        "(layer='counts') or use gene_likelihood='normal'; (4) cells with extreme library "
        "sizes or size factors: filter them."
    )


def configure_distributed(trainer) -> None:
    """Make a Lightning DDP run of an scvi-tools data module correct; no-op on one process.

    Called at ``setup`` (before Lightning wraps the module in
    :class:`~torch.nn.parallel.DistributedDataParallel`) in every process:

    - ``find_unused_parameters=True`` unless set explicitly: genvi and scvi modules have
      parameters that some steps do not use (null condition tokens, priors...), and plain
      ``strategy="ddp"`` fails on them.
    - ``batch_size`` given to ``train`` is the **global** minibatch: each of the N processes
      loads ``ceil(batch_size / N)`` cells, and gradients are averaged across processes, so
      the optimisation (steps per epoch, learning rate, KL warm-up) matches a
      single-process run.
    - scvi-tools' data module shards the cells across processes even when DDP was chosen by
      Lightning (``devices > 1`` without a strategy), where scvi-tools would otherwise crash
      (its batch sampler wrapped a second time).
    """
    if trainer is None:
        return
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy):
        kwargs = strategy._ddp_kwargs  # read by DDPStrategy when it wraps the module
        if "find_unused_parameters" not in kwargs:
            kwargs["find_unused_parameters"] = True
    world = int(trainer.world_size)
    if world <= 1:
        return
    datamodule = trainer.datamodule
    if datamodule is None:
        return
    loader_kwargs = getattr(datamodule, "data_loader_kwargs", None)
    if isinstance(loader_kwargs, dict):  # scvi-tools DataSplitter
        if not hasattr(datamodule, "_genvi_global_batch_size"):
            datamodule._genvi_global_batch_size = loader_kwargs.get("batch_size") or 128
        global_batch = datamodule._genvi_global_batch_size
        loader_kwargs["batch_size"] = math.ceil(global_batch / world)
        loader_kwargs["distributed_sampler"] = True
    elif hasattr(datamodule, "batch_size"):  # genvi LatentDataModule (plain DataLoaders)
        if not hasattr(datamodule, "_genvi_global_batch_size"):
            datamodule._genvi_global_batch_size = datamodule.batch_size
        datamodule.batch_size = math.ceil(datamodule._genvi_global_batch_size / world)
    else:
        return
    logger.info(
        "DDP on %d processes: global batch %d, %d cells per process",
        world,
        datamodule._genvi_global_batch_size,
        math.ceil(datamodule._genvi_global_batch_size / world),
    )


def default_kl_warmup(max_epochs: int) -> int:
    """KL warm-up epochs: a quarter of training, so the KL weight reaches 1 at any data size."""
    return max(1, max_epochs // 4)
