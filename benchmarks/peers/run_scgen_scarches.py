"""scGen counterfactual runner, scArches 0.6.1's port of scGen (its own environment).

scGen 2.1.0 itself does not install here (``setup_envs.sh``: its scvi-tools 0.16.4 imports jax,
and PyPI has no jaxlib of that era for Python 3.10), so this runs the same algorithm from the
package its authors moved it to: ``scarches.models.scgen`` (``vaeArith``: a Gaussian VAE on
log-normalised expression with mean-squared-error reconstruction, and prediction by latent
vector arithmetic). It shares the ``scarches`` environment with trVAE.

Settings: scGen 2.1.0's defaults and its Kang perturbation tutorial
(``docs/tutorials/scgen_perturbation_prediction.ipynb``): log-normalised input, two hidden
layers of 800, 100 latent dimensions, dropout 0.2, 100 epochs at batch 32 with early stopping
(patience 25 on the validation loss, 10 % validation); the KL weight stays the port's own
(``alpha=1e-6``, its reconstruction term being a per-element mean). Prediction:
``predict(adata, conditions={"ctrl": "control", "stim": "stimulated"}, adata_to_predict=<the
held-out type's control cells>)``, i.e. the control cells' latents plus the mean stimulated -
control latent difference of all training cells (balanced over cell types), decoded.
The decoder is deterministic: ``layers["mean"]`` only, log-normalised.
"""

from __future__ import annotations

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

# scGen 2.1.0: SCGEN(n_hidden=800, n_latent=100, n_layers=2, dropout_rate=0.2)
MODEL_KWARGS = {"hidden_layer_sizes": [800, 800], "z_dimension": 100, "dr_rate": 0.2}
TRAIN_KWARGS = {
    "n_epochs": 100,
    "batch_size": 32,
    "early_stopping_kwargs": {
        "early_stopping_metric": "val_loss",
        "threshold": 0,
        "patience": 25,
        "reduce_lr": False,
    },
}


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    set_torch_threads(args.threads)
    train_kwargs = capped(TRAIN_KWARGS, "n_epochs", args.max_epochs)
    import scarches as sca
    import torch

    train, ctrl = read(args.train), read(args.ctrl)
    adata = train.copy()
    adata.X = log_normalize(adata.X)
    source = ctrl.copy()
    source.X = log_normalize(source.X)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002 - the peer draws from numpy's global state
    model = sca.models.scgen(adata=adata, **MODEL_KWARGS)
    with Timer() as t:
        # the trainer reseeds torch with its own seed argument (default 2021)
        model.train(**train_kwargs, seed=args.seed)
    epochs = getattr(model.trainer, "epoch", None)
    model.model.eval()
    np.random.seed(args.seed)  # noqa: NPY002 - predict() draws the balanced cells from it
    pred, _ = model.predict(
        adata,
        conditions={"ctrl": CONTROL, "stim": STIMULATED},
        cell_type_key=CELL_TYPE,
        condition_key=CONDITION,
        adata_to_predict=source,
    )
    mean = np.asarray(pred, dtype=np.float32)
    info = {
        "method": "scGen (scArches port, scarches.models.scgen)",
        "versions": {d: version(d) for d in ("scArches", "scvi-tools", "torch")},
        "settings": "scGen 2.1.0 defaults (800 x 2, 100 latent, dropout 0.2) and its Kang "
        "tutorial's training (100 epochs, batch 32, early stopping patience 25)",
        "model_kwargs": MODEL_KWARGS,
        "train_kwargs": train_kwargs,
        "documented_train_kwargs": TRAIN_KWARGS,
        "epochs_trained": epochs,
        "train_s": t.seconds,
        "mean": "decoder output for control latents + mean latent stimulation vector "
        "(log-normalised)",
        "sampled": None,
    }
    write(args.out, ctrl, mean, None, space="log_normalized", info=info)


if __name__ == "__main__":
    main()
