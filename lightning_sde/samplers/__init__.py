"""Samplers by name. `build_sampler(name, **params)` makes one; `sample(sampler, denoiser, seeds)` runs it."""

from lightning_sde.samplers import ddim, multistep, ode, sde_solvers  # noqa: F401  (register the samplers)
from lightning_sde.samplers.base import SAMPLERS, FixedStepSampler, Sampler, build_sampler, register, sample
from lightning_sde.samplers.grids import GRIDS, time_grid
from lightning_sde.samplers.noise import SeededNoise

__all__ = [
    "SAMPLERS",
    "GRIDS",
    "FixedStepSampler",
    "Sampler",
    "SeededNoise",
    "build_sampler",
    "register",
    "sample",
    "time_grid",
]
