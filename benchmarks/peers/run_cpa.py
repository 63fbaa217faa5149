"""CPA (cpa-tools 0.8.8) counterfactual runner (its own Python 3.10 environment; ``_peer_io.py``).

Settings: CPA's Kang tutorial (``docs/tutorials/Kang.ipynb``, context transfer to an unseen
cell type): raw counts, NB likelihood, ``cell_type`` as a categorical covariate,
``condition`` as the perturbation with dose 1.0, the tutorial's ``model_params`` and
``trainer_params`` verbatim (``seed`` set to the benchmark seed), up to 2,000 epochs at batch
size 512 with early stopping (patience 5 validation checks, one check every 5 epochs), a
random 10% validation split, and DEGs per cell type (top 50, Wilcoxon, stimulated vs control on
the training cells) as the tutorial's ``rank_genes_groups_cov``. The held-out type's control
cells are added a second time with ``condition`` = stimulated as the ``ood`` split (never
trained on); the prediction decodes them: ``layers["mean"]`` the NB mean (what
``CPA.predict`` returns), ``layers["sampled"]`` one draw of that NB.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
from _peer_io import (
    CELL_TYPE,
    CONDITION,
    CONTROL,
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

MODEL_PARAMS = {
    "n_latent": 64,
    "recon_loss": "nb",
    "doser_type": "linear",
    "n_hidden_encoder": 128,
    "n_layers_encoder": 2,
    "n_hidden_decoder": 512,
    "n_layers_decoder": 2,
    "use_batch_norm_encoder": True,
    "use_layer_norm_encoder": False,
    "use_batch_norm_decoder": False,
    "use_layer_norm_decoder": True,
    "dropout_rate_encoder": 0.0,
    "dropout_rate_decoder": 0.1,
    "variational": False,
    "seed": 6977,
}
TRAINER_PARAMS = {
    "n_epochs_kl_warmup": None,
    "n_epochs_pretrain_ae": 30,
    "n_epochs_adv_warmup": 50,
    "n_epochs_mixup_warmup": 0,
    "mixup_alpha": 0.0,
    "adv_steps": None,
    "n_hidden_adv": 64,
    "n_layers_adv": 3,
    "use_batch_norm_adv": True,
    "use_layer_norm_adv": False,
    "dropout_rate_adv": 0.3,
    "reg_adv": 20.0,
    "pen_adv": 5.0,
    "lr": 0.0003,
    "wd": 4e-07,
    "adv_lr": 0.0003,
    "adv_wd": 4e-07,
    "adv_loss": "cce",
    "doser_lr": 0.0003,
    "doser_wd": 4e-07,
    "do_clip_grad": True,
    "gradient_clip_value": 1.0,
    "step_size_lr": 10,
}
TRAIN_KWARGS = {
    "max_epochs": 2000,
    "batch_size": 512,
    "early_stopping_patience": 5,
    "check_val_every_n_epoch": 5,
}
N_DEGS = 50


def rank_genes_groups_cov(adata: ad.AnnData) -> dict[str, list[str]]:
    """Top DEGs of every cell type with both conditions (stimulated vs control, Wilcoxon)."""
    import scanpy as sc

    out = {}
    for ct in adata.obs[CELL_TYPE].cat.categories:
        sub = adata[adata.obs[CELL_TYPE] == ct]
        if set(sub.obs[CONDITION].unique()) != {CONTROL, STIMULATED}:
            continue
        tmp = ad.AnnData(X=log_normalize(sub.X), obs=sub.obs[[CONDITION]].copy())
        tmp.var_names = sub.var_names
        tmp.uns["log1p"] = {"base": None}
        sc.tl.rank_genes_groups(
            tmp, CONDITION, groups=[STIMULATED], reference=CONTROL, method="wilcoxon"
        )
        names = [str(n) for n in tmp.uns["rank_genes_groups"]["names"][STIMULATED][:N_DEGS]]
        out[f"{ct}_{STIMULATED}"] = names
    return out


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    set_torch_threads(args.threads)
    train_kwargs = capped(TRAIN_KWARGS, "max_epochs", args.max_epochs)
    import cpa
    import scvi
    import torch

    train, ctrl = read(args.train), read(args.ctrl)
    rng = np.random.default_rng(args.seed)
    train.obs["split"] = np.where(rng.random(train.n_obs) < 0.1, "valid", "train")
    ood = ctrl.copy()
    ood.obs_names = [f"{n}_to_{STIMULATED}" for n in ood.obs_names]
    ood.obs[CONDITION] = STIMULATED
    ood.obs["split"] = "ood"
    keep = [CELL_TYPE, CONDITION, "split"]
    adata = ad.concat([train[:, :], ood], join="inner")
    adata.obs = adata.obs[keep].copy()
    for key in (CELL_TYPE, CONDITION):
        adata.obs[key] = adata.obs[key].astype(str).astype("category")
    adata.obs["dose"] = "1.0"
    cov = adata.obs[CELL_TYPE].astype(str)
    adata.obs["cov_cond"] = cov + "_" + adata.obs[CONDITION].astype(str)
    adata.uns["rank_genes_groups_cov"] = rank_genes_groups_cov(train)

    scvi.settings.seed = args.seed
    torch.manual_seed(args.seed)
    cpa.CPA.setup_anndata(
        adata,
        perturbation_key=CONDITION,
        control_group=CONTROL,
        dosage_key="dose",
        categorical_covariate_keys=[CELL_TYPE],
        is_count_data=True,
        deg_uns_key="rank_genes_groups_cov",
        deg_uns_cat_key="cov_cond",
        max_comb_len=1,
    )
    params = dict(MODEL_PARAMS, seed=args.seed)
    model = cpa.CPA(
        adata=adata,
        split_key="split",
        train_split="train",
        valid_split="valid",
        test_split="ood",
        **params,
    )
    with Timer() as t:
        model.train(
            use_gpu=False,
            plan_kwargs=TRAINER_PARAMS,
            save_path=str(args.out.with_suffix("")) + "_cpa_model",
            **train_kwargs,
        )
    epochs = getattr(getattr(model, "trainer", None), "current_epoch", None)

    module = model.module
    module.eval()
    idx = np.flatnonzero((adata.obs["split"] == "ood").to_numpy())
    loader = model._make_data_loader(adata=adata, indices=idx, batch_size=512, shuffle=False)
    means, samples = [], []
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        for tensors in loader:
            tensors, _ = module.mixup_data(tensors, alpha=0.0)
            _, generative = module.forward(
                tensors,
                inference_kwargs={"n_samples": 1},
                get_generative_input_kwargs={"latent": "z"},
                compute_loss=False,
            )
            px = generative["px"]
            means.append(px.mu.cpu().numpy())
            samples.append(px.sample().cpu().numpy())
    del gen
    mean, sampled = np.concatenate(means), np.concatenate(samples)
    # same cells, same order as ctrl.h5ad
    assert list(adata.obs_names[idx]) == [f"{n}_to_{STIMULATED}" for n in ctrl.obs_names]
    info = {
        "method": "CPA",
        "versions": {d: version(d) for d in ("cpa-tools", "scvi-tools", "torch")},
        "settings": "CPA Kang tutorial (model_params, trainer_params, training call)",
        "model_params": params,
        "trainer_params": TRAINER_PARAMS,
        "train_kwargs": train_kwargs,
        "documented_train_kwargs": TRAIN_KWARGS,
        "n_degs_per_type": N_DEGS,
        "epochs_trained": epochs,
        "train_s": t.seconds,
        "mean": "NB mean of the decoder (CPA.predict's output), counts at the cell's library",
        "sampled": "one draw of that NB",
    }
    write(args.out, ctrl, mean, sampled, space="counts", info=info)


if __name__ == "__main__":
    main()
