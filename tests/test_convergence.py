"""Every deterministic sampler converges to the true probability-flow ODE solution at its theoretical order.

Truths, never a sampler against itself:
  * Gaussian mixture: a dopri5 solve at rtol = atol = 1e-12, whose own error is bounded by comparing it with a
    solve 100x looser (asserted to lie >= 100x below every error it is used to measure).
  * single Gaussian x_0 ~ N(mu, diag(s^2)): the ODE is linear and its flow map is closed form,
      x_t = alpha_t mu + sqrt(alpha_t^2 s^2 + sigma_t^2) / sqrt(alpha_T^2 s^2 + sigma_T^2) (x_T - alpha_T mu),
    with alpha_t, sigma_t written out below from Song et al. 2021 (not read off the library), so it checks the
    reference solver as well as the samplers.

Order test. A method of order p has global error e(N) = C N^-p (1 + D/N + O(N^-2)) at N steps, so the log-log
slope between N and 2N is p + log2((1 + D/N) / (1 + D/2N)) = p + O(1/N). Bands, stated once in ORDER_BANDS:
  * p = 1, 2: the least-squares slope over the step range must lie in p +- 0.25, every single doubling in
    p +- 0.5. A bug that loses one order (Heun's corrector evaluated at the wrong time, a wrong Runge-Kutta weight,
    a DDIM step that is not consistent, i.e. order 0) moves the slope by 1, twice the half-width, so it cannot hide
    in the band; an O(h^0) bias (e.g. a wrong last step) would flatten the last doubling out of p +- 0.5.
  * p = 4 (rk4): fitted slope in [3.5, 4.5] (clearly above 3, clearly below 5), each doubling in [3.3, 4.7]:
    the O(1/N) correction is larger relative to h^4 at the modest N we can afford.
The problem and grid are chosen so that these ranges are asymptotic: an 8-component mixture on a circle of radius
2 with stds 0.4..0.8 (overlapping modes: the flow is nonlinear but smooth; on the stock eight_gaussians, radius 4
and stds 0.1..0.5, the few samples near a basin boundary land in another mode after a tiny error, and DDIM's RMSE
stalls at ~0.13 from 64 to 256 steps) on the log-SNR grid, on which every solver here is in its asymptotic range
from 16-32 steps (measured fitted slopes within 0.12 of p for p = 1, 2 and within 0.21 for rk4).
Round-off (float64, ~1e-16 x N) is 6+ orders below the smallest error measured (~1.6e-7).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from lightning_sde.exact import ExactScore, GaussianMixture
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.samplers import build_sampler, sample
from lightning_sde.sde import VESDE, VPSDE, SubVPSDE

SEEDS = range(256)
GRID = "logsnr"
SDES = {
    "vp": VPSDE(beta_min=0.1, beta_max=20.0, eps=1e-3),
    "ve": VESDE(sigma_min=0.01, sigma_max=50.0),  # eps = 1e-5
    "subvp": SubVPSDE(beta_min=0.1, beta_max=20.0, eps=1e-3),
}

# name -> (registered sampler, params, order p, NFE per step from its tableau, step counts in the asymptotic range)
SAMPLERS = {
    "ddim": ("ddim", {}, 1, 1, (16, 32, 64, 128)),
    "ode-euler": ("ode", {"method": "euler"}, 1, 1, (32, 64, 128, 256)),
    "heun": ("heun", {}, 2, 2, (32, 64, 128)),
    "ode-midpoint": ("ode", {"method": "midpoint"}, 2, 2, (32, 64, 128)),
    "ode-rk4": ("ode", {"method": "rk4"}, 4, 4, (16, 32, 64)),
}
# order -> (band of the fitted slope, band of every doubling's slope); reasons in the module docstring
ORDER_BANDS = {1: ((0.75, 1.25), (0.5, 1.5)), 2: ((1.75, 2.25), (1.5, 2.5)), 4: ((3.5, 4.5), (3.3, 4.7))}

REF_TOL, CHECK_TOL = 1e-12, 1e-10  # the reference, and a 100x looser solve that bounds its error


@pytest.fixture(autouse=True)
def one_thread():
    """Batches here are 256 x 2: intra-op threads only add overhead, and on a busy 2-core runner OpenMP's
    spin-waiting made each evaluation 20-80x slower. Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rmse(a, b) -> float:
    return (a - b).pow(2).sum(-1).mean().sqrt().item()


def loglog_slope(steps, errors) -> float:
    """Least-squares p in log e = c - p log N."""
    xs, ys = [math.log(n) for n in steps], [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def check_order(steps, errors, p):
    """Raise AssertionError unless errors fall at order p (bands in ORDER_BANDS)."""
    (lo, hi), (llo, lhi) = ORDER_BANDS[p]
    assert all(e1 < e0 for e0, e1 in zip(errors, errors[1:])), f"error does not fall with steps: {errors}"
    slope = loglog_slope(steps, errors)
    assert lo <= slope <= hi, f"fitted order {slope:.3f} outside [{lo}, {hi}] (p = {p}); errors {errors}"
    for n0, n1, e0, e1 in zip(steps, steps[1:], errors, errors[1:]):
        local = math.log(e0 / e1) / math.log(n1 / n0)
        assert llo <= local <= lhi, f"order {local:.3f} from {n0} to {n1} steps outside [{llo}, {lhi}] (p = {p})"
    return slope


# --- problems ------------------------------------------------------------------------------------------------


def wide_circle() -> GaussianMixture:
    """8 Gaussians on a circle of radius 2 with unequal stds 0.4..0.8: neighbours 1.53 apart, 2-4 stds."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means, stds=0.4 + 0.4 * torch.arange(8, dtype=torch.float64) / 7)


MU = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
S = torch.tensor([[0.3, 1.5]], dtype=torch.float64)  # anisotropic, so each coordinate has its own flow
GAUSSIAN = GaussianMixture(MU, stds=S)


def alpha_sigma(sde_name: str, t: float) -> tuple[float, float]:
    """Song et al. 2021, appendix B, written out independently of lightning_sde.sde."""
    sde = SDES[sde_name]
    if sde_name == "ve":
        return 1.0, sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    B = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2
    alpha = math.exp(-0.5 * B)
    return alpha, (math.sqrt(1 - alpha**2) if sde_name == "vp" else 1 - alpha**2)


def gaussian_flow(sde_name: str, x_T):
    """Closed-form probability-flow map x_T -> x_eps for x_0 ~ N(MU, diag(S^2))."""
    sde = SDES[sde_name]
    a_T, s_T = alpha_sigma(sde_name, sde.T)
    a_e, s_e = alpha_sigma(sde_name, sde.eps)
    gain = (a_e**2 * S**2 + s_e**2).sqrt() / (a_T**2 * S**2 + s_T**2).sqrt()
    return a_e * MU + gain * (x_T - a_T * MU)


@functools.cache
def gaussian_x_T(sde_name: str):
    gen = torch.Generator().manual_seed(1234)
    return SDES[sde_name].prior_std * torch.randn(len(SEEDS), 2, dtype=torch.float64, generator=gen)


class CountingNet(nn.Module):
    """Wraps a score net, counting its calls and recording every time it is queried at."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.calls = 0
        self.times = []

    def forward(self, x, t):
        self.calls += 1
        self.times.append(t.detach().clone())
        return self.net(x, t)


def counting_denoiser(mix: GaussianMixture, sde_name: str) -> tuple[Denoiser, CountingNet]:
    sde = SDES[sde_name]
    net = CountingNet(ExactScore(mix, sde))
    return Denoiser(net, sde, parameterization="score", shape=(mix.dim,)), net


@functools.cache
def gaussian_dopri5(sde_name: str, tol: float):
    """(x_eps, info) of dopri5 at rtol = atol = tol from gaussian_x_T, its NFE checked against a counting net."""
    den, net = counting_denoiser(GAUSSIAN, sde_name)
    x, info = build_sampler("ode", method="dopri5", rtol=tol, atol=tol)(den, gaussian_x_T(sde_name))
    assert info["nfe"] == net.calls == den.nfe
    return x, info


# --- cached solves -------------------------------------------------------------------------------------------


@functools.cache
def mixture_reference(sde_name: str):
    """(reference x_eps, RMSE between it and a 100x looser solve): the latter bounds the former's error."""
    den = wide_circle().denoiser(SDES[sde_name])
    solve = lambda tol: sample(  # noqa: E731
        build_sampler("ode", method="dopri5", rtol=tol, atol=tol), den, seeds=SEEDS, dtype=torch.float64
    )[0]
    ref = solve(REF_TOL)
    return ref, rmse(solve(CHECK_TOL), ref)


@functools.cache
def sampler_errors(problem: str, sde_name: str, key: str) -> tuple[float, ...]:
    """RMSE against the truth of `problem` at each step count of SAMPLERS[key]."""
    name, params, _, nfe_per_step, steps = SAMPLERS[key]
    errors = []
    for n in steps:
        sampler = build_sampler(name, steps=n, grid=GRID, **params)
        if problem == "mixture":
            den = wide_circle().denoiser(SDES[sde_name])
            x, info = sample(sampler, den, seeds=SEEDS, dtype=torch.float64)
            truth = mixture_reference(sde_name)[0]
        else:
            den = GAUSSIAN.denoiser(SDES[sde_name])
            x, info = sampler(den, gaussian_x_T(sde_name))
            truth = gaussian_flow(sde_name, gaussian_x_T(sde_name))
        assert info["nfe"] == n * nfe_per_step, f"{key}: {info['nfe']} NFE for {n} steps"
        assert torch.isfinite(x).all()
        errors.append(rmse(x, truth))
    return tuple(errors)


# --- 1. order against a converged reference on a Gaussian mixture -------------------------------------------


@pytest.mark.parametrize("key", SAMPLERS)
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_order_against_reference_mixture(sde_name, key):
    errors = sampler_errors("mixture", sde_name, key)
    # The reference's error is at most about its distance to the 100x looser solve (dopri5's error scales with
    # tol, test 3): keep it >= 100x below every measured error, so it shifts each log-error by < 0.01.
    _, ref_error = mixture_reference(sde_name)
    assert ref_error <= 1e-2 * min(errors), f"reference error ~{ref_error:.2e} vs smallest error {min(errors):.2e}"
    check_order(SAMPLERS[key][4], errors, SAMPLERS[key][2])


# --- 2. the reference solver and the samplers against the closed-form Gaussian flow --------------------------


@pytest.mark.parametrize("sde_name", ["vp", "ve", "subvp"])
def test_dopri5_matches_closed_form(sde_name):
    x_T = gaussian_x_T(sde_name)
    x, _ = gaussian_dopri5(sde_name, 1e-10)
    # dopri5 propagates its 5th-order solution with local error O(h^6) while steering on an O(h^5) estimate, so its
    # global error is ~ C tol (tolerance proportionality, measured C ~ 1 here on a contracting flow); 100 tol is a
    # generous C that is still 5 orders below the first-order samplers' errors at 256 steps.
    assert rmse(x, gaussian_flow(sde_name, x_T)) < 1e-8


@pytest.mark.parametrize("key", SAMPLERS)
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_order_against_closed_form_gaussian(sde_name, key):
    check_order(SAMPLERS[key][4], sampler_errors("gaussian", sde_name, key), SAMPLERS[key][2])


def test_order_check_rejects_wrong_orders():
    """Negative control: the bands tell orders apart on real error sequences (an order-1 'heun' would fail)."""
    steps = SAMPLERS["heun"][4]  # (32, 64, 128)
    first = sampler_errors("gaussian", "vp", "ddim")[1:]  # DDIM at 32, 64, 128 steps: first order
    second = sampler_errors("gaussian", "vp", "heun")
    check_order(steps, first, 1)
    check_order(steps, second, 2)
    with pytest.raises(AssertionError):
        check_order(steps, first, 2)  # a Heun that had lost its corrector
    with pytest.raises(AssertionError):
        check_order(steps, second, 1)
    with pytest.raises(AssertionError):
        check_order(steps, second, 4)  # an rk4 that was secretly second order
    with pytest.raises(AssertionError):  # an O(h^0) bias the size of the last error flattens the tail
        check_order(steps, [e + second[-1] for e in second], 2)
    with pytest.raises(AssertionError):  # inconsistent scheme: error does not fall
        check_order(steps, [0.1, 0.1, 0.1], 1)


# --- 3. the adaptive solve: error falls with tolerance, and its counters are honest --------------------------


@pytest.mark.parametrize("sde_name", ["vp", "ve", "subvp"])
def test_dopri5_error_falls_with_tolerance_and_counts_nfe(sde_name):
    x_T = gaussian_x_T(sde_name)
    truth = gaussian_flow(sde_name, x_T)
    tols = (1e-6, 1e-8, 1e-10)  # looser than ~1e-5 the step-size control is not yet in its asymptotic regime
    errors, nfes = [], []
    for tol in tols:
        x, info = gaussian_dopri5(sde_name, tol)  # asserts info["nfe"] == the net's counted calls
        errors.append(rmse(x, truth))
        nfes.append(info["nfe"])
        assert isinstance(info["n_accept"], int) and isinstance(info["n_reject"], int)
        assert info["n_accept"] >= 1 and info["n_reject"] >= 0
        # dopri5 has 7 stages, the last equal to the next step's first (FSAL): 6 new evaluations per attempted
        # step, accepted or rejected, plus f(x_T) and one probe of Hairer's initial-step heuristic.
        assert info["nfe"] == 1 + 6 * (info["n_accept"] + info["n_reject"])
        # global error ~ C tol (see test_dopri5_matches_closed_form)
        assert errors[-1] < 100 * tol, f"tol {tol}: error {errors[-1]:.2e}"
    # each 100x tightening should cut the error ~100x (measured 97-360x); demand >= 20x, i.e. error ~ tol^(>0.65)
    for tol, e0, e1 in zip(tols, errors, errors[1:]):
        assert e1 < e0 / 20, f"error {e0:.2e} -> {e1:.2e} when tightening tol {tol:g} 100x"
    assert nfes[0] < nfes[1] < nfes[2]


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_dopri5_counts_on_mixture(sde_name):
    """The same NFE identity on the nonlinear problem, through `sample`."""
    den, net = counting_denoiser(wide_circle(), sde_name)
    x, info = sample(build_sampler("ode", method="dopri5", rtol=1e-6, atol=1e-6), den, seeds=SEEDS, dtype=torch.float64)
    assert info["nfe"] == net.calls == 1 + 6 * (info["n_accept"] + info["n_reject"])
    if sde_name == "vp":  # VP's first steps are rejected (measured 5), so rejected steps are counted too;
        assert info["n_reject"] > 0  # VE's controller happens never to reject on this problem
    assert torch.isfinite(x).all()


def test_dopri5_never_queries_score_outside_time_range():
    """ProbabilityFlowODE's docstring: "the score is never evaluated below eps"."""
    sde = SDES["vp"]
    den, net = counting_denoiser(wide_circle(), "vp")  # centred data: the drift at T is ~0, so h0 is huge
    sample(build_sampler("ode", method="dopri5", rtol=1e-6, atol=1e-6), den, seeds=SEEDS, dtype=torch.float64)
    times = torch.cat(net.times)
    assert times.min().item() >= sde.eps * (1 - 1e-12), f"score queried at t = {times.min().item():.4g} < eps"
    assert times.max().item() <= sde.T * (1 + 1e-12)
