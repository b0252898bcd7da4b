"""The exact mixture oracle against torch.distributions, autograd, and closed-form posteriors."""

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from lightning_sde.exact import GaussianMixture, eight_gaussians, random_mixture, swiss_roll
from lightning_sde.models.denoiser import PARAMETERIZATIONS, Denoiser, eps_to_target
from lightning_sde.sde import VPSDE

MIXTURES = {"eight_gaussians": eight_gaussians(), "swiss_roll": swiss_roll(),
            "random16": random_mixture(16, 10, seed=0)}


def torch_marginal(mix: GaussianMixture, alpha: float, sigma: float):
    cov = alpha**2 * mix.covs + sigma**2 * torch.eye(mix.dim, dtype=torch.float64)
    return MixtureSameFamily(Categorical(logits=mix.log_weights), MultivariateNormal(alpha * mix.means, cov))


@pytest.mark.parametrize("name", MIXTURES)
def test_marginal_log_prob_matches_torch(name, sde):
    mix = MIXTURES[name]
    for t in (1e-3, 0.1, 0.5, 1.0):
        t = torch.tensor(t, dtype=torch.float64)
        ref = torch_marginal(mix, sde.alpha(t).item(), sde.sigma(t).item())
        x = ref.sample((64,))
        torch.testing.assert_close(mix.marginal_log_prob(sde, x, t), ref.log_prob(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", MIXTURES)
def test_score_is_gradient_of_log_density(name, sde):
    mix = MIXTURES[name]
    gen = torch.Generator().manual_seed(1)
    t = torch.rand(32, dtype=torch.float64, generator=gen) * (1 - 1e-3) + 1e-3  # per-sample times
    x = sde.marginal(mix.sample(32, gen), t, torch.randn(32, mix.dim, dtype=torch.float64, generator=gen))
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.marginal_log_prob(sde, x, t).sum(), x)
    torch.testing.assert_close(mix.marginal_score(sde, x.detach(), t), grad, rtol=1e-9, atol=1e-9)


def test_sampling_moments():
    mix = random_mixture(4, 3, seed=2)
    x = mix.sample(400_000, torch.Generator().manual_seed(0))
    w = mix.log_weights.exp()
    mean = (w[:, None] * mix.means).sum(0)
    centred = mix.means - mean
    cov = (w[:, None, None] * (mix.covs + centred[:, :, None] * centred[:, None, :])).sum(0)
    # standard error of each mean is sqrt(var / n) <= sqrt(max var / 4e5); 5 SE
    se = (cov.diagonal().max() / 400_000).sqrt()
    torch.testing.assert_close(x.mean(0), mean, rtol=0, atol=5 * se.item())
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0, atol=0.05 * cov.abs().max().item())
    # a component's own covariance, along each of its axes (the mixture's spread of means dwarfs it above)
    axes, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    variances = torch.tensor([0.01, 0.25, 1.0], dtype=torch.float64)
    one = GaussianMixture(torch.zeros(1, 3), covs=((axes * variances) @ axes.T)[None])
    along = one.sample(200_000, torch.Generator().manual_seed(0)) @ axes
    torch.testing.assert_close(along.var(0), variances, rtol=0.02, atol=0)  # SE of a variance: sqrt(2 / n) = 0.3 %


def test_single_gaussian_posterior_mean(sde):
    """For x0 ~ N(mu, s^2 I): E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu)."""
    mu, s = torch.tensor([[1.0, -2.0]], dtype=torch.float64), 0.7
    mix = GaussianMixture(mu, stds=torch.tensor([s], dtype=torch.float64))
    den = mix.denoiser(sde)
    x, t = torch.randn(16, 2, dtype=torch.float64), torch.tensor(0.37, dtype=torch.float64)
    a, sig = sde.alpha(t), sde.sigma(t)
    expected = mu + a * s**2 / (a**2 * s**2 + sig**2) * (x - a * mu)
    torch.testing.assert_close(den(x, t).x0, expected, rtol=1e-12, atol=1e-12)
    assert den.nfe == 1


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_parameterizations_recover_eps(parameterization):
    """A net that outputs the exact target in any parameterization yields the same eps, score and x0."""
    sde, mix = VPSDE(), eight_gaussians()
    exact = mix.denoiser(sde)

    def net(x, t):
        pred = exact(x, t)
        return eps_to_target(parameterization, pred.eps, pred.x0, pred.alpha, pred.sigma)

    den = Denoiser(net, sde, parameterization, shape=(2,))
    x, t = 3 * torch.randn(10, 2, dtype=torch.float64), torch.linspace(0.01, 1, 10, dtype=torch.float64)
    ref, got = exact(x, t), den(x, t)
    torch.testing.assert_close(got.eps, ref.eps)
    torch.testing.assert_close(got.x0, ref.x0)
    torch.testing.assert_close(got.score, ref.score)


def test_bad_mixtures():
    with pytest.raises(ValueError, match="covs"):
        GaussianMixture(torch.zeros(2, 3), covs=-torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match="exactly one"):
        GaussianMixture(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(2, 3), stds=torch.ones(2), weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="parameterization"):
        Denoiser(lambda x, t: x, VPSDE(), "noise", shape=(2,))
