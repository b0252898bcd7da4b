"""Samplers by name. `build_sampler(name, **params)` makes one; `sample(sampler, denoiser, seeds)` runs it."""

from lightning_sde.samplers import ddim, multistep, ode, sde_solvers  # noqa: F401  (register the samplers)
from lightning_sde.samplers.base import SAMPLERS, FixedStepSampler, Sampler, build_sampler, register, sample
from lightning_sde.samplers.ddim import DDIM, Ancestral
from lightning_sde.samplers.grids import GRIDS, time_grid
from lightning_sde.samplers.multistep import AdaptiveUniPC, DPMSolverPP, SDEDPMSolverPP, UniPC
from lightning_sde.samplers.noise import SeededNoise
from lightning_sde.samplers.ode import Heun, ProbabilityFlowODE
from lightning_sde.samplers.sde_solvers import EulerMaruyama, PredictorCorrector, ReverseDiffusion
from lightning_sde.samplers.tuning import optimize_grid

__all__ = [
    "SAMPLERS",
    "GRIDS",
    "AdaptiveUniPC",
    "Ancestral",
    "DDIM",
    "DPMSolverPP",
    "EulerMaruyama",
    "FixedStepSampler",
    "Heun",
    "PredictorCorrector",
    "ProbabilityFlowODE",
    "ReverseDiffusion",
    "SDEDPMSolverPP",
    "Sampler",
    "SeededNoise",
    "UniPC",
    "build_sampler",
    "optimize_grid",
    "register",
    "sample",
    "time_grid",
]
