"""Probability-flow ODE samplers: any torchdiffeq method, and EDM's Heun.

The ODE dx/dt = f(x,t) - g(t)^2/2 score (Song et al. 2021, eq. 13) runs from T down to eps.
torchdiffeq integrates the whole batch as one system (shared steps), so an adaptive solve's steps, and hence
each sample, depend slightly (within tolerance) on the batch it is solved with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchdiffeq import odeint
from tqdm.auto import tqdm

from lightning_sde.samplers.base import FixedStepSampler, Sampler, register
from lightning_sde.samplers.grids import GRIDS, time_grid

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_METHODS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4, "explicit_adams": 1}  # NFE a step


def solve_between(func, y0, t0: float, t1: float, method: str, rtol: float = 1e-5, atol: float = 1e-5,
                  first_step: float = 0.01, grid=None):
    """torchdiffeq from t0 to t1 (either direction) without querying `func` outside [t0, t1]: adaptive methods
    take a first step of first_step |t1 - t0| and land their last step on t1; fixed methods step on `grid`."""
    device = (y0[0] if isinstance(y0, tuple) else y0).device
    span = torch.tensor([t0, t1], dtype=torch.float64, device=device)
    if method in ADAPTIVE_METHODS:
        options = {"step_t": span[1:], "first_step": first_step * abs(t1 - t0)}
        return odeint(func, y0, span, method=method, rtol=rtol, atol=atol, options=options)
    return odeint(func, y0, span, method=method, options={"grid_constructor": lambda f, y, t: grid})


class ProbabilityFlow(nn.Module):
    """The ODE right-hand side for torchdiffeq; `callback_step` is torchdiffeq's per-step hook."""

    def __init__(self, denoiser, callback=None, bar=None):
        super().__init__()
        self.denoiser = denoiser
        self.callback = callback
        self.bar = bar

    def forward(self, t, x):
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(t=f"{float(t):.4g}", refresh=False)
        return self.denoiser.sde.ode_drift(x, t, self.denoiser(x, t).score)

    def callback_step(self, t0, y0, dt):
        if self.callback is not None:
            self.callback({"t": t0, "x": y0, "dt": dt})


class AdaptiveProbabilityFlow(ProbabilityFlow):
    """Also counts the adaptive solver's accepted and rejected steps (hooks only adaptive solvers call)."""

    n_accept = 0
    n_reject = 0

    def callback_accept_step(self, t0, y0, dt):
        self.n_accept += 1

    def callback_reject_step(self, t0, y0, dt):
        self.n_reject += 1


@register("ode")
@dataclass
class ProbabilityFlowODE(Sampler):
    """torchdiffeq on the probability-flow ODE.

    Adaptive methods (dopri5, bosh3, ...) take rtol/atol and report steps accepted/rejected. The score is never
    evaluated outside [eps, T]: the first step is `first_step` (T - eps) instead of torchdiffeq's guess, whose
    probe h0 = 0.01 |x| / |f| is unbounded where the drift at T is near 0 (probed at t = -16 on VP), and the
    last step is made to land on eps instead of stepping past it and interpolating back. Fixed methods (euler, midpoint, rk4, ...)
    take `steps` on a time grid of `grid` and cost FIXED_METHODS[method] NFE a step.
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    first_step: float = 0.01
    steps: int | None = None
    grid: str = "uniform"
    rho: float = 7.0

    def __post_init__(self):
        methods = ADAPTIVE_METHODS + tuple(FIXED_METHODS)
        if self.method not in methods:
            raise ValueError(f"ode: unknown method {self.method!r}; choose one of {methods}")
        if self.adaptive:
            if self.steps is not None:
                raise ValueError(f"ode: method {self.method!r} is adaptive and takes rtol/atol, not steps={self.steps}")
            for key in ("rtol", "atol", "first_step"):
                value = getattr(self, key)
                if not (isinstance(value, (int, float)) and value > 0):
                    raise ValueError(f"ode: {key} must be a number > 0; got {value!r}")
        else:
            if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
                raise ValueError(f"ode: fixed-grid method {self.method!r} needs steps, an integer >= 1; got {self.steps!r}")
            if self.grid not in GRIDS:
                raise ValueError(f"ode: unknown grid {self.grid!r}; choose one of {GRIDS}")

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    @property
    def nfe_per_step(self) -> int:
        if self.adaptive:
            raise ValueError(f"ode: the NFE of adaptive method {self.method!r} is measured, not set")
        return FIXED_METHODS[self.method]

    def run(self, denoiser, x_T, noise, callback, progress):
        sde = denoiser.sde
        grid = None if self.adaptive else time_grid(sde, self.steps, self.grid, self.rho).to(x_T.device)
        with tqdm(desc=f"ode/{self.method}", unit="nfe", disable=not progress, leave=False) as bar:
            func = (AdaptiveProbabilityFlow if self.adaptive else ProbabilityFlow)(denoiser, callback, bar)
            xs = solve_between(func, x_T, sde.T, sde.eps, self.method, self.rtol, self.atol, self.first_step, grid)
        info = {"n_accept": func.n_accept, "n_reject": func.n_reject} if self.adaptive else {"steps": self.steps}
        return xs[-1], info


@register("heun")
@dataclass
class Heun(FixedStepSampler):
    """EDM's 2nd-order Heun step (Karras et al. 2022, Alg. 1) on the probability-flow ODE; 2 NFE a step.

    It integrates in x~ = x / alpha_t against sigma~ = sigma_t / alpha_t, where the ODE reads dx~/dsigma~ = eps:
    the same ODE as in (x, t), in the variables that make it nearly linear.
    """

    steps: int = 50
    grid: str = "karras"
    nfe_per_step = 2

    def step(self, denoiser, x, t, s, noise, last):
        sde = denoiser.sde
        alpha_t, alpha_s = sde.alpha(t), sde.alpha(s)
        h = sde.sigma(s) / alpha_s - sde.sigma(t) / alpha_t  # sigma~_s - sigma~_t
        x_scaled = x / alpha_t
        d_t = denoiser(x, t).eps
        euler = x_scaled + h * d_t
        d_s = denoiser(alpha_s * euler, s).eps
        return alpha_s * (x_scaled + 0.5 * h * (d_t + d_s))
