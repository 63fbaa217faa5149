"""Contract tests run on every registered prior, diffusion sampler and ODE method.

Adding a prior, sampler or solver to its registry adds it to these tests: shapes with a sample
dimension, normalised densities, gradients, state-dict round trips, transport and noise-map
inversion, the VAE's marginal-likelihood path, and exact reproduction of a Gaussian target by
the samplers when they are driven by the analytic denoiser / velocity field.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from scvi import REGISTRY_KEYS
from torch import nn
from torch.distributions import Normal

from genvi._constants import GENVI_REGISTRY_KEYS
from genvi.module import (
    ODE_METHODS,
    SAMPLERS,
    LatentDiffusionModule,
    LatentFlowModule,
    PriorVAE,
)
from genvi.nn import PRIORS, ConditionInputs, Prior, build_prior, prior_options

N_COND, N_INPUT = 3, 7


def _encode_factory(n_latent: int, seed: int = 0):
    """A small deterministic encoder ``(x_in, c) -> Normal`` for priors that need one."""
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(N_INPUT + N_COND, 2 * n_latent)
    with torch.no_grad():
        layer.weight.copy_(0.3 * torch.randn(layer.weight.shape, generator=gen))
        layer.bias.zero_()

    def encode(x, c):
        loc, raw = layer(torch.cat([x, c], -1)).chunk(2, -1)
        return Normal(loc, nn.functional.softplus(raw) + 0.3)

    return encode, layer


def _make(name: str, n_latent: int = 2, seed: int = 0) -> Prior:
    """A registered prior moved away from its near-identity initialisation."""
    torch.manual_seed(seed)
    prior = build_prior(name, n_latent, N_COND, N_INPUT)
    if prior.needs_encoder:
        prior.attach_encoder(_encode_factory(n_latent)[0])
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return prior


@pytest.fixture(params=PRIORS.names)
def name(request):
    return request.param


def test_registry_entries_are_documented_priors(name):
    entry = PRIORS.entry(name)
    assert issubclass(entry.obj, Prior)
    assert entry.description
    assert name in PRIORS.describe()


def test_unknown_prior_and_prior_kwargs_raise(name):
    with pytest.raises(ValueError, match="Unknown prior 'gausian'"):
        build_prior("gausian", 2, N_COND, N_INPUT)
    with pytest.raises(ValueError, match=r"Unknown prior_kwargs \['n_component'\]"):
        build_prior(name, 2, N_COND, N_INPUT, {"n_component": 20})
    params = inspect.signature(PRIORS[name].__init__).parameters
    for option in prior_options(name):  # every advertised option is accepted, with its default
        assert params[option].default is not inspect.Parameter.empty
        build_prior(name, 2, N_COND, N_INPUT, {option: params[option].default})


def test_shapes_with_a_sample_dimension(name):
    prior = _make(name, n_latent=3)
    c = torch.randn(5, N_COND)
    with torch.no_grad():
        dist = prior(c)
        assert dist.batch_shape == (5,)
        assert dist.event_shape == (3,)
        z = dist.sample((4,))
        assert z.shape == (4, 5, 3)
        assert dist.log_prob(z).shape == (4, 5)
        assert torch.isfinite(dist.log_prob(z)).all()


def test_log_prob_integrates_to_one_in_2d(name):
    prior = _make(name, n_latent=2)
    c = torch.randn(1, N_COND)
    grid = torch.linspace(-10, 10, 401)
    zz = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = prior(c.expand(len(zz), -1)).log_prob(zz).exp()
    step = float(grid[1] - grid[0]) ** 2
    assert float(density.sum()) * step == pytest.approx(1.0, abs=0.02)


def test_log_prob_integrates_to_one_in_1d(name):
    if name == "flow":
        pytest.skip("affine couplings need n_latent >= 2 (the constructor refuses 1)")
    prior = _make(name, n_latent=1)
    c = torch.randn(1, N_COND)
    grid = torch.linspace(-12, 12, 4001).unsqueeze(-1)
    with torch.no_grad():
        density = prior(c.expand(len(grid), -1)).log_prob(grid).exp()
    assert float(density.sum() * (grid[1] - grid[0])) == pytest.approx(1.0, abs=1e-3)


def test_gradients_reach_every_parameter(name):
    if name == "normal":
        assert not list(PRIORS["normal"](3, N_COND).parameters())  # nothing to learn
        return
    prior = _make(name, n_latent=3)
    c = torch.randn(16, N_COND, requires_grad=True)
    dist = prior(c)
    loss = -dist.log_prob(torch.randn(16, 3)).sum()
    if dist.has_rsample:  # reparameterised samples carry gradients too
        loss = loss + dist.rsample().pow(2).sum()
    loss.backward()
    params = list(prior.parameters())
    assert c.grad is not None and float(c.grad.abs().sum()) > 0
    for p in params:
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()
        assert float(p.grad.abs().sum()) > 0


def test_state_dict_round_trip(name):
    a = _make(name, n_latent=4, seed=0)
    b = build_prior(name, 4, N_COND, N_INPUT)
    if b.needs_encoder:
        b.attach_encoder(_encode_factory(4)[0])
    b.load_state_dict(a.state_dict())
    c, z = torch.randn(6, N_COND), torch.randn(6, 4)
    with torch.no_grad():
        assert torch.allclose(a(c).log_prob(z), b(c).log_prob(z), atol=1e-6)


def test_transport_and_noise_map_invert(name):
    prior = _make(name, n_latent=4)
    c1, c2 = torch.randn(8, N_COND), torch.randn(8, N_COND)
    with torch.no_grad():
        z = prior(c1).sample()
        if prior.has_transport:
            assert torch.allclose(prior.transport(z, c1, c1), z, atol=1e-4)
            there = prior.transport(z, c1, c2)
            assert torch.isfinite(there).all()
            if prior.transport_invertible:
                assert torch.allclose(prior.transport(there, c2, c1), z, atol=1e-4)
        else:
            with pytest.raises(NotImplementedError):
                prior.transport(z, c1, c2)
        if prior.has_noise_map:
            assert torch.allclose(prior.from_noise(prior.to_noise(z, c1), c1), z, atol=1e-4)
            # the noise of prior samples is standard normal, and transport pushes p(z | c1)
            # onto p(z | c2)
            a, b = c1[:1].expand(20000, -1), c2[:1].expand(20000, -1)
            u = prior.to_noise(prior(a).sample(), a)
            assert u.mean(0).abs().max() < 0.05
            assert (u.std(0) - 1).abs().max() < 0.05
            moved, target = prior.transport(prior(a).sample(), a, b), prior(b).sample()
            assert torch.allclose(moved.mean(0), target.mean(0), atol=0.05)
            assert torch.allclose(moved.std(0), target.std(0), rtol=0.05)
        else:
            with pytest.raises(NotImplementedError):
                prior.to_noise(z, c1)


def test_capabilities_are_implemented(name):
    prior = _make(name, n_latent=2)
    x_in = torch.rand(10, N_INPUT)
    if prior.needs_data_init:
        prior.initialize_from_data(x_in)
    else:
        with pytest.raises(NotImplementedError):
            prior.initialize_from_data(x_in)
    if not prior.needs_encoder:
        with pytest.raises(NotImplementedError):
            prior.attach_encoder(_encode_factory(2)[0])


def test_marginal_likelihood_path(name):
    torch.manual_seed(0)
    module = PriorVAE(n_input=N_INPUT, n_cats_per_key=[3], n_latent=2, n_hidden=16, prior=name)
    module.eval()
    n = 12
    x = torch.poisson(torch.full((n, N_INPUT), 3.0))
    tensors = {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: torch.zeros(n, 1),
        GENVI_REGISTRY_KEYS.COND_CAT_KEY: torch.randint(0, 3, (n, 1)).float(),
    }
    ll = module.marginal_ll(tensors, n_mc_samples=50)
    assert ll.shape == (n,)
    assert torch.isfinite(ll).all()
    # the importance-weighted bound is tighter than the ELBO (on average over cells)
    _, _, losses = module(tensors)
    elbo = -(sum(losses.reconstruction_loss.values()) + sum(losses.kl_local.values()))
    assert float(ll.mean()) >= float(elbo.mean()) - 0.5


# ---------------------------------------------------------------------------- samplers
D, N_SAMPLES = 3, 20000
M = torch.tensor([1.5, -0.5, 0.0])
S = torch.tensor([0.5, 1.0, 2.0])


class _GaussianDenoiser(nn.Module):
    """The exact eps / v prediction when z0 ~ N(M, diag S^2): E[z0 | z_t] in closed form."""

    def __init__(self, schedule, prediction: str):
        super().__init__()
        self.schedule, self.prediction = schedule, prediction

    def forward(self, zt, t, c):
        a = self.schedule.alpha(t).unsqueeze(-1)
        s = self.schedule.sigma(t).unsqueeze(-1)
        z0 = M + a * S**2 / (a**2 * S**2 + s**2) * (zt - a * M)
        eps = (zt - a * z0) / s
        return eps if self.prediction == "eps" else a * eps - s * z0


class _GaussianVelocity(nn.Module):
    """The exact flow-matching velocity of the linear path N(0, I) -> N(M, diag S^2)."""

    def forward(self, x, t, c):
        t = t.reshape(-1, 1)
        var = (1 - t) ** 2 + t**2 * S**2
        return M + (t * S**2 - (1 - t)) / var * (x - t * M)


def _unconditional(n: int) -> ConditionInputs:
    return ConditionInputs(None, None, torch.ones(n, 0, dtype=torch.bool))


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler", SAMPLERS.names)
def test_diffusion_samplers_reproduce_a_gaussian(sampler, prediction):
    torch.manual_seed(0)
    module = LatentDiffusionModule(n_latent=D, prediction=prediction)
    module.net = _GaussianDenoiser(module.schedule, prediction)
    n_steps = 250 if sampler == "ddpm" else 50
    with torch.no_grad():
        z = module.sample(_unconditional(N_SAMPLES), n_steps=n_steps, sampler=sampler)
    assert torch.allclose(z.mean(0), M, atol=0.05)
    assert torch.allclose(z.std(0), S, rtol=0.05)


def test_ddim_inversion_then_generation_is_identity():
    torch.manual_seed(1)
    module = LatentDiffusionModule(n_latent=D)
    module.net = _GaussianDenoiser(module.schedule, "v")
    z = M + S * torch.randn(500, D)
    cond = _unconditional(500)
    with torch.no_grad():
        back = module.from_noise(module.to_noise(z, cond, n_steps=200), cond, n_steps=200)
    assert (back - z).abs().mean() < 0.02


@pytest.mark.parametrize("method", ODE_METHODS.names)
def test_ode_methods_reproduce_a_gaussian_and_its_density(method):
    torch.manual_seed(0)
    module = LatentFlowModule(n_latent=D)
    module.net = _GaussianVelocity()
    # first order: more steps and a wider tolerance for Euler
    n_steps, tol = (400, 0.05) if method == "euler" else (40, 0.02)
    with torch.no_grad():
        z = module.sample(_unconditional(N_SAMPLES), n_steps=n_steps, method=method)
    assert torch.allclose(z.mean(0), M, atol=0.05)
    assert torch.allclose(z.std(0), S, rtol=0.05)
    x = M + S * torch.randn(64, D)
    exact = Normal(M, S).log_prob(x).sum(-1)
    lp = module.log_prob(x, _unconditional(64), method=method, n_steps=n_steps)
    assert torch.allclose(lp, exact, atol=tol)
    with torch.no_grad():
        noise = module.to_noise(x, _unconditional(64), n_steps=n_steps, method=method)
        back = module.from_noise(noise, _unconditional(64), n_steps=n_steps, method=method)
    assert torch.allclose(back, x, atol=tol)


def test_untrained_flow_is_exactly_standard_normal():
    module = LatentFlowModule(n_latent=4)  # zero-initialised output layer: v = 0
    x = torch.randn(32, 4)
    lp = module.log_prob(x, _unconditional(32))
    expected = -0.5 * (x**2).sum(-1) - 2 * math.log(2 * math.pi)
    assert torch.allclose(lp, expected, atol=1e-6)


def test_unknown_sampler_and_method_name_the_choices():
    module = LatentDiffusionModule(n_latent=2)
    with pytest.raises(ValueError, match=r"Unknown sampler 'dpm'; choose one of \['ddpm'"):
        module.sample(_unconditional(3), sampler="dpm")
    flow = LatentFlowModule(n_latent=2)
    with pytest.raises(ValueError, match="Unknown ODE method 'rk5'"):
        flow.sample(_unconditional(3), method="rk5")
