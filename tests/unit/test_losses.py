"""The DSM loss against closed forms: its expectation for the exact denoiser of a Gaussian, and the t-sampler."""

import math

import pytest
import torch

from helpers.oracles import SDES
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


@pytest.mark.parametrize("weighting, importance", [("sigma2", None), ("likelihood", False), ("likelihood", None)])
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
    importance = DSMLoss(sde, "likelihood")(denoiser, x0, torch.Generator().manual_seed(2))  # on by default
    assert importance.var() < 0.2 * plain.var()


def test_bad_weighting():
    with pytest.raises(ValueError, match="weighting 'snr' is not one of"):
        DSMLoss(VPSDE(), "snr")


def truncated_normal_cdf(x: float, mean: float, std: float, low: float, high: float) -> float:
    """CDF at x of N(mean, std^2) truncated to [low, high], from math.erf (independent of the sampler's ndtr)."""
    phi = lambda v: 0.5 * (1 + math.erf((v - mean) / (std * math.sqrt(2))))
    return (phi(min(max(x, low), high)) - phi(low)) / (phi(high) - phi(low))


def edm_expected(sde, s, p_mean, p_std, sigma_data, n=200_001):
    """E over log sigma~ ~ N(p_mean, p_std^2) truncated to the SDE's levels of (1 + sigma~^2 / sigma_data^2) times the
    exact denoiser's eps-MSE, s^2 / (s^2 + sigma~^2) for x0 ~ N(0, s^2): quadrature in log sigma~."""
    low, high = (-sde.log_snr(torch.tensor(t, dtype=torch.float64)).item() for t in (sde.eps, sde.T))
    level = torch.linspace(low, high, n, dtype=torch.float64)
    density = torch.exp(-0.5 * ((level - p_mean) / p_std) ** 2) / (p_std * math.sqrt(2 * math.pi))
    mass = truncated_normal_cdf(high, p_mean, p_std, -math.inf, math.inf) \
        - truncated_normal_cdf(low, p_mean, p_std, -math.inf, math.inf)
    var = (2 * level).exp()
    y = density / mass * (1 + var / sigma_data**2) * s**2 / (s**2 + var)
    return (0.5 * (y[1:] + y[:-1]) * level.diff()).sum().item()


@pytest.mark.parametrize("weighting, settings", [
    ("min_snr", {}), ("min_snr", {"min_snr_gamma": 0.3}),
    ("edm", {}), ("edm", {"p_mean": 0.5, "p_std": 2.0, "sigma_data": 0.8}),
])
def test_expected_loss_of_the_exact_denoiser_under_min_snr_and_edm(sde, weighting, settings):
    """The same closed form as above under Min-SNR-gamma (lambda / sigma^2 = min(1, gamma sigma^2 / alpha^2), t
    uniform) and EDM (t at log sigma~ drawn from the truncated log-normal, weight 1 + sigma~^2 / sigma_data^2), the
    defaults being Hang et al.'s gamma = 5 and EDM's P_mean = -1.2, P_std = 1.2, sigma_data = 0.5."""
    s, n = 0.8, 400_000
    gen = torch.Generator().manual_seed(3)
    denoiser = GaussianMixture(torch.zeros(1, 2, dtype=torch.float64),
                               stds=torch.tensor([s], dtype=torch.float64)).denoiser(sde)
    values = DSMLoss(sde, weighting, **settings)(denoiser, s * torch.randn(n, 2, dtype=torch.float64, generator=gen),
                                                 gen)
    if weighting == "min_snr":
        gamma = settings.get("min_snr_gamma", 5.0)
        mse = lambda t: sde.alpha(t) ** 2 * s**2 / (sde.alpha(t) ** 2 * s**2 + sde.sigma(t) ** 2)
        expected = quad(lambda t: torch.minimum(gamma * sde.sigma(t) ** 2 / sde.alpha(t) ** 2,
                                                torch.ones_like(t)) * mse(t), sde)
    else:
        full = {"p_mean": -1.2, "p_std": 1.2, "sigma_data": 0.5, **settings}
        expected = edm_expected(sde, s, **full)
    stderr = values.std().item() / math.sqrt(n)
    assert values.mean().item() == pytest.approx(expected, abs=5 * stderr)


@pytest.mark.parametrize("name, p_mean, p_std", [("vp", -1.2, 1.2), ("subvp", 0.0, 3.0), ("ve", 3.0, 1.0),
                                                 ("ve", -6.0, 2.0), ("vp", -9.2, 1.0), ("ve", 9.0, 1.5)])
def test_edm_levels_follow_the_log_normal_truncated_to_the_sdes_levels(name, p_mean, p_std):
    """The drawn t, mapped back to log sigma~ = -lambda_t, has the truncated normal's quantiles: where the SDE's
    levels cut the log-normal (VE's sigma_max = 50 against p_mean 3; its sigma_min = 0.01 against p_mean -6; sub-VP's
    small levels near eps) as where they do not, and where only the log-normal's far tail is on them (VP's levels
    4.6 to 14 sd above p_mean -9.2: their CDF runs from 1 - 1.7e-6 to 1)."""
    sde, n = SDES[name], 200_000
    t, _ = DSMLoss(sde, "edm", p_mean=p_mean, p_std=p_std).sample_time(n, torch.Generator().manual_seed(0))
    assert t.min() >= sde.eps and t.max() <= sde.T
    level = -sde.log_snr(t)
    low, high = (-sde.log_snr(torch.tensor(x, dtype=torch.float64)).item() for x in (sde.eps, sde.T))
    for q in (0.001, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999):
        cdf = truncated_normal_cdf(level.quantile(q).item(), p_mean, p_std, low, high)
        assert cdf == pytest.approx(q, abs=5 * math.sqrt(q * (1 - q) / n) + 1e-6)


def test_edm_and_min_snr_weights_in_closed_form():
    """EDM's eps-MSE weight is 1 + sigma~^2 / sigma_data^2 at the drawn time; Min-SNR-gamma's is min(1, gamma sigma^2)
    on VE (alpha = 1)."""
    sde = SDES["ve"]
    t, w = DSMLoss(sde, "edm", sigma_data=0.7).sample_time(5000, torch.Generator().manual_seed(1))
    torch.testing.assert_close(w, 1 + sde.sigma(t) ** 2 / 0.49, rtol=1e-9, atol=0)
    t, w = DSMLoss(sde, "min_snr", min_snr_gamma=2.0).sample_time(5000, torch.Generator().manual_seed(1))
    assert t.dtype == w.dtype == torch.float64
    torch.testing.assert_close(w, (2 * sde.sigma(t) ** 2).clamp(max=1), rtol=1e-12, atol=0)
    assert 0 < (w < 1).float().mean() < 1  # both sides of SNR = gamma are drawn


@pytest.mark.parametrize("weighting, settings, message", [
    ("sigma2", {"p_mean": 0.0}, "loss p_mean belongs to weighting edm, not sigma2; drop it (or set loss=edm)"),
    ("edm", {"min_snr_gamma": 5.0}, "loss min_snr_gamma belongs to weighting min_snr, not edm"),
    ("sigma2", {"importance_sampling": True}, "loss importance_sampling belongs to weighting likelihood (its time "
                                              "proposal), not sigma2; drop it (or set loss=likelihood)"),
    ("min_snr", {"importance_sampling": False}, "loss importance_sampling belongs to weighting likelihood"),
    ("min_snr", {"min_snr_gamma": 0.0}, "loss min_snr_gamma must be a positive number; got 0.0"),
    ("min_snr", {"min_snr_gamma": "5"}, "loss min_snr_gamma must be a positive number; got '5'"),
    ("edm", {"p_std": -1.0}, "loss p_std must be a positive number; got -1.0"),
    ("edm", {"sigma_data": float("inf")}, "loss sigma_data must be a positive number; got inf"),
    ("edm", {"p_mean": float("nan")}, "loss p_mean must be a finite number; got nan"),
    ("edm", {"p_mean": True}, "loss p_mean must be a finite number; got True"),
    ("edm", {"p_mean": 12.0, "p_std": 1.0}, "loss p_mean=12, p_std=1 put 1.5e-12 of the log-normal on the SDE's "
                                            "noise levels sigma/alpha in [0.0105, 152] (t in [0.001, 1]): move "
                                            "p_mean into [-4.56, 5.02]"),
    ("edm", {"p_mean": 10.0, "p_std": 1.0}, "loss p_mean=10, p_std=1 put 3.3e-07 of the log-normal"),  # < 1e-6
    ("edm", {"p_std": 1e9}, "loss p_mean=-1.2, p_std=1e+09 put 3.8e-09 of the log-normal on the SDE's noise levels "
                            "sigma/alpha in [0.0105, 152] (t in [0.001, 1]): lower p_std (the levels span 9.6 in log "
                            "sigma/alpha)"),
])
def test_a_weightings_settings_are_checked_when_built(weighting, settings, message):
    with pytest.raises(ValueError) as err:
        DSMLoss(VPSDE(), weighting, **settings)
    assert message in str(err.value)


def test_a_weightings_defaults_and_given_settings():
    assert DSMLoss(VPSDE(), "edm").settings == {"p_mean": -1.2, "p_std": 1.2, "sigma_data": 0.5}
    assert DSMLoss(VPSDE(), "edm", p_mean=0, sigma_data=1).settings == {"p_mean": 0.0, "p_std": 1.2, "sigma_data": 1.0}
    assert DSMLoss(VPSDE(), "min_snr").settings == {"min_snr_gamma": 5.0}
    assert DSMLoss(VPSDE(), "sigma2").settings == {}


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_edm_levels_at_the_ends_map_to_times_inside_t_min_to_T(name):
    """u = 0 and 1 are the truncation's ends: their times are t_min and T (rounded through lambda's inverse, they fell
    outside by ~1e-11 on VP and sub-VP; the loss network must never see a t outside its training range)."""
    sde = SDES[name]
    sampler = DSMLoss(sde, "edm", t_min=1e-3).levels
    t, _ = sampler.sample(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert 1e-3 <= t[0] < 1e-3 * (1 + 1e-6) and sde.T * (1 - 1e-6) < t[1] <= sde.T  # sub-VP's inverse: 9e-8 off


@pytest.mark.parametrize("name, p_mean", [("vp", -9.2), ("ve", -8.5), ("vp", 9.7), ("vp", -1.2)])
def test_edm_levels_stay_finite_at_the_uniforms_extremes(name, p_mean):
    """The largest uniforms float64 draws (1 - 2^-53) and the smallest: the inverse CDF at 1 is infinite, which
    gave t = NaN on VP and an infinite weight on VE where the upper end's CDF rounds to 1."""
    sde = SDES[name]
    loss = DSMLoss(sde, "edm", p_mean=p_mean, p_std=1.0)
    t, log_level = loss.levels.sample(torch.tensor([0.0, 2.0**-60, 1e-12, 0.5, 1 - 1e-12, 1 - 2.0**-53, 1.0],
                                                   dtype=torch.float64))
    assert torch.isfinite(t).all() and torch.isfinite(log_level).all()
    assert (t >= sde.eps).all() and (t <= sde.T).all()
