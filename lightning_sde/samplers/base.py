"""The Sampler contract, the registry by name, and the shared fixed-step loop.

A sampler is a dataclass of its knobs (validated on construction, before any work), called as
`sampler(denoiser, x_T, noise) -> (x_0, info)`. What every harness (the sampler callback, lsde-bench, lsde-compare)
may rely on, and never asks a sampler's name for:

  stochastic     it draws noise: pass `noise` (seed-addressed, see noise.py)
  adaptive       it chooses its own steps: its NFE is measured, and a sweep varies `at_tolerance(tol)`
  nfe_per_step   fixed-step samplers: NFE per step; `budget_nfe(steps)` = steps x nfe_per_step (+ 1 with denoise) is
                 what a run spends, and a sweep's `at_nfe(n)` takes the most steps whose budget_nfe is <= n
  schedule       `gaussian_start` (every sampler) and the steps' times (schedule.py) are resolved before sampling;
                 set-up work such as grid tuning is reported as info["setup_nfe"], never as NFE
  info           {"sampler", "nfe" (read off the Denoiser's counter, never computed), "wall_s", ...}
  callback       `callback({"i", "t", "x", "nfe", "setup_s"})` after every step (nfe: the sampling's so far; setup_s:
                 the seconds the set-up took before it); `progress=True` shows a bar of NFE

Stochastic samplers return the mean of their last step (no noise is added at t = eps).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import time
import weakref
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lightning_sde.models.denoiser import Denoiser, warn_if_training
from lightning_sde.probability_flow import check_step_dtype
from lightning_sde.samplers.grids import Plan, carry
from lightning_sde.samplers.noise import SeededNoise
from lightning_sde.samplers.schedule import check_schedule, plan

log = logging.getLogger(__name__)
SAMPLERS: dict[str, type["Sampler"]] = {}

StepCallback = Callable[[dict], None]
OnStep = Callable[[int, Tensor, Tensor], None]  # (step index, time reached, state there)


def register(name: str):
    """Class decorator: the sampler under `name` in SAMPLERS (build_sampler, configs' `sampler=`). The same class
    defined again (a notebook cell run twice, a module reloaded) replaces its earlier definition."""
    def add(cls):
        taken = SAMPLERS.get(name)
        if taken is not None and (taken.__module__, taken.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"sampler name {name!r} is taken by {taken.__module__}.{taken.__qualname__}: register "
                             f"{cls.__qualname__} under another name")
        cls.name = name
        SAMPLERS[name] = cls
        return cls

    return add


def build_sampler(name: str, **params) -> "Sampler":
    """A sampler from its registered name and parameters, e.g. build_sampler("ddim", steps=50, eta=0.0)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    cls = SAMPLERS[name]
    allowed = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"sampler {name!r} has no parameter(s) {unknown}; its parameters are {sorted(allowed)}")
    return cls(**params)


FLOAT_ANNOTATIONS = (float, "float", "float | None", "None | float", "Optional[float]")


FLOAT_SEQUENCE_ANNOTATIONS = ("Sequence[float]", "Sequence[float] | None")
INT_ANNOTATIONS = (int, "int", "int | None", "None | int", "Optional[int]")


def floats_as_declared(values: dict, annotations: dict) -> dict:
    """`values` with each integer given where `annotations` declare a float (or a sequence of floats: a list) as that
    float: Hydra reads `eta=0` on a command line as an int and `eta: 0.0` in a file as a float, and both must name one
    value (lsde-bench keys its results by the parameters). NumPy's numbers (`steps=np.int64(10)` from a sweep) become
    the Python numbers declared."""
    def as_float(v):
        real = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
        return float(v) if real and (isinstance(v, numbers.Integral) or isinstance(v, np.floating)) else v

    out = {}
    for k, v in values.items():
        if annotations.get(k) in INT_ANNOTATIONS and isinstance(v, np.integer):
            v = int(v)
        elif annotations.get(k) in FLOAT_ANNOTATIONS:
            v = as_float(v)
        elif annotations.get(k) in FLOAT_SEQUENCE_ANNOTATIONS and isinstance(v, Sequence) and not isinstance(v, str):
            v = [as_float(e) for e in v]
        out[k] = v
    return out


def check_sampler_class(cls) -> None:
    """A sampler class has what running it needs (a user's own, found when it is built, not at its first run): a
    registered name, and a step() (fixed steps) or a run() (adaptive) of its own."""
    what = f"sampler class {cls.__qualname__}"
    if not isinstance(getattr(cls, "name", None), str):
        raise TypeError(f"{what} has no name: decorate it with @register('<name>')")
    if issubclass(cls, FixedStepSampler):
        if cls.step is FixedStepSampler.step and cls.run is FixedStepSampler.run:
            raise TypeError(f"{what} defines no step(denoiser, x, t, s, noise, last, state)")
    elif cls.run is Sampler.run:
        raise TypeError(f"{what} defines no run(denoiser, x, plan, noise, on_step)")


_UNRESOLVED: set = set()  # (sampler, tolerance, dtype) already warned about
_UNEXPECTED_NFE: set = set()  # (sampler class, steps, NFE spent) already warned about
_NONFINITE = weakref.WeakKeyDictionary()  # network (a method: its object) -> (sampler, method) pairs said


def first_time_nonfinite(sampler: str, net) -> bool:
    """Whether `sampler` gives non-finite samples of the network `net` (shared by its wrappers: guidance, inpainting)
    for the first time in this process; always, for a network that cannot be weakly referenced. A bound method is
    kept under its object (each `obj.method` is a new method object)."""
    try:
        said = _NONFINITE.setdefault(getattr(net, "__self__", net), set())
    except TypeError:
        return True
    key = (sampler, getattr(net, "__func__", None))
    first = key not in said
    said.add(key)
    return first


def warn_if_tolerance_unresolved(sampler, dtype) -> None:
    """An adaptive tolerance below ~10 ulps of the samples' dtype: float32 dopri5 at 1e-10 ends 6e-6 off (float64:
    2e-10) for twice float64's NFE; accuracy stops improving while the cost grows. Said once per setting."""
    tol = min(getattr(sampler, "rtol", math.inf), getattr(sampler, "atol", math.inf))
    floor = 10 * torch.finfo(dtype).eps
    if tol < floor and (sampler.name, tol, dtype) not in _UNRESOLVED:
        _UNRESOLVED.add((sampler.name, tol, dtype))
        log.warning("sampler %r: tolerance %g is below what %s samples resolve (~%.1g): its accuracy stops "
                    "improving while its NFE grows; sample in float64 (dtype=float64; in lsde-train "
                    "callbacks.sampler.dtype=float64), or use a tolerance >= %.1g", sampler.name, tol,
                    str(dtype).replace("torch.", ""), floor, floor)


def _synchronize(x: Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


@dataclass
class Sampler:
    name: ClassVar[str]
    gaussian_start: float | None = None  # start where data std / noise std = this ratio (schedule.py); None: at T
    gaussian_start_kl: float | None = None  # or where the Gaussian fit's KL bound is this many nats (models/moments.py)
    # end with one more NFE, x <- E[x0 | x_eps] (the prediction of x0 at eps): removes the noise of sigma(eps) left in
    # the samples, as score_sde's noise_removal and EDM's last step to sigma = 0 do; a fixed-step budget keeps one NFE
    denoise: bool = False
    # knobs added after result rows were keyed: at these values they stay out of params() (and so of the rows' keys)
    keyed_unless: ClassVar[dict] = {"denoise": False}

    def __post_init__(self):
        check_sampler_class(type(self))
        if not isinstance(self.denoise, bool):
            raise ValueError(f"{self.name}: denoise must be true or false; got {self.denoise!r}")
        if not (self.adaptive or isinstance(self, FixedStepSampler)):
            raise TypeError(f"sampler class {type(self).__qualname__}: a sampler of fixed steps subclasses "
                            "FixedStepSampler (steps, grid, step()); an adaptive one returns True from `adaptive`")
        fields = dataclasses.fields(self)
        for name, value in floats_as_declared({f.name: getattr(self, f.name) for f in fields},
                                              {f.name: f.type for f in fields}).items():
            setattr(self, name, value)
        check_schedule(self)

    # --- the contract --------------------------------------------------------------------------------------------
    @property
    def stochastic(self) -> bool:
        return False

    @property
    def adaptive(self) -> bool:
        return False

    @property
    def batch_dependent(self) -> bool:
        """Whether a sample depends on the others of its batch (an adaptive solver's shared steps): its batch size and
        processes are then part of what a result row or a sample chunk was made with."""
        return self.adaptive

    @property
    def nfe_per_step(self) -> int:
        raise ValueError(f"{self.name}: the NFE of an adaptive sampler is measured, not set per step")

    def at_nfe(self, nfe: int) -> "Sampler | None":
        """This sampler with the most steps that `nfe` evaluations allow (None if not even one step)."""
        raise ValueError(f"{self.name} is adaptive: vary its tolerance (at_tolerance), not its NFE")

    def at_tolerance(self, tol: float) -> "Sampler":
        """This adaptive sampler with rtol = atol = tol."""
        if not self.adaptive:
            raise ValueError(f"{self.name} takes a fixed number of steps: vary its NFE (at_nfe), not a tolerance")
        return dataclasses.replace(self, rtol=float(tol), atol=float(tol))

    def params(self) -> dict:
        params = dataclasses.asdict(self)
        for name, default in self.keyed_unless.items():  # the default: no part of a row's key, as before the knob
            if name in params and params[name] == default and type(params[name]) is type(default):
                del params[name]
        return params

    # --- running -------------------------------------------------------------------------------------------------
    def __call__(
        self,
        denoiser: Denoiser,
        x_T: Tensor,
        noise: SeededNoise | None = None,
        callback: StepCallback | None = None,
        progress: bool = False,
    ) -> tuple[Tensor, dict]:
        if tuple(x_T.shape[1:]) != denoiser.shape or x_T.ndim != len(denoiser.shape) + 1:
            raise ValueError(
                f"x_T must have shape (batch, {', '.join(map(str, denoiser.shape))}) for this denoiser; "
                f"got {tuple(x_T.shape)}"
            )
        if not len(x_T):
            raise ValueError("x_T holds no samples (a batch of 0)")
        if self.stochastic and noise is None:
            raise ValueError(f"sampler {self.name!r} is stochastic: pass noise=SeededNoise(seeds, ...)")
        if noise is not None and len(noise.seeds) != x_T.shape[0]:
            raise ValueError(f"noise has {len(noise.seeds)} seeds but x_T has {x_T.shape[0]} samples")
        if isinstance(noise, SeededNoise) and noise.shape != denoiser.shape:
            raise ValueError(f"noise draws samples of shape {tuple(noise.shape)}; this denoiser's are of shape "
                             f"{denoiser.shape}")
        check_step_dtype(x_T, "x_T")
        warn_if_training(denoiser, "samples")
        if self.adaptive:
            warn_if_tolerance_unresolved(self, x_T.dtype)
        with torch.no_grad():
            setup_nfe, planning = denoiser.nfe, time.perf_counter()
            resolved = plan(self, denoiser)  # may tune a grid: its evaluations are set-up, counted apart
            setup_s = time.perf_counter() - planning
            # tuning may run on a copy for other rows (Denoiser.for_rows): then the plan reports its evaluations
            setup_nfe = denoiser.nfe - setup_nfe or resolved.setup.get("setup_nfe", 0)
            nfe_before = denoiser.nfe
            _synchronize(x_T)
            start = time.perf_counter()
            expected = None if self.adaptive else self.budget_nfe()
            with tqdm(total=expected, desc=self.name, unit="nfe", disable=not progress, leave=False) as bar:
                def on_step(i: int, t: Tensor, x: Tensor) -> None:
                    bar.update(denoiser.nfe - nfe_before - bar.n)
                    if callback is not None:
                        callback({"i": i, "t": t, "x": x, "nfe": denoiser.nfe - nfe_before, "setup_s": setup_s})

                x = carry(self, denoiser, x_T, resolved.start)
                out = (resolved.sampler or self).run(denoiser, x, resolved, noise, on_step)
            if not (isinstance(out, tuple) and len(out) == 2 and torch.is_tensor(out[0]) and isinstance(out[1], dict)):
                raise TypeError(f"sampler {self.name!r}: run() must return (x, info dict); got "
                                f"{type(out).__name__}")
            x, extra = out
            if self.denoise:
                x = denoiser(x, denoiser.sde.eps).x0
            _synchronize(x)
        info = {"sampler": self.name, "nfe": denoiser.nfe - nfe_before, "wall_s": time.perf_counter() - start}
        if resolved.start < denoiser.sde.T:
            info["start_time"] = resolved.start
        if setup_nfe:
            info["setup_nfe"] = setup_nfe
        info.update({k: v for k, v in resolved.setup.items() if k != "setup_nfe"})
        measured = sorted(extra.keys() & {"sampler", "nfe", "wall_s", "setup_nfe", "start_time"})
        if measured:  # the NFE is read off the denoiser's counter, never taken from the sampler
            raise ValueError(f"sampler {self.name!r}: run() returned {measured}, which the framework measures; "
                             "return other keys only")
        info.update(extra)
        nonfinite = int((~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).sum())
        if nonfinite and first_time_nonfinite(self.name, denoiser.net):  # a sweep samples many batches
            log.warning("sampler %r: %d of %d samples have NaN or infinite values (a diverged sampler, or a network "
                        "that returned them)", self.name, nonfinite, len(x))
        spent = None if self.adaptive else (type(self), self.steps, info["nfe"])
        if spent is not None and info["nfe"] != expected and spent not in _UNEXPECTED_NFE:
            _UNEXPECTED_NFE.add(spent)  # once per class, steps and cost: not at every batch
            log.warning("sampler %r took %d NFE for %d steps, not the %d of %d NFE a step%s: its NFE budget (nfe=%d "
                        "in a sweep) is not what it spends; set its nfe_per_step", self.name, info["nfe"], self.steps,
                        expected, self.nfe_per_step, " and 1 to denoise" if self.denoise else "", expected)
        return x, info

    def run(self, denoiser: Denoiser, x: Tensor, plan: Plan, noise, on_step: OnStep | None) -> tuple[Tensor, dict]:
        """Integrate from x at plan.start to eps; call on_step(i, t, x) after each step. No bookkeeping here."""
        raise NotImplementedError


@dataclass
class FixedStepSampler(Sampler):
    """A sampler that walks a time grid, calling `step` once per interval (t -> s, s < t).

    `step(denoiser, x, t, s, noise, last, state)` gets a per-run `state` dict that multistep solvers keep their
    history in; one-step samplers ignore it."""

    steps: int = 100
    grid: str = "uniform"
    rho: float = 7.0
    times: Sequence[float] | None = None  # explicit times start ... eps (e.g. from optimize_grid)
    # grid="select": more knobs to choose on the pilot, {field: candidate values}, e.g. {"order": [2, 3],
    # "gaussian_start": [None, 0.15, 0.3]}; None: the start only (T, or gaussian_start's when set). Each value is a
    # fixed-step run at this sampler's NFE; a select_over without gaussian_start keeps this sampler's start for all
    select_over: dict | None = None
    # grid="select": {least steps: select_over} to use from that many steps on in place of select_over (the largest
    # key <= steps applies), e.g. {20: {"gaussian_start": [None, 0.15]}}: a candidate set per NFE budget
    select_over_from_steps: dict | None = None
    pilot: int = 512  # grid="select" / "optimized": rows of the set-up pilot (its NFE does not grow with it)
    pilot_batch: int | None = None  # the most pilot rows per network call (None: all); bounds the pilot's memory

    @property
    def nfe_per_step(self) -> int:
        return 1

    @property
    def intervals(self) -> int:
        """The time grid's intervals (its points less one): `steps`, unless a sampler spends steps otherwise."""
        return self.steps

    def budget_nfe(self, steps: int | None = None) -> int:
        """The NFE a run of `steps` (default: its own) spends: nfe_per_step each, and 1 more to denoise."""
        return (self.steps if steps is None else steps) * self.nfe_per_step + self.denoise

    def step_cost(self) -> str:
        """The least budget at_nfe takes, and what budget_nfe counts, in words: "3 NFE (2 a step, and 1 to denoise)"."""
        least = self.budget_nfe(1 + self.steps - self.intervals)  # a grid of one interval at least
        return f"{least} NFE ({self.nfe_per_step} a step{', and 1 to denoise' if self.denoise else ''})"

    def at_nfe(self, nfe: int) -> "FixedStepSampler | None":
        if self.adaptive:
            return super().at_nfe(nfe)  # raises: adaptive samplers sweep tolerances
        if self.times is not None:
            raise ValueError(f"{self.name}: explicit times fix the number of steps; leave times unset to sweep NFE")
        steps = (int(nfe) - self.budget_nfe(0)) // self.nfe_per_step  # budget_nfe's inverse
        return dataclasses.replace(self, steps=steps) if steps - (self.steps - self.intervals) >= 1 else None

    def step(self, denoiser: Denoiser, x: Tensor, t: Tensor, s: Tensor, noise, last: bool, state: dict) -> Tensor:
        raise NotImplementedError

    def initial_state(self, denoiser: Denoiser, times: Tensor) -> dict:
        """The per-run `state` the steps start from; `times` (steps + 1,) float64 on the CPU."""
        return {}

    def run(self, denoiser, x, plan, noise, on_step):
        state = self.initial_state(denoiser, plan.times.detach().cpu().double())
        times = plan.times.to(x.device, x.dtype)
        for i in range(self.intervals):
            x = self.step(denoiser, x, times[i], times[i + 1], noise, i == self.intervals - 1, state)
            if on_step is not None:
                on_step(i, times[i + 1], x)
        return x, {"steps": self.steps}


def sample(
    sampler: Sampler,
    denoiser: Denoiser,
    seeds,
    device="cpu",
    dtype=torch.float32,
    callback: StepCallback | None = None,
    progress: bool = False,
) -> tuple[Tensor, dict]:
    """Draw one sample per seed: x_T and all later noise of sample i come from seed i."""
    if dtype is not None:  # None: torch's default, as in torch's own functions
        check_step_dtype(dtype, "dtype")
    noise = SeededNoise(seeds, denoiser.shape, dtype=dtype, device=device)
    x_T = denoiser.sde.prior_sample(noise.prior())
    return sampler(denoiser, x_T, noise, callback=callback, progress=progress)
