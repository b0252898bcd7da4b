"""Endpoint error vs NFE of every deterministic sampler, against a converged probability-flow ODE reference.

For each problem (exact Gaussian-mixture scores under VPSDE, float64) every sampler starts from the same x_T
(seeds 0..points-1); its endpoint is compared with dopri5 at rtol = atol = 1e-10 from that x_T. The reference is
checked by a second solve at 10x looser tolerance. Writes <out-dir>/sampler_accuracy.{csv,png,md}.

    .venv/bin/python benchmarks/sampler_accuracy.py [--points 4096] [--out-dir benchmarks/results] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import math
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lightning_sde.exact import eight_gaussians, random_mixture  # noqa: E402
from lightning_sde.files import write_csv, write_text  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402
from lightning_sde.samplers import build_sampler, sample  # noqa: E402
from lightning_sde.sde import VPSDE  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROBLEMS = {
    "eight_gaussians (2-D)": eight_gaussians,
    "random_mixture (16-D)": lambda: random_mixture(dim=16, n_components=10, seed=0),
}
# (sampler name, fixed parameters); the line label is "sampler" or "sampler/method"
FIXED = [
    ("ddim", {}),
    ("heun", {}),
    ("ode", {"method": "euler"}),
    ("ode", {"method": "midpoint"}),
    ("ode", {"method": "heun3"}),
    ("ode", {"method": "rk4"}),
]
ADAPTIVE = ("dopri5", "bosh3")
GRIDS = ("uniform", "logsnr", "karras")
NFES = (10, 20, 50, 100, 250)
TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
REF_TOL = 1e-10
FIELDS = [
    "problem", "kind", "sampler", "method", "grid", "params", "requested_nfe", "nfe", "steps", "n_accept",
    "n_reject", "rmse", "median_point_rmse", "max_point_rmse", "wall_s", "n_points", "device", "commit", "timestamp",
]  # fmt: skip


def label(row) -> str:
    return f"{row['sampler']}/{row['method']}" if row["method"] else row["sampler"]


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except OSError:
        return "unknown"


def make_cells(nfes, tols):
    """Everything to run for one problem: the reference and its check first, then fixed and adaptive samplers."""
    cells = [
        dict(kind="reference", sampler="ode", method="dopri5", rtol=REF_TOL, atol=REF_TOL),
        dict(kind="reference_check", sampler="ode", method="dopri5", rtol=10 * REF_TOL, atol=10 * REF_TOL),
    ]
    for name, params in FIXED:
        per_step = build_sampler(name, steps=1, **params).nfe_per_step
        for grid in GRIDS:
            for nfe in nfes:
                if nfe // per_step >= 1:
                    cells.append(dict(kind="fixed", sampler=name, **params, grid=grid, steps=nfe // per_step,
                                      requested_nfe=nfe))
    cells += [dict(kind="adaptive", sampler="ode", method=m, rtol=tol, atol=tol) for m in ADAPTIVE for tol in tols]
    return cells


def run(args) -> list[dict]:
    sde = VPSDE(beta_min=0.1, beta_max=20.0, eps=1e-3)
    device = torch.device(args.device)
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu, {torch.get_num_threads()} thread(s)")
    commit, stamp = git_commit(), datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    todo = [(p, c) for p in PROBLEMS for c in make_cells(args.nfes, args.tols)]
    rows, refs = [], {}
    bar = tqdm(todo, desc="cells", unit="cell")
    mixtures = {p: make() for p, make in PROBLEMS.items()}
    for problem, cell in bar:
        kind, name, requested = cell["kind"], cell["sampler"], cell.get("requested_nfe", "")
        cell = {k: v for k, v in cell.items() if k not in ("kind", "sampler", "requested_nfe")}
        bar.set_postfix_str(f"{problem.split()[0]} {name}/{cell.get('method', '')} {cell.get('grid', '')}")
        denoiser = mixtures[problem].denoiser(sde)
        x, info = sample(build_sampler(name, **cell), denoiser, seeds=range(args.points), device=device,
                         dtype=torch.float64)
        if kind == "reference":
            refs[problem] = x
        rmse = (x - refs[problem]).pow(2).mean().sqrt().item()
        point_rmse = (x - refs[problem]).pow(2).flatten(1).mean(1).sqrt()  # median and max tell outliers from bulk
        method, grid = cell.get("method", ""), cell.get("grid", "")
        params = f"steps={cell['steps']}" if "steps" in cell else f"rtol={cell['rtol']:g},atol={cell['atol']:g}"
        rows.append(dict(
            problem=problem, kind=kind, sampler=name, method=method, grid=grid, params=params,
            requested_nfe=requested, nfe=info["nfe"], steps=info.get("steps", ""), n_accept=info.get("n_accept", ""),
            n_reject=info.get("n_reject", ""), rmse=f"{rmse:.6e}",
            median_point_rmse=f"{point_rmse.median().item():.6e}",
            max_point_rmse=f"{point_rmse.max().item():.6e}", wall_s=f"{info['wall_s']:.3f}",
            n_points=args.points, device=device_name, commit=commit, timestamp=stamp,
        ))  # fmt: skip
        if kind == "reference_check":
            tqdm.write(f"{problem}: reference dopri5 rtol=atol={REF_TOL:g} took {rows[-2]['nfe']} NFE; "
                       f"RMSE to the rtol=atol={10 * REF_TOL:g} solve ({info['nfe']} NFE): {rmse:.2e}")  # fmt: skip
    return rows


def summarize(rows):
    """Per problem: {label: (best grid, {requested nfe: row})} over fixed samplers, and adaptive rows by method."""
    fixed, adaptive, check = defaultdict(dict), defaultdict(lambda: defaultdict(list)), {}
    by_grid = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["kind"] == "fixed":
            by_grid[(r["problem"], label(r))][r["grid"]][int(r["requested_nfe"])] = r
        elif r["kind"] == "adaptive":
            adaptive[r["problem"]][r["method"]].append(r)
        elif r["kind"] == "reference_check":
            check[r["problem"]] = float(r["rmse"])
    for (problem, lab), grids in by_grid.items():
        # best grid = lowest mean log-RMSE over the NFE sweep (every grid has the same requested NFEs)
        best = min(grids, key=lambda g: sum(math.log(max(float(r["rmse"]), 1e-300)) for r in grids[g].values()))
        fixed[problem][lab] = (best, grids[best])
    return fixed, adaptive, check


def order(rows, key="rmse") -> str:
    """Observed order -d log error / d log NFE between the two largest-NFE rows."""
    pts = sorted((int(r["nfe"]), float(r[key])) for r in rows)
    if len(pts) < 2 or pts[-2][0] == pts[-1][0] or min(pts[-2][1], pts[-1][1]) <= 0:
        return "-"
    (n1, e1), (n2, e2) = pts[-2:]
    return f"{-math.log(e2 / e1) / math.log(n2 / n1):.1f}"


def orders(rows) -> str:
    return f"{order(rows)} / {order(rows, 'median_point_rmse')}"


def markdown(rows, args, elapsed) -> str:
    fixed, adaptive, check = summarize(rows)
    ref = {r["problem"]: r for r in rows if r["kind"] == "reference"}
    out = [
        f"Endpoint RMSE per dimension vs a dopri5 rtol=atol={REF_TOL:g} probability-flow reference; "
        "VPSDE(0.1, 20, eps=1e-3), "
        f"float64, {args.points} points, commit {rows[0]['commit']}, {rows[0]['device']}, {elapsed / 60:.1f} min.",
        "Fixed-step samplers on their best grid (lowest mean log-RMSE over the sweep); a cell's actual NFE is in "
        "parentheses where it differs from the column's. `order`: -slope of log error vs log NFE over the last two "
        "points, of the RMSE and of the median per-point error (the RMSE is dominated by the few trajectories that end "
        "in another mode).",
    ]  # fmt: skip
    for problem in fixed:
        out += ["", f"**{problem}** — reference {ref[problem]['nfe']} NFE, reference check (vs 10x looser tolerance) "
                    f"RMSE {check[problem]:.1e}", ""]  # fmt: skip
        out += ["| sampler | grid | " + " | ".join(f"NFE {n}" for n in args.nfes) + " | order (RMSE / median) |"]
        out += ["|---|---|" + "---:|" * (len(args.nfes) + 1)]
        for lab, (grid, by_nfe) in fixed[problem].items():
            cells = [
                f"{float(by_nfe[n]['rmse']):.2e}" + (f" ({by_nfe[n]['nfe']})" if by_nfe[n]["nfe"] != n else "")
                if n in by_nfe else "-"
                for n in args.nfes
            ]
            out.append(f"| {lab} | {grid} | " + " | ".join(cells) + f" | {orders(by_nfe.values())} |")
        out += ["", "| adaptive: RMSE (NFE) at rtol=atol | " + " | ".join(f"{t:g}" for t in args.tols)
                + " | order (RMSE / median) |"]
        out += ["|---|" + "---:|" * (len(args.tols) + 1)]
        for method, rs in adaptive[problem].items():
            cells = [f"{float(r['rmse']):.2e} ({r['nfe']})" for r in rs]
            out.append(f"| ode/{method} | " + " | ".join(cells) + f" | {orders(rs)} |")
    return "\n".join(out) + "\n"


def plot(rows, tols, path: Path) -> None:
    fixed, adaptive, check = summarize(rows)
    fig, axes = plt.subplots(1, len(fixed), figsize=(7 * len(fixed), 5.8), squeeze=False)
    palette = [c for i, c in enumerate(plt.cm.tab10.colors) if i != 7]  # tab10 without its grey (reference lines)
    colors = dict(zip([f"{n}/{p['method']}" if p else n for n, p in FIXED] + [f"ode/{m}" for m in ADAPTIVE], palette))
    for ax, problem in zip(axes[0], fixed):
        for lab, (grid, by_nfe) in fixed[problem].items():
            pts = sorted((r["nfe"], float(r["rmse"])) for r in by_nfe.values())
            ax.plot(*zip(*pts), "o-", color=colors[lab], lw=1.8, ms=4, label=f"{lab} ({grid} grid)")
        for marker, (method, rs) in zip("s^", adaptive[problem].items()):
            pts = sorted((r["nfe"], float(r["rmse"])) for r in rs)
            ax.plot(*zip(*pts), marker + ":", color=colors[f"ode/{method}"], ms=7, mfc="none", mew=1.5,
                    label=f"ode/{method} (rtol=atol {max(tols):g}..{min(tols):g})")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.autoscale(False)  # reference lines below must not stretch the axes
        x1, (y0, y1) = ax.get_xlim()[1], ax.get_ylim()
        for p in (1, 2, 4):
            # anchored at NFE 10 just above the worst error, so each shows the slope, not a fit
            xs = np.geomspace(10, x1, 20)
            ys = y1 / 2 * (xs / 10) ** -p
            ax.plot(xs, ys, "--", color="0.45", lw=1)
            i = int((ys > y0 * 3).sum()) - 1
            if i >= 0:
                ax.annotate(f"order {p}", (xs[i], ys[i]), textcoords="offset points", xytext=(-10, 6), color="0.3",
                            fontsize=9, ha="right",
                            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
        ax.set(xlabel="NFE (counted by the denoiser)", ylabel="endpoint RMSE per dimension vs reference")
        ax.set_title(f"{problem}\nreference: dopri5 rtol=atol={REF_TOL:g}; "
                     f"its change at {10 * REF_TOL:g}: {check[problem]:.1e}",
                     fontsize=11)  # fmt: skip
        ax.grid(True, which="major", alpha=0.5)
        ax.grid(True, which="minor", alpha=0.15)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle("Probability-flow ODE samplers on VPSDE: endpoint error vs NFE "
                 f"({rows[0]['n_points']} points, float64)")
    fig.tight_layout()
    save_atomically(fig, path, dpi=130)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=None,
                        help="starting points, seeds 0..points-1 (default 4096; 256 with --quick)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results",
                        help="default benchmarks/results")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: fewer points, NFEs and tolerances; files get a _quick suffix")
    parser.add_argument("--device", default="cpu", help="torch device for the samplers (default cpu)")
    # One thread by default: on the 2-core benchmark VM two threads made small ops ~100x slower under any other load.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    args.points = args.points or (256 if args.quick else 4096)
    if args.points < 1:
        parser.error("--points must be >= 1")
    args.nfes, args.tols = ((10, 50), (1e-3, 1e-5)) if args.quick else (NFES, TOLS)
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / ("sampler_accuracy_quick" if args.quick else "sampler_accuracy")

    start = time.perf_counter()
    rows = run(args)
    elapsed = time.perf_counter() - start

    write_csv(stem.with_suffix(".csv"), rows, FIELDS)
    plot(rows, args.tols, stem.with_suffix(".png"))
    table = markdown(rows, args, elapsed)
    write_text(stem.with_suffix(".md"), table)
    print(table)
    print(f"wrote {stem}.csv, .png, .md in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
