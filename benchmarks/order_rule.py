"""Choosing MAX_STEP_RATIO (samplers/multistep.py), the multistep solvers' order rule, on the tuning family only.

For every tuning problem of family.py (seeds 0..23; 256 starts, reference dopri5 at 1e-9), every multistep solver
(DPM-Solver++ 2M/3M, UniPC 2/3/4), every named grid and NFE in 8..20: the endpoint RMSE for each candidate ratio
(runs whose order schedule equals another candidate's are not repeated) and DDIM's RMSE on the same grid and NFE.
A candidate is safe when no run ends worse than DDIM; among safe ones the largest ratio keeps the high orders most.
Rows are appended to results/order_rule.csv as they are made (a rerun skips the problems already there).
`--held-out` runs the same on the held-out seeds 1000..1031 (results/order_rule_heldout.*): it checks the ratio
chosen on the tuning seeds and is never used to choose one.

    .venv/bin/python benchmarks/order_rule.py              # ~40 min on 2 cores; writes results/order_rule.{csv,md}
    .venv/bin/python benchmarks/order_rule.py --held-out   # results/order_rule_heldout.{csv,md}
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from family import HELD_OUT, TUNING, oracle, run_family  # noqa: E402

from lightning_sde.samplers import build_sampler  # noqa: E402
from lightning_sde.samplers.grids import time_grid  # noqa: E402
from lightning_sde.samplers.multistep import step_orders  # noqa: E402

OUT = ROOT / "benchmarks/results/order_rule"
RATIOS = (1.5, 2.0, 3.0, math.inf)
NFES = (8, 10, 15, 20)
SOLVERS = {"dpm++2m": ("dpmpp", 2), "dpm++3m": ("dpmpp", 3), "unipc-2": ("unipc", 2), "unipc-3": ("unipc", 3),
           "unipc-4": ("unipc", 4)}
STARTS = 256
FIELDS = ["seed", "solver", "grid", "nfe", "max_step_ratio", "rmse", "ddim_rmse", "orders"]
SWEPT_GRIDS = ("uniform", "logsnr", "karras", "quadratic")  # the named grids when its results were made


def run_problem(seed: int) -> list[dict]:
    rows = []
    den, x_T, ref, _ = oracle(seed, STARTS, tol=1e-9)
    rmse = lambda x: float((x - ref).pow(2).mean().sqrt())  # noqa: E731
    for grid in SWEPT_GRIDS:
        for nfe in NFES:
            ddim = rmse(build_sampler("ddim", steps=nfe, grid=grid)(den, x_T)[0])
            lam = den.sde.log_snr(time_grid(den.sde, nfe, grid))
            for label, (name, order) in SOLVERS.items():
                done = {}
                below = math.inf if name == "unipc" else 15
                for ratio in RATIOS:
                    orders = step_orders(lam, order, True, below, ratio)
                    key = tuple(orders)
                    if key not in done:
                        sampler = build_sampler(name, order=order, steps=nfe, grid=grid, max_step_ratio=ratio)
                        done[key] = rmse(sampler(den, x_T)[0])
                    rows.append({"seed": seed, "solver": label, "grid": grid, "nfe": nfe, "max_step_ratio": ratio,
                                     "rmse": done[key], "ddim_rmse": ddim, "orders": "".join(map(str, orders))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--held-out", action="store_true", help="score the held-out seeds (results/order_rule_heldout)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = OUT.with_name("order_rule_heldout") if args.held_out else OUT
    run_family(HELD_OUT if args.held_out else TUNING, out.with_suffix(".csv"), FIELDS, run_problem)
    summarize(out)


def summarize(out: Path) -> None:
    path = out.with_suffix(".csv")
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    lines = ["| max_step_ratio | runs worse than DDIM | worst RMSE / DDIM's | median RMSE / no rule's |",
             "|---:|---:|---:|---:|"]
    free = {(r["seed"], r["solver"], r["grid"], r["nfe"]): float(r["rmse"]) for r in rows
            if float(r["max_step_ratio"]) == math.inf}
    for ratio in RATIOS:
        sel = [r for r in rows if float(r["max_step_ratio"]) == ratio]
        vs_ddim = [float(r["rmse"]) / float(r["ddim_rmse"]) for r in sel]
        vs_free = sorted(float(r["rmse"]) / free[(r["seed"], r["solver"], r["grid"], r["nfe"])] for r in sel)
        lines.append(f"| {ratio:g} | {sum(v > 1 for v in vs_ddim)} of {len(sel)} | {max(vs_ddim):.2f} | "
                     f"{statistics.median(vs_free):.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
