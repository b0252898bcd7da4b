"""Exponential-integrator solvers in log-SNR for the probability-flow ODE (and its SDE), data prediction.

With lambda = log(alpha / sigma) and D = the network's x0 prediction, the ODE's exact solution from s to t is

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} D(lambda) d lambda,

so the linear part is integrated exactly and only D is approximated by a polynomial in lambda. Every solver here
works for VP, sub-VP and VE alike through alpha_t, sigma_t, lambda_t, and costs one NFE a step (the adaptive one
one per attempted step). With h = lambda_t - lambda_s > 0:

  dpmpp        DPM-Solver++ multistep (Lu et al. 2022b), order 1..3: D extrapolated from the last `order` outputs;
               lower orders for the first steps (warm-up) and, with `lower_order_final`, the last ones.
  unipc        UniPC (Zhao et al. 2023), B(h) = e^h - 1: a predictor of order p (1..4), then a corrector that uses the
               model output at the new point, the very evaluation the next step needs anyway: no extra NFE.
               The last step is not corrected (there is no next evaluation to reuse).
  sde_dpmpp    SDE-DPM-Solver++(2M) of the reverse SDE, noise from the samples' seeds (first step order 1).
  unipc_adaptive  UniPC (predictor order 1..6) with step-size control from its predictor-corrector difference
               (1 NFE per attempted step); NFE is measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy
import torch

from lightning_sde.errors import NoConvergence
from lightning_sde.probability_flow import ERROR_NORMS
from lightning_sde.samplers.base import FixedStepSampler, Sampler, register


def _lam(sde, t):
    return sde.log_snr(t)


def dpmpp_update(x, sde, ts: list, ds: list, t, order: int):
    """One DPM-Solver++ step to `t` from the newest state `x` at ts[-1], with outputs ds (newest last)."""
    s0 = ts[-1]
    lam_t, lam_0 = _lam(sde, t), _lam(sde, s0)
    h = lam_t - lam_0
    phi1 = torch.expm1(-h)  # e^{-h} - 1
    alpha_t, sigma_t = sde.alpha(t), sde.sigma(t)
    x_t = (sigma_t / sde.sigma(s0)) * x - alpha_t * phi1 * ds[-1]
    if order == 1:
        return x_t
    h0 = lam_0 - _lam(sde, ts[-2])
    r0 = h0 / h
    d1_0 = (ds[-1] - ds[-2]) / r0
    if order == 2:
        return _first_order_where_collapsed(x_t - 0.5 * alpha_t * phi1 * d1_0, x_t, h, h0)
    h1 = _lam(sde, ts[-2]) - _lam(sde, ts[-3])
    r1 = h1 / h
    d1_1 = (ds[-2] - ds[-3]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = 2 * (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 D'': the Taylor term is -alpha_t phi3 h^2 D'' (order 3: tested)
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    return _first_order_where_collapsed(x_t + alpha_t * phi2 * d1 - alpha_t * phi3 * d2, x_t, h, h0, h1)


def _first_order_where_collapsed(x_high, x_first, *steps):
    """The higher-order update, or the first-order one where a log-SNR step it divides by is 0: times closer than the
    dtype resolves (a float32 grid of 50 000 quadratic steps) make h = 0 and the ratios 0/0 (NaN samples). Chosen on
    the device, without a sync; every step > 0 (any grid float64 resolves) returns x_high unchanged."""
    resolved = steps[0] > 0
    for h in steps[1:]:
        resolved = resolved & (h > 0)
    return torch.where(resolved, x_high, x_first)


LOWER_ORDER_FINAL_BELOW = 15  # steps; as diffusers: a first-order last step would cap the order of long runs
MAX_STEP_RATIO = 2.0  # chosen on benchmarks/family.py's tuning seeds (benchmarks/order_rule.py)


def _order_at(i: int, steps: int, order: int, lower_order_final: bool, below: float = LOWER_ORDER_FINAL_BELOW) -> int:
    """Warm-up: step i has at most i + 1 outputs to use; final (for runs under `below` steps): the last steps drop
    to order steps - i. As diffusers: DPM-Solver++ under 15 steps, UniPC always (below=inf), where it keeps the
    global order (measured) and tames the long last log-SNR steps of t-uniform grids."""
    k = min(order, i + 1)
    return min(k, steps - i) if lower_order_final and steps < below else k


def step_orders(lam: torch.Tensor, order: int, lower_order_final: bool, below: float, max_step_ratio: float,
                extra_final: int = 0) -> list:
    """The order of each step of a grid with log-SNRs `lam` (steps + 1,): `_order_at`'s, or 1 where the step reaches
    further than max_step_ratio times the log-SNR span of the outputs it would extrapolate from. An order-k step
    extrapolates a polynomial through k outputs over [lam_(i-k+1), lam_i] to lam_(i+1): a step much longer than that
    span (the last step of a t-uniform grid: ~4x its predecessor) amplifies the outputs' differences by powers of the
    ratio (DPM-Solver++(3M) on the t-uniform grid at 15-20 steps ended 10-16x worse than DDIM before this rule).
    Lower orders have shorter spans, so the fallback is first order. `extra_final`: evaluations after the last step
    (UniPC's final corrector), which lower_order_final counts as steps (as diffusers)."""
    steps, lam = len(lam) - 1, lam.tolist()
    orders = []
    for i in range(steps):
        k = _order_at(i, steps + extra_final, order, lower_order_final, below)
        orders.append(1 if k > 1 and lam[i + 1] - lam[i] > max_step_ratio * (lam[i] - lam[i - k + 1]) else k)
    return orders


def _check_order(name: str, order, allowed):
    if isinstance(order, bool) or not isinstance(order, int) or order not in allowed:
        raise ValueError(f"{name}: order must be one of {allowed}; got {order!r}")


@dataclass
class _Multistep(FixedStepSampler):
    """Fields and checks shared by the multistep solvers (one NFE a step, log-SNR grid by default)."""

    steps: int = 20
    grid: str = "logsnr"
    order: int = 2
    lower_order_final: bool = True
    max_step_ratio: float = MAX_STEP_RATIO  # step_orders(); math.inf: orders by warm-up and lower_order_final only
    orders: ClassVar[tuple[int, ...]] = (1, 2, 3)
    lower_order_final_below: ClassVar[float] = LOWER_ORDER_FINAL_BELOW

    def __post_init__(self):
        super().__post_init__()
        _check_order(self.name, self.order, self.orders)
        if not isinstance(self.lower_order_final, bool):
            raise ValueError(f"{self.name}: lower_order_final must be true or false; got {self.lower_order_final!r}")
        ratio = self.max_step_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
            raise ValueError(f"{self.name}: max_step_ratio must be a number > 0 (inf: no limit); got {ratio!r}")

    def initial_state(self, denoiser, times):
        return {"orders": step_orders(denoiser.sde.log_snr(times), self.order, self.lower_order_final,
                                      self.lower_order_final_below, self.max_step_ratio, self.steps - self.intervals)}


@register("dpmpp")
@dataclass
class DPMSolverPP(_Multistep):
    def step(self, denoiser, x, t, s, noise, last, state):
        ts, ds = state.setdefault("ts", []), state.setdefault("ds", [])
        i = state.get("i", 0)
        ts.append(t)
        ds.append(denoiser(x, t).x0)
        x = dpmpp_update(x, denoiser.sde, ts, ds, s, state["orders"][i])
        del ts[:-2], ds[:-2]
        state["i"] = i + 1
        return x


INVERSE_FACTORIALS = [1 / math.factorial(n) for n in range(40)]


def _expm1(z):
    return torch.expm1(z) if isinstance(z, torch.Tensor) else math.expm1(z)


def phi_functions(z, n: int) -> list:
    """phi_1(z) .. phi_n(z), phi_k(z) = sum_{j >= 0} z^j / (j + k)!: by their series where |z| < 1, where the
    recurrence phi_{k+1}(z) = (phi_k(z) - 1/k!) / z loses log10(1/|z|) digits an order (order 4 of a 3000-step run in
    float32 lost them all), and by the recurrence elsewhere, where it is stable. z: a Python float (float64), or a
    float64 tensor while a grid is optimised through the sampler."""
    if abs(z) < 1:  # 25 terms: the first left out is below 1/26! ~ 2.5e-27 of the first
        return [sum(z**j * INVERSE_FACTORIALS[j + k] for j in range(25)) for k in range(1, n + 1)]
    phis = [_expm1(z) / z]
    for k in range(1, n):
        phis.append((phis[-1] - 1 / math.factorial(k)) / z)
    return phis


def unipc_coefficients(rks: list, h, order: int) -> tuple[list[list], list, object]:
    """UniPC's bh2 coefficients in data prediction, in float64 from log-SNR steps: R (order x order, rows rks^(i-1)),
    b_i = i! (-h) phi_(i+1)(-h) / B(h) for i = 1..order, and B(h) = e^{-h} - 1 (also the first-order step's
    factor)."""
    b_h = _expm1(-h)
    phis = phi_functions(-h, order + 1)
    b = [math.factorial(i) * -h * phis[i] / b_h for i in range(1, order + 1)]
    return [[rk ** (i - 1) for rk in rks] for i in range(1, order + 1)], b, b_h


def solve(R: list[list], b: list) -> list:
    """R^-1 b in float64: R is a Vandermonde matrix of distinct log-SNR ratios (a strictly decreasing grid), never
    singular. Python numbers are solved on the host, so a step copies nothing to the device; tensors (a grid being
    optimised) where they are, keeping their gradient."""
    values = [v for row in R for v in row] + b
    held = next((v for v in values if isinstance(v, torch.Tensor)), None)
    if held is None:
        return numpy.linalg.solve(numpy.array(R, dtype=numpy.float64), numpy.array(b, dtype=numpy.float64)).tolist()
    as_t = lambda v: torch.as_tensor(v, dtype=torch.float64, device=held.device)  # noqa: E731
    rhos = torch.linalg.solve(torch.stack([torch.stack([as_t(v) for v in row]) for row in R]),
                              torch.stack([as_t(v) for v in b]))
    return list(rhos.unbind())


class Point(NamedTuple):
    """A time on the sampler's device and its log-SNR in float64: a Python float computed on the host, or, while a
    grid is optimised through the sampler, a tensor that carries the gradient."""

    t: torch.Tensor
    lam: float | torch.Tensor


@register("unipc")
@dataclass
class UniPC(_Multistep):
    # spend the last evaluation on the corrector of the last step, at eps, instead of on one more step: `steps` NFE
    # over steps - 1 grid intervals, as diffusers' UniPC on its Karras and exponential sigmas (whose last one repeats)
    final_corrector: bool = False
    orders: ClassVar[tuple[int, ...]] = (1, 2, 3, 4)
    lower_order_final_below: ClassVar[float] = math.inf

    def __post_init__(self):
        if not isinstance(self.final_corrector, bool):
            raise ValueError(f"{self.name}: final_corrector must be true or false; got {self.final_corrector!r}")
        if self.final_corrector and not (isinstance(self.steps, int) and self.steps >= 2):
            raise ValueError(f"{self.name}: final_corrector needs steps >= 2 (one step and its corrector); "
                             f"got steps={self.steps!r}")
        super().__post_init__()

    @property
    def intervals(self) -> int:
        return self.steps - self.final_corrector

    def initial_state(self, denoiser, times):
        return {**super().initial_state(denoiser, times), "lams": denoiser.sde.log_snr(times).tolist()}

    @staticmethod
    def _point(sde, state, index: int, t) -> Point:
        return Point(t, _lam(sde, t.double()) if t.requires_grad else state["lams"][index])

    def step(self, denoiser, x, t, s, noise, last, state):
        sde = denoiser.sde
        i = state.setdefault("i", 0)
        if "points" not in state:  # the first step: the model output at the start
            state.update(points=[self._point(sde, state, 0, t)], ds=[denoiser(x, t).x0], pending=None)
        points, ds = state["points"], state["ds"]
        if state["pending"] is not None:  # correct the last step now that the output at its end is known
            x = self._correct(sde, *state["pending"], points, ds)
        k = state["orders"][i]
        x_prev = x
        end = self._point(sde, state, i + 1, s)
        x = self._predict(sde, x, points, ds, end, k)
        if not last or self.final_corrector:  # this evaluation is the next step's model output, or the final one's
            points.append(end)
            ds.append(denoiser(x, s).x0)
            if last:
                return self._correct(sde, x_prev, k, points, ds)
            state["pending"] = (x_prev, k)
            del points[: -(self.order + 1)], ds[: -(self.order + 1)]
        state["i"] = i + 1
        return x

    @staticmethod
    def _history(points, ds, s0_index: int, lam_t, order: int):
        """h, rks (floats) and D1s for a step from points[s0_index] to log-SNR lam_t using order - 1 earlier outputs."""
        lam_0 = points[s0_index].lam
        h = lam_t - lam_0
        rks, d1s = [], []
        for k in range(1, order):
            j = s0_index - k
            rk = (points[j].lam - lam_0) / h
            rks.append(rk)
            d1s.append((ds[j] - ds[s0_index]) / rk)
        return h, rks, d1s

    @staticmethod
    def _predict(sde, x, points, ds, end: Point, order):
        h, rks, d1s = UniPC._history(points, ds, -1, end.lam, order)
        R, b, b_h = unipc_coefficients(rks + [1.0], h, order)
        alpha_t, sigma_t = sde.alpha(end.t), sde.sigma(end.t)
        x_t = (sigma_t / sde.sigma(points[-1].t)) * x - alpha_t * b_h * ds[-1]
        if d1s:
            rhos = (0.5,) if order == 2 else solve([row[:-1] for row in R[:-1]], b[:-1])
            x_t = x_t - alpha_t * b_h * sum(r * d for r, d in zip(rhos, d1s))
        return x_t

    @staticmethod
    def _correct(sde, x_prev, order, points, ds):
        """UniC: redo the step points[-2] -> points[-1] with the new output ds[-1] as one more data point."""
        end = points[-1]
        h, rks, d1s = UniPC._history(points, ds, -2, end.lam, order)
        R, b, b_h = unipc_coefficients(rks + [1.0], h, order)
        rhos = (0.5,) if order == 1 else solve(R, b)
        alpha_t, sigma_t = sde.alpha(end.t), sde.sigma(end.t)
        x_t = (sigma_t / sde.sigma(points[-2].t)) * x_prev - alpha_t * b_h * ds[-2]
        corr = sum(r * d for r, d in zip(rhos[:-1], d1s)) if d1s else 0.0
        return x_t - alpha_t * b_h * (corr + rhos[-1] * (ds[-1] - ds[-2]))


@register("sde_dpmpp")
@dataclass
class SDEDPMSolverPP(_Multistep):
    """SDE-DPM-Solver++(2M): x_t = (sigma_t/sigma_s) e^{-h} x + alpha_t (1 - e^{-2h}) (D + D'/2)
    + sigma_t sqrt(1 - e^{-2h}) z; the last step returns the mean (no noise), as the other stochastic samplers."""

    orders: ClassVar[tuple[int, ...]] = (1, 2)

    @property
    def stochastic(self) -> bool:
        return True

    def step(self, denoiser, x, t, s, noise, last, state):
        sde = denoiser.sde
        i, prev = state.get("i", 0), state.get("prev")  # prev: (lambda, D) of the step before
        d0 = denoiser(x, t).x0
        lam_t, lam_s = _lam(sde, t), _lam(sde, s)
        h = lam_s - lam_t
        one_minus = -torch.expm1(-2 * h)  # 1 - e^{-2h}
        d = d0
        if prev is not None and state["orders"][i] == 2:
            h0 = lam_t - prev[0]
            d = _first_order_where_collapsed(d0 + 0.5 * (d0 - prev[1]) / (h0 / h), d0, h, h0)
        x = (sde.sigma(s) / sde.sigma(t)) * torch.exp(-h) * x + sde.alpha(s) * one_minus * d
        if not last:
            x = x + sde.sigma(s) * one_minus.sqrt() * noise().to(x)
        state.update(i=i + 1, prev=(lam_t, d0))
        return x


MIN_LOG_SNR_STEP = 1e-10  # an adaptive step shorter than this is an underflow, not a step


@register("unipc_adaptive")
@dataclass
class AdaptiveUniPC(Sampler):
    """UniPC with step-size control in lambda from its own predictor-corrector pair: the corrector (order p + 1)
    minus the predictor (order p) estimates the predictor's local error at no extra cost, since the corrector uses
    the model output at the predicted point, which the next step needs anyway. A rejected step costs that one
    evaluation. Error: RMS over the whole batch of (x_c - x_p) / (atol + rtol max(|x_c|, |x|)) (torchdiffeq's norm, so
    tolerances compare with dopri5's), or with error_norm="worst_sample" the largest of each sample's own RMS (every
    sample held to the tolerance, at more NFE). Step size: h <- h min(safety E^{-icoeff/q} (E_prev / E)^{pcoeff/q},
    max_growth) with q = p + 1 and E_prev the last accepted step's error: icoeff = 1, pcoeff = 0 is the plain
    (integral) controller; pcoeff > 0 (a PI controller) also shrinks the step while the error grows from step to
    step, as it does where the data's modes emerge. The step after a rejection does not grow. Warm-up: the first
    steps use the orders their history allows."""

    rtol: float = 1e-3
    atol: float = 1e-3
    order: int = 4  # predictor order; corrected solution of order 5 (fewer NFE than 3 at tolerances <= 3e-4: measured)
    h_init: float = 0.1
    safety: float = 0.8
    max_growth: float = 2.0
    icoeff: float = 1.0
    pcoeff: float = 0.0
    max_steps: int = 2000
    error_norm: str = "batch"
    orders: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5, 6)  # phi_functions keep order 6 exact at short steps
    error_norms: ClassVar[tuple[str, ...]] = tuple(ERROR_NORMS)  # the ODE's: one set of names

    @property
    def adaptive(self) -> bool:
        return True

    def __post_init__(self):
        super().__post_init__()
        _check_order(self.name, self.order, self.orders)
        for key in ("rtol", "atol", "h_init"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{self.name}: {key} must be a finite number > 0; got {value!r}")
        if isinstance(self.max_growth, bool) or not isinstance(self.max_growth, (int, float)) or \
                not self.max_growth >= 1:
            raise ValueError(f"{self.name}: max_growth must be a number >= 1 (1: a step never grows); "
                             f"got {self.max_growth!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"{self.name}: max_steps must be an integer >= 1; got {self.max_steps!r}")
        for key in ("icoeff", "pcoeff"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
                raise ValueError(f"{self.name}: {key} must be a number in [0, 2]; got {value!r}")
        if not self.icoeff > 0:
            raise ValueError(f"{self.name}: icoeff must be > 0 (with 0 the step never shrinks); got {self.icoeff!r}")
        if not 0 < self.safety <= 1:
            raise ValueError(f"{self.name}: safety must lie in (0, 1]; got {self.safety!r}")
        if self.error_norm not in self.error_norms:
            raise ValueError(f"{self.name}: error_norm must be one of {list(self.error_norms)}; "
                             f"got {self.error_norm!r}")

    def _error(self, diff, scale):
        """The step's error in units of the tolerance: RMS of diff / scale over the batch, or the largest of the
        samples' own RMS (worst_sample)."""
        norm = ERROR_NORMS[self.error_norm]
        return (diff / scale).pow(2).mean().sqrt() if norm is None else norm(diff / scale)

    def run(self, denoiser, x, plan, noise, on_step):
        sde = denoiser.sde
        device = x.device
        as_t = lambda v: torch.as_tensor(v, dtype=torch.float64).cpu()  # noqa: E731
        lam_end = float(_lam(sde, as_t(sde.eps)))
        # log-SNRs as Python floats from float64 times on the host; the times stay float64 on the device too
        start = Point(as_t(plan.start).to(device), float(_lam(sde, as_t(plan.start))))
        points, ds = [start], [denoiser(x, start.t).x0]
        lam = start.lam
        h, n_accept, n_reject = min(self.h_init, lam_end - lam), 0, 0
        err_prev, rejected = None, False
        while lam < lam_end - 1e-12:
            if n_accept + n_reject >= self.max_steps:
                raise NoConvergence(f"{self.name}: no convergence in {self.max_steps} steps (rtol={self.rtol}, "
                                    f"atol={self.atol}): " + ("a larger tolerance or more max_steps"
                                                              if x.dtype == torch.float64 else
                                                              f"a tolerance below what {x.dtype} samples resolve? "
                                                              "Use dtype=float64 or a larger tolerance"))
            if h < MIN_LOG_SNR_STEP < lam_end - lam:  # (a last step shortened to what is left is no underflow)
                raise NoConvergence(f"{self.name}: the step fell below {MIN_LOG_SNR_STEP:g} in log-SNR at log-SNR "
                                    f"{lam:.6g} (rtol={self.rtol}, atol={self.atol}): the error estimate does not fall "
                                    f"with the step (a tolerance below what {x.dtype} samples resolve, or a network "
                                    "that is not smooth in t)")
            last = lam + h >= lam_end - 1e-12
            t = as_t(sde.eps) if last else sde.t_from_log_snr(as_t(lam + h))
            end = Point(t.to(device), float(_lam(sde, t)))
            k = min(self.order, len(points))
            x_pred = UniPC._predict(sde, x, points, ds, end, k)
            d_t = denoiser(x_pred, end.t).x0
            x_corr = UniPC._correct(sde, x, k, points + [end], ds + [d_t])
            err = float(self._error(x_corr - x_pred, self.atol + self.rtol * torch.maximum(x_corr.abs(), x.abs())))
            if not math.isfinite(err):  # every step would be rejected until max_steps
                raise FloatingPointError(f"{self.name}: the error estimate at t={float(t):.6g} is not finite: the "
                                         "network returned NaN or infinite values")
            err = max(err, 1e-10)
            factor = self.safety * err ** (-self.icoeff / (k + 1))
            if err <= 1:
                if err_prev is not None:
                    factor *= (err_prev / err) ** (self.pcoeff / (k + 1))
                factor = min(factor, 1.0 if rejected else self.max_growth)
                x, lam, err_prev, rejected = x_corr, end.lam, err, False
                points, ds = (points + [end])[-(self.order + 1):], (ds + [d_t])[-(self.order + 1):]
                n_accept += 1
                if on_step is not None:
                    on_step(n_accept - 1, end.t, x)
            else:
                rejected = True
                n_reject += 1
            h = min(h * factor, lam_end - lam)
        return x, {"n_accept": n_accept, "n_reject": n_reject}
