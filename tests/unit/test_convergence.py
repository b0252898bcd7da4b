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

import pytest
import torch

from helpers.convergence import (
    GAUSSIAN,
    GRID,
    SEEDS,
    check_order,
    gaussian_dopri5,
    gaussian_flow,
    gaussian_x_T,
    mixture_reference,
)
from helpers.oracles import SDES, counting_denoiser, rmse, wide_circle
from lightning_sde.samplers import build_sampler, sample

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # converged references at tol 1e-12

# name -> (registered sampler, params, order p, NFE per step from its tableau, step counts in the asymptotic range)
SAMPLERS = {
    "ddim": ("ddim", {}, 1, 1, (16, 32, 64, 128)),
    "ode-euler": ("ode", {"method": "euler"}, 1, 1, (32, 64, 128, 256)),
    "heun": ("heun", {}, 2, 2, (32, 64, 128)),
    "ode-midpoint": ("ode", {"method": "midpoint"}, 2, 2, (32, 64, 128)),
    "ode-rk4": ("ode", {"method": "rk4"}, 4, 4, (16, 32, 64)),
}
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
