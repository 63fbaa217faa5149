"""Priors p(z | c): exact densities, sampling, gradients, transport, and the KL helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal

from genvi.nn import (
    ConditionalFlowPrior,
    ConditionalGaussianPrior,
    MixtureOfGaussiansPrior,
    VampPrior,
    kl_to_prior,
)


def _perturb(module: torch.nn.Module, scale: float = 0.5, seed: int = 0) -> None:
    """Move every parameter away from its (near-identity) initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


def test_flow_log_prob_integrates_to_one():
    torch.manual_seed(0)
    prior = ConditionalFlowPrior(n_latent=2, n_cond=3, n_flows=3, n_hidden=16, n_splines=1)
    # larger random weights push pyro's affine couplings into their log-scale clipping
    _perturb(prior, 0.1)
    c = torch.randn(1, 3)
    grid = torch.linspace(-12, 12, 601)
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = prior(c.expand(len(zz), -1)).log_prob(zz).exp()
    step = (grid[1] - grid[0]) ** 2
    assert float(density.sum() * step) == pytest.approx(1.0, abs=0.02)


def test_flow_log_prob_matches_change_of_variables():
    torch.manual_seed(1)
    prior = ConditionalFlowPrior(n_latent=3, n_cond=2, n_flows=2, n_hidden=8, n_splines=1)
    _perturb(prior, 0.3)
    c = torch.randn(1, 2)
    u = torch.randn(1, 3)
    z = prior.from_noise(u, c)
    # log p(z) = log N(u; 0, I) - log|det dz/du|, with the Jacobian by autograd
    jac = torch.autograd.functional.jacobian(lambda v: prior.from_noise(v, c), u).reshape(3, 3)
    expected = Normal(0.0, 1.0).log_prob(u).sum() - torch.linalg.slogdet(jac).logabsdet
    with torch.no_grad():
        assert float(prior(c).log_prob(z)) == pytest.approx(float(expected), abs=1e-3)


def test_flow_samples_are_finite_and_gradients_flow():
    torch.manual_seed(2)
    prior = ConditionalFlowPrior(n_latent=5, n_cond=4)
    c = torch.randn(64, 4, requires_grad=True)
    dist = prior(c)
    z = dist.rsample()
    assert z.shape == (64, 5)
    assert torch.isfinite(z).all()
    loss = -dist.log_prob(z.detach() + 0.1).mean() + z.pow(2).mean()
    loss.backward()
    assert c.grad is not None
    assert torch.isfinite(c.grad).all()
    assert all(p.grad is not None for p in prior.parameters())


def test_flow_permutations_survive_the_state_dict():
    a = ConditionalFlowPrior(n_latent=6, n_cond=2, seed=1)
    b = ConditionalFlowPrior(n_latent=6, n_cond=2, seed=2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.perm_0, b.perm_0)
    c, z = torch.randn(4, 2), torch.randn(4, 6)
    assert torch.allclose(a(c).log_prob(z), b(c).log_prob(z))


@pytest.mark.parametrize("prior_cls", [ConditionalGaussianPrior, ConditionalFlowPrior])
def test_transport_is_invertible(prior_cls):
    torch.manual_seed(3)
    prior = prior_cls(n_latent=4, n_cond=3)
    _perturb(prior, 0.1)
    c1, c2, z = torch.randn(8, 3), torch.randn(8, 3), torch.randn(8, 4)
    with torch.no_grad():
        there = prior.transport(z, c1, c2)
        back = prior.transport(there, c2, c1)
        assert torch.allclose(back, z, atol=1e-4)
        assert torch.allclose(prior.transport(z, c1, c1), z, atol=1e-4)


def test_gaussian_transport_maps_one_prior_onto_the_other():
    torch.manual_seed(4)
    prior = ConditionalGaussianPrior(n_latent=3, n_cond=2)
    _perturb(prior, 0.5)
    c1, c2 = torch.randn(1, 2).expand(20000, -1), torch.randn(1, 2).expand(20000, -1)
    with torch.no_grad():
        moved = prior.transport(prior(c1).sample(), c1, c2)
        target = prior(c2)
    assert torch.allclose(moved.mean(0), target.mean[0], atol=0.05)
    assert torch.allclose(moved.std(0), target.stddev[0], rtol=0.05)


def test_mixture_prior_is_the_condition_weighted_mixture():
    torch.manual_seed(5)
    prior = MixtureOfGaussiansPrior(n_latent=2, n_cond=2, n_components=4)
    _perturb(prior, 1.0)
    z, c = torch.randn(10, 2), torch.randn(10, 2)
    with torch.no_grad():
        log_w = torch.log_softmax(prior.logits_net(c), -1)  # (n, K), depends on c
        loc = prior.locs + prior.shift_net(c).unsqueeze(1)  # (n, K, d)
        scale = torch.nn.functional.softplus(prior.raw_scales) + 1e-4
        comp = Normal(loc, scale).log_prob(z.unsqueeze(1)).sum(-1)
        manual = torch.logsumexp(log_w + comp, -1)
        assert torch.allclose(prior(c).log_prob(z), manual, atol=1e-5)
        # two conditions differ in weights and in location, as the network says
        assert (log_w[0] - log_w[1]).abs().max() > 0.1


def test_vamp_prior_components_are_encoded_pseudo_inputs():
    torch.manual_seed(6)
    n_in, n_cond, d = 7, 3, 2
    enc = torch.nn.Linear(n_in + n_cond, 2 * d)

    def encode(x, c):
        loc, raw = enc(torch.cat([x, c], -1)).chunk(2, -1)
        return Normal(loc, torch.nn.functional.softplus(raw) + 1e-3)

    prior = VampPrior(n_latent=d, n_cond=n_cond, n_input=n_in, n_pseudo=5)
    prior.attach_encoder(encode)
    c = torch.randn(2, n_cond).repeat_interleave(3, 0)  # 2 distinct conditions, 3 cells each
    dist = prior(c)
    z = torch.randn(6, d)
    # the mixture density equals the average of the encoded pseudo-input posteriors
    q = encode(prior.pseudo_inputs.unsqueeze(0).expand(6, -1, -1), c.unsqueeze(1).expand(-1, 5, -1))
    manual = torch.logsumexp(q.log_prob(z.unsqueeze(1)).sum(-1), -1) - np.log(5)
    assert torch.allclose(dist.log_prob(z), manual, atol=1e-5)
    dist.log_prob(z).sum().backward()
    assert prior.pseudo_inputs.grad is not None
    assert enc.weight.grad is not None


def test_vamp_transport_keeps_the_component():
    torch.manual_seed(7)
    enc = torch.nn.Linear(4 + 1, 4)

    def encode(x, c):
        loc, raw = enc(torch.cat([x, c], -1)).chunk(2, -1)
        return Normal(loc, torch.nn.functional.softplus(raw) + 1e-3)

    prior = VampPrior(n_latent=2, n_cond=1, n_input=4, n_pseudo=3)
    prior.attach_encoder(encode)
    c1, c2 = torch.zeros(5, 1), torch.ones(5, 1)
    with torch.no_grad():
        z = prior(c1).sample()
        back = prior.transport(prior.transport(z, c1, c2), c2, c1)
    assert torch.allclose(back, z, atol=1e-4)


def test_kl_helper_monte_carlo_agrees_with_analytic():
    torch.manual_seed(8)
    qz = Normal(torch.randn(4, 3), torch.rand(4, 3) + 0.5)
    pz = Independent(Normal(torch.randn(4, 3), torch.rand(4, 3) + 0.5), 1)
    analytic = kl_to_prior(qz, pz)
    # a mixture with one component is the same distribution but takes the Monte Carlo path
    from torch.distributions import Categorical, MixtureSameFamily

    single = MixtureSameFamily(
        Categorical(logits=torch.zeros(4, 1)),
        Independent(Normal(pz.base_dist.loc.unsqueeze(1), pz.base_dist.scale.unsqueeze(1)), 1),
    )
    mc = kl_to_prior(qz, single, qz.sample((20000,)))
    assert torch.allclose(mc, analytic, atol=0.05)
