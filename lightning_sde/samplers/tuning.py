"""Time grids tuned for one model and one NFE budget.

`optimize_grid` places the steps of a fixed-step sampler where they reduce its error most on a pilot set: it solves
the probability-flow ODE for the sampler's `pilot` seeds (512 by default; disjoint from any sampling seeds; the
network sees at most `pilot_batch` of them a call) to a tight tolerance once, then minimises the pilot's mean squared
endpoint error over the step positions, parametrised by their log-SNR increments (softmax-normalised, so the grid
stays ordered and spans [start, eps]; the start is T, or the sampler's gaussian_start time: tuning it too did no
better, benchmarks/README.md). Two optimisers: "adam", gradient descent through the sampler itself, and "powell",
scipy's derivative-free Powell search, for losses whose gradient is mostly noise (a few trajectories that end in
another mixture component dominate them). Both start from the best named grid on the pilot and keep the best iterate.
The cost is paid once per (model, sampler, NFE): about pilot x (reference NFE + iters x NFE a run) evaluations,
reported as `pilot_nfe` and never counted in the sampler's own NFE (schedule.py reports it as the sampler's
`setup_nfe`). Over-fitting is checked on held-out seeds in the benchmarks (choosing the iterate on held-back pilot
rows, `holdout`, did not carry better to them: benchmarks/grid_holdout.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging

import torch

from lightning_sde.errors import check_int, require_autograd
from lightning_sde.probability_flow import ProbabilityFlow, solve_between
from lightning_sde.samplers.grids import (
    GRIDS,
    Plan,
    carry,
    fits,
    gaussian_start_knob,
    select_grids,
    start_time,
    time_grid,
)
from lightning_sde.samplers.noise import SeededNoise

log = logging.getLogger(__name__)
PILOT_SEED = 10**9  # pilot seeds start here: far above the seeds users sample with (0, 1, ...)


def _pilot(sampler, denoiser, pilot: int | None, reference_tol: float):
    """(the denoiser for `pilot` rows (None: the sampler's own pilot), their noise, x_T, the dopri5 solution at
    reference_tol, its NFE start)."""
    if sampler.stochastic or sampler.adaptive:
        raise ValueError(f"{sampler.name}: grid='optimized' or 'select' tunes deterministic fixed-step samplers "
                         "against the ODE's solution")
    pilot = sampler.pilot if pilot is None else pilot
    sde = denoiser.sde
    denoiser = denoiser.for_rows(pilot).with_net_batch(sampler.pilot_batch)
    nfe0 = denoiser.nfe
    dtype = next((p.dtype for p in denoiser.parameters()), torch.float64)
    noise = SeededNoise(range(PILOT_SEED, PILOT_SEED + pilot), denoiser.shape, dtype=dtype)
    x_T = sde.prior_sample(noise.prior())
    log.info("%s, %d steps, grid=%s: tuned first on a pilot of %d rows against dopri5 at %g (once per model "
             "and budget; it may take longer than the sampling)",  # pragma: no mutate
             sampler.name, sampler.steps, sampler.grid, pilot, reference_tol)  # pragma: no mutate
    with torch.no_grad():
        flow = ProbabilityFlow.for_method("dopri5", denoiser)
        ref = solve_between(flow, x_T, sde.T, sde.eps, "dopri5", reference_tol, reference_tol)[-1]
    return denoiser, noise, x_T, ref, nfe0


def select_combinations(over) -> list[dict]:
    """Every combination of select_over's candidate values, {knob: value} ({} for none)."""
    return [dict(zip(over, values)) for values in itertools.product(*over.values())]


def select_over_at(sampler) -> dict | None:
    """The select_over that applies at the sampler's steps: select_over_from_steps' entry with the largest key <=
    steps, else select_over."""
    by_steps = sampler.select_over_from_steps or {}
    least = max((k for k in by_steps if k <= sampler.steps), default=None)
    return sampler.select_over if least is None else by_steps[least]


def select_variant(sampler, knobs: dict):
    """The sampler with select_over's knobs set, as it runs when chosen."""
    return dataclasses.replace(sampler, select_over=None, select_over_from_steps=None, **knobs)


def select_variants(sampler, denoiser) -> list[tuple[dict, object]]:
    """[(knobs, the sampler with them)] that grid="select" compares: select_over_at's combinations, or by default the
    start only (T, and gaussian_start's or gaussian_start_kl's when set). Gaussian starts are left out without data
    moments, and for a denoiser that conditions its samples (they start at T there)."""
    over = select_over_at(sampler)
    if over is None:
        knob = gaussian_start_knob(sampler)
        over = {knob: (None, getattr(sampler, knob))} if knob else {}
    variants = []
    for knobs in select_combinations(over):
        variant = select_variant(sampler, knobs)
        conditioned = getattr(denoiser, "conditions", False)
        if gaussian_start_knob(variant) is None or denoiser.data_moments is not None and not conditioned:
            variants.append((knobs, variant))
    if not variants:
        raise ValueError(f"{sampler.name}: every select_over candidate starts from a Gaussian start, which needs the "
                         "denoiser's data_moments and a denoiser that does not condition its samples (guidance and "
                         "inpainting start at T); add a candidate without one (null)")
    return variants


def choice_label(grid: str, knobs: dict) -> str:
    return ", ".join([grid, *(f"{k}={v}" for k, v in knobs.items())])


def candidate_runs(sampler, denoiser, x_T, noise=None, grids=GRIDS):
    """Yield (choice_label, grid, knobs, start, times, endpoint) for each candidate grid="select" compares
    (select_grids' grids x select_variants), each run from x_T. A Gaussian start that resolves to T is the start at T:
    its runs are those of the candidate without one (run once; they took 80 of 433 pilot NFE on such a problem)."""
    sde, ran = denoiser.sde, {}
    for knobs, variant in select_variants(sampler, denoiser):
        start = start_time(variant, denoiser)
        x_start = carry(variant, denoiser, x_T, start)
        others = tuple((k, v) for k, v in knobs.items() if k not in ("gaussian_start", "gaussian_start_kl"))
        for grid in select_grids(sde, variant.intervals, start, grids):
            times = time_grid(sde, variant.intervals, grid, variant.rho, start=start)
            same = (others, grid) if start >= sde.T else None
            if same is None or same not in ran:
                x, _ = variant.run(denoiser, x_start, Plan(start, times), noise, None)
                ran[same] = x
            yield choice_label(grid, knobs), grid, knobs, start, times, ran[same]


def pilot_errors(sampler, denoiser, pilot: int | None = None, reference_tol: float = 1e-6, grids=GRIDS):
    """({choice_label: (grid, knobs, start, times, per-row RMS endpoint error against the ODE's solution on the
    pilot)}, pilot NFE): candidate_runs on the same pilot (`pilot` rows; None: the sampler's)."""
    select_variants(sampler, denoiser)  # no candidate: fail before the reference
    denoiser, noise, x_T, ref, nfe0 = _pilot(sampler, denoiser, pilot, reference_tol)
    with torch.no_grad():
        candidates = {label: (grid, knobs, start, times, (x - ref).pow(2).flatten(1).mean(1).sqrt())
                      for label, grid, knobs, start, times, x in candidate_runs(sampler, denoiser, x_T, noise, grids)}
    return candidates, denoiser.nfe - nfe0


def select_schedule(sampler, denoiser, pilot: int | None = None, reference_tol: float = 1e-6, grids=GRIDS):
    """(start, times, knobs, report): the candidate of pilot_errors (select_grids' grids x select_variants) with the
    smallest pilot RMSE: len(grids) x variants runs of the sampler after the reference, a small fraction of
    optimize_grid's cost. The RMSE is the score the candidates are judged by; the median or a trimmed mean of the
    per-row errors picked worse on the tuning family (benchmarks/select_study.py criterion)."""
    candidates, pilot_nfe = pilot_errors(sampler, denoiser, pilot, reference_tol, grids)
    scores = {label: float(c[-1].pow(2).mean().sqrt()) for label, c in candidates.items()}
    best = min(scores, key=scores.get)
    grid, knobs, start, times, _ = candidates[best]
    report = {"pilot": len(candidates[best][-1]), "pilot_nfe": pilot_nfe, "choice": best, "grid": grid, **knobs,
              "pilot_rmse": scores[best], "pilot_rmse_by_choice": scores}
    log.info("selected %s for %s, %d steps: pilot RMSE %.3g (%d pilot NFE)", best,  # pragma: no mutate
             sampler.name, sampler.steps, scores[best], pilot_nfe)  # pragma: no mutate
    return start, times, knobs, report


def optimize_grid(sampler, denoiser, pilot: int | None = None, iters: int = 200, lr: float = 0.05, inits=GRIDS,
                  reference_tol: float = 1e-6, method: str = "adam", starts: int = 1,
                  holdout: float = 0.0) -> tuple[torch.Tensor, dict]:
    """(times (steps + 1,) from the sampler's start time to eps, report) for this fixed-step sampler and denoiser.
    `iters`: Adam steps, or Powell's budget of pilot runs, from each of the `starts` best named grids `inits` on the
    pilot (the loss has several basins: two starts 0.2 % apart on the pilot can end 3.5x apart); returns the best
    iterate of all, so it never does worse there than the best named grid. More starts lower the pilot's error, not
    the error on other seeds (benchmarks/grid_starts.py), hence one by default.
    `holdout` in [0, 1): the fraction of pilot rows (its last ones) kept out of the loss: the start, the iterate and
    the run among starts are chosen by their error on those rows, and the report's pilot RMSEs are theirs (0: every
    row tunes and chooses)."""
    if method not in ("adam", "powell"):
        raise ValueError(f"optimize_grid: method must be 'adam' or 'powell'; got {method!r}")
    check_int("optimize_grid", "starts", starts, minimum=1)
    if method == "adam":
        require_autograd("optimize_grid (grid='optimized': Adam on the pilot)")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
        raise ValueError(f"optimize_grid: holdout must be a fraction in [0, 1); got {holdout!r}")
    rows = sampler.pilot if pilot is None else pilot
    held = round(holdout * rows)
    if holdout and not 0 < held < rows:  # before the pilot's reference solve
        raise ValueError(f"optimize_grid: holdout {holdout} of {rows} pilot rows leaves no row to tune or to "
                         "choose with")
    sde = denoiser.sde
    denoiser, noise, x_T, ref, nfe0 = _pilot(sampler, denoiser, pilot, reference_tol)
    t_start = start_time(sampler, denoiser)
    with torch.no_grad():
        x_start = carry(sampler, denoiser, x_T, t_start)
    as64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    lam_start, lam_eps = sde.log_snr(as64(t_start)), sde.log_snr(as64(sde.eps))

    def times_of(logits):
        lam = lam_start + torch.cat([torch.zeros(1, dtype=torch.float64),
                                     torch.cumsum(torch.softmax(logits, 0), 0)]) * (lam_eps - lam_start)
        return torch.cat([as64(t_start).view(1), sde.t_from_log_snr(lam[1:-1]), as64(sde.eps).view(1)])

    def errors(times):
        """(mean squared endpoint error of the tuning rows, of the rows that choose)."""
        x, _ = sampler.run(denoiser, x_start, Plan(t_start, times), noise, None)
        if not held:
            every = (x - ref).pow(2).mean()
            return every, every
        per_row = (x - ref).pow(2).flatten(1).mean(1)
        return per_row[:-held].mean(), per_row[-held:].mean()

    with torch.no_grad():
        named = {g: time_grid(sde, sampler.intervals, g, sampler.rho, start=t_start) for g in inits
                 if fits(sde, sampler.intervals, g, t_start)}
        scores = {g: float(errors(t)[1]) for g, t in named.items()}
    finals = {}
    for init in sorted(scores, key=scores.get)[:starts]:
        start = sde.log_snr(named[init])
        logits = torch.log(start[1:] - start[:-1])
        if method == "adam":
            tuned = _adam(lambda z: errors(times_of(z)), logits, scores[init], iters, lr)
        else:
            from scipy.optimize import minimize

            with torch.no_grad():
                found = minimize(lambda z: float(errors(times_of(torch.from_numpy(z)))[0]), logits.numpy(),
                                 method="Powell", options={"maxfev": iters, "xtol": 1e-3, "ftol": 1e-4})
                tuned = torch.from_numpy(found.x)
                if (float(errors(times_of(tuned))[1]) if held else found.fun) >= scores[init]:
                    tuned = logits
        with torch.no_grad():
            times = times_of(tuned)
            finals[init] = (float(errors(times)[1]), times)
    init = min(finals, key=lambda g: finals[g][0])
    final, times = finals[init]
    report = {"pilot": len(ref), "holdout_rows": held, "iters": iters, "method": method,
              "pilot_nfe": denoiser.nfe - nfe0, "init": init,
              "pilot_rmse_init": scores[init] ** 0.5, "pilot_rmse_final": final**0.5,
              "pilot_rmse_by_start": {g: v**0.5 for g, (v, _) in finals.items()}}
    log.info("optimized %s grid, %d steps: pilot RMSE %.3g -> %.3g (%d pilot NFE)",  # pragma: no mutate
             sampler.name, sampler.steps, report["pilot_rmse_init"], report["pilot_rmse_final"],  # pragma: no mutate
             report["pilot_nfe"])  # pragma: no mutate
    return times, report


def _adam(losses_of, logits, best, iters, lr):
    """The logits of the best iterate of Adam on the first of losses_of(logits) (the loss it descends, the loss that
    chooses), from `logits` whose choosing loss is `best`: the iterate whose choosing loss is lowest."""
    logits = logits.clone().requires_grad_(True)
    best_logits = logits.detach().clone()
    opt = torch.optim.Adam([logits], lr=lr)
    with torch.enable_grad():
        for _ in range(iters):
            opt.zero_grad()
            loss, choosing = losses_of(logits)
            if float(choosing.detach()) < best:  # the current iterate's, before this step moves it
                best, best_logits = float(choosing.detach()), logits.detach().clone()
            loss.backward()
            opt.step()
    return best_logits
