"""trVAE (scArches 0.6.1) counterfactual runner (its own environment; see ``_peer_io.py``).

Settings: scArches' trVAE tutorial (``notebooks/trvae_surgery_pipeline.ipynb``): raw counts,
NB reconstruction, MMD on the latent (the defaults), ``hidden_layer_sizes=[128, 128]``,
``train(n_epochs=500, alpha_epoch_anneal=200, early_stopping_kwargs=...)`` with the tutorial's
early stopping (validation unweighted loss, patience 20, learning-rate reduction after 13).
The condition of trVAE is ``condition`` (control / stimulated), as in the trVAE paper's Kang
experiment. Prediction: the held-out type's control cells are encoded with their own condition
(latent mean) and decoded with "stimulated" at their own library size; ``layers["mean"]`` is
the NB mean, ``layers["sampled"]`` one NB draw with the stimulated condition's dispersion.
"""

from __future__ import annotations

import numpy as np
from _peer_io import (
    CONDITION,
    CONTROL,
    STIMULATED,
    Timer,
    capped,
    parse_args,
    read,
    set_torch_threads,
    version,
    write,
)

MODEL_KWARGS = {"hidden_layer_sizes": [128, 128]}
TRAIN_KWARGS = {
    "n_epochs": 500,
    "alpha_epoch_anneal": 200,
    "early_stopping_kwargs": {
        "early_stopping_metric": "val_unweighted_loss",
        "threshold": 0,
        "patience": 20,
        "reduce_lr": True,
        "lr_patience": 13,
        "lr_factor": 0.1,
    },
}


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    set_torch_threads(args.threads)
    train_kwargs = capped(TRAIN_KWARGS, "n_epochs", args.max_epochs)
    import scarches as sca
    import torch
    import torch.nn.functional as F
    from scvi.distributions import NegativeBinomial

    train, ctrl = read(args.train), read(args.ctrl)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002 - the peer draws from numpy's global state
    conditions = [CONTROL, STIMULATED]
    model = sca.models.TRVAE(
        adata=train, condition_key=CONDITION, conditions=conditions, **MODEL_KWARGS
    )
    with Timer() as t:
        # the trainer reseeds torch with its own seed argument (default 2020)
        model.train(**train_kwargs, seed=args.seed)
    epochs = getattr(model.trainer, "epoch", None)

    net = model.model
    net.eval()
    x = torch.tensor(np.asarray(ctrl.X, dtype=np.float32))
    z = model.get_latent(np.asarray(ctrl.X, dtype=np.float32), [CONTROL] * ctrl.n_obs, mean=True)
    stim = torch.full((ctrl.n_obs,), net.condition_encoder[STIMULATED], dtype=torch.long)
    with torch.no_grad():
        gamma = net.decoder(torch.tensor(z, dtype=torch.float32), stim)[0]
        mu = gamma * x.sum(1, keepdim=True)
        one_hot = F.one_hot(stim, num_classes=len(conditions)).float()
        theta = torch.exp(F.linear(one_hot, net.theta))
        torch.manual_seed(args.seed)
        sampled = NegativeBinomial(mu=mu, theta=theta).sample()
    info = {
        "method": "trVAE (scArches)",
        "versions": {d: version(d) for d in ("scArches", "scvi-tools", "torch")},
        "settings": "scArches trVAE tutorial: hidden [128, 128], 500 epochs, early stopping",
        "model_kwargs": MODEL_KWARGS,
        "train_kwargs": train_kwargs,
        "documented_train_kwargs": TRAIN_KWARGS,
        "epochs_trained": epochs,
        "train_s": t.seconds,
        "mean": "NB mean of the decoder with condition=stimulated, at the cell's library size",
        "sampled": "one draw of that NB (dispersion of the stimulated condition)",
    }
    write(args.out, ctrl, mu.numpy(), sampled.numpy(), space="counts", info=info)


if __name__ == "__main__":
    main()
