"""Fast deterministic samplers against a converged reference, at equal NFE (the endpoint protocol of
endpoint_protocol.py).

VP (beta 0.1..20, eps 1e-3), float64, 4096 starting points x_T from seeds 0..4095; the score is the exact mixture's.
Score: endpoint RMSE per dimension against dopri5 at rtol = atol = 1e-10 from the same x_T; NFE is the Denoiser's
count. Problems: the 8 Gaussians of the issue (radius 4, std_k = 0.1 + 0.4 k / 7) and random_mixture(16, 10, 0).
Fixed-step samplers on every grid, plus the grid optimised for each (sampler, NFE) on a 512-seed pilot set
(seeds from 1e9, disjoint; its one-off cost is reported as pilot_nfe and not charged); adaptive solvers over a
tolerance sweep.

    .venv/bin/python benchmarks/fast_samplers.py          # 4 min 42 s on 2 CPU cores;
                                                          # writes benchmarks/results/fast_samplers.*
"""

from __future__ import annotations

import argparse
import csv
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from endpoint_protocol import OUT, PROBLEMS, oracles, save_views  # noqa: E402

from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.samplers import build_sampler, optimize_grid  # noqa: E402

NFES = (5, 10, 15, 20, 50)
GRIDS = ("logsnr", "uniform", "quadratic", "karras")
FIXED = {  # label -> (sampler, params)
    "ddim": ("ddim", {}),
    "dpm++2m": ("dpmpp", {"order": 2}),
    "dpm++3m": ("dpmpp", {"order": 3}),
    "unipc-2": ("unipc", {"order": 2}),
    "unipc-3": ("unipc", {"order": 3}),
    "unipc-4": ("unipc", {"order": 4}),
}
OPTIMIZED = ("dpm++2m", "unipc-2", "unipc-3")  # tuned grids at NFE 10 and 20
ADAPTIVE = {
    "dopri5": ("ode", {"method": "dopri5"}, (1e-3, 1e-4, 1e-5, 1e-6)),
    "unipc-adaptive-4": ("unipc_adaptive", {"order": 4}, (1e-3, 3e-4, 2e-4, 1e-4, 3e-5, 1e-5)),
    "unipc-adaptive-3": ("unipc_adaptive", {"order": 3}, (1e-3, 3e-4, 1e-4, 5e-5, 3e-5, 1e-5)),
    "unipc-adaptive-2": ("unipc_adaptive", {"order": 2}, (1e-3, 1e-4, 3e-5, 1e-5)),
}


def main() -> None:
    rows = []
    for problem, den, x_T, ref in oracles():

        def score(label, grid, requested, sampler, extra=None):
            start = time.perf_counter()
            x, info = sampler(den, x_T)
            err = float((x - ref).pow(2).mean().sqrt())
            rows.append({"problem": problem, "sampler": label, "grid": grid, "requested": requested, "nfe": info["nfe"],
                         "rmse": err, "wall_s": time.perf_counter() - start, **(extra or {})})
            print(f"{problem:16s} {label:17s} {grid:9s} {requested!s:8s} nfe {info['nfe']:4d}  rmse {err:.3e}",
                  flush=True)

        for label, (name, params) in FIXED.items():
            for grid in GRIDS:
                for nfe in NFES:
                    score(label, grid, nfe, build_sampler(name, steps=nfe, grid=grid, **params))
            if label in OPTIMIZED:
                for nfe in (10, 20):
                    sampler = build_sampler(name, steps=nfe, grid="quadratic", **params)
                    times, report = optimize_grid(sampler, den)
                    tuned = build_sampler(name, steps=nfe, times=times.tolist(), **params)
                    score(label, "optimized", nfe, tuned, {"pilot_nfe": report["pilot_nfe"],
                                                          "times": " ".join(f"{t:.5g}" for t in times.tolist())})
        for label, (name, params, tols) in ADAPTIVE.items():
            for tol in tols:
                score(label, "adaptive", tol, build_sampler(name, rtol=tol, atol=tol, **params))
    write(rows)


def write(rows) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    keys = ["problem", "sampler", "grid", "requested", "nfe", "rmse", "wall_s", "pilot_nfe", "times"]
    write_csv(OUT / "fast_samplers.csv", ({k: r.get(k, "") for k in keys} for r in rows), keys)
    lines = ["# Fast samplers: endpoint RMSE vs a converged reference at equal NFE", "",
             "Command: `.venv/bin/python benchmarks/fast_samplers.py` (4 min 42 s on 2 CPU cores); protocol in the "
             "script's docstring. Best grid per sampler (grid in parentheses); `optimized`: tuned on a 512-seed pilot "
             "set, held-out seeds scored.", ""]
    colors = dict(zip(list(FIXED) + list(ADAPTIVE), plt.cm.tab10.colors))
    fig, axes = plt.subplots(1, len(PROBLEMS), figsize=(6.5 * len(PROBLEMS), 4.8))
    for ax, problem in zip(axes, PROBLEMS):
        mine = [r for r in rows if r["problem"] == problem]
        lines += [f"## {problem}", "", "| sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
                  "|---|" + "---|" * len(NFES)]
        for label in FIXED:
            cells = []
            for n in NFES:
                cands = [r for r in mine if r["sampler"] == label and r["requested"] == n]
                best = min(cands, key=lambda r: r["rmse"])
                cells.append(f"{best['rmse']:.3g} ({best['grid']})")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
            for grid in ("quadratic", "logsnr"):
                pts = sorted((r["nfe"], r["rmse"]) for r in mine if r["sampler"] == label and r["grid"] == grid)
                ax.loglog(*zip(*pts), marker=".", lw=1, color=colors[label], ls="-" if grid == "quadratic" else ":",
                          label=f"{label} ({grid})")
            opt = sorted((r["nfe"], r["rmse"]) for r in mine if r["sampler"] == label and r["grid"] == "optimized")
            if opt:
                ax.loglog(*zip(*opt), marker="*", ms=12, lw=0, color=colors[label], label=f"{label} (optimized grid)")
        lines += ["", "| adaptive | tolerance: RMSE @ NFE |", "|---|---|"]
        for label in ADAPTIVE:
            pts = [r for r in mine if r["sampler"] == label]
            lines.append(f"| {label} | " + ", ".join(f"{r['requested']:g}: {r['rmse']:.2e} @ {r['nfe']}" for r in pts)
                         + " |")
            ax.loglog([r["nfe"] for r in pts], [r["rmse"] for r in pts], marker="s", lw=1.5, color=colors[label],
                      label=label)
        lines.append("")
        ax.set_title(problem)
    save_views(fig, axes, lines, "fast_samplers")


def load_csv() -> list[dict]:
    rows = []
    with open(OUT / "fast_samplers.csv") as fh:
        for r in csv.DictReader(fh):
            r["nfe"], r["rmse"] = int(r["nfe"]), float(r["rmse"])
            r["requested"] = float(r["requested"]) if r["grid"] == "adaptive" else int(r["requested"])
            rows.append(r)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replot", action="store_true", help="the views from the committed CSV, no recomputation")
    if parser.parse_args().replot:
        write(load_csv())
    else:
        main()
