"""Time discretisations, separate from the solvers, and the Plan a sampler runs on (resolved in schedule.py).

Each grid runs from `start` (T unless a sampler starts later: gaussian_start) down to eps (steps + 1 points,
strictly decreasing), and is built through the SDE's log-SNR lambda_t so that one definition serves VP, sub-VP
and VE:
  uniform    t_i uniform in [eps, start]
  trailing   t_i = start (1 - i/N), the last one moved from 0 to eps: diffusers' "trailing" spacing, whose points sit
             i/N eps closer to 0 than uniform's (UniPC-3 on it ends 0.4 % / 1.4 % closer at 10 / 20 steps on the
             tuning family, benchmarks/trailing_grid.py); needs start / N > eps
  logsnr     lambda uniform (the natural grid of exponential integrators, Lu et al. 2022)
  karras     sigma~ = exp(-lambda) = sigma_t / alpha_t spaced as (sigma~_max^(1/rho) + i/N (...))^rho
             (Karras et al. 2022)
  quadratic  t_i = eps + (start - eps) (1 - i/N)^2 (DDIM's quadratic spacing)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_sde.sde import SDE

log = logging.getLogger(__name__)

GRIDS = ("uniform", "trailing", "logsnr", "karras", "quadratic")


def time_grid(sde: SDE, steps: int, kind: str = "uniform", rho: float = 7.0, start: float | None = None) -> Tensor:
    if kind not in GRIDS:
        raise ValueError(f"unknown time grid {kind!r}; choose one of {GRIDS}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1; got {steps!r}")
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    first = torch.tensor(sde.T if start is None else start, dtype=torch.float64)
    eps = torch.tensor(sde.eps, dtype=torch.float64)
    if not eps < first <= sde.T:
        raise ValueError(f"a time grid must start in (eps, T] = ({sde.eps}, {sde.T}]; got start={start}")
    if kind == "uniform":
        t = first + u * (eps - first)
    elif kind == "trailing":
        if not fits(sde, steps, kind, float(first)):
            raise ValueError(f"the trailing grid needs start / steps > eps; got {float(first)} / {steps} <= "
                             f"{sde.eps} (fewer steps, or the uniform grid)")
        t = first * (1 - u)
    elif kind == "quadratic":
        t = eps + (first - eps) * (1 - u) ** 2
    elif kind == "logsnr":
        lam_0, lam_eps = sde.log_snr(first), sde.log_snr(eps)
        t = sde.t_from_log_snr(lam_0 + u * (lam_eps - lam_0))
    else:
        if not rho > 0:
            raise ValueError(f"karras grid needs rho > 0; got rho={rho}")
        s_max, s_min = (-sde.log_snr(first)).exp(), (-sde.log_snr(eps)).exp()
        sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        t = sde.t_from_log_snr(-sig.log())
    t[0], t[-1] = first, eps  # exact endpoints, free of the round trip through lambda
    return t


def fits(sde: SDE, steps: int, kind: str, start: float) -> bool:
    """Whether `kind` has `steps` strictly decreasing points from `start` to eps (only trailing's can collide)."""
    return kind != "trailing" or start / steps > sde.eps


def select_grids(sde: SDE, steps: int, start: float, grids=GRIDS) -> tuple[str, ...]:
    """The named grids grid="select" compares from `start`: those that fit, without uniform where trailing fits. The
    two differ by i/N eps and trailing ends closer on 22-24 of 24 tuning problems at each order and budget
    (benchmarks/trailing_grid.py), by 0.4-1.4 %: less than a pilot's noise, so a pilot choosing between them picks by
    its noise and runs the worse one on some models."""
    usable = tuple(g for g in grids if fits(sde, steps, g, start))
    return tuple(g for g in usable if g != "uniform") if "trailing" in usable else usable


@dataclass(frozen=True)
class Plan:
    start: float  # the time the sampler starts from (x_T is carried here first when start < T)
    times: Tensor | None  # (steps + 1,) float64 from start to eps; None for adaptive samplers
    setup: dict = field(default_factory=dict)  # what resolving cost: {"setup_nfe": ..., "tuning": report}
    sampler: object = None  # grid="select" with select_over: the chosen variant, run in place of the configured one


def data_moments(sampler, denoiser):
    if denoiser.data_moments is None:
        knob = gaussian_start_knob(sampler) or "gaussian_start"  # none set: a carry to a later start asked for them
        raise ValueError(f"{sampler.name}: {knob} needs the data's mean and covariance, the denoiser's "
                         "data_moments: mixtures have them, and so do checkpoints trained by this version; else build "
                         "the Denoiser with data_moments=DataMoments.of_samples(training_data)")
    return denoiser.data_moments


def may_use_data_moments(sampler) -> bool:
    """Whether the sampler can start from a Gaussian start (its own, or a candidate's of grid="select"), which needs
    the denoiser's data_moments."""
    if gaussian_start_knob(sampler):
        return True
    overs = [getattr(sampler, "select_over", None), *(getattr(sampler, "select_over_from_steps", None) or {}).values()]
    return any(value is not None for over in overs if over for knob in ("gaussian_start", "gaussian_start_kl")
               for value in over.get(knob, ()))


def gaussian_start_knob(sampler) -> str | None:
    """The Gaussian start a sampler sets ("gaussian_start_kl" or "gaussian_start"), None when it starts at T."""
    if sampler.gaussian_start_kl is not None:
        return "gaussian_start_kl"
    return "gaussian_start" if sampler.gaussian_start is not None else None


def start_time(sampler, denoiser) -> float:
    """T, or with gaussian_start the time where the data's largest std is that ratio of the noise level, or with
    gaussian_start_kl the time where the Gaussian fit's KL bound is that many nats. T for a denoiser that conditions
    what it samples (guidance, inpainting): the data's fit is not the conditioned distribution's, and carrying x_T by
    it biased the samples (an inpainted mean 0.77 for the exact 0.90)."""
    knob = gaussian_start_knob(sampler)
    if knob is None or getattr(denoiser, "conditions", False):
        if knob is not None and (sampler.name, knob) not in _STARTS_AT_T:
            _STARTS_AT_T.add((sampler.name, knob))
            log.info("%s: %s left out: the denoiser conditions its samples (guidance or inpainting); it starts at T",
                     sampler.name, knob)
        return float(denoiser.sde.T)
    if knob == "gaussian_start_kl":
        return data_moments(sampler, denoiser).start_time_kl(denoiser.sde, sampler.gaussian_start_kl)
    return data_moments(sampler, denoiser).start_time(denoiser.sde, sampler.gaussian_start)


_STARTS_AT_T: set = set()  # (sampler, knob) already said to start at T under conditioning


def check_start(sampler, denoiser, guided: bool = False) -> None:
    """A Gaussian start the data reaches only after eps fails now (a start-up check), not when the sampler first
    samples (hours into a sweep). `guided`: the samples will be drawn through a guided denoiser, from T."""
    if gaussian_start_knob(sampler) is not None and not guided:
        start_time(sampler, denoiser)


def carry(sampler, denoiser, x_T: Tensor, start: float) -> Tensor:
    """x_T carried from T to `start` by the Gaussian fit's exact flow (no NFE); x_T itself when start = T."""
    sde = denoiser.sde
    return x_T if start >= sde.T else data_moments(sampler, denoiser).flow(x_T, sde, sde.T, start)
