"""SDEs against closed forms, the moment equations of the forward SDE, and Monte-Carlo of the SDE itself."""

import math

import pytest
import torch

from helpers.oracles import SDES
from lightning_sde.sde import VESDE, VPSDE, DiscreteVPSDE, SubVPSDE, build_sde

TIMES = torch.linspace(1e-3, 1.0, 41, dtype=torch.float64)
# DDPM's schedule (Ho et al. 2020): beta_k linear from 1e-4 to 0.02 over 1000 steps, alphas_cumprod = prod (1 - beta)
DDPM_CUMPROD = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
ALL_SDES = {**SDES, "vp_discrete": DiscreteVPSDE(DDPM_CUMPROD)}


@pytest.fixture(params=sorted(ALL_SDES), ids=sorted(ALL_SDES))
def sde(request):
    """Each SDE in turn: the standard three and DDPM's discrete schedule as a VP SDE."""
    return ALL_SDES[request.param]


def test_vp_closed_forms():
    sde, t = VPSDE(0.1, 20.0), TIMES
    B = 0.1 * t + 0.5 * 19.9 * t**2  # int_0^t beta
    torch.testing.assert_close(sde.alpha(t), torch.exp(-0.5 * B))
    torch.testing.assert_close(sde.sigma(t) ** 2 + sde.alpha(t) ** 2, torch.ones_like(t))
    torch.testing.assert_close(sde.g2(t), 0.1 + t * 19.9)
    torch.testing.assert_close(sde.f(t), -0.5 * (0.1 + t * 19.9))


def test_subvp_closed_forms():
    sde, t = SubVPSDE(0.1, 20.0), TIMES
    B = 0.1 * t + 0.5 * 19.9 * t**2
    torch.testing.assert_close(sde.sigma(t), 1 - torch.exp(-B))
    torch.testing.assert_close(sde.g2(t), (0.1 + t * 19.9) * (1 - torch.exp(-2 * B)))


def test_ve_closed_forms_and_square_root():
    sde, t = VESDE(0.01, 50.0), TIMES
    torch.testing.assert_close(sde.sigma(t), 0.01 * (50.0 / 0.01) ** t)
    torch.testing.assert_close(sde.alpha(t), torch.ones_like(t))
    # g = sqrt(d sigma^2 / dt) = sigma(t) sqrt(2 log(sigma_max / sigma_min)), not d sigma / dt
    torch.testing.assert_close(sde.g(t), sde.sigma(t) * math.sqrt(2 * math.log(50.0 / 0.01)))
    assert sde.prior_std == 50.0


@pytest.mark.parametrize("T", [0.5, 2.0])
def test_ve_prior_is_the_marginal_std_at_T(T):
    """sigma_max is sigma at t = 1: the prior of a VE SDE ending at another T has sigma(T) (data aside)."""
    sde = VESDE(0.01, 50.0, T=T)
    assert sde.prior_std == pytest.approx(float(sde.sigma(torch.tensor(T, dtype=torch.float64))), rel=1e-12)
    assert sde.prior_std != pytest.approx(50.0)


def test_moment_equations(sde):
    """The mean scale and variance of dx = f x dt + g dw obey d alpha/dt = f alpha, d sigma^2/dt = 2 f sigma^2 + g^2."""
    t = TIMES.clone().requires_grad_(True)
    alpha = sde.alpha(t)
    (dalpha,) = torch.autograd.grad(alpha.sum(), t) if alpha.requires_grad else (torch.zeros_like(t),)  # VE: alpha = 1
    (dvar,) = torch.autograd.grad((sde.sigma(t) ** 2).sum(), t)
    t = t.detach()
    torch.testing.assert_close(dalpha, sde.f(t) * sde.alpha(t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dvar, 2 * sde.f(t) * sde.sigma(t) ** 2 + sde.g2(t), rtol=1e-10, atol=1e-10)


def test_monte_carlo_marginals(sde):
    """Simulate the forward SDE from x_s ~ p_s(.|x0) (fine Euler-Maruyama) and compare with p_t(.|x0)."""
    gen = torch.Generator().manual_seed(0)
    n, steps, x0 = 20000, 2000, 1.5
    s, t = 0.05, 0.6
    x = (sde.alpha(torch.tensor(s, dtype=torch.float64)) * x0
         + sde.sigma(torch.tensor(s, dtype=torch.float64)) * torch.randn(n, dtype=torch.float64, generator=gen))
    times = torch.linspace(s, t, steps + 1, dtype=torch.float64)
    for a, b in zip(times[:-1], times[1:]):
        dt = b - a
        x = x + sde.f(a) * x * dt + sde.g(a) * dt.sqrt() * torch.randn(n, dtype=torch.float64, generator=gen)
    t = torch.tensor(t, dtype=torch.float64)
    mean, std = sde.alpha(t) * x0, sde.sigma(t)
    # 5 standard errors of the estimates; EM's O(dt) bias with 2000 steps is far smaller.
    assert abs(x.mean() - mean) < 5 * std / math.sqrt(n)
    assert abs(x.std() / std - 1) < 5 / math.sqrt(2 * n)


@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_log_snr_inverse_holds_in_float32_down_to_eps(name):
    """Near t = 0, alpha ~ 1: an inverse through log(alpha) cancels (sub-VP lost t to 3e-4 relative at eps)."""
    sde = SDES[name]
    t = torch.linspace(sde.eps, 1.0, 1000, dtype=torch.float32)
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=2e-6, atol=0)


def test_log_snr_inverse_and_transition(sde):
    t = TIMES
    lam = sde.log_snr(t)
    assert (lam[1:] < lam[:-1]).all(), "lambda_t must decrease"
    torch.testing.assert_close(sde.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-12)
    s = t[:-1]
    a, G2 = sde.transition(t[1:], s)
    # composing p_s(.|x0) with the transition gives p_t(.|x0)
    torch.testing.assert_close(a * sde.alpha(s), sde.alpha(t[1:]))
    torch.testing.assert_close(a**2 * sde.sigma(s) ** 2 + G2, sde.sigma(t[1:]) ** 2)
    assert (G2 > 0).all()


def test_prior_logp(sde):
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, sde.prior_std).log_prob(x).sum((1, 2))
    torch.testing.assert_close(sde.prior_logp(x), ref)


def test_discrete_vp_interpolates_the_schedule():
    """alpha_t^2 hits alphas_cumprod[k] at t_k = (k + 1) / N, log alpha is linear in between (and beyond the ends),
    and the model's timestep input is k there."""
    sde = DiscreteVPSDE(DDPM_CUMPROD)
    k = torch.arange(1000, dtype=torch.float64)
    t_k = (k + 1) / 1000
    torch.testing.assert_close(sde.alpha(t_k) ** 2, DDPM_CUMPROD, rtol=1e-13, atol=0)
    torch.testing.assert_close(sde.timestep(t_k), k)
    assert (sde.eps, sde.T, sde.prior_std) == (1e-3, 1.0, 1.0)
    mid = (t_k[:-1] + t_k[1:]) / 2
    torch.testing.assert_close(sde.alpha(mid).log(), 0.25 * (DDPM_CUMPROD[:-1].log() + DDPM_CUMPROD[1:].log()))
    # beta of the discrete chain, 1 - alphas_cumprod[k] / alphas_cumprod[k-1], is g^2 dt over one step (to O(beta^2))
    beta = 1 - DDPM_CUMPROD[1:] / DDPM_CUMPROD[:-1]
    torch.testing.assert_close(sde.g2(mid) / 1000, beta, rtol=2e-2, atol=0)
    below = torch.tensor([0.0, 0.5e-3], dtype=torch.float64)
    slope = (DDPM_CUMPROD[1].log() - DDPM_CUMPROD[0].log()) / 2 * 1000
    torch.testing.assert_close(sde.alpha(below).log(), 0.5 * DDPM_CUMPROD[0].log() + slope * (below - 1e-3))


@pytest.mark.parametrize("cumprod, match", [
    ([0.9], "at least 2"),
    ([0.9, 0.95], "decrease strictly"),
    ([0.9, 0.0], "zero-terminal"),
    ([1.0, 0.5], "inside"),
    ([0.9, float("nan")], "finite"),
])
def test_discrete_vp_refuses_bad_schedules(cumprod, match):
    with pytest.raises(ValueError, match=match):
        DiscreteVPSDE(cumprod)


def test_reverse_and_ode_drifts():
    sde, x, t = VPSDE(), torch.randn(4, 2, dtype=torch.float64), torch.full((4,), 0.3, dtype=torch.float64)
    score = torch.randn(4, 2, dtype=torch.float64)
    f, g2 = sde.f(t)[:, None] * x, sde.g2(t)[:, None]
    torch.testing.assert_close(sde.reverse_drift(x, t, score), f - g2 * score)
    torch.testing.assert_close(sde.ode_drift(x, t, score), f - 0.5 * g2 * score)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("vp", {"eps": 1.0}, "eps < T"),
        ("vp", {"eps": 0.0}, "eps < T"),
        ("vp", {"beta_min": 0.0}, "beta_min"),
        ("vp", {"beta_min": 5.0, "beta_max": 1.0}, "beta_max"),
        ("ve", {"sigma_min": 0.0}, "sigma_min"),
        ("ve", {"sigma_min": 5.0, "sigma_max": 1.0}, "sigma_min < sigma_max"),
        ("subvp", {"beta": 1.0}, "beta"),
        ("vpp", {}, "choose one of"),
    ],
)
def test_bad_parameters(name, params, match):
    with pytest.raises(ValueError, match=match):
        build_sde(name, **params)


def test_an_sde_whose_functions_disagree_is_refused_when_built(monkeypatch):
    """A user's SDE was never checked: an inverse log-SNR off by half moved every log-SNR-grid sampler (Heun 23
    off), alpha(0) = 1.5 scored log p -27.8 for -2.3, a negative sigma trained on silently; all exit 0."""
    from lightning_sde.sde import check_sde, sde_from_config

    class HalfInverse(VPSDE):
        def t_from_log_snr(self, lam):
            return super().t_from_log_snr(lam) / 2

    class WideAlpha(VPSDE):
        def alpha(self, t):
            return 1.5 * super().alpha(t)

    class NegativeSigma(VESDE):
        def sigma(self, t):
            return -super().sigma(t)

    class NoSqrt(VESDE):  # g = d sigma^2/dt used as g^2's square root: the VE pitfall
        def g2(self, t):
            return super().g2(t) ** 2

    with pytest.raises(ValueError, match=r"^HalfInverse: t_from_log_snr is not log_snr's inverse: t="):
        check_sde(HalfInverse())
    with pytest.raises(ValueError, match=r"^WideAlpha: needs 0 < alpha\(t\) <= 1 and sigma\(t\) > 0 .* alpha 1.5"):
        check_sde(WideAlpha())
    with pytest.raises(ValueError, match=r"^NegativeSigma: needs 0 < alpha\(t\) <= 1 and sigma\(t\) > 0"):
        check_sde(NegativeSigma())
    with pytest.raises(ValueError, match=r"^NoSqrt: g2\(t\) = .* but d sigma\^2 / dt - 2 f sigma\^2 = "):
        check_sde(NoSqrt())
    class Float32(VPSDE):  # computed in float32: finite-difference noise is no inconsistency
        def alpha(self, t):
            return super().alpha(t.float()).to(t.dtype)

        def sigma(self, t):
            return super().sigma(t.float()).to(t.dtype)

    for sde in (*SDES.values(), VPSDE(beta_max=50, eps=1e-6, T=2.0), VESDE(0.002, 1348.0), SubVPSDE(T=0.5),
                Float32()):
        check_sde(sde)
    monkeypatch.setattr(VPSDE, "f", lambda self, t: -self.beta(t))  # half-beta dropped: f disagrees with alpha
    with pytest.raises(ValueError, match=r"^config sde: VPSDE: f\(t\) = .* but d log alpha / dt = "):
        sde_from_config({"_target_": "lightning_sde.sde.VPSDE"})
