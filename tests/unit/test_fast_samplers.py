"""The exponential-integrator samplers (DPM-Solver++, UniPC, SDE-DPM-Solver++, the adaptive UniPC) and tuned grids:
orders against converged references, exact NFE, every solver on every SDE, bad parameters."""

import math

import pytest
import torch

from helpers.convergence import GAUSSIAN, SEEDS, check_order, gaussian_flow, gaussian_x_T, mixture_reference
from helpers.oracles import SDES, counting_denoiser, rmse, wide_circle
from lightning_sde.exact import eight_gaussians
from lightning_sde.metrics import mmd
from lightning_sde.samplers import build_sampler, optimize_grid, sample

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # converged references, grid tuning
STEPS = (32, 64, 128)
# name -> (sampler, params, order, steps) on the log-SNR grid (asymptotic from 32: measured doublings within 0.1 of
# p; UniPC-4 from 64). UniPC's corrector raises its predictor's order p to p + 1. UniPC-4 without lower_order_final:
# its uncorrected first-order last step dominates beyond ~200 steps (measured slope 2.6 from 128 to 256).
ORDERS = {
    "dpmpp-2m": ("dpmpp", {"order": 2}, 2, STEPS),
    "dpmpp-3m": ("dpmpp", {"order": 3}, 3, STEPS),
    "unipc-1": ("unipc", {"order": 1}, 2, STEPS),
    "unipc-2": ("unipc", {"order": 2}, 3, STEPS),
    "unipc-3": ("unipc", {"order": 3}, 4, STEPS),
    "unipc-4": ("unipc", {"order": 4, "lower_order_final": False}, 5, (64, 128, 256)),
}
# p -> (fitted slope, every doubling) for the orders test_convergence's bands leave out: p +- 0.4, p +- 0.6
ODD_BANDS = {3: ((2.6, 3.4), (2.4, 3.6)), 5: ((4.6, 5.4), (4.4, 5.6))}


def _check(steps, errors, p):
    if p in ODD_BANDS:
        (lo, hi), (llo, lhi) = ODD_BANDS[p]
        slopes = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
        fitted = math.log2(errors[0] / errors[-1]) / math.log2(steps[-1] / steps[0])
        assert lo <= fitted <= hi and all(llo <= s <= lhi for s in slopes), errors
    else:
        check_order(steps, errors, p)


@pytest.mark.parametrize("key", ORDERS)
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_order_on_the_mixture_against_a_converged_reference(sde_name, key):
    name, params, p, steps = ORDERS[key]
    ref, ref_error = mixture_reference(sde_name)
    den = wide_circle().denoiser(SDES[sde_name])
    errors = []
    for n in steps:
        x, info = sample(build_sampler(name, steps=n, grid="logsnr", **params), den, seeds=SEEDS, dtype=torch.float64)
        assert info["nfe"] == n  # one evaluation a step, warm-up and corrector included
        errors.append(rmse(x, ref))
    assert ref_error <= 1e-2 * min(errors)
    _check(steps, errors, p)


@pytest.mark.parametrize("key", ["dpmpp-2m", "unipc-2"])
def test_order_on_the_closed_form_gaussian_flow(key):
    name, params, p, steps = ORDERS[key]
    x_T = gaussian_x_T("vp")
    truth = gaussian_flow("vp", x_T)
    errors = [rmse(build_sampler(name, steps=n, grid="logsnr", **params)(GAUSSIAN.denoiser(SDES["vp"]), x_T)[0], truth)
              for n in steps]
    _check(steps, errors, p)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("name, params", [("dpmpp", {"order": 2}), ("dpmpp", {"order": 3}), ("unipc", {"order": 2}),
                                          ("unipc", {"order": 3}), ("unipc", {"order": 4})])
def test_every_solver_on_every_sde_beats_ddim_at_50_steps(sde_name, name, params):
    ref, _ = mixture_reference(sde_name) if sde_name != "subvp" else (None, None)
    den, net = counting_denoiser(wide_circle(), sde_name)
    x, info = sample(build_sampler(name, steps=50, grid="logsnr", **params), den, seeds=SEEDS, dtype=torch.float64)
    assert info["nfe"] == net.calls == 50
    times = torch.cat(net.times)
    assert times.min() >= SDES[sde_name].eps * (1 - 1e-12) and times.max() <= SDES[sde_name].T * (1 + 1e-12)
    if ref is None:  # sub-VP: against its own dopri5 reference
        ref = sample(build_sampler("ode", rtol=1e-10, atol=1e-10), wide_circle().denoiser(SDES[sde_name]),
                     seeds=SEEDS, dtype=torch.float64)[0]
    ddim = sample(build_sampler("ddim", steps=50, grid="logsnr"), wide_circle().denoiser(SDES[sde_name]), seeds=SEEDS,
                  dtype=torch.float64)[0]
    assert rmse(x, ref) < 0.3 * rmse(ddim, ref)  # a higher-order method beats the first-order one at equal NFE


@pytest.mark.parametrize("order", range(1, 7))
def test_unipc_steps_have_their_local_order_on_the_closed_form_gaussian_flow(order):
    """From exact history (states on the closed-form flow at log-SNRs 0, h, ..., order h), the predictor of order p
    has local error O(h^(p+1)) and the corrector, with the output at the new point, is more accurate still. Orders
    5 and 6 are the adaptive solver's only; the global-order test above stops at 4."""
    from lightning_sde.samplers.multistep import Point, UniPC

    sde, x_T = SDES["vp"], gaussian_x_T("vp")[:16]
    den, T = GAUSSIAN.denoiser(sde), torch.tensor(sde.T, dtype=torch.float64)

    def exact(t):  # the Gaussian's flow: x_t - alpha_t mu scales with the marginal std
        gain = (sde.alpha(t) ** 2 * GAUSSIAN.covs.diagonal(dim1=1, dim2=2) + sde.sigma(t) ** 2).sqrt()
        gain_T = (sde.alpha(T) ** 2 * GAUSSIAN.covs.diagonal(dim1=1, dim2=2) + sde.sigma(T) ** 2).sqrt()
        return sde.alpha(t) * GAUSSIAN.means + gain / gain_T * (x_T - sde.alpha(T) * GAUSSIAN.means)

    predicted, corrected = [], []
    for h in (0.1, 0.05):
        ts = [sde.t_from_log_snr(torch.tensor(j * h, dtype=torch.float64)) for j in range(order + 1)]
        xs = [exact(t) for t in ts]
        ds = [den(x, t).x0 for x, t in zip(xs, ts)]
        points = [Point(t, j * h) for j, t in enumerate(ts)]
        predicted.append(float((UniPC._predict(sde, xs[-2], points[:-1], ds[:-1], points[-1], order)
                                - xs[-1]).abs().max()))
        corrected.append(float((UniPC._correct(sde, xs[-2], order, points, ds) - xs[-1]).abs().max()))
    assert math.log2(predicted[0] / predicted[1]) >= order + 0.5, predicted  # measured 2.0 3.0 5.4 4.7 6.1 7.0
    assert all(c < p / 10 for c, p in zip(corrected, predicted)), (predicted, corrected)


def test_adaptive_unipc_counts_its_evaluations_and_error_falls_with_tolerance():
    ref, _ = mixture_reference("vp")
    errors, nfes = [], []
    for tol in (1e-3, 1e-5):
        den, net = counting_denoiser(wide_circle(), "vp")
        x, info = sample(build_sampler("unipc_adaptive", rtol=tol, atol=tol), den, seeds=SEEDS, dtype=torch.float64)
        # one evaluation at T, then one per attempted step (the corrector reuses it; a rejected step wastes it)
        assert info["nfe"] == net.calls == 1 + info["n_accept"] + info["n_reject"]
        assert torch.cat(net.times).min() >= SDES["vp"].eps * (1 - 1e-12)
        errors.append(rmse(x, ref))
        nfes.append(info["nfe"])
    assert errors[1] < errors[0] / 10 and nfes[1] > nfes[0]
    dopri = sample(build_sampler("ode", rtol=1e-5, atol=1e-5), wide_circle().denoiser(SDES["vp"]), seeds=SEEDS,
                   dtype=torch.float64)
    assert errors[1] < rmse(dopri[0], ref) and nfes[1] < dopri[1]["nfe"]  # more accurate for fewer NFE


def test_the_worst_sample_norm_holds_every_sample_to_the_tolerance():
    """error_norm="worst_sample" controls each sample's own error, so every endpoint on the mixture stays within the
    tolerance of the converged reference (measured largest: 0.62x at 1e-3, 1.04x at 1e-4), where the batch norm lets
    some go to 1.8-3.3x; it pays in NFE (35 vs 30, 51 vs 41)."""
    ref, _ = mixture_reference("vp")
    den = wide_circle().denoiser(SDES["vp"])
    for tol in (1e-3, 1e-4):
        worst, nfe = {}, {}
        for norm in ("batch", "worst_sample"):
            x, info = sample(build_sampler("unipc_adaptive", rtol=tol, atol=tol, error_norm=norm), den, seeds=SEEDS,
                             dtype=torch.float64)
            worst[norm], nfe[norm] = float((x - ref).pow(2).mean(1).sqrt().max()) / tol, info["nfe"]
        assert worst["worst_sample"] < 1.25 < 1.5 < worst["batch"], (tol, worst)
        assert nfe["batch"] < nfe["worst_sample"], (tol, nfe)


def test_adaptive_unipc_in_float32_takes_the_steps_of_float64():
    """Its times stay float64 whatever the samples' dtype: float32 times once made it fail to converge."""
    den = eight_gaussians().denoiser(SDES["vp"])
    runs = {dtype: sample(build_sampler("unipc_adaptive", rtol=1e-3, atol=1e-3), den, seeds=range(64), dtype=dtype)
            for dtype in (torch.float32, torch.float64)}
    (x32, info32), (x64, info64) = runs[torch.float32], runs[torch.float64]
    assert x32.dtype == torch.float32 and info32["nfe"] == info64["nfe"] < 100
    torch.testing.assert_close(x32.double(), x64, rtol=0, atol=1e-4)


def test_sde_dpmpp_matches_the_data_distribution_and_is_seed_reproducible():
    sde = SDES["vp"]
    mixture = eight_gaussians()
    den = mixture.denoiser(sde)
    exact = mixture.sample(2000, torch.Generator().manual_seed(7)).float()
    floor = mmd(mixture.sample(2000, torch.Generator().manual_seed(8)).float(), exact)
    x, info = sample(build_sampler("sde_dpmpp", steps=100), den, seeds=range(2000), dtype=torch.float64)
    assert info["nfe"] == 100
    assert mmd(x.float(), exact) < 1.5 * floor
    coarse, _ = sample(build_sampler("sde_dpmpp", steps=5), den, seeds=range(2000), dtype=torch.float64)
    assert mmd(coarse.float(), exact) > 1.8 * floor  # the test can fail
    again, _ = sample(build_sampler("sde_dpmpp", steps=100), den, seeds=range(1000, 2000), dtype=torch.float64)
    assert torch.equal(again, x[1000:])  # sample i depends on seed i only


def test_optimized_grid_beats_the_quadratic_grid_on_held_out_seeds():
    sde = SDES["vp"]
    den = eight_gaussians().denoiser(sde)
    sampler = build_sampler("unipc", steps=10, grid="quadratic")
    times, report = optimize_grid(sampler, den, pilot=128, iters=60)
    assert len(times) == 11 and times[0] == sde.T and times[-1] == sde.eps and bool((times[1:] < times[:-1]).all())
    assert report["pilot_rmse_final"] < report["pilot_rmse_init"] and report["pilot_nfe"] > 0
    assert den.nfe == report["pilot_nfe"], "the Denoiser counts every forward; the report names the pilot's"
    seeds = range(512)  # disjoint from the pilot's seeds
    ref = sample(build_sampler("ode", rtol=1e-9, atol=1e-9), den, seeds, dtype=torch.float64)[0]
    quad = sample(sampler, den, seeds, dtype=torch.float64)[0]
    tuned, info = sample(build_sampler("unipc", steps=10, times=times.tolist()), den, seeds, dtype=torch.float64)
    assert info["nfe"] == 10 and rmse(tuned, ref) < 0.8 * rmse(quad, ref)


@pytest.mark.parametrize("name, params, message", [
    ("dpmpp", {"order": 4}, "order must be one of (1, 2, 3)"),
    ("unipc", {"order": 0}, "order must be one of (1, 2, 3, 4)"),
    ("unipc_adaptive", {"order": 7}, "order must be one of (1, 2, 3, 4, 5, 6)"),
    ("sde_dpmpp", {"order": 3}, "order must be one of (1, 2)"),
    ("dpmpp", {"grid": "cosine"}, "unknown grid 'cosine'"),
    ("dpmpp", {"steps": 0}, "steps must be an integer >= 1"),
    ("dpmpp", {"steps": 3, "times": [1.0, 0.5, 0.001]}, "times must be 4 strictly decreasing times"),
    ("unipc_adaptive", {"rtol": 0}, "rtol must be a finite number > 0"),
    ("unipc_adaptive", {"atol": float("inf")}, "atol must be a finite number > 0"),
    ("unipc_adaptive", {"safety": 1.5}, "safety must lie in (0, 1]"),
])
def test_bad_parameters_are_rejected(name, params, message):
    with pytest.raises(ValueError) as err:
        build_sampler(name, **params)
    assert message in str(err.value)


def test_times_must_span_the_sdes_interval():
    den = eight_gaussians().denoiser(SDES["vp"])
    with pytest.raises(ValueError, match="times must run from"):
        sample(build_sampler("dpmpp", steps=2, times=[1.0, 0.5, 0.1]), den, range(4))
    with pytest.raises(ValueError, match="deterministic"):
        optimize_grid(build_sampler("sde_dpmpp", steps=4), den, pilot=4, iters=1)


@pytest.fixture(scope="module")
def eight_gaussians_reference():
    den = eight_gaussians().denoiser(SDES["vp"])
    seeds = range(1024)
    return den, seeds, sample(build_sampler("ode", rtol=1e-10, atol=1e-10), den, seeds, dtype=torch.float64)[0]


@pytest.mark.parametrize("steps", [15, 20])
def test_dpmpp_3m_on_the_uniform_grid_is_no_worse_than_ddim(eight_gaussians_reference, steps):
    """The trap the order rule removes: on the t-uniform grid the last step is much longer in log-SNR than the ones
    before, and third-order extrapolation over it ends at RMSE 3.0 (15 steps) and 1.5 (20) on this SDE, where DDIM
    ends at 0.18 and 0.15."""
    den, seeds, ref = eight_gaussians_reference
    ddim = rmse(sample(build_sampler("ddim", steps=steps, grid="uniform"), den, seeds, dtype=torch.float64)[0], ref)
    runs = {ratio: rmse(sample(build_sampler("dpmpp", order=3, steps=steps, grid="uniform", max_step_ratio=ratio),
                               den, seeds, dtype=torch.float64)[0], ref) for ratio in (math.inf, 2.0)}
    assert runs[math.inf] > 5 * ddim  # without the rule: the trap (the test can fail)
    assert runs[2.0] <= ddim and build_sampler("dpmpp").max_step_ratio == 2.0


def test_step_orders_follow_the_step_ratio():
    from lightning_sde.samplers.multistep import step_orders

    lam = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 12.0])  # uniform, then one step 8x its predecessor
    assert step_orders(lam, 3, False, 15, math.inf) == [1, 2, 3, 3, 3]
    assert step_orders(lam, 3, False, 15, 2.0) == [1, 2, 3, 3, 1]  # 8 > 2 x 2, order 3's span (order 2's: 1)
    assert step_orders(lam, 3, False, 15, 4.0) == [1, 2, 3, 3, 3]  # 8 <= 4 x 2
    assert step_orders(lam, 2, False, 15, 4.0) == [1, 2, 2, 2, 1]  # 8 > 4 x 1, order 2's span
    assert step_orders(lam, 3, True, 15, math.inf) == [1, 2, 3, 2, 1]  # lower_order_final under 15 steps
    with pytest.raises(ValueError, match="max_step_ratio must be a number > 0"):
        build_sampler("unipc", max_step_ratio=0)


# --- short steps: UniPC's coefficients keep their digits --------------------------------------------------------------

@pytest.mark.parametrize("h", [1e-5, 1e-3, 0.05, 0.7, 0.999, 1.001, 3.0, 12.0])
def test_unipc_coefficients_hold_their_digits_at_any_step_length(h):
    """b_i = i! (-h) phi_(i+1)(-h) / (e^{-h} - 1) against 50-digit arithmetic. The recurrence phi_(k+1) = (phi_k -
    1/k!) / z loses log10(1/h) digits an order: at h = 1e-3 order 4's weights came out 1e5 times too large in float32
    and order 6's 9 % off in float64."""
    import mpmath

    from lightning_sde.samplers.multistep import unipc_coefficients

    mpmath.mp.dps = 50
    z = mpmath.mpf(-h)

    def phi(k):  # phi_k(z) = (e^z - sum_{j<k} z^j / j!) / z^k
        return (mpmath.exp(z) - sum(z**j / mpmath.factorial(j) for j in range(k))) / z**k

    _, b, b_h = unipc_coefficients([-1.0, -2.0, 1.0], h, 6)
    exact = [mpmath.factorial(i) * z * phi(i + 1) / mpmath.expm1(z) for i in range(1, 7)]
    assert b_h == pytest.approx(float(mpmath.expm1(z)), rel=1e-15)
    assert b == pytest.approx([float(v) for v in exact], rel=1e-13)


def test_unipc_4_in_float32_converges_over_thousands_of_steps():
    """3000 steps of order 4 in float32 ended in NaN (2000: errors of 4.6 on the 8 Gaussians), the weights of short
    steps having lost their digits; now the error stays at float32's rounding, against the closed-form flow."""
    x_T = gaussian_x_T("vp")[:64]
    exact = gaussian_flow("vp", x_T)
    for steps in (100, 3000):
        x, _ = build_sampler("unipc", steps=steps, order=4)(GAUSSIAN.denoiser(SDES["vp"]), x_T.float())
        assert x.dtype == torch.float32 and (x.double() - exact).abs().max() < 1e-4, steps


def test_adaptive_unipc_names_a_step_that_underflows():
    """A tolerance far below float64's rounding never passes the error test; the step shrinks to nothing, and the
    run says so (at h = 0 the coefficients were NaN, reported as the network's NaN)."""
    den = eight_gaussians().denoiser(SDES["vp"])
    with pytest.raises(RuntimeError, match=r"^unipc_adaptive: the step fell below 1e-10 in log-SNR at log-SNR "):
        build_sampler("unipc_adaptive", rtol=1e-30, atol=1e-30)(den, torch.randn(8, 2, dtype=torch.float64))


def test_a_span_left_shorter_than_the_underflow_floor_is_one_last_step():
    from lightning_sde.samplers.grids import Plan

    sde = SDES["vp"]
    lam_end = float(sde.log_snr(torch.tensor(sde.eps, dtype=torch.float64)))
    start = float(sde.t_from_log_snr(torch.tensor(lam_end - 5e-11, dtype=torch.float64)))
    x = torch.randn(4, 2, dtype=torch.float64)
    _, info = build_sampler("unipc_adaptive").run(eight_gaussians().denoiser(sde), x, Plan(start, None), None, None)
    assert info == {"n_accept": 1, "n_reject": 0}
