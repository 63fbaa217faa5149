"""Flow and Vamp priors capture sub-populations inside a condition that a Gaussian prior cannot."""

from __future__ import annotations

import numpy as np
import pytest
import scvi
from sklearn.linear_model import LogisticRegression

import genvi
from conftest import N_EPOCHS, quiet_train
from genvi.metrics import ReferenceSpace, energy_distance
from genvi.model import PriorVI

CONDITIONS = [
    {"cell_type": c, "treatment": t} for c in ("type_0", "type_1") for t in ("control", "treated")
]


@pytest.fixture(scope="module")
def substates():
    """2 cell types x 2 treatments, each cell type with 3 hidden sub-states."""
    sim = genvi.data.simulate(n_cells=2000, n_genes=150, n_cell_types=2, n_substates=3, seed=0)
    space = ReferenceSpace.fit(sim, n_top_genes=150, n_comps=20)
    truth = [genvi.data.sample_truth(sim, c, 500, seed=10 + i) for i, c in enumerate(CONDITIONS)]
    # sub-state classifiers on real cells, one per cell type, to read generated proportions
    classifiers = {}
    for ct in ("type_0", "type_1"):
        cells = sim[sim.obs["cell_type"] == ct]
        classifiers[ct] = LogisticRegression(max_iter=2000).fit(
            space.transform(cells), cells.obs["substate"].astype(str)
        )
    return sim, space, truth, classifiers


def _evaluate(prior, substates):
    """Energy distance (mean over conditions) and worst sub-state proportion error.

    The simulator draws one inverse dispersion per gene, so the models here use
    ``dispersion="gene"``, the matching one. With PriorVI's default ``"gene-cell"`` (same
    seed, 300 epochs; energy / proportion error) every prior was worse: Gaussian 0.153 /
    0.110 (``"gene"``: 0.128 / 0.104), flow 0.045 / 0.112 (0.038 / 0.072), Vamp 0.107 / 0.088
    (0.063 / 0.058); the flow and Vamp priors still halved the Gaussian's energy, but the
    flow's sub-state proportions were no better than the Gaussian's.
    """
    sim, space, truth, classifiers = substates
    scvi.settings.seed = 0
    adata = sim.copy()
    PriorVI.setup_anndata(adata, condition_keys=["cell_type", "treatment"])
    model = quiet_train(PriorVI(adata, prior=prior, dispersion="gene"), max_epochs=N_EPOCHS)
    energies, proportion_errors = [], []
    for i, cond in enumerate(CONDITIONS):
        gen = model.generate(cond, n_cells=500, seed=i)
        pcs = space.transform(gen)
        energies.append(energy_distance(space.transform(truth[i]), pcs))
        predicted = classifiers[cond["cell_type"]].predict(pcs)
        real = truth[i].obs["substate"].astype(str).to_numpy()
        labels = np.unique(real)
        gen_props = np.array([(predicted == k).mean() for k in labels])
        real_props = np.array([(real == k).mean() for k in labels])
        proportion_errors.append(np.abs(gen_props - real_props).max())
    return float(np.mean(energies)), float(np.max(proportion_errors))


@pytest.fixture(scope="module")
def gaussian_result(substates):
    return _evaluate("gaussian", substates)


@pytest.mark.parametrize("prior", ["flow", "vamp"])
def test_expressive_prior_beats_gaussian_on_substates(prior, substates, gaussian_result):
    energy, proportion_error = _evaluate(prior, substates)
    # measured (300 epochs, dispersion="gene", Dec 6 2026): gaussian 0.128, flow 0.038, vamp
    # 0.063; an earlier measurement: gaussian 0.127, flow 0.063, vamp 0.058 (mog 0.134)
    assert energy < 0.8 * gaussian_result[0], (energy, gaussian_result)
    # sub-state proportions of generated cells, read by a classifier trained on real cells
    assert proportion_error < 0.1, proportion_error
