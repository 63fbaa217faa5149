"""Minibatch OT pairing of LatentFlow: groups, the exact and the on-device solvers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from genvi.module._ot import (
    condition_groups,
    device_assignment,
    exact_assignment,
    ot_permutation,
)
from genvi.nn import ConditionEncoder


def _latents(n: int, seed: int, d: int = 10):
    """Clustered, standardised latents, N(0, I) noise and random group labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (6, d))
    z = centres[rng.integers(0, 6, n)] + rng.normal(0, 0.5, (n, d))
    z = torch.tensor((z - z.mean(0)) / z.std(0), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    return z, torch.randn(n, d, generator=gen), rng


def _mean_cost(z, noise, perm) -> float:
    return float(((z - noise[perm]) ** 2).sum(1).mean())


def _reference_permutation(noise, z, c):
    """The implementation before the device solver: torch.unique groups + scipy per group."""
    perm = torch.arange(z.shape[0])
    _, groups = torch.unique(c, dim=0, return_inverse=True)
    groups = groups.numpy()
    cost = torch.cdist(z, noise).pow(2).numpy()
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        if len(idx) < 2:
            continue
        rows, cols = linear_sum_assignment(cost[np.ix_(idx, idx)])
        perm[torch.as_tensor(idx[rows])] = torch.as_tensor(idx[cols])
    return perm


@pytest.mark.parametrize(("n", "n_groups"), [(256, 1), (256, 8), (256, 40), (1024, 8)])
def test_device_solver_is_a_near_optimal_permutation_within_groups(n, n_groups):
    ratios = []
    for seed in range(3):
        z, noise, rng = _latents(n, seed)
        labels = torch.as_tensor(rng.integers(0, n_groups, n))
        cost = torch.cdist(z, noise).pow(2)
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        perm = device_assignment(cost, same)
        assert sorted(perm.tolist()) == list(range(n))  # a permutation
        assert bool((labels[perm] == labels).all())  # never across groups
        exact = exact_assignment(cost, labels.unsqueeze(1).float())
        ratios.append(_mean_cost(z, noise, perm) / _mean_cost(z, noise, exact))
        assert _mean_cost(z, noise, exact) < 0.8 * _mean_cost(z, noise, torch.arange(n))
    # measured: at most 1.007 (n=1024, 8 groups); a random pairing costs 1.5-2.4x
    assert max(ratios) < 1.02, ratios
    assert min(ratios) >= 1.0 - 1e-6


def test_exact_solver_reproduces_the_previous_pairing():
    """Groups of codes (null tokens included) = groups of embeddings: the same permutation."""
    torch.manual_seed(0)
    enc = ConditionEncoder([3, 2], 1, n_embed=4, dropout=0.3).train()
    n = 200
    cat = torch.stack([torch.randint(0, 3, (n,)), torch.randint(0, 2, (n,))], 1)
    cont = torch.randint(0, 3, (n, 1)).float() * 5.0  # doses shared by many cells
    c, mask = enc(cat, cont, return_mask=True)
    groups = condition_groups(cat, cont, mask, n)
    # equal group rows exactly when the embeddings are equal
    same_c = (c.unsqueeze(0) == c.unsqueeze(1)).all(-1)
    same_g = (groups.unsqueeze(0) == groups.unsqueeze(1)).all(-1)
    assert torch.equal(same_c, same_g)
    z, noise, _ = _latents(n, 3)
    expected = _reference_permutation(noise, z, c.detach())
    assert torch.equal(ot_permutation(noise, z, groups, "exact"), expected)
    assert torch.equal(ot_permutation(noise, z, groups, "auto"), expected)  # CPU: exact
    device = ot_permutation(noise, z, groups, "device")
    assert _mean_cost(z, noise, device) < 1.02 * _mean_cost(z, noise, expected)


def test_groups_without_conditions_and_bad_solver():
    enc = ConditionEncoder([], 0)
    c, mask = enc(None, None, n=5, return_mask=True)
    assert c.shape == (5, 1) and mask.shape == (5, 0)
    groups = condition_groups(None, None, mask, 5)
    assert groups.shape == (5, 1)
    z, noise, _ = _latents(5, 0)
    assert sorted(ot_permutation(noise, z, groups, "device").tolist()) == list(range(5))
    with pytest.raises(ValueError, match="Unknown OT solver"):
        ot_permutation(noise, z, groups, "hungarian")


def test_latent_flow_trains_with_the_device_solver_and_refuses_an_unknown_one(tiny):
    import genvi
    from conftest import quiet_train

    genvi.model.PriorVI.setup_anndata(tiny, condition_keys=["cell_type", "treatment"])
    base = quiet_train(genvi.model.PriorVI(tiny, n_latent=4, n_hidden=16), max_epochs=2)
    flow = genvi.model.LatentFlow.from_model(
        base, condition_keys=["cell_type"], n_hidden=16, ot_solver="device"
    )
    assert flow.module.ot_solver == "device"
    quiet_train(flow, max_epochs=2)
    assert np.isfinite(flow.history["flow_matching_loss_train"].to_numpy(dtype=float)).all()
    with pytest.raises(ValueError, match="Unknown ot_solver"):
        genvi.model.LatentFlow.from_model(base, condition_keys=["cell_type"], ot_solver="lap")
