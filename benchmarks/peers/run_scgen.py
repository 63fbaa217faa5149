"""scGen 2.1.0 counterfactual runner (its own Python 3.10 environment; see ``_peer_io.py``).

Settings: scGen's perturbation tutorial on Kang (``docs/tutorials/scgen_perturbation_prediction
.ipynb``): log-normalised expression, ``setup_anndata(batch_key="condition",
labels_key="cell_type")``, the model's defaults (100 latent dimensions, 800 x 2 hidden layers),
``train(max_epochs=100, batch_size=32, early_stopping=True, early_stopping_patience=25)``, and
``predict(ctrl_key, stim_key, adata_to_predict=<the held-out type's control cells>)`` (latent
vector arithmetic with the balanced mean stimulated - control latent difference of all cells).
scGen's decoder is deterministic: ``layers["mean"]`` only, log-normalised.
"""

from __future__ import annotations

import numpy as np
from _peer_io import (
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

TRAIN_KWARGS = {
    "max_epochs": 100,
    "batch_size": 32,
    "early_stopping": True,
    "early_stopping_patience": 25,
}


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0])
    set_torch_threads(args.threads)
    train_kwargs = capped(TRAIN_KWARGS, "max_epochs", args.max_epochs)
    import scgen
    import scvi
    import torch

    train, ctrl = read(args.train), read(args.ctrl)
    adata = train.copy()
    adata.X = log_normalize(adata.X)
    source = ctrl.copy()
    source.X = log_normalize(source.X)

    scvi.settings.seed = args.seed
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002 - the peer draws from numpy's global state
    scgen.SCGEN.setup_anndata(adata, batch_key="condition", labels_key="cell_type")
    model = scgen.SCGEN(adata)
    with Timer() as t:
        model.train(**train_kwargs)
    epochs = getattr(getattr(model, "trainer", None), "current_epoch", None)
    np.random.seed(args.seed)  # noqa: NPY002 - the peer draws from numpy's global state
    pred, _ = model.predict(ctrl_key=CONTROL, stim_key=STIMULATED, adata_to_predict=source)
    mean = np.asarray(pred.X, dtype=np.float32)
    info = {
        "method": "scGen",
        "versions": {d: version(d) for d in ("scgen", "scvi-tools", "torch")},
        "settings": "scGen perturbation tutorial (Kang): defaults, 100 epochs, batch 32",
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
