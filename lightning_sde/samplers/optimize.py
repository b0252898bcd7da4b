"""Time grids tuned for one model and one NFE budget.

`optimize_grid` places the steps of a fixed-step sampler where they reduce its error most on a pilot set: it
solves the probability-flow ODE for `pilot` seeds (disjoint from any sampling seeds) to a tight tolerance once,
then minimises the pilot's mean squared endpoint error over the step positions by gradient descent through the
sampler itself (the grid is parametrised by its log-SNR increments, softmax-normalised, so it stays ordered and
spans [eps, T]). It starts from whichever named grid is best on the pilot and keeps the best iterate. The cost is paid once per (model, sampler, NFE): about
pilot x (reference NFE + iterations x 2 NFE a step) evaluations, reported as `pilot_nfe`, and never counted in the
sampler's own NFE. Over-fitting is checked on held-out seeds in benchmarks/fast_samplers.py.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from lightning_sde.samplers.grids import GRIDS, time_grid
from lightning_sde.samplers.noise import SeededNoise

log = logging.getLogger(__name__)
PILOT_SEED = 10**9  # pilot seeds start here: disjoint from the seeds users sample with
_CACHE: dict = {}


def optimize_grid(sampler, denoiser, pilot: int = 512, iters: int = 200, lr: float = 0.05, inits=GRIDS,
                  reference_tol: float = 1e-6) -> tuple[torch.Tensor, dict]:
    """(times (steps + 1,) from T to eps, report) for this fixed-step sampler and denoiser. Starts from the best
    of the named grids `inits` on the pilot and returns the best iterate, so it never does worse there."""
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
    def times_of(logits):
        lam = lam_T + torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.softmax(logits, 0), 0)]) * (lam_eps - lam_T)
        inner = sde.t_from_log_snr(lam[1:-1])
        return torch.cat([as64(sde.T).view(1), inner, as64(sde.eps).view(1)])

    def error(times):
        tuned = dataclasses.replace(sampler, grid="uniform", times=times)
        x, _ = tuned.run(denoiser, x_T, noise, None, False)
        return (x - ref).pow(2).mean()

    with torch.no_grad():
        named = {g: time_grid(sde, sampler.steps, g).double() for g in inits}
        scores = {g: float(error(t)) for g, t in named.items()}
    init = min(scores, key=scores.get)
    start = sde.log_snr(named[init])
    logits = torch.log(start[1:] - start[:-1]).clone().requires_grad_(True)
    best, best_logits = scores[init], logits.detach().clone()
    opt = torch.optim.Adam([logits], lr=lr)
    with torch.enable_grad():
        for _ in range(iters):
            opt.zero_grad()
            loss = error(times_of(logits))
            if float(loss.detach()) < best:  # the loss of the current iterate, before this step moves it
                best, best_logits = float(loss.detach()), logits.detach().clone()
            loss.backward()
            opt.step()
    with torch.no_grad():
        times = times_of(best_logits)
        final = float(error(times))
    report = {"pilot": pilot, "iters": iters, "pilot_nfe": denoiser.nfe - nfe0, "init": init,
              "pilot_rmse_init": scores[init] ** 0.5, "pilot_rmse_final": final**0.5}
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
