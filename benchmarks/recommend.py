"""The recommended fast configuration per NFE budget: chosen on the tuning family, scored on the held-out family.

For every problem of family.py, at NFE 10 and 20, in one run on the same x_T and the same converged reference
(the endpoint protocol: VP beta 0.1..20, eps 1e-3, float64, dopri5 at rtol = atol = 1e-10; endpoint RMSE per
coordinate, mode flips: the share of samples whose most likely component differs from the reference's, the
RMSE over the other rows, `rmse_kept`, and `far`, the rows whose own RMSE is above FAR: ended far from the ODE's
solution, whatever component they are nearest):
  ours     DPM-Solver++ 2M/3M and UniPC-2/3 x grids (uniform, quadratic, logsnr, karras) x Gaussian start (none,
           0.15, 0.3) on the tuning family (`ours(nfe, tuned=True)` adds grid="optimized", not run: minutes a
           problem at 256-D); on the held-out family only FROZEN (set-up NFE of grid="select" reported apart)
  public   diffusers' DPM-Solver++ 2M/3M, UniPC-2/3 and DEIS-2/3 on their spacings (trailing, Karras, exponential),
           k-diffusion's DPM++(2M), LMS, Heun and DPM-2 on Karras and exponential sigmas, torchdiffeq's midpoint and
           RK4 on the uniform and log-SNR grids; each public sampler is called at the exact continuous time of the
           sigma it asks for (its best case), and only runs within the NFE budget count
  adaptive dopri5 at rtol = atol = 1e-5 and our adaptive UniPC at 1e-3, 3e-4 and 1e-4 (tuning: also from the
           Gaussian start; held-out: FROZEN_ADAPTIVE_TOL): the error and NFE of each
The score of a configuration on a problem is its RMSE over the best public solver's on that problem.

    .venv/bin/python benchmarks/recommend.py --family tuning     # choose: 256 starts a problem (40 min, 2 cores)
    .venv/bin/python benchmarks/recommend.py --family tuning-2   # the best public solvers beside RECOMMENDED and
                                                                 # the best fixed configuration (256 starts, 27 min)
    .venv/bin/python benchmarks/recommend.py --family held-out   # score FROZEN: starts by dimension (held_out_starts)
    .venv/bin/python benchmarks/recommend.py --family held-out-2 # the same FROZEN on new seeds, >= 1024 starts
    .venv/bin/python benchmarks/recommend.py --family held-out-3 # FROZEN with the revised select, >= 512 starts
    .venv/bin/python benchmarks/recommend.py --family held-out-4 # the same FROZEN on a fourth family, >= 512 starts
    .venv/bin/python benchmarks/recommend.py --family held-out-8 # FROZEN with select's fifth grid (trailing), 50 min
    .venv/bin/python benchmarks/recommend.py --family held-out-9 # the same, a second confirmation (family.py's rule)
    .venv/bin/python benchmarks/recommend.py --family held-out-10 # select without uniform where trailing fits
    .venv/bin/python benchmarks/recommend.py --family held-out-11 # the same, with the kept / crossing split
    .venv/bin/python benchmarks/recommend.py --family held-out-12 # the same, with the far rows counted (FAR)
    .venv/bin/python benchmarks/recommend.py --family held-out-13 # select's candidate set per budget (NARROW_FROM)
    .venv/bin/python benchmarks/recommend.py --family held-out --seeds 1008 --least 2048  # one problem, more starts
    .venv/bin/python benchmarks/recommend.py --family held-out --rescore  # today's FROZEN on the whole family again
    .venv/bin/python benchmarks/recommend.py --family held-out-2 --rescore --reuse  # only what the first run lacks
    .venv/bin/python benchmarks/recommend.py --family held-out --replot       # tables and plot only

Needs the `peers` extra (diffusers, k-diffusion). Results go to results/recommend_<family>.csv one problem at a time
(family.run_family: a rerun continues), with per-problem paired bootstrap intervals of ours / best public. Where
RECOMMENDED is above 0.9x, the tables split the ratio into the kept rows' RMSE and the count of rows that end in
another component (crossings_table): a few rare rows decide the RMSE of well-separated mixtures.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from endpoint_protocol import vp_sde  # noqa: E402
from family import FAMILIES, TUNING_FAMILIES, describe, draw, file_tag, run_family  # noqa: E402

from lightning_sde.plotting.style import save_atomically  # noqa: E402
from lightning_sde.samplers import SeededNoise, build_sampler  # noqa: E402

OUT = ROOT / "benchmarks/results"
NFES = (10, 20)
GAUSSIAN_STARTS = (0.15, 0.3)
TUNED_GAUSSIAN_START = 0.15
SOLVERS = {"dpm++2m": ("dpmpp", 2), "dpm++3m": ("dpmpp", 3), "unipc-2": ("unipc", 2), "unipc-3": ("unipc", 3)}
GRIDS = ("uniform", "quadratic", "logsnr", "karras")
ADAPTIVE_TOLS = (1e-3, 3e-4, 1e-4)
# Frozen after the tuning run (results/recommend_tuning.md), before any held-out run: per NFE budget, UniPC-3 with
# the grid and start selected per model on a pilot (grid="select": the 4 named grids x from T or from the Gaussian
# start 0.15); choosing per problem among these 8 would have given median 0.44x / worst 0.84x (NFE 10) and 0.28x /
# 0.97x (NFE 20) on the tuning family, where the best single configuration (UniPC-3, log-SNR grid, Gaussian start)
# has median 0.50x / 0.40x but worst 2.0x / 2.1x. That single configuration is scored held-out too, for comparison.
# Revised before the third held-out family (select_study.py candidates, tuning seeds only): select also chooses the
# order (UniPC-2 or 3) and the Gaussian start (none, 0.15, 0.3), 24 candidates: its pilot picks score median 0.37x /
# worst 1.00x at NFE 10 on the tuning family (0.47x / 0.84x with the 8 above), the same at NFE 20 (0.29x / 1.20x).
# From the eighth held-out family on, select's named grids include the trailing one (5 grids, 30 candidates): on the
# tuning family UniPC-2/3 end 0.4-1.4 % closer on it than on the uniform grid at 10 / 20 steps, and tie diffusers'
# UniPC on its trailing spacing (results/trailing_grid.md), which the uniform grid had lost to by as much.
# From the tenth held-out family on, select leaves uniform out where trailing fits (grids.select_grids; 24
# candidates): trailing ends closer on 22-24 of 24 tuning problems, by less than a pilot's noise, so a pilot that has
# both picks between them by its noise (seen on the ninth family, #9003 at NFE 10).
# From the thirteenth held-out family on, select compares UniPC-3 from T and 0.15 only from 20 steps on (the
# sampler's select_over_from_steps): on the tuning family the four candidate sets tie at NFE 20 (median 0.290, worst
# 1.199; results/select_candidates.md) and the narrow one needs half the pilot's NFE (323 against 643).
SELECT_OVER = {"order": (2, 3), "gaussian_start": (None, 0.15, 0.3)}
NARROW_FROM = {20: {"gaussian_start": (None, 0.15)}}
FROZEN = {"unipc-3 select gs0.15": dict(name="unipc", order=3, grid="select", gaussian_start=0.15),
          "unipc-3 logsnr gs0.15": dict(name="unipc", order=3, grid="logsnr", gaussian_start=0.15),
          "unipc-2/3 select gs0/0.15/0.3": dict(name="unipc", order=3, grid="select", select_over=SELECT_OVER),
          "unipc-2/3 select, unipc-3 from 20 steps": dict(name="unipc", order=3, grid="select",
                                                          select_over=SELECT_OVER, select_over_from_steps=NARROW_FROM)}
# from the thirteenth held-out family on; the ones before it, newest first, name it in earlier runs' files
RECOMMENDED = "unipc-2/3 select, unipc-3 from 20 steps"
BEST_FIXED = "unipc-3 logsnr gs0.15"  # the best single configuration on the tuning family, scored beside it
RECOMMENDED_BEFORE = ("unipc-2/3 select gs0/0.15/0.3", "unipc-3 select gs0.15")
FROZEN_ADAPTIVE_TOL = 1e-4  # the adaptive UniPC's tolerance: median 0.44x dopri5 1e-5's NFE on the tuning family
FIELDS = ["seed", "config", "kind", "budget", "nfe", "setup_nfe", "rmse", "flips", "seconds", "starts", "ratio_lo",
          "ratio_hi", "rmse_even", "rmse_odd", "rmse_kept", "far"]
FAR = 0.5  # a row whose RMSE to the reference is above this ended elsewhere (select_diagnosis.py's --far)
LEAST_STARTS = {"tuning": 0, "held-out": 256, "held-out-2": 1024, "held-out-3": 512}  # per family; later ones 512
CROSSINGS_ABOVE = 0.9  # crossings_table lists the problems above this ratio (the rescoring rule's threshold)
BOOTSTRAP = 1000  # resamples of the starts for the 95 % interval of ours / best public (paired: same starts)


# --- ours --------------------------------------------------------------------------------------------------------
def ours(nfe: int, tuned: bool = False) -> dict:
    """Our configurations at this NFE; `tuned` adds grid="optimized" (minutes a problem at 256-D on 2 cores)."""
    configs = {}
    for label, (name, order) in SOLVERS.items():
        for grid in GRIDS:
            for gs in (None, *GAUSSIAN_STARTS):
                configs[config_tag(label, grid, gs)] = dict(name=name, order=order, steps=nfe, grid=grid,
                                                            gaussian_start=gs)
    if tuned:
        for gs in (None, TUNED_GAUSSIAN_START):
            configs[config_tag("unipc-3", "optimized", gs)] = dict(
                name="unipc", order=3, steps=nfe, grid="optimized", gaussian_start=gs)
    return configs


def config_tag(label: str, grid: str, gaussian_start) -> str:
    """A configuration's name in the tables, e.g. "unipc-3 logsnr gs0.15"."""
    return f"{label} {grid}" + (f" gs{gaussian_start:g}" if gaussian_start else "")


def run_ours(params, den, x_T):
    params = dict(params)
    x, info = build_sampler(params.pop("name"), **params)(den, x_T)
    return x, info["nfe"], info.get("setup_nfe", 0)


# --- public ------------------------------------------------------------------------------------------------------
class Counted:
    """The exact denoiser seen from a public sampler: VE sigma (sigma / alpha) in, counted calls."""

    def __init__(self, den):
        self.den, self.sde, self.calls = den, den.sde, 0

    def t_of(self, sigma_ve: float) -> torch.Tensor:
        return self.sde.t_from_log_snr(-torch.log(torch.as_tensor(float(sigma_ve), dtype=torch.float64)))

    def pred(self, x_vp, t):
        self.calls += 1
        return self.den(x_vp, t)


def diffusers_schedulers():
    from diffusers import DEISMultistepScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    common = {"num_train_timesteps": 1000, "prediction_type": "epsilon", "timestep_spacing": "trailing"}
    spacings = {"trailing": {}, "karras": {"use_karras_sigmas": True}, "exponential": {"use_exponential_sigmas": True}}
    kinds = {"DPM++2M": (DPMSolverMultistepScheduler, {"solver_order": 2, "algorithm_type": "dpmsolver++",
                                                        "final_sigmas_type": "sigma_min"}),
             "DPM++3M": (DPMSolverMultistepScheduler, {"solver_order": 3, "algorithm_type": "dpmsolver++",
                                                        "final_sigmas_type": "sigma_min"}),
             "UniPC-2": (UniPCMultistepScheduler, {"solver_order": 2, "final_sigmas_type": "sigma_min"}),
             "UniPC-3": (UniPCMultistepScheduler, {"solver_order": 3, "final_sigmas_type": "sigma_min"}),
             "DEIS-2": (DEISMultistepScheduler, {"solver_order": 2}),
             "DEIS-3": (DEISMultistepScheduler, {"solver_order": 3})}
    return {f"diffusers {k} {s}": (cls, {**common, **kw, **spacing}) for k, (cls, kw) in kinds.items()
            for s, spacing in spacings.items()}


def run_diffusers(spec, den, x_T, nfe):
    cls, kwargs = spec
    sde = den.sde
    t_k = torch.arange(1, 1001, dtype=torch.float64) / 1000
    ac = sde.alpha(t_k) ** 2
    betas = (1 - ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])).numpy()
    sched = cls(trained_betas=betas, **kwargs)
    sched.set_timesteps(nfe)
    model = Counted(den)
    sigmas = sched.sigmas.double()
    if abs(float(model.t_of(sigmas[-1])) - sde.eps) > 1e-4:  # this scheduler does not end at t = eps
        return None
    x = x_T.clone()
    for i, k in enumerate(sched.timesteps):
        eps = model.pred(x, model.t_of(sigmas[i])).eps
        x = sched.step(eps, k, x).prev_sample.double()
    return x, model.calls


def k_diffusion_sampling():
    """k_diffusion.sampling without the package's __init__ (which imports its training stack)."""
    if "k_diffusion.sampling" not in sys.modules:
        root = Path(importlib.util.find_spec("k_diffusion").origin).parent
        package = types.ModuleType("k_diffusion")
        package.__path__ = [str(root)]
        sys.modules["k_diffusion"] = package
    import k_diffusion.sampling

    return k_diffusion.sampling


K_SAMPLERS = {"DPM++2M": ("sample_dpmpp_2m", 1), "LMS": ("sample_lms", 1), "Heun": ("sample_heun", 2),
              "DPM-2": ("sample_dpm_2", 2)}


def run_k_diffusion(spec, den, x_T, nfe):
    kd = k_diffusion_sampling()
    (fn, per_step), schedule = spec
    sde = den.sde
    as64 = lambda t: torch.tensor(t, dtype=torch.float64)  # noqa: E731
    ve = lambda t: float(sde.sigma(as64(t)) / sde.alpha(as64(t)))  # noqa: E731
    steps = nfe // per_step
    make = kd.get_sigmas_karras if schedule == "karras" else kd.get_sigmas_exponential
    sigmas = make(steps + 1, ve(sde.eps), ve(sde.T)).double()[:-1]  # drop k-diffusion's appended 0: end at eps
    model = Counted(den)

    def denoise(x_ve, sigma):
        t = model.t_of(sigma[0])
        return model.pred(x_ve * sde.alpha(t), t).x0

    x = getattr(kd, fn)(denoise, x_T / sde.alpha(torch.tensor(sde.T, dtype=torch.float64)), sigmas, disable=True)
    return x * sde.alpha(torch.tensor(sde.eps, dtype=torch.float64)), model.calls


def public(nfe):
    runs = {name: (run_diffusers, spec) for name, spec in diffusers_schedulers().items()}
    runs.update({f"k-diffusion {k} {s}": (run_k_diffusion, (v, s)) for k, v in K_SAMPLERS.items()
                 for s in ("karras", "exponential")})
    for method in ("midpoint", "rk4"):
        for grid in ("uniform", "logsnr"):
            runs[f"torchdiffeq {method} {grid}"] = (
                lambda _, den, x_T, nfe, m=method, g=grid: run_ours(
                    {"name": "ode", **build_sampler("ode", method=m, grid=g).at_nfe(nfe).params()}, den, x_T)[:2],
                None)
    return runs


# --- one problem -------------------------------------------------------------------------------------------------
def run_problem(seed, starts, configs_of, stored=None):
    """The rows of one problem. `stored`: this problem's rows from an earlier run on the same starts; then only the
    configurations it lacks run, beside each budget's best public one (rerun for the paired bootstrap, and checked to
    reproduce its stored RMSE), and the other rows are kept as they were."""
    mixture = draw(seed)[0]
    sde = vp_sde()
    den = mixture.denoiser(sde)
    x_T = sde.prior_sample(SeededNoise(range(starts), den.shape, dtype=torch.float64).prior())
    ref, ref_info = build_sampler("ode", method="dopri5", rtol=1e-10, atol=1e-10)(den, x_T)
    end = (sde.alpha(torch.tensor(sde.eps)), sde.sigma(torch.tensor(sde.eps)))
    mode = lambda x: mixture._components(x, *end)[0].argmax(-1)  # noqa: E731
    ref_mode = mode(ref)
    rows, per_start = [], {}

    def add(config, kind, budget, fn):
        start = time.perf_counter()
        out = fn()
        if out is None:
            return
        x, nfe, setup = (*out, 0) if len(out) == 2 else out
        per_start[(config, budget)] = square = (x - ref).pow(2).mean(1)
        kept = mode(x) == ref_mode
        rows.append({"seed": seed, "config": config, "kind": kind, "budget": budget, "nfe": nfe, "setup_nfe": setup,
                     "rmse": float(square.mean().sqrt()), "rmse_even": float(square[0::2].mean().sqrt()),
                     "rmse_odd": float(square[1::2].mean().sqrt()),
                     "flips": float((~kept).double().mean()),
                     "rmse_kept": float(square[kept].mean().sqrt()) if kept.any() else math.nan,
                     "far": int((square.sqrt() > FAR).sum()),
                     "seconds": round(time.perf_counter() - start, 2), "starts": starts})

    if stored is not None:
        if {r["starts"] for r in stored} != {starts}:
            raise ValueError(f"#{seed}: the stored rows have {sorted({r['starts'] for r in stored})} starts, "
                             f"not {starts}")
        kept = {(r["config"], r["budget"]) for r in stored}
        for nfe in NFES:
            for config, params in configs_of(nfe).items():
                if (config, nfe) not in kept:
                    add(config, "ours", nfe, lambda p=params: run_ours(p, den, x_T))
            fair = [r for r in stored if r["kind"] == "public" and r["budget"] == nfe and r["nfe"] <= nfe
                    and math.isfinite(r["rmse"])]
            best = min(fair, key=lambda r: r["rmse"])
            fn, spec = public(nfe)[best["config"]]
            add(best["config"], "public", nfe, lambda f=fn, s=spec: f(s, den, x_T, nfe))
            again = rows.pop()
            if not math.isclose(again["rmse"], best["rmse"], rel_tol=1e-4):  # reruns agree to ~1e-6, not bitwise
                raise RuntimeError(f"#{seed}: {best['config']} at NFE {nfe} gives RMSE {again['rmse']:.6g}, stored "
                                   f"{best['rmse']:.6g}: not the same starts or reference")
        rows += stored
    else:
        for nfe in NFES:
            for config, params in configs_of(nfe).items():
                add(config, "ours", nfe, lambda p=params: run_ours(p, den, x_T))
            for config, (fn, spec) in public(nfe).items():
                add(config, "public", nfe, lambda f=fn, s=spec: f(s, den, x_T, nfe))
        add("dopri5 1e-5", "adaptive", 0, lambda: run_ours({"name": "ode", "method": "dopri5", "rtol": 1e-5,
                                                           "atol": 1e-5}, den, x_T))
        tuning = configs_of is ours
        for tol in ADAPTIVE_TOLS if tuning else (FROZEN_ADAPTIVE_TOL,):
            for gs in (None, TUNED_GAUSSIAN_START) if tuning else (None,):
                add(f"unipc-adaptive {tol:g}" + (f" gs{gs:g}" if gs else ""), "adaptive", 0,
                    lambda t=tol, g=gs: run_ours({"name": "unipc_adaptive", "rtol": t, "atol": t,
                                                  "gaussian_start": g}, den, x_T))
    print(f"  reference dopri5 1e-10: {ref_info['nfe']} NFE", flush=True)
    gen = torch.Generator().manual_seed(seed)
    for budget in NFES:
        fair = [r for r in rows if r["kind"] == "public" and r["budget"] == budget and r["nfe"] <= budget
                and math.isfinite(r["rmse"])]
        best = per_start[(min(fair, key=lambda r: r["rmse"])["config"], budget)]
        idx = torch.randint(starts, (BOOTSTRAP, starts), generator=gen)
        for r in rows:
            if r["kind"] == "ours" and r["budget"] == budget and (stored is None or r not in stored):
                boot = (per_start[(r["config"], budget)][idx].mean(1) / best[idx].mean(1)).sqrt()
                r["ratio_lo"], r["ratio_hi"] = (round(float(q), 4) for q in boot.quantile(
                    torch.tensor([0.025, 0.975], dtype=boot.dtype)))
    return rows


def frozen_configs(nfe):
    return {label: {**params, "steps": nfe} for label, params in FROZEN.items()}


def recommended_configs(nfe):
    """RECOMMENDED and BEST_FIXED: what a second tuning set scores of ours beside the public solvers."""
    return {label: params for label, params in frozen_configs(nfe).items() if label in (RECOMMENDED, BEST_FIXED)}


def held_out_starts(dim: int, least: int = 256) -> int:
    """4096 starts up to 4-D, then fewer as the dimension grows: 16384 coordinates per problem but at least `least`
    starts, which keeps the dopri5 reference at 1e-10 within reach of 2 CPU cores. The second held-out family takes
    at least 1024: at 256 rows a few rare trajectories decide the RMSE (held-out #1008 at NFE 10: UniPC-3 on the
    quadratic grid 0.019 on rows 0..255, 0.25 on rows 0..2047)."""
    return min(4096, max(least, 16384 // dim))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=tuple(FAMILIES), required=True)
    parser.add_argument("--starts", type=int, default=256, help="starts per problem (tuning family)")
    parser.add_argument("--seeds", type=int, nargs="+", help="rescore these problems of the family only (held-out)")
    parser.add_argument("--least", type=int, help="with --seeds: at least this many starts (held_out_starts)")
    parser.add_argument("--rescore", action="store_true", help="score today's FROZEN on a whole held-out family "
                        "again, into recommend_<family>_rescored (its first run's files stay)")
    parser.add_argument("--reuse", action="store_true", help="with --rescore: keep the first run's rows and run only "
                        "the configurations it lacks (and, to pair and check them, each budget's best public one)")
    parser.add_argument("--replot", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = OUT / f"recommend_{file_tag(args.family)}"
    seeds, least = FAMILIES[args.family], LEAST_STARTS.get(args.family, 512)
    if args.rescore:
        if args.family in TUNING_FAMILIES or args.seeds:
            parser.error("--rescore: a whole held-out family, without --seeds")
        first = out.with_suffix(".csv")
        out = out.with_name(f"{out.name}_rescored")
    if args.reuse and not (args.rescore and first.exists()):
        parser.error("--reuse: with --rescore, on a family whose first run's CSV exists")
    if args.seeds:
        if args.family in TUNING_FAMILIES or not set(args.seeds) <= set(seeds) or not args.least:
            parser.error(f"--seeds: problems of a held-out family ({args.family}: {seeds[0]}..{seeds[-1]}), "
                         "with --least")
        seeds, least = tuple(args.seeds), args.least
        out = out.with_name(f"{out.name}_{'_'.join(map(str, seeds))}_{least}starts")
    if not args.replot:
        missing = [m for m in ("diffusers", "k_diffusion") if importlib.util.find_spec(m) is None]
        if missing:
            parser.error(f"the public solvers are missing ({', '.join(missing)}): "
                         ".venv/bin/pip install -e '.[peers]'")

        stored = stored_rows(first) if args.reuse else {}

        def problem(seed):
            if args.family in TUNING_FAMILIES:
                return run_problem(seed, args.starts, ours if args.family == "tuning" else recommended_configs)
            return run_problem(seed, held_out_starts(draw(seed)[1]["dim"], least), frozen_configs,
                               stored.get(seed) if args.reuse else None)

        run_family(seeds, out.with_suffix(".csv"), FIELDS, problem)
    summarize(out)


def stored_rows(path: Path) -> dict:
    """{seed: rows} of a results CSV, typed as run_problem makes them."""
    ints = ("seed", "budget", "nfe", "setup_nfe", "starts")
    floats = ("rmse", "rmse_even", "rmse_odd", "flips", "seconds", "rmse_kept")
    by_seed = {}
    with open(path) as fh:
        for r in csv.DictReader(fh):
            r.update({k: int(r[k]) for k in ints}, **{k: float(r[k]) for k in floats if r.get(k)})
            if r.get("far"):
                r["far"] = int(r["far"])
            by_seed.setdefault(r["seed"], []).append(r)
    return by_seed


def ratios(rows):
    """{(config, budget): {seed: rmse / best public rmse}} and the best public configuration per (seed, budget)."""
    best, best_name, table = {}, {}, {}
    for r in rows:
        if r["kind"] == "public" and int(r["nfe"]) <= int(r["budget"]):
            key = (r["seed"], r["budget"])
            if float(r["rmse"]) < best.get(key, math.inf):
                best[key], best_name[key] = float(r["rmse"]), r["config"]
    for r in rows:
        if r["kind"] != "adaptive":
            ratio = float(r["rmse"]) / best[(r["seed"], r["budget"])]
            table.setdefault((r["config"], int(r["budget"])), {})[r["seed"]] = ratio
    return table, best_name


def split_ratios(rows):
    """{(config, budget): {seed: ratio}} with the best public solver chosen out of sample: chosen on the even starts
    and scored on the odd ones, and the other way round (geometric mean of the two). The in-sample best of 30
    public configurations is the minimum of 30 noisy RMSEs, biased low where several are close; ours is chosen
    on a separate pilot."""
    public, table = {}, {}
    for r in rows:
        if (r["kind"] == "public" and int(r["nfe"]) <= int(r["budget"]) and r.get("rmse_even")
                and math.isfinite(float(r["rmse"]))):  # as ratios(): a diverged run is never the best
            public.setdefault((r["seed"], r["budget"]), []).append(r)
    for r in rows:
        key = (r["seed"], r["budget"])
        if r["kind"] == "ours" and key in public:
            ratio = 1.0
            for chosen_on, scored_on in (("rmse_even", "rmse_odd"), ("rmse_odd", "rmse_even")):
                best = min(public[key], key=lambda p, c=chosen_on: float(p[c]))
                ratio *= float(r[scored_on]) / float(best[scored_on])
            table.setdefault((r["config"], int(r["budget"])), {})[r["seed"]] = ratio**0.5
    return table


def recommended_in(configs) -> str | None:
    """The recommended configuration's label among `configs` (a run's): RECOMMENDED, or the one that was before it."""
    return next((c for c in (RECOMMENDED, *RECOMMENDED_BEFORE) if c in configs), None)


def summarize(out: Path) -> None:
    with open(out.with_suffix(".csv")) as fh:
        rows = list(csv.DictReader(fh))
    table, best_name = ratios(rows)
    split = split_ratios(rows)
    seeds = sorted({r["seed"] for r in rows}, key=int)
    lines = [f"# {out.name}: RMSE / the best public solver's on each problem ({len(seeds)} problems)", ""]
    with_split = any(len(v) == len(seeds) for v in split.values())  # runs with the starts' halves scored apart
    for budget in NFES:
        lines += [f"## NFE {budget}", "", "| configuration | median | worst | problems > 1 | median flips |"
                  + (" median, worst, > 1 (best public chosen out of sample) |" if with_split else ""),
                  "|---|---:|---:|---:|---:|" + ("---:|" if with_split else "")]
        flips = {}
        for r in rows:
            if r["kind"] != "adaptive" and int(r["budget"]) == budget:
                flips.setdefault(r["config"], []).append(float(r["flips"]))
        entries = [(statistics.median(v.values()), max(v.values()), sum(x > 1 for x in v.values()), c)
                   for (c, b), v in table.items() if b == budget and len(v) == len(seeds)]
        for med, worst, over, c in sorted(entries):
            held = list(split.get((c, budget), {}).values())
            out_of_sample = (f"{statistics.median(held):.3f}, {max(held):.3f}, {sum(x > 1 for x in held)}"
                             if len(held) == len(seeds) else "")
            lines.append(f"| {c} | {med:.3f} | {worst:.3f} | {over} | {statistics.median(flips[c]):.4f} |"
                         + (f" {out_of_sample} |" if with_split else ""))
        winners = {}
        for (_, b), name in best_name.items():
            if int(b) == budget:
                winners[name] = winners.get(name, 0) + 1
        lines += ["", "Best public solver per problem: " + ", ".join(f"{k} ({v})" for k, v in
                                                                  sorted(winners.items(), key=lambda kv: -kv[1])), ""]
        lines += crossings_table(rows, best_name, budget)
    lines += ["## Adaptive: NFE and RMSE over dopri5's at rtol = atol = 1e-5", "",
              "| configuration | median NFE ratio | worst NFE ratio | median RMSE ratio | worst RMSE ratio |",
              "|---|---:|---:|---:|---:|"]
    ada = {}
    for r in rows:
        if r["kind"] == "adaptive":
            ada.setdefault(r["config"], {})[r["seed"]] = (int(r["nfe"]), float(r["rmse"]))
    base = ada.pop("dopri5 1e-5")
    for c, v in ada.items():
        n = [v[s][0] / base[s][0] for s in v]
        e = [v[s][1] / base[s][1] for s in v]
        lines.append(f"| {c} | {statistics.median(n):.3f} | {max(n):.3f} | {statistics.median(e):.3f} | "
                     f"{max(e):.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(out, table)


def crossing_rate_ratio(ours: int, public: int) -> tuple[float, float, float]:
    """Crossings of ours over the best public run's on the same starts, with its exact 95 % interval: given their
    sum, ours is binomial with p = ratio / (1 + ratio) (two Poisson counts of equal exposure; Clopper-Pearson)."""
    from scipy.stats import binomtest

    if ours + public == 0:
        return math.nan, 0.0, math.inf
    ci = binomtest(ours, ours + public).proportion_ci(0.95, method="exact")
    odds = lambda p: p / (1 - p) if p < 1 else math.inf  # noqa: E731
    return odds(ours / (ours + public)), odds(ci.low), odds(ci.high)


def crossings_table(rows, best_name, budget) -> list[str]:
    """RECOMMENDED against the best public run where its ratio is above CROSSINGS_ABOVE: the RMSE over the rows that
    end in the reference's component, and the rows that end in another (crossings): does the bulk or a count of rare
    rows decide the ratio? Empty for runs from before rmse_kept was recorded."""
    by = {(r["seed"], r["config"]): r for r in rows if int(r["budget"]) == budget and r["kind"] != "adaptive"}
    label = recommended_in({config for _, config in by})
    mine = [r for (seed, config), r in by.items() if config == label]
    if not mine or not all(r.get("rmse_kept") not in (None, "") for r in mine):
        return []
    kept_ratio = {}
    lines = [f"Where {label}'s ratio is above {CROSSINGS_ABOVE}: the rows that end in the reference's component "
             "(kept) and those that end in another (crossings; rate ratio with its exact 95 % interval).", "",
             "| problem | RMSE ratio [95 %] | kept rows' RMSE ratio | crossings: ours / best public of starts | "
             f"crossing rate ratio [95 %] | rows > {FAR:g}: ours / best public |", "|---|---:|---:|---:|---:|---:|"]
    for r in sorted(mine, key=lambda r: int(r["seed"])):
        best = by[(r["seed"], best_name[(r["seed"], r["budget"])])]
        kept_ratio[r["seed"]] = float(r["rmse_kept"]) / float(best["rmse_kept"])
        ratio = float(r["rmse"]) / float(best["rmse"])
        if ratio <= CROSSINGS_ABOVE:
            continue
        starts = int(r["starts"])
        count = lambda row: round(float(row["flips"]) * starts)  # noqa: E731
        rate, low, high = crossing_rate_ratio(count(r), count(best))
        lines.append(f"| {describe(draw(int(r['seed']))[1])} | {ratio:.3f} [{r['ratio_lo']}, {r['ratio_hi']}] | "
                     f"{kept_ratio[r['seed']]:.3f} | {count(r)} / {count(best)} of {starts} | "
                     f"{rate:.2f} [{low:.2f}, {high:.2f}] | "
                     + (f"{r['far']} / {best['far']} |" if r.get("far") not in (None, "") else "n/a |"))
    values = list(kept_ratio.values())
    lines += ["", f"Kept rows' RMSE ratio over all {len(values)} problems: median {statistics.median(values):.3f}, "
              f"worst {max(values):.3f}, {sum(v > 1 for v in values)} above 1.", ""]
    return lines


def plot(out: Path, table) -> None:
    """Ratio to the best public solver against dimension and separation, per NFE: RECOMMENDED and the one before it
    (the old select; on a first run's files, the best single named configuration)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in (RECOMMENDED, *RECOMMENDED_BEFORE, BEST_FIXED) if (c, NFES[0]) in table][:2]
    if not shown:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, label in ((axes[0], "dim", "dimension"), (axes[1], "separation", "separation (mean gap / std)")):
        for config, marker in zip(shown, ("o", "x")):
            for budget, color in zip(NFES, ("tab:blue", "tab:orange")):
                ratios = table[(config, budget)]
                xs = [draw(int(s))[1][key] for s in ratios]
                ax.scatter(xs, list(ratios.values()), marker=marker, color=color, alpha=0.8 if marker == "o" else 0.5,
                           label=f"{config}, NFE {budget}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="log", xlabel=label)
    axes[0].set_ylabel("RMSE / best public solver's")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{out.name}: per problem (dashed: the 0.5x target; solid: parity)")
    fig.tight_layout()
    save_atomically(fig, out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
