"""The DSM loss against closed forms: its expectation for the exact denoiser of a Gaussian, and the t-sampler."""

import math

import pytest
import torch

from lightning_sde.exact import GaussianMixture
from lightning_sde.losses import DSMLoss, ImportanceTimeSampler
from lightning_sde.sde import VPSDE


def quad(f, sde, n=200_001):
    """(1 / (T - eps)) int_eps^T f(t) dt on a log grid (the integrands are ~1/t near 0)."""
    t = torch.logspace(math.log10(sde.eps), math.log10(sde.T), n, dtype=torch.float64)
    y = f(t)
    return (0.5 * (y[1:] + y[:-1]) * t.diff()).sum().item() / (sde.T - sde.eps)


def test_importance_sampler_matches_the_vp_closed_form():
    """On VP, int g^2 / sigma^2 dt = log(expm1(B(t))): the normalizer and the CDF of the sampled t."""
    sde = VPSDE()
    sampler = ImportanceTimeSampler(sde)
    log_em1 = lambda t: torch.log(torch.expm1(sde.integrated_beta(torch.as_tensor(t, dtype=torch.float64))))
    Z = (log_em1(sde.T) - log_em1(sde.eps)).item()
    assert sampler.normalizer == pytest.approx(Z, rel=1e-5)
    t = sampler.sample(torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert t.min() >= sde.eps and t.max() <= sde.T
    for q in (0.1, 0.3, 0.5, 0.7, 0.9):
        exact_cdf = ((log_em1(t.quantile(q)) - log_em1(sde.eps)) / Z).item()
        assert exact_cdf == pytest.approx(q, abs=0.005)  # 5 x the sd of an empirical quantile's level at n = 2e5


@pytest.mark.parametrize("weighting, importance", [("sigma2", False), ("likelihood", False), ("likelihood", True)])
def test_expected_loss_of_the_exact_denoiser(sde, weighting, importance):
    """x0 ~ N(0, s^2 I): E[z | x_t] = sigma x_t / v, v = alpha^2 s^2 + sigma^2, so the exact denoiser's eps-MSE at t is
    alpha^2 s^2 / v. The loss must average lambda(t) / sigma^2 times that over t ~ U[eps, T]."""
    s, n = 0.8, 400_000
    gen = torch.Generator().manual_seed(0)
    denoiser = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64),
                               stds=torch.tensor([s], dtype=torch.float64)).denoiser(sde)
    loss = DSMLoss(sde, weighting, importance_sampling=importance)
    x0 = s * torch.randn(n, 2, dtype=torch.float64, generator=gen)
    values = loss(denoiser, x0, gen)
    mse = lambda t: sde.alpha(t) ** 2 * s**2 / (sde.alpha(t) ** 2 * s**2 + sde.sigma(t) ** 2)
    weight = (lambda t: torch.ones_like(t)) if weighting == "sigma2" else (lambda t: sde.g2(t) / sde.sigma(t) ** 2)
    expected = quad(lambda t: weight(t) * mse(t), sde)
    stderr = values.std().item() / math.sqrt(n)
    assert values.mean().item() == pytest.approx(expected, abs=5 * stderr)


def test_importance_sampling_reduces_variance():
    sde, s = VPSDE(), 0.8
    denoiser = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64),
                               stds=torch.tensor([s], dtype=torch.float64)).denoiser(sde)
    x0 = s * torch.randn(50_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    plain = DSMLoss(sde, "likelihood", importance_sampling=False)(denoiser, x0, torch.Generator().manual_seed(2))
    importance = DSMLoss(sde, "likelihood", importance_sampling=True)(denoiser, x0, torch.Generator().manual_seed(2))
    assert importance.var() < 0.2 * plain.var()


def test_bad_weighting():
    with pytest.raises(ValueError, match="weighting 'snr' is not one of"):
        DSMLoss(VPSDE(), "snr")
