"""Regression guard on real data: DisentVI's Kang B-cell counterfactual (issue #14, item 4).

Trains DisentVI (genvi defaults, 150 epochs, batch 128, seed 0, one torch thread) on Kang
(``kang_ifnb_muscat_subset.h5ad``) without the B cells' stimulated cells, predicts them from
the B cells' control cells (sampled counts, ``predict_counterfactual(seed=0)``) and checks the
top-20 DEG mean R² and variance R² against floors. Skipped, with the reason, when the file is
not in ``../shared/data`` (or ``GENVI_DATA_DIR``). About 62-100 s of training on an idle core
of the 2-core development machine; marked ``slow``. A second guard holds out CD14+ monocytes
and checks that response transfer (``predict_counterfactual(unseen="transfer")``, the
default) beats the decoder's own prediction of the unseen combination.

Why these statistics and floors. Training is deterministic on one machine, but the result
depends on the CPU's floating-point kernels and thread count, which move it about as much as a
different seed does. Measured values of the current model (B cells held out, top-20 DEGs):

==========================================  =======  ========  ===========================
run                                         mean R²  var R²    source
==========================================  =======  ========  ===========================
dev. machine D (Dec 4), seed 0, sampled     0.681    0.472     counterfactual_modes
dev. machine D (Dec 4), seed 1, sampled     0.728    0.584     (``transfer_decrease=
                                                               "fraction"``, the default)
dev. machine D (Dec 4), seed 0, sampled     0.681    0.540     (``"shift"``, the default
dev. machine D (Dec 4), seed 1, sampled     0.709    0.511     Dec 3-4)
dev. machine C (Dec 3), seed 0, sampled     0.668    0.535     counterfactual_modes (the
dev. machine C (Dec 3), seed 1, sampled     0.696    0.639     data's response, the default)
dev. machine C (Dec 3), seed 0, sampled     0.703    0.584     (``transfer_space="means"``,
dev. machine C (Dec 3), seed 1, sampled     0.725    0.544     the default until Dec 3)
dev. machine B (Dec 2), seed 0, sampled     0.729    0.544     counterfactual_kang_peers
dev. machine B (Dec 2), seed 1, sampled     0.757    0.581     (simplex transfer, sources'
                                                               dispersion: the default)
dev. machine B (Dec 2), seed 0, sampled     0.720    0.564     (``transfer_dispersion=
dev. machine B (Dec 2), seed 1, sampled     0.768    0.527     "own"``; 01dbd29's code
                                                               gives the same seed 0)
dev. machine (Dec 2), seed 0, sampled       0.710    0.519     (simplex, own dispersion,
dev. machine (Dec 2), seed 1, sampled       0.762    0.541     the earlier default)
dev. machine (Dec 1), seed 0, sampled       0.715    0.504     (``transfer_method="ridge"``)
dev. machine (Dec 1), seed 1, sampled       0.703    0.535
dev. machine (Dec 1), seed 0, decoded       0.707    0.490     (``unseen="decode"``; the
                                                               code before transfer gives
                                                               the same on this machine)
dev. machine (Nov 30), seed 0, sampled      0.667    0.501     counterfactual_guard_spread
dev. machine (Nov 30), seed 0, means        0.900    -2.92     (``return_mean=True``)
dev. machine (lead), seed 1, sampled        0.49     n/a       issue #14
other machine (a0abc21), seed 0, sampled    0.76     0.55      counterfactual_kang.json
other machine (a0abc21), seed 1, sampled    0.49     0.56      counterfactual_kang_seed1.json
==========================================  =======  ========  ===========================

The spread runs planned for seeds 1 and 2 and for two torch threads
(``benchmarks/counterfactual_guard_spread.py``) did not finish on the shared machine; the
floors therefore sit well under the lowest value seen for any seed or machine: sampled top-20
mean R² > 0.30 (lowest seen 0.49) and sampled top-20 variance R² > 0.25 (lowest seen 0.50).
Sampled counts, not means, because the variance R² is only meaningful for samples (the means
have no sampling noise: −2.9) and DisentVI's point is the spread of its sampled cells.

What they catch (from the recorded ablations, not rerun here): one dispersion per gene
(``dispersion="gene"``) made the sampled top-20 variance R² of held-out types negative
(docs/user_guide/disentvi.md); no adversary (``adversary_weight=0``) gave a median top-20
mean R² of 0.25 and variance R² of 0.11 over the five held-out types
(``results/counterfactual_kang_ablation.json``); a model that ignores the condition scores like
the identity prediction (top-20 mean R² −3.3). A change that only moves the result within
seed-to-seed noise (about ±0.15 on the mean R²) passes: this guards against breakage, not
against small drifts, which ``benchmarks/counterfactual.py`` measures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import genvi
from conftest import one_torch_thread, real_data_path

FILENAME = "kang_ifnb_muscat_subset.h5ad"
HELD_OUT = "B cells"
EPOCHS = 150
FLOORS: dict[str, float] = {
    "sampled_top20_mean_r2": 0.30,
    "sampled_top20_var_r2": 0.25,
}


def kang_path() -> Path | None:
    """The file from genvi's data folders or ``../shared/data`` beside this checkout."""
    return real_data_path("kang_ifnb", FILENAME)


def fit_held_out(
    seed: int = 0,
    cell_type: str = HELD_OUT,
    epochs: int = EPOCHS,
    top_k: tuple[int, ...] = (20, 50, 100),
    unseen: tuple[str, ...] = ("transfer",),
    **model_kwargs,
) -> dict[str, float]:
    """Train DisentVI without ``cell_type``'s stimulated cells; score its counterfactual.

    The split and settings of ``benchmarks/counterfactual.py`` (``cell_type`` and ``condition``
    as categorical attributes, batch size 128, ``scvi.settings.seed = seed``). Returns
    ``{"{kind}_top{k}_{mean_r2|var_r2}": ...}`` for ``kind`` ``"sampled"`` (counts drawn with
    ``seed``) and ``"mean"`` (``return_mean=True``), the Pearson delta on the top-100 DEGs of
    both, and ``train_s``; for each ``predict_counterfactual(unseen=...)`` mode of ``unseen``
    from the same model, the keys of modes other than the default ``"transfer"`` prefixed
    with the mode (``"decode_sampled_top20_mean_r2"``).
    """
    import anndata as ad
    import scvi

    from genvi.metrics import counterfactual_scores

    adata = ad.read_h5ad(kang_path())
    for key in ("cell_type", "condition"):
        adata.obs[key] = adata.obs[key].astype("category")
    is_ct = (adata.obs["cell_type"] == cell_type).to_numpy()
    is_stim = (adata.obs["condition"] == "stimulated").to_numpy()
    train = adata[~(is_ct & is_stim)].copy()
    ctrl = adata[is_ct & ~is_stim].copy()
    observed = adata[is_ct & is_stim].copy()

    scvi.settings.seed = seed
    genvi.model.DisentVI.setup_anndata(train, categorical_attributes=["cell_type", "condition"])
    model = genvi.model.DisentVI(train, **model_kwargs)
    start = time.perf_counter()
    model.train(max_epochs=epochs, batch_size=128, enable_progress_bar=False)
    out: dict[str, float] = {"train_s": time.perf_counter() - start}
    for mode in unseen:
        prefix = "" if mode == "transfer" else f"{mode}_"
        for kind, mean in (("sampled", False), ("mean", True)):
            pred = model.predict_counterfactual(
                ctrl, {"condition": "stimulated"}, return_mean=mean, seed=seed, unseen=mode
            )
            scores = counterfactual_scores(ctrl, pred, observed, top_k=top_k)
            for k in top_k:
                out[f"{prefix}{kind}_top{k}_mean_r2"] = float(scores.loc[f"top{k}", "mean_r2"])
                out[f"{prefix}{kind}_top{k}_var_r2"] = float(scores.loc[f"top{k}", "var_r2"])
            out[f"{prefix}{kind}_pearson_delta_top100"] = float(scores.loc["top100", "lfc_pearson"])
    return out


@pytest.mark.slow
@pytest.mark.skipif(
    kang_path() is None,
    reason=f"real-data guard: {FILENAME} not found in ../shared/data or GENVI_DATA_DIR",
)
def test_disentvi_kang_b_cells_counterfactual_guard():
    with one_torch_thread():
        got = fit_held_out(seed=0)
    failed = {k: (round(got[k], 3), floor) for k, floor in FLOORS.items() if not got[k] > floor}
    assert not failed, f"below the floors (value, floor): {failed}; all: {got}"
    assert np.isfinite(list(got.values())).all()


@pytest.mark.slow
@pytest.mark.skipif(
    kang_path() is None,
    reason=f"real-data guard: {FILENAME} not found in ../shared/data or GENVI_DATA_DIR",
)
def test_disentvi_kang_cd14_monocytes_response_transfer_guard():
    """CD14+ monocytes held out: response transfer (the default) against the decoder alone.

    The type every method fails on (its response is the largest); transfer borrows mostly
    from FCGR3A+ monocytes (simplex weight 0.96 / 0.97). Measured on the development machine
    (``counterfactual.py --peers disentvi,disentvi_decode``, one thread, sampled counts; seed
    0 / seed 1): top-20 DEG mean R² -1.05 / -0.98 with transfer (own dispersion, the earlier
    default) vs -3.27 / -2.25 decoded, Pearson delta top-100 0.922 / 0.937 vs 0.823 /
    0.868, top-20 variance R² 0.43 / 0.50 vs -0.13 / 0.14 (kernel-ridge transfer: -1.08 /
    -0.96, 0.921 / 0.938, 0.46 / 0.49). The default now (sources' dispersion; another machine,
    ``counterfactual_modes.py``): -0.76 / -0.73 vs -3.07 / -1.86 decoded, Pearson delta 0.927 /
    0.941 vs 0.826 / 0.881, variance R² 0.38 / 0.52 vs -0.11 / 0.30. With the data's response
    (``transfer_space="data"``, the default from December 3; a third machine): -0.25 / -0.15 vs
    -3.12 / -2.25 decoded, Pearson delta 0.959 / 0.961 vs 0.819 / 0.870, variance R² 0.66 /
    0.63. The floors keep
    about half of the smaller seed's gain, so a change that loses the transfer (or makes it a
    no-op) fails, while kernel and thread differences between machines (up to 0.04 on B
    cells' mean R²) do not.
    """
    with one_torch_thread():
        got = fit_held_out(seed=0, cell_type="CD14+ Monocytes", unseen=("transfer", "decode"))
    gain = {
        m: got[f"sampled_{m}"] - got[f"decode_sampled_{m}"]
        for m in ("top20_mean_r2", "pearson_delta_top100")
    }
    assert gain["top20_mean_r2"] > 0.6, (gain, got)
    assert gain["pearson_delta_top100"] > 0.035, (gain, got)
    assert got["sampled_pearson_delta_top100"] > 0.88, got
    assert got["sampled_top20_var_r2"] > 0.0, got
