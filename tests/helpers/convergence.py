"""Convergence-order checks and the truths they measure against (the bands' reasons are in
tests/unit/test_convergence.py's docstring): a closed-form single-Gaussian flow and cached converged references."""

from __future__ import annotations

import functools
import math

import torch

from helpers.oracles import SDES, counting_denoiser, rmse, wide_circle
from lightning_sde.exact import GaussianMixture
from lightning_sde.samplers import build_sampler, sample

SEEDS = range(256)
GRID = "logsnr"
# order -> (band of the fitted slope, band of every doubling's slope); reasons in the module docstring
ORDER_BANDS = {1: ((0.75, 1.25), (0.5, 1.5)), 2: ((1.75, 2.25), (1.5, 2.5)), 4: ((3.5, 4.5), (3.3, 4.7))}

REF_TOL, CHECK_TOL = 1e-12, 1e-10  # the reference, and a 100x looser solve that bounds its error


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
