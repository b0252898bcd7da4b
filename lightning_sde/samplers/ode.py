"""Probability-flow ODE samplers: any torchdiffeq method (probability_flow.py sets torchdiffeq up), and EDM's Heun
(with EDM's churn, its stochastic sampler)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from lightning_sde.probability_flow import (
    ADAPTIVE_METHODS,
    DEFAULT_FIXED_STEPS,
    FIXED_METHODS,
    NON_FINITE_DRIFT,
    ProbabilityFlow,
    check_fixed_method_options,
    check_method,
    solve_between,
)
from lightning_sde.samplers.base import FixedStepSampler, register

ADAPTIVE_ONLY = {"rtol": 1e-5, "atol": 1e-5, "first_step": 0.01}  # the knobs a fixed method has no use for


@register("ode")
@dataclass
class ProbabilityFlowODE(FixedStepSampler):
    """torchdiffeq on the probability-flow ODE.

    Adaptive methods (dopri5, bosh3, ...) take rtol/atol and report steps accepted/rejected; their first step is
    `first_step` x (start - eps). Fixed methods (euler, midpoint, rk4, ...) take `steps` (default 100) on any time
    grid, and cost FIXED_METHODS[method] NFE a step. Both take gaussian_start.
    """

    method: str = "dopri5"
    rtol: float = ADAPTIVE_ONLY["rtol"]
    atol: float = ADAPTIVE_ONLY["atol"]
    first_step: float = ADAPTIVE_ONLY["first_step"]
    steps: int | None = None

    def __post_init__(self):
        check_method(self.name, self.method, self.rtol, self.atol)
        if self.adaptive:
            if self.steps is not None or self.times is not None:
                raise ValueError(f"ode: method {self.method!r} is adaptive and takes rtol/atol, not steps/times "
                                 f"(got steps={self.steps!r}); fixed-grid methods: {tuple(FIXED_METHODS)}")
            if (isinstance(self.first_step, bool) or not isinstance(self.first_step, (int, float))
                    or not 0 < self.first_step <= 1):
                raise ValueError(f"ode: first_step must be a fraction in (0, 1]; got {self.first_step!r}")
        else:
            check_fixed_method_options(self.name, self, ADAPTIVE_ONLY)
            if self.steps is None:
                self.steps = DEFAULT_FIXED_STEPS
        super().__post_init__()

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    @property
    def nfe_per_step(self) -> int:
        if self.adaptive:
            raise ValueError(f"ode: the NFE of adaptive method {self.method!r} is measured, not set per step")
        return FIXED_METHODS[self.method]

    def run(self, denoiser, x, plan, noise, on_step):
        sde = denoiser.sde
        reached = [float(plan.start)]  # the times of the states reported so far

        def report(t, y):
            if on_step is not None:
                on_step(len(reached) - 1, t, y)
            reached.append(float(t))

        def step_started(t, y):
            # torchdiffeq reports the state at the start of every attempted step: a new time is the end of the
            # step before (a rejected step starts again from the same time)
            if float(t) != reached[-1]:
                report(t, y)

        func = ProbabilityFlow.for_method(self.method, denoiser, step_started)
        grid = None if self.adaptive else plan.times.to(x.device)
        try:
            xs = solve_between(func, x, plan.start, sde.eps, self.method, self.rtol, self.atol, self.first_step,
                               grid, sde)
        except AssertionError as err:  # torchdiffeq's step-size underflow
            drift = getattr(func, "last_drift", None)
            if drift is None or torch.isfinite(drift).all():
                raise
            raise FloatingPointError(f"ode: {self.method}'s step size underflowed at t={float(reached[-1]):.6g}: "
                                     f"{NON_FINITE_DRIFT}") from err
        report(torch.tensor(sde.eps, dtype=torch.float64), xs[-1])
        if self.adaptive:
            return xs[-1], {"n_accept": func.n_accept, "n_reject": func.n_reject}
        return xs[-1], {"steps": self.steps}


@register("heun")
@dataclass
class Heun(FixedStepSampler):
    """EDM's 2nd-order Heun step (Karras et al. 2022, Alg. 1) on the probability-flow ODE; 2 NFE a step.

    It integrates in x~ = x / alpha_t against sigma~ = sigma_t / alpha_t, where the ODE reads dx~/dsigma~ = eps:
    the same ODE as in (x, t), in the variables that make it nearly linear.

    With `s_churn` > 0 it is EDM's stochastic sampler (Alg. 2): a step from a grid time whose sigma~ lies in
    [s_tmin, s_tmax] (None: no upper bound) first adds noise, raising sigma~ by the factor 1 + gamma,
    gamma = min(s_churn / steps, sqrt(2) - 1), with std s_noise * sqrt(sigma^_hat^2 - sigma~^2), then takes the
    Heun step from there. The raised level stops at sigma~(T), where the network was trained. Same NFE.
    """

    steps: int = 50
    grid: str = "karras"
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float | None = None
    s_noise: float = 1.0
    keyed_unless: ClassVar[dict] = {**FixedStepSampler.keyed_unless, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": None,
                                    "s_noise": 1.0}

    def __post_init__(self):
        super().__post_init__()
        for key in ("s_churn", "s_tmin", "s_noise") + (("s_tmax",) if self.s_tmax is not None else ()):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"heun: {key} must be a finite number >= 0; got {value!r}")
        if self.s_noise == 0:
            raise ValueError("heun: s_noise must be > 0 (1 is EDM's plain churn; it used 1.003-1.007)")
        if self.s_tmax is not None and self.s_tmax < self.s_tmin:
            raise ValueError(f"heun: s_tmax ({self.s_tmax}) is below s_tmin ({self.s_tmin}): no step would churn")

    @property
    def stochastic(self) -> bool:
        number = isinstance(self.s_churn, (int, float)) and not isinstance(self.s_churn, bool)
        return number and self.s_churn > 0  # (asked before s_churn is checked: its own check names a bad one)

    @property
    def nfe_per_step(self) -> int:
        return 2

    def initial_state(self, denoiser, times):
        """Each step's churn, from the grid (CPU float64, before the first step): its noise std (None: no churn) and
        its raised time, all of them in one tensor (moved to the device once: no host sync a step)."""
        if not self.stochastic:
            return {}
        sde = denoiser.sde
        level = sde.sigma(times) / sde.alpha(times)
        top = float(sde.sigma(sde.T) / sde.alpha(sde.T))
        gamma = min(self.s_churn / self.intervals, math.sqrt(2) - 1)
        stds, raised_times = [], times[:-1].clone()
        for i, sigma in enumerate(level[:-1].tolist()):
            inside = self.s_tmin <= sigma and (self.s_tmax is None or sigma <= self.s_tmax)
            raised = min(sigma * (1 + gamma), top) if inside else sigma
            stds.append(self.s_noise * math.sqrt(raised**2 - sigma**2) if raised > sigma else None)
            if raised > sigma:
                t_hat = sde.t_from_log_snr(torch.tensor(-math.log(raised), dtype=torch.float64))
                raised_times[i] = t_hat.clamp(max=sde.T)
        return {"stds": stds, "raised_times": raised_times, "next": 0}

    def step(self, denoiser, x, t, s, noise, last, state):
        sde = denoiser.sde
        if state:
            i, std = state["next"], state["stds"][state["next"]]
            state["next"] += 1
            if std is not None:
                if state["raised_times"].device != t.device or state["raised_times"].dtype != t.dtype:
                    state["raised_times"] = state["raised_times"].to(t.device, t.dtype)
                t_hat = state["raised_times"][i]
                x = sde.alpha(t_hat) * (x / sde.alpha(t) + std * noise().to(x))  # x~ + std z, at t_hat
                t = t_hat
        alpha_t, alpha_s = sde.alpha(t), sde.alpha(s)
        h = sde.sigma(s) / alpha_s - sde.sigma(t) / alpha_t  # sigma~_s - sigma~_t
        x_scaled = x / alpha_t
        d_t = denoiser(x, t).eps
        euler = x_scaled + h * d_t
        d_s = denoiser(alpha_s * euler, s).eps
        return alpha_s * (x_scaled + 0.5 * h * (d_t + d_s))
