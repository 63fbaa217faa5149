"""Training plan and defaults shared by genvi models."""

from __future__ import annotations

from scvi.train import TrainingPlan


class GenviTrainingPlan(TrainingPlan):
    """scvi-tools' ``TrainingPlan`` that puts the module in train mode at every fit.

    Lightning 2.6 no longer does this and scvi-tools calls ``module.eval()`` after training
    and loading, so a second ``train()`` call would otherwise run with dropout off.
    """

    def on_train_start(self) -> None:
        super().on_train_start()
        self.module.train()


def default_kl_warmup(max_epochs: int) -> int:
    """KL warm-up epochs: a quarter of training, so the KL weight reaches 1 at any data size."""
    return max(1, max_epochs // 4)
