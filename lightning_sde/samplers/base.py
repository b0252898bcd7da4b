"""The Sampler interface, the registry by name, and the shared fixed-step loop.

A sampler is a dataclass of its knobs (validated on construction, before any work) and is called as
`sampler(denoiser, x_T, noise) -> (x_0, info)`. `info["nfe"]` is read off the Denoiser's counter, never
computed by the sampler. Stochastic samplers draw every noise from `noise` (seed-addressed, see noise.py) and
return the mean of their last step (no noise is added at t = eps).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lightning_sde.models.denoiser import Denoiser
from lightning_sde.samplers.grids import GRIDS, time_grid
from lightning_sde.samplers.noise import SeededNoise

SAMPLERS: dict[str, type["Sampler"]] = {}

StepCallback = Callable[[dict], None]


def register(name: str):
    def add(cls):
        if name in SAMPLERS:
            raise ValueError(f"sampler {name!r} registered twice")
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


def _synchronize(x: Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


@dataclass
class Sampler:
    name: ClassVar[str]
    stochastic: ClassVar[bool] = False

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
        if self.stochastic and noise is None:
            raise ValueError(f"sampler {self.name!r} is stochastic: pass noise=SeededNoise(seeds, ...)")
        if noise is not None and len(noise.seeds) != x_T.shape[0]:
            raise ValueError(f"noise has {len(noise.seeds)} seeds but x_T has {x_T.shape[0]} samples")
        nfe_before = denoiser.nfe
        _synchronize(x_T)
        start = time.perf_counter()
        with torch.no_grad():
            x, extra = self.run(denoiser, x_T, noise, callback, progress)
        _synchronize(x)
        info = {"sampler": self.name, "nfe": denoiser.nfe - nfe_before, "wall_s": time.perf_counter() - start}
        info.update(extra)
        return x, info

    def run(self, denoiser, x_T, noise, callback, progress) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def params(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FixedStepSampler(Sampler):
    """A sampler that walks a time grid, calling `step` once per interval (t -> s, s < t)."""

    steps: int = 100
    grid: str = "uniform"
    rho: float = 7.0
    times: Sequence[float] | None = None  # an explicit grid T = t_0 > ... > t_steps = eps (e.g. optimize_grid's)
    gaussian_start: float | None = None  # start at data std / noise std = this ratio (gaussian.py); None: at T

    nfe_per_step: ClassVar[int] = 1

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"{self.name}: steps must be an integer >= 1; got {self.steps!r}")
        if self.grid not in GRIDS + ("optimized",):
            raise ValueError(f"{self.name}: unknown grid {self.grid!r}; choose one of {GRIDS + ('optimized',)}")
        if not self.rho > 0:
            raise ValueError(f"{self.name}: rho must be > 0; got {self.rho}")
        if self.gaussian_start is not None and (isinstance(self.gaussian_start, bool) or not self.gaussian_start > 0):
            raise ValueError(f"{self.name}: gaussian_start must be a ratio > 0 (or None); got {self.gaussian_start!r}")
        if self.times is not None:
            times = torch.as_tensor(self.times, dtype=torch.float64).detach()
            if times.ndim != 1 or len(times) != self.steps + 1 or not bool((times[1:] < times[:-1]).all()):
                raise ValueError(f"{self.name}: times must be {self.steps + 1} strictly decreasing times (T ... eps); "
                                 f"got {len(times)} values")

    def start_time(self, denoiser: Denoiser) -> float:
        """T, or with gaussian_start the time where the data's largest std is that ratio of the noise level."""
        if self.gaussian_start is None:
            return float(denoiser.sde.T)
        return self._moments(denoiser).start_time(denoiser.sde, self.gaussian_start)

    def _moments(self, denoiser: Denoiser):
        if getattr(denoiser, "data_moments", None) is None:
            raise ValueError(f"{self.name}: gaussian_start needs the data's mean and covariance as denoiser.data_moments "
                             "(a lightning_sde.samplers.gaussian.DataMoments): mixtures have them; a ScoreModule "
                             "checkpoint has them when trained by this version (DataMoments.of_samples(train_data) "
                             "otherwise)")
        return denoiser.data_moments

    def start(self, denoiser: Denoiser, x_T: Tensor) -> tuple[Tensor, Tensor]:
        """(x at the first step time, the step times): `times` if given; grid="optimized": tuned for this denoiser
        once (optimize_grid, a pilot whose NFE is not counted in the runs; see its docstring); else the named grid.
        With gaussian_start, x_T is first carried to start_time by the Gaussian flow, at no NFE."""
        sde = denoiser.sde
        if self.times is not None:
            times = self.times if isinstance(self.times, Tensor) else torch.tensor(list(self.times), dtype=torch.float64)
            t_start = self.start_time(denoiser)
            if abs(float(times[0].detach()) - t_start) > 1e-9 or abs(float(times[-1].detach()) - sde.eps) > 1e-9:
                raise ValueError(f"{self.name}: times must run from the start time {t_start} (T, or gaussian_start's) "
                                 f"to eps = {sde.eps}")
        elif self.grid == "optimized":
            from lightning_sde.samplers.optimize import optimized_times

            times = optimized_times(self, denoiser)
        else:
            times = time_grid(sde, self.steps, self.grid, self.rho, start=self.start_time(denoiser))
        t_start = float(times[0].detach())
        x = x_T if t_start >= sde.T else self._moments(denoiser).flow(x_T, sde, sde.T, t_start)
        return x, times.to(x_T.device, x_T.dtype)

    def step(self, denoiser: Denoiser, x: Tensor, t: Tensor, s: Tensor, noise, last: bool) -> Tensor:
        raise NotImplementedError

    def run(self, denoiser, x_T, noise, callback, progress):
        x, grid = self.start(denoiser, x_T)
        for i in tqdm(range(self.steps), desc=self.name, disable=not progress, leave=False):
            x = self.step(denoiser, x, grid[i], grid[i + 1], noise, last=i == self.steps - 1)
            if callback is not None:
                callback({"i": i, "t": grid[i + 1], "x": x})
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
    noise = SeededNoise(seeds, denoiser.shape, dtype=dtype, device=device)
    x_T = denoiser.sde.prior_sample(noise.prior())
    return sampler(denoiser, x_T, noise, callback=callback, progress=progress)
