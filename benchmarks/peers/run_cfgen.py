"""CFGen (Palma et al. 2025, theislab/CFGen) as a peer generator for ``benchmarks/generation.py``.

Runs inside its own environment (``bash benchmarks/peers/setup_envs.sh cfgen``)::

    .venvs/cfgen/bin/python benchmarks/peers/run_cfgen.py --train train.h5ad \\
        --request request.h5ad --keys cell_type_coarse --out generated.h5ad --seed 0 --threads 1

``train.h5ad``: raw counts in ``X`` and the condition keys in ``obs``. ``request.h5ad``: one row per
cell to generate, with the condition keys and ``library`` (the cell's total count) in ``obs``
(``generation.py`` draws them from training cells of the condition, as for its own models).
``generated.h5ad``: one row per request row and guidance weight, sampled counts in ``X``, the
request's ``obs`` plus ``guidance``; ``uns["peer"]`` records versions, settings and timings.

CFGen's two stages are run with its own classes and its own configuration files for pbmc3k
(``configs/configs_encoder`` and ``configs/configs_sccfm``: the default encoder, the
``resnet_small`` denoiser its training configuration selects, the default flow-matching
settings, 300 encoder and 1,500 flow epochs, batch 256, 90/10 random split, AdamW, gradient
clipping 1). Its training scripts override two of these per dataset, available here as
``--flow-batch-size 64`` (pbmc3k's flow) and ``--denoiser big`` (its multi-attribute runs):

1. ``EncoderModel``: a deterministic autoencoder (log1p counts -> 512 -> 256 -> 50 -> 256 -> 512
   -> softmax x library) with a negative binomial likelihood and one inverse dispersion per gene.
2. ``FM``: conditional flow matching in that 50-dimensional space (noise -> latent), the
   covariates embedded and each dropped with probability 0.2 (classifier-free guidance), sampled
   with the dopri5 ODE solver, decoded and drawn from the negative binomial.

Changes from the training scripts, none of which changes the model or its objective: the
Lightning trainer runs on the CPU without loggers, checkpoints or ``detect_anomaly`` (a debugging
switch that makes every step several times slower), the data loaders use no worker processes
(one thread), and the samples are drawn for the requested conditions and library sizes
(``FM.sample(covariate_indices=..., log_size_factor=...)``, as CFGen's own pbmc3k notebook does).
Guidance: the dataset configuration's weight (1 per covariate) and the notebook's 1.5, both
drawn from the one trained model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _peer_io import Timer, set_torch_threads, version  # noqa: E402

# CFGen's configuration for pbmc3k (configs/configs_encoder/encoder/default.yaml,
# configs/configs_sccfm/{denoising_module/resnet_small, generative_model/default,
# training_config/default, trainer/default, dataset/pbmc3k}.yaml at the pinned commit).
ENCODER = {
    "encoder_kwargs": {
        "rna": {"dims": [512, 256, 50], "batch_norm": True, "dropout": False, "dropout_p": 0.0}
    },
    "learning_rate": 0.001,
    "weight_decay": 0.00001,
    "covariate_specific_theta": False,
    "is_binarized": False,
}
DENOISERS = {  # configs/configs_sccfm/denoising_module/resnet_{small,big}.yaml
    "small": {
        "hidden_dim": 32,
        "dropout_prob": 0.0,
        "n_blocks": 3,
        "embedding_dim": 20,
        "conditional": True,
        "normalization": "none",
        "embed_size_factor": False,
        "conditioning_probability": 0.8,
        "guided_conditioning": True,
    },
}
DENOISERS["big"] = {**DENOISERS["small"], "hidden_dim": 64, "embedding_dim": 100}
FLOW = {
    "learning_rate": 0.0001,
    "weight_decay": 0.000001,
    "antithetic_time_sampling": True,
    "sigma": 0.0001,
    "use_ot": False,
}
ENCODER_EPOCHS, FLOW_EPOCHS, BATCH_SIZE, SPLIT = 300, 1500, 256, (0.9, 0.1)
NORMALIZATION = "log_gexp"
GUIDANCE = (1.0, 1.5)  # dataset configuration; CFGen's pbmc3k generation notebook
SAMPLE_CHUNK = 500


def parse_args() -> argparse.Namespace:
    """Options; also limits every thread pool to ``--threads`` before torch is imported."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--request", type=Path, required=True)
    parser.add_argument("--keys", required=True, help="comma list of condition keys")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--encoder-epochs", type=int, default=ENCODER_EPOCHS)
    parser.add_argument("--flow-epochs", type=int, default=FLOW_EPOCHS)
    # The training scripts override two defaults per dataset: pbmc3k's flow trained with
    # batch 64, the multi-attribute runs (NeurIPS, C. elegans) used the big denoiser.
    parser.add_argument("--flow-batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--denoiser", choices=sorted(DENOISERS), default="small")
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    return args


def trainer(max_epochs: int):
    """CFGen's trainer settings (gradient clipping 1), on the CPU, without logging."""
    from pytorch_lightning import Trainer

    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        gradient_clip_val=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=False,
    )


def main() -> None:
    """Train both stages on ``--train``, sample ``--request``, write ``--out``."""
    args = parse_args()
    keys = [k for k in args.keys.split(",") if k]

    import anndata as ad
    import numpy as np
    import pandas as pd
    import pytorch_lightning as pl
    import scipy.sparse as sp
    import torch

    set_torch_threads(args.threads)
    pl.seed_everything(args.seed, workers=True)

    from cfgen.data.scrnaseq_loader import RNAseqLoader
    from cfgen.models.base.encoder_model import EncoderModel
    from cfgen.models.featurizers.category_featurizer import CategoricalFeaturizer
    from cfgen.models.fm.denoising_model import MLPTimeStep
    from cfgen.models.fm.fm import FM

    train = ad.read_h5ad(args.train)
    request = ad.read_h5ad(args.request)
    for key in keys:  # CFGen's loader codes categories by np.unique of the strings
        train.obs[key] = train.obs[key].astype(str)
    dataset = RNAseqLoader(
        train,
        layer_key="X_counts",
        covariate_keys=keys,
        subsample_frac=1,
        normalization_type=NORMALIZATION,
        is_binarized=False,
    )
    split = torch.utils.data.random_split(
        dataset, lengths=list(SPLIT), generator=torch.Generator().manual_seed(args.seed)
    )

    def loader(part, shuffle, batch_size=BATCH_SIZE):
        return torch.utils.data.DataLoader(
            part, batch_size=batch_size, shuffle=shuffle, num_workers=0, drop_last=True
        )

    gene_dim = {mod: dataset.X[mod].shape[1] for mod in dataset.X}
    # EncoderModel edits the dims lists it is given in place: each stage gets its own copy.
    encoder = EncoderModel(
        in_dim=gene_dim,
        n_cat=None,
        conditioning_covariate=keys[0],
        **json.loads(json.dumps(ENCODER)),
    )
    with Timer() as t_encoder:
        trainer(args.encoder_epochs).fit(
            encoder,
            train_dataloaders=loader(split[0], True),
            val_dataloaders=loader(split[1], False),
        )
    encoder.eval()
    for param in encoder.parameters():
        param.requires_grad = False

    denoiser_kwargs = DENOISERS[args.denoiser]
    embeddings = {
        key: CategoricalFeaturizer(
            len(names), False, "cpu", embedding_dimensions=denoiser_kwargs["embedding_dim"]
        )
        for key, names in dataset.id2cov.items()
    }
    latent_dim = {"rna": ENCODER["encoder_kwargs"]["rna"]["dims"][-1]}
    denoiser = MLPTimeStep(
        in_dim=latent_dim["rna"],
        size_factor_min=dataset.min_size_factor,
        size_factor_max=dataset.max_size_factor,
        covariate_list=keys,
        is_binarized=False,
        modality_list=["rna"],
        **denoiser_kwargs,
    )
    flow = FM(
        encoder_model=encoder,
        denoising_model=denoiser,
        feature_embeddings=embeddings,
        plotting_folder=None,
        in_dim=latent_dim,
        size_factor_statistics={
            "mean": dict(dataset.log_size_factor_mu),
            "sd": dict(dataset.log_size_factor_sd),
        },
        covariate_list=keys,
        theta_covariate=keys[0],
        size_factor_covariate=keys[0],
        is_binarized=False,
        modality_list=["rna"],
        guidance_weights=dict.fromkeys(keys, GUIDANCE[0]),
        **FLOW,
    )
    with Timer() as t_flow:
        trainer(args.flow_epochs).fit(
            flow,
            train_dataloaders=loader(split[0], True, args.flow_batch_size),
            val_dataloaders=loader(split[1], False, args.flow_batch_size),
        )
    flow.eval()

    codes = {
        key: torch.tensor(
            [dataset.id2cov[key][str(v)] for v in request.obs[key].astype(str)], dtype=torch.long
        )
        for key in keys
    }
    log_library = torch.log(torch.as_tensor(request.obs["library"].to_numpy(), dtype=torch.float32))
    blocks, obs = [], []
    with Timer() as t_sample:
        for weight in GUIDANCE:
            torch.manual_seed(args.seed)
            for start in range(0, request.n_obs, SAMPLE_CHUNK):
                stop = min(start + SAMPLE_CHUNK, request.n_obs)
                sample = flow.sample(
                    stop - start,
                    n_sample_steps=2,
                    theta_covariate=keys[0],
                    size_factor_covariate=keys[0],
                    conditioning_covariates=keys,
                    covariate_indices={k: c[start:stop] for k, c in codes.items()},
                    log_size_factor={"rna": log_library[start:stop, None]},
                    guidance_weights=dict.fromkeys(keys, weight),
                )
                blocks.append(sp.csr_matrix(sample["rna"].cpu().numpy().astype(np.float32)))
            part = request.obs[keys].astype(str).copy()
            part["guidance"] = weight
            part.index = [f"cfgen_w{weight:g}_{i}" for i in range(request.n_obs)]
            obs.append(part)
    out = ad.AnnData(
        X=sp.vstack(blocks).tocsr(),
        obs=pd.concat(obs),
        var=pd.DataFrame(index=train.var_names.copy()),
    )
    out.uns["peer"] = json.dumps(
        {
            "method": "CFGen",
            "source": "github.com/theislab/CFGen@e347d1a981944e1a66bee3f913e74081d5793c27",
            "versions": {d: version(d) for d in ("torch", "pytorch-lightning", "scvi-tools")},
            "encoder": ENCODER,
            "denoiser": {"name": f"resnet_{args.denoiser}", **denoiser_kwargs},
            "flow": FLOW,
            "encoder_epochs": args.encoder_epochs,
            "flow_epochs": args.flow_epochs,
            "batch_size": {"encoder": BATCH_SIZE, "flow": args.flow_batch_size},
            "split": SPLIT,
            "guidance": GUIDANCE,
            "sampler": "dopri5, atol = rtol = 1e-5 (FM.sample)",
            "library": "given per requested cell (generation.py: training cells of the condition)",
            "seconds": {
                "encoder": t_encoder.seconds,
                "flow": t_flow.seconds,
                "sample": t_sample.seconds,
            },
            "threads": args.threads,
            "seed": args.seed,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        default=str,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.write_h5ad(args.out)
    print(f"wrote {args.out}: {out.n_obs} cells", flush=True)


if __name__ == "__main__":
    main()
