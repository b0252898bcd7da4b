"""Time sampling of the DSM loss against closed forms: the importance density p(t) ~ g^2 / sigma^2 (uniform on VE,
log expm1(B(t)) as CDF on VP), its normaliser and the weight that makes the importance-sampled loss unbiased, the
uniform sampler, and what a generator and the data's dtype fix."""

import math

import pytest
import torch

from helpers.oracles import SDES
from lightning_sde.exact import GaussianMixture
from lightning_sde.losses import DSMLoss, ImportanceTimeSampler
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.sde import VESDE, VPSDE


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


def vp_log_expm1_B(sde, t):
    """L(t) = log(exp(B(t)) - 1), B(t) = beta_min t + (beta_max - beta_min) t^2 / 2: dL/dt = g^2 / sigma^2 on VP."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.log(torch.expm1(sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2))


def test_ve_importance_density_is_uniform_with_the_exact_normaliser():
    """On VE g^2 / sigma^2 = 2 log(sigma_max / sigma_min) for every t: p(t) is uniform on [eps, T] (the trapezoid rule
    and the linear inverse CDF are exact) and Z = 2 log(sigma_max / sigma_min) (T - eps)."""
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, eps=1e-5)
    sampler = ImportanceTimeSampler(sde)
    assert sampler.normalizer == pytest.approx(2 * math.log(5000.0) * (sde.T - sde.eps), rel=1e-12)
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    t = sampler.sample(u)
    assert t.dtype == torch.float64
    torch.testing.assert_close(t, sde.eps + u * (sde.T - sde.eps), rtol=1e-13, atol=1e-15)


def test_vp_importance_sampler_inverts_the_closed_form_cdf():
    """On VP the CDF of p(t) is (L(t) - L(eps)) / (L(T) - L(eps)); the tabulated inverse is within its trapezoid error
    (1.5e-8 with 20k log-spaced nodes) of it, and so is the normaliser."""
    sde = SDES["vp"]
    sampler = ImportanceTimeSampler(sde)
    Z = (vp_log_expm1_B(sde, sde.T) - vp_log_expm1_B(sde, sde.eps)).item()
    assert sampler.normalizer == pytest.approx(Z, rel=1e-7)
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    t = sampler.sample(u)
    assert bool((t[1:] > t[:-1]).all())
    cdf = (vp_log_expm1_B(sde, t) - vp_log_expm1_B(sde, sde.eps)) / Z
    torch.testing.assert_close(cdf, u, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", sorted(SDES))
def test_inverse_cdf_maps_0_to_eps_and_1_to_T(name):
    """The ends of [0, 1] go to the ends of [eps, T] to rounding: no time below eps or above T, none short of T."""
    sde = SDES[name]
    t = ImportanceTimeSampler(sde).sample(f64(0.0, 1.0))
    assert t[0].item() == pytest.approx(sde.eps, rel=1e-13)
    assert t[1].item() == pytest.approx(sde.T, rel=1e-13)


def test_float32_uniforms_are_mapped_as_their_float64_values():
    sampler = ImportanceTimeSampler(SDES["vp"])
    u = torch.rand(64, generator=torch.Generator().manual_seed(0))
    t = sampler.sample(u)
    assert t.dtype == torch.float64
    torch.testing.assert_close(t, sampler.sample(u.double()), rtol=0, atol=0)


def test_importance_weight_makes_the_weighted_loss_unbiased():
    """w = Z / (T - eps) and p(t) = (g^2 / sigma^2) / Z, so for every f: E_p[w f(t)] = E_U[(g^2 / sigma^2) f(t)]. With
    f = sigma^2 / g^2 the right side is 1 (E[w / lambda] = 1); with f the exact denoiser's eps-MSE on N(0, s^2) it is
    the likelihood-weighted loss. Stratified u makes both expectations deterministic quadratures."""
    sde, s = SDES["vp"], 0.8
    loss = DSMLoss(sde, "likelihood")  # importance sampling is the default for likelihood weighting
    t_rand, w = loss.sample_time(8)
    assert torch.equal(w, torch.full((8,), w[0].item(), dtype=torch.float64))
    n = 100_000
    t = loss.importance.sample((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    w = w[0].item()
    assert (w * sde.sigma(t) ** 2 / sde.g2(t)).mean().item() == pytest.approx(1.0, abs=1e-6)
    mse = lambda t: sde.alpha(t) ** 2 * s**2 / (sde.alpha(t) ** 2 * s**2 + sde.sigma(t) ** 2)  # noqa: E731
    grid = torch.logspace(math.log10(sde.eps), 0.0, 400_001, dtype=torch.float64)
    y = sde.g2(grid) / sde.sigma(grid) ** 2 * mse(grid)
    uniform = (0.5 * (y[1:] + y[:-1]) * grid.diff()).sum().item() / (sde.T - sde.eps)
    assert (w * mse(t)).mean().item() == pytest.approx(uniform, rel=1e-5)


def test_ve_importance_weight_is_the_constant_likelihood_weight():
    """On VE p(t) is uniform, so the importance weight Z / (T - eps) equals g^2 / sigma^2 = 2 log(sigma_max / sigma_min)
    (a large eps makes a wrong range in either place visible)."""
    sde = VESDE(sigma_min=0.01, sigma_max=50.0, eps=0.1)
    t, w = DSMLoss(sde, "likelihood", importance_sampling=True).sample_time(1000, torch.Generator().manual_seed(0))
    assert t.dtype == w.dtype == torch.float64
    assert t.min() >= sde.eps and t.max() <= sde.T
    torch.testing.assert_close(w, torch.full((1000,), 2 * math.log(5000.0), dtype=torch.float64), rtol=1e-12, atol=0)
    _, w_plain = DSMLoss(sde, "likelihood", importance_sampling=False).sample_time(10)
    torch.testing.assert_close(w_plain, torch.full((10,), 2 * math.log(5000.0), dtype=torch.float64))


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_uniform_times_cover_eps_to_T_with_the_plain_weight(weighting):
    """Without importance sampling t ~ U[eps, T] (float64) and w = 1 (sigma2) or g^2 / sigma^2 at t (likelihood)."""
    sde, n = VPSDE(eps=0.25), 20_000
    plain = {"importance_sampling": False} if weighting == "likelihood" else {}  # (a setting of likelihood's alone)
    t, w = DSMLoss(sde, weighting, **plain).sample_time(n, torch.Generator().manual_seed(0))
    assert t.dtype == w.dtype == torch.float64 and t.shape == w.shape == (n,)
    assert t.min() >= sde.eps and t.max() <= sde.T
    width = sde.T - sde.eps
    assert t.mean().item() == pytest.approx((sde.eps + sde.T) / 2, abs=5 * width / math.sqrt(12 * n))
    assert t.max().item() > sde.T - 10 * width / n and t.min().item() < sde.eps + 10 * width / n
    expected = torch.ones_like(t) if weighting == "sigma2" else sde.g2(t) / sde.sigma(t) ** 2
    torch.testing.assert_close(w, expected, rtol=1e-14, atol=0)


class RecordingNet(torch.nn.Module):
    """Predicts eps = 0 and records the inputs x_t it is called with."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x, t):
        self.inputs.append(x.detach().clone())
        return torch.zeros_like(x)


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_a_generator_fixes_the_times_the_noise_and_the_loss(weighting):
    sde = SDES["vp"]
    loss = DSMLoss(sde, weighting)
    den = GaussianMixture(torch.zeros(1, 3, dtype=torch.float64), stds=f64(0.7)).denoiser(sde)
    x0 = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for a, b in zip(loss.sample_time(16, torch.Generator().manual_seed(1)),
                    loss.sample_time(16, torch.Generator().manual_seed(1))):
        assert torch.equal(a, b)
    first = loss(den, x0, torch.Generator().manual_seed(1))
    assert torch.equal(first, loss(den, x0, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, loss(den, x0, torch.Generator().manual_seed(2)))


def test_the_loss_keeps_the_datas_dtype():
    """float32 data give a float32 loss; float64 data are noised with float64 noise (a float32 draw would show up as
    x_t / sigma_t being float32-representable)."""
    sde = VESDE()
    net = RecordingNet()
    den = Denoiser(net, sde, "eps", shape=(4,))
    loss = DSMLoss(sde, "likelihood")
    x32 = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    assert loss(den, x32, torch.Generator().manual_seed(0)).dtype == torch.float32
    assert loss(den, x32).dtype == torch.float32
    x0 = torch.zeros(256, 4, dtype=torch.float64)
    t, _ = loss.sample_time(256, torch.Generator().manual_seed(3))
    values = loss(den, x0, torch.Generator().manual_seed(3))
    assert values.dtype == torch.float64
    z = net.inputs[-1] / sde.sigma(t)[:, None]  # x_t = sigma_t z for x0 = 0 (eps = 0: the loss is w mean z^2)
    torch.testing.assert_close(values, 2 * math.log(5000.0) * z.pow(2).mean(1))
    assert (z - z.float().double()).abs().max().item() > 1e-9


@pytest.mark.parametrize("eps", [2e-3, 1e-5, 3e-4])
def test_importance_sampled_times_stay_in_eps_to_T(eps):
    """The tabulated grid ends exactly at eps and T: a grid from float32 log10s started a hair below eps."""
    sampler = ImportanceTimeSampler(VPSDE(eps=eps))
    t = sampler.sample(torch.cat([torch.zeros(1, dtype=torch.float64), torch.rand(10_000, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(0)), torch.ones(1, dtype=torch.float64)]))
    assert t.min() == eps and t.max() == 1.0


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_t_min_sets_the_smallest_training_time_below_the_sampling_eps(weighting):
    """score_sde trains VP from t = 1e-5 and samples from eps = 1e-3: loss.t_min. The times stay in [t_min, T], reach
    down to it, and the likelihood weighting's normaliser is the closed form's over [t_min, T]."""
    sde, t_min = VPSDE(eps=1e-3), 1e-5
    loss = DSMLoss(sde, weighting=weighting, t_min=t_min)
    t, weight = loss.sample_time(200_000, torch.Generator().manual_seed(0))
    assert t.min().item() >= t_min and t.max().item() <= sde.T
    assert (t < sde.eps).float().mean().item() > (0.001 if weighting == "sigma2" else 0.1)  # below eps, as trained
    if weighting == "likelihood":
        Z = (vp_log_expm1_B(sde, sde.T) - vp_log_expm1_B(sde, t_min)).item()
        assert weight[0].item() == pytest.approx(Z / (sde.T - t_min), rel=1e-6)
    assert DSMLoss(sde, weighting=weighting).sample_time(1000, torch.Generator())[0].min().item() >= sde.eps


@pytest.mark.parametrize("t_min", [0.0, 1.0, -1e-5, True, "1e-5"])
def test_a_t_min_outside_the_time_range_is_refused(t_min):
    with pytest.raises(ValueError, match="loss t_min must be null"):
        DSMLoss(VPSDE(), t_min=t_min)


def test_a_t_min_below_a_discrete_schedules_first_timestep_is_refused():
    """Below 1/N alpha is extrapolated past 1: sigma NaN, a NaN loss (sigma2) or a crash (likelihood weighting)."""
    from lightning_sde.sde import DiscreteVPSDE

    sde = DiscreteVPSDE(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64).cumsum(0).div(1000).clamp(max=0.5))
    with pytest.raises(ValueError, match=r"t_min must be at least the discrete schedule's first timestep, 1/N = "
                                         r"0\.001 .*; got 1e-05"):
        DSMLoss(sde, weighting="likelihood", t_min=1e-5)
    assert DSMLoss(sde, t_min=1e-3).t_min == 1e-3
