"""Time grids and the schedule (grids.py, schedule.py) against their definitions: the values of every spacing at
small n written out from its formula (alpha_t, sigma_t from helpers.convergence.alpha_sigma, not lightning_sde.sde),
exact endpoints, what plan() returns for each way of placing the steps, the Gaussian start's carry, and the
validation of each knob with the offending parameter named."""

import math
from collections import OrderedDict

import pytest
import torch

from helpers.convergence import GAUSSIAN, MU, S, alpha_sigma
from helpers.oracles import SDES, counting_denoiser
from lightning_sde.exact import eight_gaussians
from lightning_sde.samplers import build_sampler, sample, schedule, time_grid
from lightning_sde.samplers.grids import Plan, carry
from lightning_sde.samplers.schedule import check_grid, plan

NAMES = sorted(SDES)


def log_snr(sde_name: str, t: float) -> float:
    alpha, sigma = alpha_sigma(sde_name, t)
    return math.log(alpha / sigma)


# --- the grids' values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_name", NAMES)
def test_uniform_trailing_and_quadratic_grids_are_their_formulas(sde_name):
    sde = SDES[sde_name]
    T, eps = sde.T, sde.eps
    uniform = [T + (i / 4) * (eps - T) for i in range(5)]
    trailing = [T * (1 - i / 4) for i in range(4)] + [eps]  # diffusers' trailing spacing, ending at eps, not 0
    quadratic = [eps + (T - eps) * (1 - i / 4) ** 2 for i in range(5)]
    torch.testing.assert_close(time_grid(sde, 4, "uniform"), torch.tensor(uniform, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(time_grid(sde, 4, "trailing"), torch.tensor(trailing, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    torch.testing.assert_close(time_grid(sde, 3, "trailing", start=0.5),
                               torch.tensor([0.5, 1 / 3, 1 / 6, eps], dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(time_grid(sde, 4, "quadratic"), torch.tensor(quadratic, dtype=torch.float64),
                               rtol=0, atol=1e-15)
    assert torch.equal(time_grid(sde, 4), time_grid(sde, 4, "uniform")), "the default grid is uniform"
    start = 0.5
    from_start = [start + (i / 3) * (eps - start) for i in range(4)]
    torch.testing.assert_close(time_grid(sde, 3, "uniform", start=start),
                               torch.tensor(from_start, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize("sde_name", NAMES)
def test_logsnr_grid_is_uniform_in_log_snr(sde_name):
    sde = SDES[sde_name]
    t = time_grid(sde, 4, "logsnr")
    lam_T, lam_eps = log_snr(sde_name, sde.T), log_snr(sde_name, sde.eps)
    for i in range(5):
        assert log_snr(sde_name, float(t[i])) == pytest.approx(lam_T + (i / 4) * (lam_eps - lam_T), abs=1e-9)
    if sde_name == "ve":  # lambda = -log sigma_min - t log(sigma_max / sigma_min) is linear in t
        torch.testing.assert_close(t, time_grid(sde, 4, "uniform"), rtol=0, atol=1e-12)


@pytest.mark.parametrize("rho", [0.5, 3.0, 7.0])
@pytest.mark.parametrize("sde_name", NAMES)
def test_karras_grid_spaces_sigma_over_alpha_to_the_one_over_rho_evenly(sde_name, rho):
    """sigma~_i = (sigma~_max^(1/rho) + i/N (sigma~_min^(1/rho) - sigma~_max^(1/rho)))^rho, sigma~ = sigma / alpha."""
    sde = SDES[sde_name]
    t = time_grid(sde, 4, "karras", rho=rho)
    tilde = lambda u: alpha_sigma(sde_name, u)[1] / alpha_sigma(sde_name, u)[0]  # noqa: E731
    hi, lo = tilde(sde.T) ** (1 / rho), tilde(sde.eps) ** (1 / rho)
    for i in range(1, 4):  # the endpoints are exact (below); the formula loses digits there for rho < 1
        assert tilde(float(t[i])) == pytest.approx((hi + (i / 4) * (lo - hi)) ** rho, rel=1e-9)
    assert float(t[0]) == sde.T and float(t[-1]) == sde.eps


@pytest.mark.parametrize("kind", ["uniform", "trailing", "logsnr", "karras", "quadratic"])
@pytest.mark.parametrize("sde_name", NAMES)
def test_every_grid_has_exact_endpoints_and_decreases_strictly(sde_name, kind):
    sde = SDES[sde_name]
    assert time_grid(sde, 1, kind).tolist() == [sde.T, sde.eps], "one step: just [T, eps]"
    for n in (2, 5):
        t = time_grid(sde, n, kind)
        assert t.dtype == torch.float64 and t.shape == (n + 1,)
        assert float(t[0]) == sde.T and float(t[-1]) == sde.eps and bool((t[1:] < t[:-1]).all())
    started = time_grid(sde, 3, kind, start=0.4)
    assert float(started[0]) == 0.4 and float(started[-1]) == sde.eps and bool((started[1:] < started[:-1]).all())


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 3, "kind": "cosine"}, r"unknown time grid 'cosine'; choose one of \('uniform'"),
    ({"steps": 0}, r"steps must be an integer >= 1; got 0"),
    ({"steps": 2.0}, r"steps must be an integer >= 1; got 2\.0"),
    ({"steps": 3, "start": 1e-3}, r"start in \(eps, T\] = \(0\.001, 1\.0\]; got start=0\.001"),
    ({"steps": 3, "start": 1.5}, r"got start=1\.5"),
    ({"steps": 3, "kind": "karras", "rho": 0.0}, r"karras grid needs rho > 0; got rho=0\.0"),
    ({"steps": 3, "kind": "karras", "rho": -2.0}, r"karras grid needs rho > 0; got rho=-2\.0"),
    ({"steps": 1000, "kind": "trailing"}, r"trailing grid needs start / steps > eps; got 1\.0 / 1000 <= 0\.001"),
    ({"steps": 20, "kind": "trailing", "start": 0.02}, r"got 0\.02 / 20 <= 0\.001"),
])
def test_bad_grids_name_the_offending_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        time_grid(SDES["vp"], **kwargs)


# --- plan(): what each sampler runs on -------------------------------------------------------------------------


def test_plan_of_an_adaptive_sampler_has_no_times():
    den = eight_gaussians().denoiser(SDES["vp"])
    assert plan(build_sampler("ode"), den) == Plan(1.0, None, {})


def test_plan_of_a_named_grid_passes_rho_and_the_gaussian_start():
    sde = SDES["vp"]
    den = eight_gaussians().denoiser(sde)
    got = plan(build_sampler("ddim", steps=4, grid="karras", rho=3.0), den)
    assert got.start == 1.0 and got.setup == {}
    assert torch.equal(got.times, time_grid(sde, 4, "karras", rho=3.0))
    assert not torch.allclose(got.times, time_grid(sde, 4, "karras", rho=7.0))
    start = den.data_moments.start_time(sde, 0.15)
    started = plan(build_sampler("ddim", steps=4, grid="logsnr", gaussian_start=0.15), den)
    assert started.start == start < 1.0
    assert torch.equal(started.times, time_grid(sde, 4, "logsnr", start=start))


def test_plan_of_explicit_times_is_those_times_and_they_must_span_start_to_eps():
    sde = SDES["vp"]
    den = eight_gaussians().denoiser(sde)
    got = plan(build_sampler("ddim", steps=2, times=[1.0, 0.5, sde.eps]), den)
    assert got.start == 1.0 and got.times.dtype == torch.float64 and got.times.tolist() == [1.0, 0.5, sde.eps]
    with pytest.raises(ValueError, match=r"^ddim: times must run from the start time 1\.0 .* to eps = 0\.001; "
                                         r"got 1\.0 \.\.\. 0\.01$"):
        plan(build_sampler("ddim", steps=2, times=[1.0, 0.5, 0.01]), den)
    with pytest.raises(ValueError, match=r"got 0\.9 \.\.\. 0\.001$"):
        plan(build_sampler("ddim", steps=2, times=[0.9, 0.5, sde.eps]), den)


def test_explicit_times_that_miss_t_or_eps_fail_at_start_up():
    """check_grid (every app's start-up check) let them through: they failed at the first evaluation."""
    sde = SDES["vp"]
    for times, start in (([1.0, 0.5, 0.01], "1.0"), ([0.9, 0.5, sde.eps], "1.0")):
        with pytest.raises(ValueError, match=rf"^ddim: times must run from the start time {start} "):
            check_grid(build_sampler("ddim", steps=2, times=times), sde)
    check_grid(build_sampler("ddim", steps=2, times=[1.0, 0.5, sde.eps]), sde)
    check_grid(build_sampler("ddim", steps=2, times=[0.7, 0.5, sde.eps], gaussian_start=0.15), sde)  # starts later
    with pytest.raises(ValueError, match=r"from its Gaussian start to eps = 0\.001; got 0\.7 \.\.\. 0\.01$"):
        check_grid(build_sampler("ddim", steps=2, times=[0.7, 0.5, 0.01], gaussian_start=0.15), sde)


def test_a_tuned_grid_is_set_up_reported_apart_from_the_sampling_nfe(monkeypatch):
    """grid='optimized': the tuner's evaluations are info['setup_nfe'] (measured on the Denoiser), its report is
    info['tuning'], and nfe counts the sampling alone."""
    sde = SDES["vp"]
    x = torch.zeros(2, 2, dtype=torch.float64)

    def fake_tuner(sampler, denoiser):
        for _ in range(5):
            denoiser(x, 0.5)
        return time_grid(denoiser.sde, sampler.steps, "quadratic"), {"pilot_nfe": 5}

    monkeypatch.setattr(schedule, "optimize_grid", fake_tuner)
    monkeypatch.setattr(schedule, "_tuned", OrderedDict())
    den = eight_gaussians().denoiser(sde)
    sampler = build_sampler("ddim", steps=3, grid="optimized")
    resolved = plan(sampler, den)
    assert resolved.setup["setup_nfe"] == 5 and resolved.setup["tuning"]["pilot_nfe"] == 5
    assert torch.equal(resolved.times, time_grid(sde, 3, "quadratic"))
    monkeypatch.setattr(schedule, "_tuned", OrderedDict())
    den.nfe = 11  # whatever was counted before
    _, info = sample(sampler, den, range(4), dtype=torch.float64)
    assert set(info) == {"sampler", "nfe", "wall_s", "steps", "setup_nfe", "tuning"}
    assert info["nfe"] == 3 and info["setup_nfe"] == 5 and den.nfe == 11 + 5 + 3
    assert info["tuning"]["pilot_nfe"] == 5 and info["tuning"]["wall_s"] >= 0 and info["steps"] == 3


# --- the Gaussian start's carry --------------------------------------------------------------------------------


def test_without_gaussian_start_nothing_is_carried_and_no_moments_are_needed():
    den, _ = counting_denoiser(GAUSSIAN, "vp")  # a Denoiser without data_moments
    assert den.data_moments is None
    x_T = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sampler = build_sampler("ddim", steps=2)
    assert carry(sampler, den, x_T, 1.0) is x_T
    x, info = sampler(den, x_T)
    assert info["nfe"] == 2 and "start_time" not in info and torch.isfinite(x).all()
    with pytest.raises(ValueError, match=r"^ddim: gaussian_start needs .*DataMoments\.of_samples\(training_data\)"):
        carry(sampler, den, x_T, 0.5)
    with pytest.raises(ValueError, match=r"^ddim: gaussian_start needs .*DataMoments\.of_samples\(training_data\)"):
        build_sampler("ddim", steps=2, gaussian_start=0.2)(den, x_T)


@pytest.mark.parametrize("sde_name", NAMES)
def test_the_gaussian_start_carries_x_T_by_the_exact_flow_of_a_gaussian(sde_name):
    """For Gaussian data the fit is exact: the carry is the closed-form flow T -> t*, and the ODE solved on from
    t* lands on the closed-form flow T -> eps."""
    sde = SDES[sde_name]
    den = GAUSSIAN.denoiser(sde)
    x_T = sde.prior_std * torch.randn(32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def flow(t):
        a_T, s_T = alpha_sigma(sde_name, sde.T)
        a, s = alpha_sigma(sde_name, t)
        return a * MU + ((a**2 * S**2 + s**2) / (a_T**2 * S**2 + s_T**2)).sqrt() * (x_T - a_T * MU)

    sampler = build_sampler("ode", rtol=1e-9, atol=1e-9, gaussian_start=0.5)
    start = den.data_moments.start_time(sde, 0.5)
    assert start < sde.T
    torch.testing.assert_close(carry(sampler, den, x_T, start), flow(start), rtol=1e-10, atol=1e-10)
    x, info = sampler(den, x_T)
    assert info["start_time"] == start
    torch.testing.assert_close(x, flow(sde.eps), rtol=1e-6, atol=1e-6)


def test_a_sampler_may_use_data_moments_when_it_or_a_select_candidate_starts_from_a_gaussian():
    """Which samplers lsde-bench measures an imported model's data moments for: their own Gaussian start, or one
    among grid=select's candidates (select_over or a per-budget entry); none otherwise."""
    from lightning_sde.samplers.grids import may_use_data_moments

    assert not may_use_data_moments(build_sampler("ddim", steps=5))
    assert may_use_data_moments(build_sampler("ddim", steps=5, gaussian_start=0.15))
    assert may_use_data_moments(build_sampler("sde_dpmpp", steps=5, gaussian_start_kl=0.1))
    assert may_use_data_moments(build_sampler("unipc", steps=5, grid="select",
                                              select_over={"gaussian_start": [None, 0.15]}))
    assert may_use_data_moments(build_sampler("unipc", steps=5, grid="select", select_over={"order": [2, 3]},
                                              select_over_from_steps={20: {"gaussian_start_kl": [None, 0.1]}}))
    assert not may_use_data_moments(build_sampler("unipc", steps=5, grid="select", select_over={"order": [2, 3]}))
    assert not may_use_data_moments(build_sampler("unipc", steps=5, grid="select",
                                                  select_over={"gaussian_start": [None]}))


@pytest.mark.parametrize("name, order", [("dpmpp", 2), ("dpmpp", 3), ("sde_dpmpp", 2)])
def test_times_closer_than_float32_resolves_give_dpm_solver_a_first_order_step_not_nan(name, order):
    """Three times within 6e-10 of eps are one float32 number: DPM-Solver++'s log-SNR steps there were 0, its step
    ratios 0/0, and every sample NaN (a 50 000-step quadratic grid in float32 does the same). Those steps drop to
    first order: the deterministic samples are float64's to float32 precision, the stochastic ones finite."""
    from lightning_sde.exact import gaussians_1d
    from lightning_sde.sde import VPSDE

    times = [1.0, 0.5, 0.01, 0.001 + 6e-10, 0.001 + 3e-10, 0.001 + 1e-10, 0.001]
    sampler = build_sampler(name, steps=6, times=times, lower_order_final=False, order=order)
    denoiser = gaussians_1d().denoiser(VPSDE())
    x32, _ = sample(sampler, denoiser, range(16), dtype=torch.float32)
    x64, _ = sample(sampler, denoiser, range(16), dtype=torch.float64)
    assert torch.isfinite(x32).all()
    if name == "dpmpp":
        torch.testing.assert_close(x32.double(), x64, rtol=0, atol=1e-4)
