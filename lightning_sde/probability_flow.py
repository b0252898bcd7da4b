"""The probability-flow ODE dx/dt = f(x, t) - g(t)^2/2 score(x, t) (Song et al. 2021, eq. 13) and how torchdiffeq
solves it: one set-up for the `ode` sampler, for grid tuning's reference solves and for encode/decode/likelihood.

The score is never evaluated outside the interval being solved: adaptive methods take a bounded first step
(torchdiffeq's own guess, h0 = 0.01 |x| / |f|, is unbounded where the drift at T is near 0: it probed t = -16 on VP)
and land their last step on the end point (`step_t`) instead of stepping past it and interpolating back; fixed
methods step on a given grid. torchdiffeq integrates a batch as one system (shared steps), so an adaptive solve's
steps, hence each sample, depend within the tolerance on the batch it is solved with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_METHODS = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}  # NFE a step
METHODS = ADAPTIVE_METHODS + tuple(FIXED_METHODS)
DEFAULT_FIXED_STEPS = 100
ADAPTIVE_OPTIONS = {"rtol": 1e-5, "atol": 1e-5, "error_norm": "worst_sample"}  # ODEOptions' knobs of adaptive methods
# torchdiffeq's Adams methods take equal-step coefficients on any grid, warm up with RK4 steps (not 1 NFE a step) and
# raise their order to 11, which diverges: refused, with the multistep solvers that do this right named
REFUSED = {"explicit_adams": "use sampler dpmpp or unipc (multistep in log-SNR, any grid, 1 NFE a step)",
           "implicit_adams": "use sampler dpmpp or unipc (multistep in log-SNR, any grid, 1 NFE a step)"}


def check_step_dtype(x: Tensor | torch.dtype, what: str) -> None:
    """TypeError unless x (or the dtype x) is float32 or float64, the precisions the solvers step in."""
    if not isinstance(x, torch.dtype) and not torch.is_tensor(x):
        raise TypeError(f"{what} must be a torch dtype (torch.float32 or torch.float64); got {x!r}")
    dtype = x if isinstance(x, torch.dtype) else x.dtype
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{what} is {str(dtype).replace('torch.', '')}: samplers and ODE solves step in float32 or "
                        "float64 (in half precision the time grid's small steps round to nothing); for a network in "
                        "bf16, build the Denoiser with autocast='bf16'")


def check_fixed_method_options(owner: str, options, adaptive_defaults: dict) -> None:
    """A fixed-grid method's `options` (with .method) given an adaptive method's setting other than its default:
    refused, naming it (it would be ignored). null (None) is "not used": set to the default, so settings and result
    keys read alike."""
    for key, default in adaptive_defaults.items():
        if getattr(options, key) is None:
            setattr(options, key, default)
    unused = {k: getattr(options, k) for k, v in adaptive_defaults.items() if getattr(options, k) != v}
    if unused:
        raise ValueError(f"{owner}: {', '.join(f'{k}={v!r}' for k, v in unused.items())} would be ignored: "
                         f"{'/'.join(adaptive_defaults)} apply to adaptive methods ({', '.join(ADAPTIVE_METHODS)}); "
                         f"fixed-grid method {options.method!r} takes steps")


def check_method(owner: str, method: str, rtol, atol) -> None:
    if not isinstance(method, str):
        raise ValueError(f"{owner}: the ODE method must be one name, one of {METHODS}; got {method!r}")
    if method in REFUSED:
        raise ValueError(f"{owner}: ODE method {method!r} is not offered: {REFUSED[method]}")
    if method not in METHODS:
        raise ValueError(f"{owner}: unknown ODE method {method!r}; choose one of {METHODS}")
    for key, value in (("rtol", rtol), ("atol", atol)):
        if value is None and method in FIXED_METHODS:  # not used (check_fixed_method_options)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{owner}: {key} must be a number in (0, 1); got {value!r}")


def solve_between(func, y0, t0: float, t1: float, method: str, rtol: float = 1e-5, atol: float = 1e-5,
                  first_step: float = 0.01, grid=None, sde=None, norm=None):
    """torchdiffeq from t0 to t1 (either direction) without querying `func` outside [t0, t1]: adaptive methods
    take a first step of first_step |t1 - t0| and land their last step on t1 (their error measured by `norm`,
    torchdiffeq's RMS over the whole state by default); fixed methods step on `grid`. Given an `sde` whose drift
    jumps, adaptive methods integrate in its log-SNR (InLogSNR)."""
    if sde is not None and sde.drift_jumps and method in ADAPTIVE_METHODS:
        lam0, lam1 = (float(sde.log_snr(torch.tensor(t, dtype=torch.float64))) for t in (t0, t1))
        return solve_between(InLogSNR.around(func, sde), y0, lam0, lam1, method, rtol, atol, first_step, norm=norm)
    device = (y0[0] if isinstance(y0, tuple) else y0).device
    span = torch.tensor([t0, t1], dtype=torch.float64, device=device)
    if method in ADAPTIVE_METHODS:
        options = {"step_t": span[1:], "first_step": first_step * abs(t1 - t0)}
        if norm is not None:
            options["norm"] = norm
        return odeint(func, y0, span, method=method, rtol=rtol, atol=atol, options=options)
    return odeint(func, y0, span, method=method, options={"grid_constructor": lambda f, y, t: grid})


class ProbabilityFlow(nn.Module):
    """The ODE's right-hand side for torchdiffeq; `on_step(t, x)` is called at every step the solver takes."""

    def __init__(self, denoiser, on_step=None):
        super().__init__()
        self.denoiser = denoiser
        self.on_step = on_step

    def forward(self, t, x):
        return self.denoiser.sde.ode_drift(x, t, self.denoiser(x, t).score)

    def callback_step(self, t0, y0, dt):
        if self.on_step is not None:
            self.on_step(t0, y0)

    @staticmethod
    def for_method(method: str, denoiser, on_step=None) -> "ProbabilityFlow":
        """The right-hand side for `method`: adaptive ones also count accepted and rejected steps (torchdiffeq warns
        when a fixed-grid method is given those hooks, so only adaptive ones get them)."""
        return (AdaptiveProbabilityFlow if method in ADAPTIVE_METHODS else ProbabilityFlow)(denoiser, on_step)


class AdaptiveProbabilityFlow(ProbabilityFlow):
    n_accept = 0
    n_reject = 0
    last_drift = None  # kept (no copy, no sync) to tell a non-finite drift from a too tight tolerance

    def forward(self, t, x):
        self.last_drift = super().forward(t, x)
        return self.last_drift

    def callback_accept_step(self, t0, y0, dt):
        self.n_accept += 1

    def callback_reject_step(self, t0, y0, dt):
        self.n_reject += 1


class InLogSNR(nn.Module):
    """`func`'s ODE dy/dt in lambda = log(alpha / sigma): dy/dlambda = dy/dt * dt/dlambda, dt/dlambda =
    -2 sigma^2 / g^2. For a VP SDE that is sigma^2 (x + score): continuous where f and g^2 jump in t (a discrete
    schedule's knots), which an adaptive step size control in t meets with many rejected steps (dopri5 at 1e-6 on a
    DDPM schedule: 1609 NFE and 2e-3 nats in t, 439 NFE and 3e-7 nats in lambda; benchmarks/discrete_logsnr.py).
    The step callbacks get t."""

    def __init__(self, func, sde):
        super().__init__()
        self.func, self.sde = func, sde

    @staticmethod
    def around(func, sde) -> "InLogSNR":
        return (AdaptiveInLogSNR if hasattr(func, "callback_accept_step") else InLogSNR)(func, sde)

    def time(self, lam):
        return self.sde.t_from_log_snr(lam)

    def forward(self, lam, y):
        t = self.time(lam)
        dt_dlam = -2 * self.sde.sigma(t) ** 2 / self.sde.g2(t)
        dy = self.func(t, y)
        return tuple(d * dt_dlam.to(d.dtype) for d in dy) if isinstance(dy, tuple) else dy * dt_dlam.to(dy.dtype)

    def callback_step(self, lam, y, dlam):
        if hasattr(self.func, "callback_step"):
            self.func.callback_step(self.time(lam), y, dlam)


class AdaptiveInLogSNR(InLogSNR):
    def callback_accept_step(self, lam, y, dlam):
        self.func.callback_accept_step(self.time(lam), y, dlam)

    def callback_reject_step(self, lam, y, dlam):
        self.func.callback_reject_step(self.time(lam), y, dlam)


@dataclass
class ODEOptions:
    """How torchdiffeq solves the probability-flow ODE for encode/decode/likelihood: an adaptive method with
    rtol/atol, or a fixed one with `steps` (uniform in t). An adaptive method holds each sample's error to the
    tolerance (error_norm="worst_sample": per-sample results do not degrade with the batch size; 8 Gaussians, 200
    samples, rtol 1e-5: max log p error 1.7e-3 nats at batch 25 and 200, against 3.9e-3 and 5.1e-3 for the batch RMS,
    at 25-35 % more NFE), or the RMS over the batch (error_norm="batch", torchdiffeq's default)."""

    method: str = "dopri5"
    rtol: float = ADAPTIVE_OPTIONS["rtol"]  # adaptive methods only, as error_norm
    atol: float = ADAPTIVE_OPTIONS["atol"]
    steps: int | None = None  # fixed-grid methods only (None: 100)
    error_norm: str = ADAPTIVE_OPTIONS["error_norm"]

    def __post_init__(self):
        check_method("ODEOptions", self.method, self.rtol, self.atol)
        if self.method in ADAPTIVE_METHODS:
            if self.error_norm not in ERROR_NORMS:
                raise ValueError(f"ODEOptions: error_norm must be one of {list(ERROR_NORMS)}; got {self.error_norm!r}")
            if self.steps is not None:
                raise ValueError(f"ODEOptions: method {self.method!r} is adaptive and takes rtol/atol, not steps (got "
                                 f"steps={self.steps!r}); fixed-grid methods: {tuple(FIXED_METHODS)}")
            return
        check_fixed_method_options("ODEOptions", self, ADAPTIVE_OPTIONS)
        if self.steps is None:
            self.steps = DEFAULT_FIXED_STEPS
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"ODEOptions: steps must be an integer >= 1; got {self.steps!r}")

    @property
    def adaptive(self) -> bool:
        return self.method in ADAPTIVE_METHODS

    def solve(self, func, y0, t0: float, t1: float, device, sde=None):
        """The solution at (t0, t1) (a tuple of them for a tuple state); a FloatingPointError if it is not finite
        (a network answering NaN: adaptive methods would otherwise end in torchdiffeq's step-size underflow)."""
        if len(y0[0] if isinstance(y0, tuple) else y0) == 0:  # torch's reshape message otherwise
            raise ValueError("ODEOptions: an empty batch (0 samples) to solve; give at least one sample")
        grid = None if self.adaptive else torch.linspace(t0, t1, self.steps + 1, dtype=torch.float64, device=device)
        watched = _LastValue(func)
        try:
            ys = solve_between(watched, y0, t0, t1, self.method, self.rtol, self.atol, grid=grid, sde=sde,
                               norm=ERROR_NORMS[self.error_norm])
        except AssertionError as err:  # torchdiffeq's step-size underflow
            if _finite(watched.last):
                raise
            raise FloatingPointError(f"ODEOptions: {self.method}'s step size underflowed between t={t0:.6g} and "
                                     f"t={t1:.6g}: {NON_FINITE_DRIFT}") from err
        if not _finite(tuple(y[-1] for y in ys) if isinstance(ys, tuple) else ys[-1]):
            raise FloatingPointError(f"ODEOptions: the {self.method} solution from t={t0:.6g} to t={t1:.6g} is not "
                                     f"finite: {NON_FINITE_DRIFT}")
        return ys


def worst_sample_norm(state) -> Tensor:
    """The largest over the batch of each sample's RMS (over its coordinates and every part of a tuple state, batch
    first): an adaptive solve then holds every sample's error to the tolerance, as if it were solved alone. The RMS
    over the whole batch (torchdiffeq's, error_norm="batch") lets one sample's error grow with the batch size."""
    parts = state if isinstance(state, tuple) else (state,)
    return torch.stack([p.reshape(len(p), -1).pow(2).mean(1).sqrt() for p in parts]).amax(0).max()


ERROR_NORMS = {"worst_sample": worst_sample_norm, "batch": None}  # None: torchdiffeq's RMS over the batch (per part)


NON_FINITE_DRIFT = "the drift is not finite (the network returned NaN or infinite values, or the input was not finite)"


def _finite(value) -> bool:
    """Whether a tensor, or every tensor of a tuple, is finite (None: nothing computed yet, taken as finite)."""
    if value is None:
        return True
    return all(bool(torch.isfinite(v).all()) for v in (value if isinstance(value, tuple) else (value,)))


class _LastValue(nn.Module):
    """`func` keeping its last value (no copy, no sync), to tell a non-finite drift from a too tight tolerance."""

    def __init__(self, func):
        super().__init__()
        self.func, self.last = func, None

    def forward(self, t, y):
        self.last = self.func(t, y)
        return self.last
