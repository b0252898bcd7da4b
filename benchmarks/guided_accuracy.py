"""How much harder guided ODEs are: endpoint RMSE of every deterministic sampler at NFE 10 and 20, unguided (w = 0)
and guided (w = 2), each against its own converged reference (dopri5 at rtol = atol = 1e-10 on the same guided
model), on each named time grid, on labelled mixtures whose conditional scores are exact. Float64, 4096 starts
(seeds 0..4095), seed i of class i mod C, VP (beta 0.1..20, eps 1e-3). The problems and w were fixed before the
first run; the grid axis was added after it (the guided error depends on where the grid puts its steps).

    .venv/bin/python benchmarks/guided_accuracy.py        # writes results/guided_accuracy.{csv,md,png}
    .venv/bin/python benchmarks/guided_accuracy.py --curvature   # results/guided_curvature.{csv,png}
    .venv/bin/python benchmarks/guided_accuracy.py --replot      # redraws the figure from the CSV
    .venv/bin/python benchmarks/guided_accuracy.py --optimized   # grid=optimized for the guided model (prints)
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_sde.exact import eight_gaussians, random_mixture  # noqa: E402
from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.generation import seed_labels  # noqa: E402
from lightning_sde.models.guidance import guided  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402
from lightning_sde.probability_flow import ProbabilityFlow, solve_between  # noqa: E402
from lightning_sde.samplers import SeededNoise, build_sampler, sample  # noqa: E402
from lightning_sde.samplers.grids import time_grid  # noqa: E402
from lightning_sde.sde import VPSDE  # noqa: E402

PROBLEMS = {
    "eight_gaussians (8 classes)": lambda: eight_gaussians(labels=list(range(8))),
    "random_mixture 16-D (2 classes)": lambda: random_mixture(16, 10, 0, labels=[k % 2 for k in range(10)]),
}
SAMPLERS = {"ddim": ("ddim", {}), "dpmpp_2m": ("dpmpp", {"order": 2}), "dpmpp_3m": ("dpmpp", {"order": 3}),
            "unipc_2": ("unipc", {"order": 2}), "unipc_3": ("unipc", {"order": 3}), "heun": ("heun", {}),
            "ode_rk4": ("ode", {"method": "rk4"})}
SWEPT_GRIDS = ("uniform", "logsnr", "karras", "quadratic")  # the named grids when its results were made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/guided_accuracy")
    parser.add_argument("--curvature", action="store_true", help="only where along t x0 bends (guided_curvature.*)")
    parser.add_argument("--replot", action="store_true", help="redraw the figure from the CSV")
    parser.add_argument("--optimized", action="store_true", help="only grid=optimized at w = 2 on the 8 Gaussians")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.optimized:
        return optimized(range(1024))
    if args.curvature:
        return curvature(args.out.with_name("guided_curvature"))
    if args.replot:
        with open(args.out.with_suffix(".csv")) as fh:
            rows = [{**r, "guidance": float(r["guidance"]), "requested_nfe": int(r["requested_nfe"]),
                     "ratio_to_unguided": float(r["ratio_to_unguided"])} for r in csv.DictReader(fh)]
        return plot(rows, args.out.with_suffix(".png"))
    sde, seeds, rows = VPSDE(), range(args.points), []
    for problem, make in PROBLEMS.items():
        mixture = make()
        labels = seed_labels(seeds, "cycle", mixture.num_classes)
        for w in (0.0, 2.0):
            model = guided(mixture.denoiser(sde), labels, w)
            reference, ref_info = sample(build_sampler("ode", rtol=1e-10, atol=1e-10), model, seeds,
                                         dtype=torch.float64)
            for label, (name, params) in SAMPLERS.items():
                default_grid = build_sampler(name, **params).grid
                for nfe, grid in itertools.product((10, 20), SWEPT_GRIDS):
                    sampler = build_sampler(name, grid=grid, **params).at_nfe(nfe)
                    x, info = sample(sampler, model, seeds, dtype=torch.float64)
                    rmse = float((x - reference).pow(2).mean().sqrt())
                    rows.append({"problem": problem, "guidance": w, "sampler": label, "grid": grid,
                                 "default_grid": grid == default_grid, "nfe": info["nfe"], "requested_nfe": nfe,
                                 "rmse": rmse, "reference_nfe": ref_info["nfe"]})
                    print(rows[-1], flush=True)
    key = lambda r: (r["problem"], r["sampler"], r["requested_nfe"], r["grid"])  # noqa: E731
    unguided = {key(r): r["rmse"] for r in rows if r["guidance"] == 0.0}
    for r in rows:
        r["ratio_to_unguided"] = r["rmse"] / unguided[key(r)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(args.out.with_suffix(".csv"), rows)
    table = ["| problem | sampler (default grid) | NFE | RMSE w=0 | RMSE w=2 | guided / unguided | "
             + " | ".join(f"{g} grid" for g in SWEPT_GRIDS) + " | best grid w=2 / best grid w=0 |",
             "|---|---|---:|---:|---:|---:|" + "---:|" * (len(SWEPT_GRIDS) + 1)]
    for r in rows:
        if r["guidance"] == 2.0 and r["default_grid"]:
            same = [o for o in rows if key(o)[:3] == key(r)[:3]]
            best = {w: min(o["rmse"] for o in same if o["guidance"] == w) for w in (0.0, 2.0)}
            per_grid = {o["grid"]: o["ratio_to_unguided"] for o in same if o["guidance"] == 2.0}
            table.append(f"| {r['problem']} | {r['sampler']} ({r['grid']}) | {r['nfe']} | {unguided[key(r)]:.2e} | "
                         f"{r['rmse']:.2e} | {r['ratio_to_unguided']:.2f} | "
                         + " | ".join(f"{per_grid[g]:.2f}" for g in SWEPT_GRIDS) + f" | {best[2.0] / best[0.0]:.2f} |")
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    plot(rows, args.out.with_suffix(".png"))


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(PROBLEMS), figsize=(6 * len(PROBLEMS), 3.8))
    # the grids the rows hold (a --replot of results made before a grid was added draws no empty series)
    grids = [g for g in dict.fromkeys([*SWEPT_GRIDS, *(r["grid"] for r in rows)]) if any(r["grid"] == g for r in rows)]
    width = 0.8 / len(grids)
    for ax, problem in zip(axes, PROBLEMS):
        for j, grid in enumerate(grids):
            pts = [r for r in rows if r["problem"] == problem and r["guidance"] == 2.0 and r["requested_nfe"] == 20
                   and r["grid"] == grid]
            ax.bar([i + (j - (len(grids) - 1) / 2) * width for i in range(len(pts))],
                   [r["ratio_to_unguided"] for r in pts], width, label=f"{grid} grid")
        ax.axhline(2, color="tab:red", ls="--", lw=1, label="target: 2x")
        ax.set_yscale("log")
        ax.set_xticks(range(len(SAMPLERS)), list(SAMPLERS), fontsize=7, rotation=20)
        ax.set(ylabel="endpoint RMSE, w = 2 / w = 0 (same grid)", title=f"{problem}, NFE 20")
        ax.legend(fontsize=7)
    fig.suptitle("Guided (w = 2) vs unguided endpoint error, each against its own dopri5 1e-10 reference", fontsize=10)
    fig.tight_layout()
    save_atomically(fig, path, dpi=120)


def optimized(seeds) -> None:
    """grid=optimized for the guided model (its 512-seed pilot is disjoint from `seeds`) at NFE 20, w = 2."""
    mixture = PROBLEMS["eight_gaussians (8 classes)"]()
    model = guided(mixture.denoiser(VPSDE()), seed_labels(seeds, "cycle", mixture.num_classes), 2.0)
    reference, _ = sample(build_sampler("ode", rtol=1e-10, atol=1e-10), model, seeds, dtype=torch.float64)
    for label in ("dpmpp_2m", "unipc_3"):
        name, params = SAMPLERS[label]
        x, info = sample(build_sampler(name, grid="optimized", steps=20, **params), model, seeds, dtype=torch.float64)
        print(f"{label}: RMSE {float((x - reference).pow(2).mean().sqrt()):.2e} at NFE {info['nfe']}, "
              f"pilot NFE {info['tuning']['pilot_nfe']}", flush=True)


def curvature(out: Path, points: int = 512, knots: int = 200) -> None:
    """Where along t the guided problem is hard: RMS over converged trajectories of d^2 x0 / d lambda^2 (finite
    differences on a uniform log-SNR grid), w = 0 and w = 2, on the 8 Gaussians; the grids' NFE-20 steps beside it."""
    sde, seeds = VPSDE(), range(points)
    mixture = PROBLEMS["eight_gaussians (8 classes)"]()
    labels = seed_labels(seeds, "cycle", mixture.num_classes)
    as64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    lam = torch.linspace(float(sde.log_snr(as64(sde.T))), float(sde.log_snr(as64(sde.eps))), knots + 1,
                         dtype=torch.float64)
    times = sde.t_from_log_snr(lam)
    times[0], times[-1] = sde.T, sde.eps
    rows = []
    for w in (0.0, 2.0):
        model = guided(mixture.denoiser(sde), labels, w)
        flow = ProbabilityFlow.for_method("dopri5", model)
        states = [sde.prior_sample(SeededNoise(seeds, model.shape, dtype=torch.float64).prior())]
        for t0, t1 in zip(times[:-1].tolist(), times[1:].tolist()):
            states.append(solve_between(flow, states[-1], t0, t1, "dopri5", 1e-9, 1e-9)[-1])
        x0 = torch.stack([model(x, t).x0 for x, t in zip(states, times)])
        d2 = (x0[2:] - 2 * x0[1:-1] + x0[:-2]) / float(lam[1] - lam[0]) ** 2
        for i, value in enumerate(d2.pow(2).mean(dim=(1, 2)).sqrt().tolist()):
            rows.append({"guidance": w, "lambda": float(lam[i + 1]), "t": float(times[i + 1]), "rms_d2x0": value})
    write_csv(out.with_suffix(".csv"), rows)
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for w in (0.0, 2.0):
        sel = [r for r in rows if r["guidance"] == w]
        ax.semilogy([r["lambda"] for r in sel], [r["rms_d2x0"] for r in sel], label=f"w = {w:g}")
    low = min(r["rms_d2x0"] for r in rows)
    for j, grid in enumerate(SWEPT_GRIDS):
        ax.plot(sde.log_snr(time_grid(sde, 20, grid)).tolist(), [low / 2 ** (j + 1)] * 21, "|", ms=8, label=f"{grid}")
    ax.set(xlabel="log-SNR lambda (noise -> data)", ylabel="RMS of d^2 x0_hat / d lambda^2",
           title="8 Gaussians, one class a component: where guided x0 bends\n(ticks: each grid's 20 steps)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_atomically(fig, out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
