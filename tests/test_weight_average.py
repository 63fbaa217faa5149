"""``train(ema_decay=...)``: the trained model is the moving average of its steps' weights."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import Callback

from conftest import quiet_train
from genvi.model import DisentVI, LatentDiffusion, LatentFlow, PriorVI
from genvi.model.base import WeightEMA


class _RecordWeights(Callback):
    """Each optimizer step's weights of a few tensors, as the average sees them."""

    def __init__(self, names):
        self.names, self.steps = names, []

    def on_train_batch_end(self, trainer, pl_module, *args):
        state = pl_module.module.state_dict()
        self.steps.append({n: state[n].detach().clone() for n in self.names})


def _decoder_weight(model) -> str:
    """The name of the decoder's first trained weight matrix (any dispersion setting)."""
    return next(
        n for n, p in model.module.named_parameters() if n.startswith("decoder.") and p.dim() == 2
    )


def _ema(steps: list[torch.Tensor], decay: float) -> torch.Tensor:
    """The ramped EMA of WeightEMA, computed independently of AveragedModel."""
    avg = steps[0].clone()
    for n, w in enumerate(steps[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))
        avg = avg * d + w * (1 - d)
    return avg


@pytest.mark.parametrize("epochs", [2, 40])  # during the decay's ramp, and after it
def test_trained_weights_are_the_ema_of_the_steps(tiny, epochs):
    adata = tiny.copy()
    PriorVI.setup_anndata(adata, condition_keys=["cell_type", "treatment"])
    scvi.settings.seed = 0
    model = PriorVI(adata)
    buffer = next(n for n in model.module.state_dict() if n.endswith("running_mean"))
    names = [_decoder_weight(model), buffer]
    rec = _RecordWeights(names)
    quiet_train(model, max_epochs=epochs, batch_size=32, ema_decay=0.9, callbacks=[rec])
    assert len(rec.steps) == epochs * 6  # 180 training cells in batches of 32
    state = model.module.state_dict()
    for name in names:  # a parameter and a BatchNorm buffer
        expected = _ema([s[name] for s in rec.steps], 0.9)
        torch.testing.assert_close(state[name], expected, rtol=1e-5, atol=1e-6)
        # and it is not simply the last step's weights
        assert not torch.allclose(state[name], rec.steps[-1][name], atol=1e-4), name


def test_ema_default_per_model_and_bad_values(tiny):
    assert PriorVI._ema_decay == 0.99  # measured on pbmc3k and Kang (issue #20)
    assert DisentVI._ema_decay is None  # not measured: scvi-tools' last weights
    adata = tiny.copy()
    PriorVI.setup_anndata(adata, condition_keys=["cell_type"])
    scvi.settings.seed = 0
    weights = {}
    for ema in ("default", 0.99, None):
        scvi.settings.seed = 0
        model = PriorVI(adata)
        quiet_train(model, max_epochs=3, ema_decay=ema)
        weights[ema] = model.module.state_dict()[_decoder_weight(model)].numpy().copy()
        assert model._train_ema_decay == (None if ema == "default" else ema)
    # 3 epochs of 2 minibatches are far below PriorVI's 4,000 steps: no average by default
    np.testing.assert_array_equal(weights["default"], weights[None])
    assert not np.allclose(weights[None], weights[0.99])
    for bad in (1.0, 0.0, -0.5, "yes"):
        with pytest.raises(ValueError, match="ema_decay"):
            quiet_train(PriorVI(adata), max_epochs=1, ema_decay=bad)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(2.0)


def test_integer_buffers_take_the_current_values(tiny):
    """A flow prior's permutations and BatchNorm's step counters are not averaged.

    Averaging an integer buffer and casting back truncates (9 * 0.99 + 9 * 0.01 -> 8): that
    scrambled the flow prior's permutations, and its generated cells, in CI.
    """
    adata = tiny.copy()
    PriorVI.setup_anndata(adata, condition_keys=["cell_type", "treatment"])
    scvi.settings.seed = 0
    model = PriorVI(adata, prior="flow", n_latent=10)
    before = {n: b.clone() for n, b in model.module.state_dict().items() if "perm_" in n}
    assert before and all(sorted(b.tolist()) == list(range(10)) for b in before.values())
    quiet_train(model, max_epochs=20, batch_size=32, ema_decay=0.99)
    state = model.module.state_dict()
    for name, perm in before.items():
        torch.testing.assert_close(state[name], perm, rtol=0, atol=0)
    counters = [v for n, v in state.items() if n.endswith("num_batches_tracked")]
    assert counters and all(int(c) == 20 * 6 for c in counters)  # 180 cells, batches of 32


def test_default_averages_only_runs_long_enough(tiny):
    """``ema_decay="default"``: PriorVI averages runs of >= 4,000 optimizer steps only."""
    adata = tiny.copy()
    PriorVI.setup_anndata(adata, condition_keys=["cell_type"])
    model = PriorVI(adata)
    n_train = adata.n_obs * 0.9  # scvi-tools' default training split
    steps_per_epoch = int(np.ceil(n_train / 128))
    enough = int(np.ceil(4000 / steps_per_epoch))
    assert model.default_ema_decay(enough) == 0.99
    assert model.default_ema_decay(enough - 1) is None
    # smaller minibatches mean more steps per epoch; a smaller training split, fewer
    assert model.default_ema_decay(enough - 1, batch_size=16) == 0.99
    assert model.default_ema_decay(enough, train_size=0.3) is None
    assert model.default_ema_decay(1, datamodule=object()) == 0.99  # unknown length
    assert DisentVI(tiny_disent(tiny)).default_ema_decay(10**6) is None


def tiny_disent(tiny):
    adata = tiny.copy()
    DisentVI.setup_anndata(adata, categorical_attributes=["cell_type"])
    return adata


def test_latent_prior_trains_to_the_ema_of_its_steps(tiny):
    """LatentFlow / LatentDiffusion average their weights too (0.999 by default, issue #20)."""
    adata = tiny.copy()
    PriorVI.setup_anndata(adata, condition_keys=["cell_type"])
    scvi.settings.seed = 0
    base = quiet_train(PriorVI(adata, n_latent=4), max_epochs=2)
    assert LatentFlow._ema_decay == LatentDiffusion._ema_decay == 0.999
    scvi.settings.seed = 0
    flow = LatentFlow.from_model(base, condition_keys=["cell_type"], n_hidden=16)
    # the largest weight matrix (a condition's null token barely moves in 30 steps)
    name = max(flow.module.named_parameters(), key=lambda item: item[1].numel())[0]
    rec = _RecordWeights([name])
    quiet_train(flow, max_epochs=5, batch_size=32, ema_decay=0.9, callbacks=[rec])
    assert flow._train_ema_decay == 0.9
    assert len(rec.steps) == 5 * 6  # 180 training cells in batches of 32
    state = flow.module.state_dict()[name]
    torch.testing.assert_close(state, _ema([s[name] for s in rec.steps], 0.9), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(state, rec.steps[-1][name], atol=1e-4)
    # "default": 0.999 from 400 optimizer steps on (70 epochs x 6 minibatches), else None
    weights = {}
    for epochs, ema, used in ((70, "default", 0.999), (70, None, None), (3, "default", None)):
        scvi.settings.seed = 0
        model = LatentDiffusion.from_model(base, condition_keys=["cell_type"], n_hidden=16)
        quiet_train(model, max_epochs=epochs, batch_size=32, ema_decay=ema)
        assert model._train_ema_decay == used
        weights[epochs, ema] = next(iter(model.module.parameters())).detach().clone()
    assert not torch.allclose(weights[70, "default"], weights[70, None])
    for bad in ("yes", 1.0):  # refused before the latents are encoded
        with pytest.raises(ValueError, match="ema_decay"):
            quiet_train(model, max_epochs=1, ema_decay=bad)
