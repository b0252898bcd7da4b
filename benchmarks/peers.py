"""Our solvers against diffusers' schedulers on the same exact oracle, the same ODE and the same x_T, in one run.

Needs the `peers` extra (`.venv/bin/pip install -e ".[peers]"`, i.e. diffusers). Protocol (endpoint_protocol.py):
  * VP (beta 0.1..20, eps 1e-3), float64 inputs, 4096 x_T from seeds 0..4095; score: endpoint RMSE per dimension
    against dopri5 at rtol = atol = 1e-10 from the same x_T (the continuous ODE from t = 1 to t = eps).
  * Mapping of diffusers' discrete schedule onto the continuous SDE, each decision pinned:
      - timestep k (0..999) <-> t_k = (k + 1) / 1000, alphas_cumprod[k] = alpha(t_k)^2, passed as trained_betas
        (betas[k] = 1 - alphas_cumprod[k] / alphas_cumprod[k-1]); probed: the scheduler's table equals alpha(t_k)^2
        to float32 precision;
      - the model output at timestep k is the exact epsilon at t_k: eps = -sigma(t_k) * score(x, t_k);
      - timestep_spacing="trailing" (the first step starts at k = 999, i.e. t = 1);
      - the last step lands on k = 0, t = eps: final_sigmas_type="sigma_min" (DPM-Solver, UniPC), DDIM with
        set_alpha_to_one=False; probed: the final sigma equals sigma(eps);
      - clip_sample=False (DDIM), thresholding off, lower_order_final=True (their default), no Karras sigmas.
    diffusers keeps its schedule tables in float32 (DPM-Solver also casts the sample to float32): a floor of
    ~1e-6 relative error that does not matter at these NFE.
  * Ours run on the same time points (t_k of the trailing timesteps, then eps) and on our own best grid.
  * Ours with a Gaussian start (models/moments.py): x_T carried at no NFE by the exact flow of the data's
    Gaussian fit (here the mixture's exact mean and covariance) to where the data's largest std is 0.15 of the
    noise level (t* = 0.76 / 0.81), on the uniform grid, and at NFE 10 (and 20 on the 8 Gaussians) on a grid tuned
    by optimize_grid's Powell search on 16384 pilot seeds (from 1e9; ~0.7 s a pilot run). As tuning on a pilot can
    favour its seeds, the tuned grid and diffusers' UniPC-3 are also scored on 4 x 4096 held-out seeds (from 2e9).

    .venv/bin/python benchmarks/peers.py      # 12-15 min on 2 cores; writes benchmarks/results/peers.{csv,md,png}
                                              # (--replot: views only)
"""

from __future__ import annotations

import argparse
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from endpoint_protocol import OUT, PROBLEMS, oracle, oracles, save_views  # noqa: E402

from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.samplers import build_sampler, optimize_grid  # noqa: E402

NFES = (5, 10, 15, 20, 30, 50)
GAUSSIAN_START = 0.15  # data std / noise std at which the Gaussian-start samplers begin
# NFE of the tuned Gaussian-start grids (16-D NFE 20: ~14 min)
TUNED = {"eight_gaussians": (10, 20), "random16d": (10,)}
TUNING = {"method": "powell", "pilot": 16384, "iters": 600, "reference_tol": 1e-8}
HELD_OUT = range(2 * 10**9, 2 * 10**9 + 4 * 4096)
ALGO_COLORS = {"DDIM": "tab:blue", "DPM++2M": "tab:orange", "DPM++3M": "tab:green", "UniPC-2": "tab:red",
               "UniPC-3": "tab:purple", "UniPC-4": "tab:brown"}


def schedulers():
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    common = {"num_train_timesteps": 1000, "prediction_type": "epsilon", "timestep_spacing": "trailing"}
    return {
        "diffusers DDIM": lambda betas: DDIMScheduler(trained_betas=betas, clip_sample=False, set_alpha_to_one=False,
                                                      **common),
        "diffusers DPM++2M": lambda betas: DPMSolverMultistepScheduler(trained_betas=betas, solver_order=2,
                                                                       algorithm_type="dpmsolver++",
                                                                       final_sigmas_type="sigma_min", **common),
        "diffusers DPM++3M": lambda betas: DPMSolverMultistepScheduler(trained_betas=betas, solver_order=3,
                                                                       algorithm_type="dpmsolver++",
                                                                       final_sigmas_type="sigma_min", **common),
        "diffusers UniPC-2": lambda betas: UniPCMultistepScheduler(trained_betas=betas, solver_order=2,
                                                                   final_sigmas_type="sigma_min", **common),
        "diffusers UniPC-3": lambda betas: UniPCMultistepScheduler(trained_betas=betas, solver_order=3,
                                                                   final_sigmas_type="sigma_min", **common),
    }


def run_diffusers(make, sde, den, x_T, nfe):
    t_k = torch.arange(1, 1001, dtype=torch.float64) / 1000
    ac = sde.alpha(t_k) ** 2
    betas = (1 - ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])).numpy()
    sched = make(betas)
    assert np.allclose(sched.alphas_cumprod.double().numpy(), ac.numpy(), rtol=1e-5, atol=0), "schedule probe failed"
    sched.set_timesteps(nfe)
    assert int(sched.timesteps[0]) == 999, f"trailing spacing must start at k = 999; got {sched.timesteps[:3]}"
    x, calls, times = x_T.clone(), 0, []
    for k in sched.timesteps:
        t = torch.tensor((int(k) + 1) / 1000, dtype=torch.float64)
        eps = den(x, t).eps
        calls += 1
        times.append(float(t))
        x = sched.step(eps, k, x).prev_sample.double()
    if hasattr(sched, "sigmas"):  # probe: the final sigma is sigma(eps) in diffusers' (sigma / alpha) convention
        last = float(sched.sigmas[-1])
        a, s = float(sde.alpha(torch.tensor(sde.eps))), float(sde.sigma(torch.tensor(sde.eps)))
        assert abs(last - s / a) < 1e-3 * s / a, f"final sigma {last} != sigma(eps)/alpha(eps) {s / a}"
    return x, calls, times + [sde.eps]


def main() -> None:
    rows = []
    for problem, den, x_T, ref in oracles():

        def add(label, nfe, x, counted, family):
            err = float((x - ref).pow(2).mean().sqrt())
            rows.append({"problem": problem, "sampler": label, "family": family, "nfe": counted, "requested": nfe,
                         "rmse": err})
            print(f"{problem:16s} {label:34s} nfe {counted:3d} rmse {err:.3e}", flush=True)

        for nfe in NFES:
            grid_times = None
            for label, maker in schedulers().items():
                x, calls, times = run_diffusers(maker, den.sde, den, x_T, nfe)
                add(label, nfe, x, calls, "diffusers")
                grid_times = times
            for label, name, params in (("ours DPM++2M", "dpmpp", {"order": 2}),
                                        ("ours DPM++3M", "dpmpp", {"order": 3}),
                                        ("ours UniPC-2", "unipc", {"order": 2}),
                                        ("ours UniPC-3", "unipc", {"order": 3}),
                                        ("ours UniPC-4", "unipc", {"order": 4})):
                x, info = build_sampler(name, steps=nfe, times=grid_times, **params)(den, x_T)
                add(label + " (same grid)", nfe, x, info["nfe"], "ours, same grid")
                x, info = build_sampler(name, steps=nfe, grid="quadratic", **params)(den, x_T)
                add(label + " (quadratic)", nfe, x, info["nfe"], "ours, quadratic")
            x, info = build_sampler("unipc", steps=nfe, order=3, grid="uniform",
                                    gaussian_start=GAUSSIAN_START)(den, x_T)
            add("ours UniPC-3 (Gaussian start)", nfe, x, info["nfe"], "ours, Gaussian start")
            if nfe in (10, 20):
                for label, name, params in (("ours UniPC-2", "unipc", {"order": 2}),
                                            ("ours UniPC-3", "unipc", {"order": 3})):
                    sampler = build_sampler(name, steps=nfe, grid="quadratic", **params)
                    times, _ = optimize_grid(sampler, den)
                    x, info = build_sampler(name, steps=nfe, times=times.tolist(), **params)(den, x_T)
                    add(label + " (optimized grid)", nfe, x, info["nfe"], "ours, optimized grid")
            if nfe in TUNED[problem]:
                sampler = build_sampler("unipc", steps=nfe, order=3, grid="uniform", gaussian_start=GAUSSIAN_START)
                times, report = optimize_grid(sampler, den, **TUNING)
                tuned = build_sampler("unipc", steps=nfe, order=3, times=times.tolist(), gaussian_start=GAUSSIAN_START)
                x, info = tuned(den, x_T)
                add("ours UniPC-3 (Gaussian start, tuned)", nfe, x, info["nfe"], "ours, Gaussian start, tuned")
                print(f"  tuned times {[round(t, 4) for t in times.tolist()]}, "
                      f"pilot RMSE {report['pilot_rmse_init']:.3g} -> {report['pilot_rmse_final']:.3g}", flush=True)
                held_out(problem, den, nfe, tuned, rows)
    write(rows)


def held_out(problem, den, nfe, tuned, rows) -> None:
    """Score the tuned sampler and diffusers' UniPC-3 on the 4 quarters of HELD_OUT, as rows with a `seeds` field."""
    _, x_T, ref = oracle(problem, den.sde, HELD_OUT)
    peer = schedulers()["diffusers UniPC-3"]
    for q in range(4):
        part = slice(q * 4096, (q + 1) * 4096)
        for label, x in (("diffusers UniPC-3", run_diffusers(peer, den.sde, den, x_T[part], nfe)[0]),
                         ("ours UniPC-3 (Gaussian start, tuned)", tuned(den, x_T[part])[0])):
            err = float((x - ref[part]).pow(2).mean().sqrt())
            rows.append({"problem": problem, "sampler": label, "family": "held-out", "nfe": nfe, "requested": nfe,
                         "rmse": err, "seeds": f"{HELD_OUT[part][0]}+4096"})
            print(f"{problem:16s} held-out {q} {label:34s} rmse {err:.3e}", flush=True)


def write(rows) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write_csv(OUT / "peers.csv", rows, list(dict.fromkeys(k for r in rows for k in r)))
    lines = ["# Our solvers vs diffusers' schedulers: endpoint RMSE at equal NFE", "",
             "Command: `.venv/bin/python benchmarks/peers.py` (needs `pip install -e .[peers]`); the mapping of "
             "diffusers' discrete schedule onto the continuous VP SDE is in the script's docstring.", ""]
    fig, axes = plt.subplots(1, len(PROBLEMS), figsize=(6.5 * len(PROBLEMS), 4.8))
    for ax, problem in zip(axes, PROBLEMS):
        mine = [r for r in rows if r["problem"] == problem and r["family"] != "held-out"]
        labels = list(dict.fromkeys(r["sampler"] for r in mine))
        lines += [f"## {problem}", "", "| sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
                  "|---|" + "---|" * len(NFES)]
        for label in labels:
            by = {r["requested"]: r["rmse"] for r in mine if r["sampler"] == label}
            lines.append(f"| {label} | " + " | ".join(f"{by[n]:.3g}" if n in by else "" for n in NFES) + " |")
            pts = sorted((r["nfe"], r["rmse"]) for r in mine if r["sampler"] == label)
            style = {"diffusers": ("--", "o"), "ours, same grid": (":", "."), "ours, quadratic": ("-", "."),
                     "ours, optimized grid": ("", "*"), "ours, Gaussian start": ("-.", "s"),
                     "ours, Gaussian start, tuned": ("", "P")}[next(r["family"] for r in mine if r["sampler"] == label)]
            algo = next(a for a in ALGO_COLORS if a in label)  # one colour per algorithm, a line style per family
            ax.loglog(*zip(*pts), ls=style[0] or "none", marker=style[1], ms=10 if style[1] == "*" else 5,
                      color=ALGO_COLORS[algo], label=label)
        for n in (10, 20):
            best_peer = min(r["rmse"] for r in mine if r["family"] == "diffusers" and r["requested"] == n)
            best_ours = min(r["rmse"] for r in mine if r["family"] != "diffusers" and r["requested"] == n)
            lines.append(f"\nNFE {n}: best diffusers {best_peer:.3g}, best ours {best_ours:.3g}: "
                         f"{best_peer / best_ours:.2f}x lower error.")
        held = [r for r in rows if r["problem"] == problem and r["family"] == "held-out"]
        for n in sorted({r["requested"] for r in held}):
            by = {label: [r["rmse"] for r in held if r["sampler"] == label and r["requested"] == n]
                  for label in ("diffusers UniPC-3", "ours UniPC-3 (Gaussian start, tuned)")}
            ratios = [a / b for a, b in zip(*by.values())]
            lines.append(f"\nNFE {n} on 4 x 4096 held-out seeds (from 2e9): diffusers UniPC-3 "
                         f"{', '.join(f'{v:.3g}' for v in by['diffusers UniPC-3'])}; "
                         "ours UniPC-3 (Gaussian start, tuned) "
                         f"{', '.join(f'{v:.3g}' for v in by['ours UniPC-3 (Gaussian start, tuned)'])}: "
                         f"{', '.join(f'{v:.2f}' for v in ratios)}x lower error.")
        lines.append("")
        ax.set_title(problem)
    save_views(fig, axes, lines, "peers")


def load_csv() -> list[dict]:
    with open(OUT / "peers.csv") as fh:
        return [{k: v for k, v in {**r, "nfe": int(r["nfe"]), "requested": int(r["requested"]),
                                   "rmse": float(r["rmse"])}.items()
                 if v != ""} for r in csv.DictReader(fh)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replot", action="store_true", help="the views from the committed CSV, no recomputation")
    if parser.parse_args().replot:
        write(load_csv())
    else:
        main()
