"""Where a sampler spends its evaluations in time: resolved here, in one place, for every sampler.

A sampler's schedule knobs are `gaussian_start` or `gaussian_start_kl` (every sampler) and, for fixed-step ones,
`steps`, `grid`, `rho` and explicit `times`. `plan(sampler, denoiser)` turns them into a Plan:

  start   T, or with gaussian_start=r the time t* at which the data's largest std is r times the noise level, or
          with gaussian_start_kl=k the time at which the Gaussian fit's bound on its KL to p_t is k nats (counting
          every direction: the start for high dimensions); x_T is carried there at no NFE by the exact flow of the
          data's Gaussian fit (models/moments.py)
  times   the steps' times, start ... eps: explicit `times`, a named grid (grids.py), grid="select": the named grid
          (and with gaussian_start, the start: T or t*; with select_over, any other knobs listed there, e.g. the
          order) whose run ends closest to the ODE's solution on a pilot set, or grid="optimized": step positions
          tuned for this denoiser and NFE budget on a pilot set (both in tuning.py, computed once per (model
          weights, sampler settings)); None for adaptive samplers, which choose their own steps

Tuning is set-up, not sampling: its evaluations are reported as `setup_nfe` in the sampler's info and never counted
in `nfe`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_sde.samplers.grids import GRIDS, Plan, gaussian_start_knob, start_time, time_grid
from lightning_sde.samplers.tuning import (
    optimize_grid,
    select_combinations,
    select_over_at,
    select_schedule,
    select_variant,
)

SCHEDULE_GRIDS = GRIDS + ("select", "optimized")
GRID_KNOBS = ("grid", "rho", "pilot", "pilot_batch")  # how a fixed-step sampler's times are made
# knobs that bound memory, not what a sampler computes: left out of the tuning cache's key and of result keys
MEMORY_ONLY = ("pilot_batch",)
MAX_NFE = 100_000  # 100x the 1000-step baseline: a larger budget (or number of steps) is a typo, and its time grid
# alone fills memory
TUNED_CACHE_SIZE = 32
_tuned: OrderedDict[tuple, tuple[Tensor, dict]] = OrderedDict()


def selects_on_pilot(sampler) -> bool:
    """Whether the sampler chooses its configuration on a pilot (grid="select"): what it chose is reported."""
    return not sampler.adaptive and sampler.times is None and sampler.grid == "select"


def plan(sampler, denoiser) -> Plan:
    if selects_on_pilot(sampler):
        (start, times, params), report = tuned(sampler, denoiser, select_schedule)
        chosen = select_variant(sampler, params) if select_over_at(sampler) else None
        return Plan(start, times, {"setup_nfe": spent(report), "selection": report}, chosen)
    start = start_time(sampler, denoiser)
    if sampler.adaptive:
        return Plan(start, None)
    if sampler.times is not None:
        return Plan(start, given_times(sampler, denoiser.sde, start))
    if sampler.grid == "optimized":
        times, report = tuned(sampler, denoiser, optimize_grid)
        return Plan(start, times, {"setup_nfe": spent(report), "tuning": report})
    return Plan(start, time_grid(denoiser.sde, sampler.intervals, sampler.grid, sampler.rho, start=start))


def spent(report: dict) -> int:
    """The network evaluations a tuning report's call spent: its pilot's, none where the result was cached."""
    return 0 if report.get("cached") else report["pilot_nfe"]


def check_grid(sampler, sde) -> None:
    """Lay out a named grid from T on this SDE now, so one it cannot hold (trailing with T / steps <= eps) fails at
    start-up rather than at its first sampling (from a Gaussian start it is checked again when that start is known)."""
    if not sampler.adaptive and sampler.times is None and sampler.grid in GRIDS:
        try:
            time_grid(sde, sampler.intervals, sampler.grid, sampler.rho)
        except ValueError as err:
            raise ValueError(f"{sampler.name}: {err}") from None
    if not sampler.adaptive and sampler.times is not None:  # from T, unless a Gaussian start is to set the start
        given_times(sampler, sde, None if gaussian_start_knob(sampler) else float(sde.T))


def given_times(sampler, sde, start: float | None) -> Tensor:
    """A sampler's own `times`, once they run from `start` (None: any) to eps."""
    times = (sampler.times if isinstance(sampler.times, Tensor)
             else torch.tensor(list(sampler.times), dtype=torch.float64))
    first, last = float(times[0].detach()), float(times[-1].detach())
    if (start is not None and abs(first - start) > 1e-9) or abs(last - sde.eps) > 1e-9:
        origin = "its Gaussian start" if start is None else f"the start time {start} (T, or gaussian_start's)"
        raise ValueError(f"{sampler.name}: times must run from {origin} to eps = {sde.eps}; got {first} ... {last}")
    return times


def tuned(sampler, denoiser, procedure) -> tuple:
    """(result, report) of a tuning procedure (optimize_grid, or select_schedule: its start, times and knobs), computed
    once per (denoiser fingerprint, sampler settings) in this process: the fingerprint covers the weights, so a model
    that trains on gets a new grid at its next evaluation; a network without one (a plain function) is tuned each
    time."""
    # denoise: the pilot compares runs at eps, before any denoising; the same tuning serves both
    settings = {k: v for k, v in sampler.params().items() if k not in ("times", "denoise", *MEMORY_ONLY)}
    fingerprint = denoiser.fingerprint()
    key = (fingerprint, sampler.name, tuple(sorted((k, repr(v)) for k, v in settings.items())))
    if key in _tuned:  # the report of the tuning this process ran (its pilot_nfe and wall_s), not spent again
        _tuned.move_to_end(key)
        result, report = _tuned[key]
        return result, {**report, "cached": True}
    started = time.perf_counter()
    *result, report = procedure(sampler, denoiser)
    report = {**report, "wall_s": time.perf_counter() - started}
    result = result[0] if len(result) == 1 else tuple(result)
    if fingerprint is None:
        return result, report
    _tuned[key] = (result, report)
    while len(_tuned) > TUNED_CACHE_SIZE:
        _tuned.popitem(last=False)
    return result, report


def check_schedule(sampler) -> None:
    """Validate the schedule knobs of a sampler (called from its __post_init__)."""
    name = sampler.name
    start = sampler.gaussian_start
    if start is not None and (isinstance(start, bool) or not isinstance(start, (int, float)) or not start > 0):
        raise ValueError(f"{name}: gaussian_start must be a ratio > 0 (or None); got {start!r}")
    nats = sampler.gaussian_start_kl
    if nats is not None and (isinstance(nats, bool) or not isinstance(nats, (int, float)) or not 0 < nats < math.inf):
        raise ValueError(f"{name}: gaussian_start_kl must be a number of nats > 0 (or None); got {nats!r}")
    if start is not None and nats is not None:
        raise ValueError(f"{name}: set one Gaussian start, gaussian_start (a std ratio) or gaussian_start_kl (nats); "
                         f"got both ({start!r}, {nats!r})")
    if sampler.adaptive:
        for knob in ("select_over", "select_over_from_steps"):
            if getattr(sampler, knob, None) is not None:
                raise ValueError(f"{name}: {knob} chooses among fixed-step runs; an adaptive sampler has no grid "
                                 "to select")
        ignored = {f.name: getattr(sampler, f.name) for f in dataclasses.fields(sampler)
                   if f.name in GRID_KNOBS and getattr(sampler, f.name) != f.default}
        if ignored:
            raise ValueError(f"{name}: {', '.join(f'{k}={v!r}' for k, v in ignored.items())} would be ignored: an "
                             f"adaptive method chooses its own steps ({', '.join(GRID_KNOBS)} are fixed-step knobs)")
        return
    steps = sampler.steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{name}: steps must be an integer >= 1; got {steps!r}")
    if steps > MAX_NFE:
        raise ValueError(f"{name}: steps must be at most {MAX_NFE}; got {steps}")
    if sampler.grid not in SCHEDULE_GRIDS:
        raise ValueError(f"{name}: unknown grid {sampler.grid!r}; choose one of {SCHEDULE_GRIDS}")
    if isinstance(sampler.rho, bool) or not isinstance(sampler.rho, (int, float)) or not 0.1 <= sampler.rho <= 100:
        raise ValueError(f"{name}: rho must be a number in [0.1, 100] (EDM: 7); got {sampler.rho!r}")
    if sampler.grid in ("select", "optimized") and sampler.stochastic:
        raise ValueError(f"{name}: grid={sampler.grid!r} tunes deterministic samplers against the ODE's solution; "
                         f"this one draws noise (a named grid: {GRIDS})")
    pilot = sampler.pilot
    if isinstance(pilot, bool) or not isinstance(pilot, int) or pilot < 1:
        raise ValueError(f"{name}: pilot must be a number of rows >= 1; got {pilot!r}")
    rows = sampler.pilot_batch
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ValueError(f"{name}: pilot_batch must be a number of rows >= 1 (or None: the whole pilot at once); "
                         f"got {rows!r}")
    if sampler.select_over is not None:
        sampler.select_over = check_select_over(sampler, sampler.select_over, "select_over")
    if sampler.select_over_from_steps is not None:
        check_select_over_from_steps(sampler)
    if sampler.times is not None:
        times = torch.as_tensor(sampler.times, dtype=torch.float64).detach()
        points = sampler.intervals + 1
        if times.ndim != 1 or len(times) != points or not bool((times[1:] < times[:-1]).all()):
            raise ValueError(f"{name}: times must be {points} strictly decreasing times (start ... eps); "
                             f"got {len(times) if times.ndim == 1 else tuple(times.shape)} values (`steps` sets "
                             f"how many: steps={sampler.steps} takes {points})")


# what select_over may not vary
SELECT_FIXED = ("steps", "grid", "times", "select_over", "select_over_from_steps", "pilot", "pilot_batch",
                "denoise")  # (the pilot compares runs at eps, before any denoising)


def check_select_over_from_steps(sampler) -> None:
    """select_over_from_steps: only with grid="select", {least steps (an integer >= 1): a select_over}, each checked
    by check_select_over now (at_nfe may move the steps to any of them)."""
    name, by_steps = sampler.name, sampler.select_over_from_steps
    if sampler.grid != "select":
        raise ValueError(f"{name}: select_over_from_steps needs grid='select'; got grid={sampler.grid!r}")
    if not isinstance(by_steps, Mapping) or not by_steps:
        raise ValueError(f"{name}: select_over_from_steps must be a non-empty mapping {{least steps: select_over}}; "
                         f"got {by_steps!r}")
    checked = {}
    for least, over in by_steps.items():
        if isinstance(least, bool) or not isinstance(least, int) or least < 1:
            raise ValueError(f"{name}: select_over_from_steps' keys must be step counts (integers >= 1); "
                             f"got {least!r}")
        checked[least] = check_select_over(sampler, over, f"select_over_from_steps[{least}]")
    sampler.select_over_from_steps = checked


def check_select_over(sampler, over, label: str) -> dict:
    """A select_over (named `label` in errors), normalised to {knob: tuple of values}: only with grid="select",
    {knob: non-empty list of values} over the sampler's other knobs, every combination a valid sampler (each is built
    here, so a bad value fails now, not after the pilot's reference)."""
    name = sampler.name
    if sampler.grid != "select":
        raise ValueError(f"{name}: {label} needs grid='select'; got grid={sampler.grid!r}")
    if not isinstance(over, Mapping) or not over:
        raise ValueError(f"{name}: {label} must be a non-empty mapping {{knob: [values]}}; got {over!r}")
    knobs = {f.name for f in dataclasses.fields(sampler) if f.init} - set(SELECT_FIXED)
    over = {str(k): tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in over.items()}
    for knob, values in over.items():
        if knob not in knobs:
            raise ValueError(f"{name}: {label} cannot vary {knob!r}; it can vary {sorted(knobs)}")
        if not isinstance(values, tuple) or not values:
            raise ValueError(f"{name}: {label}[{knob!r}] must be a non-empty list of values; got {values!r}")
        if any(values.count(v) > 1 for v in values):
            raise ValueError(f"{name}: {label}[{knob!r}] lists a value twice; got {list(values)!r}")
    for combination in select_combinations(over):
        try:
            variant = select_variant(sampler, combination)
        except ValueError as err:
            raise ValueError(f"{name}: {label} candidate {combination}: {err}") from err
        if variant.nfe_per_step != sampler.nfe_per_step:  # (an adaptive candidate already failed: steps are fixed)
            raise ValueError(f"{name}: {label} candidate {combination} costs {variant.nfe_per_step} NFE a step, "
                             f"not {sampler.nfe_per_step} like the others: select compares runs at equal NFE")
    return over  # plain tuples (Hydra passes ListConfig), so the tuning cache's key is stable
