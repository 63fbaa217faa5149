"""Train genvi models with 2 CPU processes (gloo, DDP spawn) and save them on rank 0.

Run by ``tests/test_scale.py`` in a subprocess: ``python _ddp_train.py OUT_DIR``.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

import numpy as np
import scvi
import torch
from lightning.pytorch.callbacks import Callback

import genvi


class GatherWeights(Callback):
    """At the end of training, write a weight fingerprint of every process (on rank 0)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, trainer, pl_module) -> None:
        params = torch.cat([p.detach().reshape(-1) for p in pl_module.module.parameters()])
        stats = torch.stack([params.sum(), params.abs().sum(), params.square().sum()])
        gathered = trainer.strategy.all_gather(stats)
        if trainer.is_global_zero:
            with open(self.path, "w") as f:
                json.dump(
                    {
                        "world_size": trainer.world_size,
                        "num_training_batches": trainer.num_training_batches,
                        "find_unused_parameters": trainer.strategy._ddp_kwargs.get(
                            "find_unused_parameters"
                        ),
                        "stats": gathered.tolist(),
                    },
                    f,
                )


def main(out: str) -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    scvi.settings.seed = 0
    adata = genvi.data.simulate(n_cells=240, n_genes=30, n_cell_types=2, seed=3)
    genvi.model.PriorVI.setup_anndata(adata, condition_keys=["cell_type", "treatment"])
    model = genvi.model.PriorVI(adata, n_latent=4, n_hidden=16)
    strategy = sys.argv[2] if len(sys.argv) > 2 else "ddp_fork"
    ddp = {"accelerator": "cpu", "devices": 2, "strategy": strategy}
    model.train(
        max_epochs=2,
        batch_size=64,
        enable_progress_bar=False,
        callbacks=[GatherWeights(f"{out}/rank_weights.json")],
        log_every_n_steps=1,
        **ddp,
    )
    model.save(f"{out}/priorvi", overwrite=True)
    flow = genvi.model.LatentFlow.from_model(model, condition_keys=["cell_type"], n_hidden=16)
    flow.train(
        max_epochs=2,
        batch_size=64,
        enable_progress_bar=False,
        callbacks=[GatherWeights(f"{out}/flow_rank_weights.json")],
        **ddp,
    )
    flow.save(f"{out}/flow", overwrite=True)
    params = torch.cat([p.detach().reshape(-1) for p in model.module.parameters()])
    info = {
        "main_stats": [
            params.sum().item(),
            params.abs().sum().item(),
            params.square().sum().item(),
        ],
        "priorvi_is_trained": bool(model.is_trained_),
        "history_keys": sorted(model.history_ or {}),
        "weights_finite": bool(
            all(np.isfinite(p.detach().numpy()).all() for p in model.module.parameters())
        ),
    }
    with open(f"{out}/info.json", "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main(sys.argv[1])
