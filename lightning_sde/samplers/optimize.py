"""Time grids tuned for one model and one NFE budget.

`optimize_grid` places the steps of a fixed-step sampler where they reduce its error most on a pilot set: it
solves the probability-flow ODE for `pilot` seeds (disjoint from any sampling seeds) to a tight tolerance once,
then minimises the pilot's mean squared endpoint error over the step positions by gradient descent through the
sampler itself (the grid is parametrised by its log-SNR increments, softmax-normalised, so it stays ordered and
spans [eps, T]). It starts from the quadratic grid. The cost is paid once per (model, sampler, NFE): about
pilot x (reference NFE + iterations x 2 NFE a step) evaluations, reported as `pilot_nfe`, and never counted in the
sampler's own NFE. Over-fitting is checked on held-out seeds in benchmarks/fast_samplers.py.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from lightning_sde.samplers.grids import time_grid
from lightning_sde.samplers.noise import SeededNoise

log = logging.getLogger(__name__)
PILOT_SEED = 10**9  # pilot seeds start here: disjoint from the seeds users sample with
_CACHE: dict = {}


def optimize_grid(sampler, denoiser, pilot: int = 512, iters: int = 200, lr: float = 0.05, init: str = "quadratic",
                  reference_tol: float = 1e-6) -> tuple[torch.Tensor, dict]:
    """(times (steps + 1,) from T to eps, report) for this fixed-step sampler and denoiser."""
    from lightning_sde.samplers.ode import ProbabilityFlowODE

    if sampler.stochastic:
        raise ValueError(f"{sampler.name}: grid='optimized' tunes deterministic samplers against the ODE's solution")
    sde = denoiser.sde
    nfe0 = denoiser.nfe
    dtype = next((p.dtype for p in denoiser.parameters()), torch.float64)
    noise = SeededNoise(range(PILOT_SEED, PILOT_SEED + pilot), denoiser.shape, dtype=dtype)
    x_T = sde.prior_sample(noise.prior())
    with torch.no_grad():
        ref, _ = ProbabilityFlowODE(rtol=reference_tol, atol=reference_tol).run(denoiser, x_T, None, None, False)
    as64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    lam_T, lam_eps = sde.log_snr(as64(sde.T)), sde.log_snr(as64(sde.eps))
    start = sde.log_snr(time_grid(sde, sampler.steps, init).double())
    logits = torch.log(start[1:] - start[:-1]).clone().requires_grad_(True)

    def times_of(logits):
        lam = lam_T + torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.softmax(logits, 0), 0)]) * (lam_eps - lam_T)
        inner = sde.t_from_log_snr(lam[1:-1])
        return torch.cat([as64(sde.T).view(1), inner, as64(sde.eps).view(1)])

    def error(times):
        tuned = dataclasses.replace(sampler, grid="uniform", times=times)
        x, _ = tuned.run(denoiser, x_T, noise, None, False)
        return (x - ref).pow(2).mean()

    opt = torch.optim.Adam([logits], lr=lr)
    with torch.enable_grad():
        first = None
        for _ in range(iters):
            opt.zero_grad()
            loss = error(times_of(logits))
            first = float(loss.detach()) if first is None else first
            loss.backward()
            opt.step()
    with torch.no_grad():
        times = times_of(logits).detach()
        final = float(error(times))
    report = {"pilot": pilot, "iters": iters, "pilot_nfe": denoiser.nfe - nfe0,
              "pilot_rmse_init": first**0.5, "pilot_rmse_final": final**0.5}
    denoiser.nfe = nfe0  # the pilot is set-up, not part of any sample's cost
    log.info("optimized %s grid, %d steps: pilot RMSE %.3g -> %.3g (%d pilot NFE)", sampler.name, sampler.steps,
             report["pilot_rmse_init"], report["pilot_rmse_final"], report["pilot_nfe"])
    return times, report


def optimized_times(sampler, denoiser) -> torch.Tensor:
    """optimize_grid's times, computed once per (denoiser, sampler parameters) in this process."""
    params = {k: v for k, v in dataclasses.asdict(sampler).items() if k not in ("grid", "times")}
    key = (id(denoiser), sampler.name, tuple(sorted((k, repr(v)) for k, v in params.items())))
    if key not in _CACHE:
        _CACHE[key] = optimize_grid(sampler, denoiser)
    return _CACHE[key][0]
