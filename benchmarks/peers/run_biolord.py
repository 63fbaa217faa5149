"""biolord 0.0.3 counterfactual runner (its own environment; see ``_peer_io.py``).

Settings: biolord's documented pipeline for categorical attributes on single-cell expression
(``docs/tutorials/biolord_pipeline.ipynb``: log-normalised expression, Gaussian likelihood,
``n_latent=32``, decoder 1024 x 4, attribute networks 512 x 2, 4-dimensional categorical
attribute embeddings, 500 epochs at batch size 512 with early stopping on a 10% validation
split, patience 20, checked every 10 epochs). Attributes: ``cell_type`` and ``condition``.
biolord learns one unknown-attribute code per training cell, so the held-out type's control
cells stay in the training part of the split. Prediction: ``compute_prediction_adata`` with
``condition`` set to "stimulated" for those cells. ``layers["mean"]`` is the predicted mean
log-normalised expression; ``layers["sampled"]`` one draw of the Gaussian likelihood
(mean + sd * noise, clipped at 0).
"""

from __future__ import annotations

import numpy as np
from _peer_io import (
    CONDITION,
    STIMULATED,
    Timer,
    capped,
    log_normalize,
    parse_args,
    read,
    set_torch_threads,
    version,
    write,
)

MODULE_PARAMS = {
    "decoder_width": 1024,
    "decoder_depth": 4,
    "attribute_nn_width": 512,
    "attribute_nn_depth": 2,
    "n_latent_attribute_categorical": 4,
    "gene_likelihood": "normal",
    "reconstruction_penalty": 1e2,
    "unknown_attribute_penalty": 1e1,
    "unknown_attribute_noise_param": 1e-1,
    "attribute_dropout_rate": 0.1,
    "use_batch_norm": False,
    "use_layer_norm": False,
    "seed": 42,
}
TRAINER_PARAMS = {
    "n_epochs_warmup": 0,
    "latent_lr": 1e-4,
    "latent_wd": 1e-4,
    "decoder_lr": 1e-4,
    "decoder_wd": 1e-4,
    "attribute_nn_lr": 1e-2,
    "attribute_nn_wd": 4e-8,
    "step_size_lr": 45,
    "cosine_scheduler": True,
    "scheduler_final_lr": 1e-5,
}
TRAIN_KWARGS = {
    "max_epochs": 500,
    "batch_size": 512,
    "early_stopping": True,
    "early_stopping_patience": 20,
    "check_val_every_n_epoch": 10,
    "num_workers": 0,
    "enable_checkpointing": False,
}
N_LATENT = 32


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    set_torch_threads(args.threads)
    train_kwargs = capped(TRAIN_KWARGS, "max_epochs", args.max_epochs)
    import biolord
    import scvi
    import torch

    train, ctrl = read(args.train), read(args.ctrl)
    adata = train.copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = log_normalize(adata.X)
    rng = np.random.default_rng(args.seed)
    is_source = adata.obs_names.isin(ctrl.obs_names)
    valid = (rng.random(adata.n_obs) < 0.1) & ~is_source
    adata.obs["split"] = np.where(valid, "test", "train")

    scvi.settings.seed = args.seed
    torch.manual_seed(args.seed)
    biolord.Biolord.setup_anndata(
        adata, ordered_attributes_keys=None, categorical_attributes_keys=["cell_type", CONDITION]
    )
    params = dict(MODULE_PARAMS, seed=args.seed)
    model = biolord.Biolord(
        adata=adata,
        n_latent=N_LATENT,
        model_name="kang",
        module_params=params,
        train_classifiers=False,
        split_key="split",
    )
    with Timer() as t:
        model.train(plan_kwargs=TRAINER_PARAMS, accelerator="cpu", **train_kwargs)
    epochs = int(model.trainer.current_epoch) if getattr(model, "trainer", None) else None

    source = adata[ctrl.obs_names].copy()
    preds = model.compute_prediction_adata(adata, source, target_attributes=[CONDITION])
    stim = preds[preds.obs[CONDITION] == STIMULATED]
    mean = np.asarray(stim.X, dtype=np.float32)
    # the Gaussian likelihood's spread, for a sampled prediction
    dataset = model.get_dataset(source)
    stim_code = model.get_dataset(adata[adata.obs[CONDITION] == STIMULATED][:1].copy())[CONDITION]
    dataset[CONDITION] = stim_code.repeat(source.n_obs, 1)
    with torch.no_grad():
        mus, variances = model.module.get_expression(dataset)
    mus, variances = mus.cpu().numpy(), variances.cpu().numpy()
    gen = np.random.default_rng(args.seed)
    noise = gen.standard_normal(mus.shape)
    sampled = np.maximum(mus + np.sqrt(np.maximum(variances, 0)) * noise, 0)
    info = {
        "method": "biolord",
        "versions": {d: version(d) for d in ("biolord", "scvi-tools", "torch")},
        "settings": "biolord_pipeline tutorial (categorical attributes, log-normalised, Gaussian)",
        "module_params": params,
        "trainer_params": TRAINER_PARAMS,
        "train_kwargs": train_kwargs,
        "documented_train_kwargs": TRAIN_KWARGS,
        "n_latent": N_LATENT,
        "epochs_trained": epochs,
        "train_s": t.seconds,
        "max_abs_diff_mean_vs_recomputed": float(np.abs(mus - mean).max()),
        "mean": "predicted mean log-normalised expression (compute_prediction_adata)",
        "sampled": "one Gaussian draw, mean + sd * N(0, 1), clipped at 0 (log-normalised space)",
    }
    write(args.out, ctrl, mean, sampled, space="log_normalized", info=info)


if __name__ == "__main__":
    main()
