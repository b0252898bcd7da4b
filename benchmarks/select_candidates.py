"""Which candidates should grid="select" compare on its pilot? Studied on the tuning family only.

grid="select" (lightning_sde/samplers/tuning.py) runs every named grid x the variants of `select_over` on a 512-row
pilot and keeps the one closest to the ODE's solution. This script runs select's own pilot once per tuning problem
and NFE with the widest candidate set (UniPC order 2 or 3 x start T, Gaussian start 0.15 or 0.3 x 4 grids), then
for each smaller set picks by pilot RMSE within it and scores the pick by its RMSE over the best public solver's
from results/recommend_tuning.csv (256 starts); `oracle`: the best of the set on those scored starts.

    .venv/bin/python benchmarks/select_candidates.py            # 24 tuning problems (about 10 min, 2 cores)
    .venv/bin/python benchmarks/select_candidates.py --replot   # the table only

Results: results/select_candidates.csv (one problem at a time: a rerun continues), results/select_candidates.md.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from endpoint_protocol import vp_sde  # noqa: E402
from family import TUNING, draw, run_family  # noqa: E402
from recommend import NFES, ratios  # noqa: E402

from lightning_sde.samplers import build_sampler  # noqa: E402
from lightning_sde.samplers.tuning import pilot_errors  # noqa: E402

OUT = ROOT / "benchmarks/results"
WIDEST = {"order": (2, 3), "gaussian_start": (None, 0.15, 0.3)}
SETS = {  # label: (orders, starts)
    "UniPC-3; T, 0.15 (select before)": ((3,), (None, 0.15)),
    "UniPC-3; T, 0.15, 0.3": ((3,), (None, 0.15, 0.3)),
    "UniPC-2/3; T, 0.15": ((2, 3), (None, 0.15)),
    "UniPC-2/3; T, 0.15, 0.3": ((2, 3), (None, 0.15, 0.3)),
}
FIELDS = ["seed", "budget", "config", "order", "gaussian_start", "pilot_nfe", "pilot_rmse"]


def config_name(order: int, grid: str, gaussian_start) -> str:
    """The candidate's name in recommend.py's tables."""
    return f"unipc-{order} {grid}" + (f" gs{gaussian_start:g}" if gaussian_start else "")


def run_problem(seed: int) -> list[dict]:
    den = draw(seed)[0].denoiser(vp_sde())
    rows = []
    for nfe in NFES:
        sampler = build_sampler("unipc", order=3, steps=nfe, grid="select", select_over=WIDEST)
        candidates, pilot_nfe = pilot_errors(sampler, den)
        for grid, knobs, _, _, errors in candidates.values():
            rows.append({"seed": seed, "budget": nfe, "config": config_name(knobs["order"], grid,
                                                                             knobs["gaussian_start"]),
                         "order": knobs["order"], "gaussian_start": knobs["gaussian_start"] or 0,
                         "pilot_nfe": pilot_nfe, "pilot_rmse": float(errors.pow(2).mean().sqrt())})
    return rows


def summarize() -> None:
    with open(OUT / "select_candidates.csv") as fh:
        pilot = list(csv.DictReader(fh))
    with open(OUT / "recommend_tuning.csv") as fh:
        scored, _ = ratios(list(csv.DictReader(fh)))
    seeds = sorted({r["seed"] for r in pilot}, key=int)
    lines = [f"# grid=select's candidates on the tuning family ({len(seeds)} problems)", "",
             "Per candidate set, the scored RMSE / best public solver's of the candidate the pilot RMSE picks on "
             "each problem (results/recommend_tuning.csv, 256 starts); oracle: the best of the set on the scored "
             "starts.", "", "Command: `.venv/bin/python benchmarks/select_candidates.py`", ""]
    for budget in NFES:
        lines += [f"## NFE {budget}", "", "| candidates | pilot NFE (median) | median | worst | problems > 1 | "
                  "oracle: median, worst |", "|---|---:|---:|---:|---:|---:|"]
        for label, (orders, starts) in SETS.items():
            picks, best = [], []
            for seed in seeds:
                cands = [r for r in pilot if r["seed"] == seed and int(r["budget"]) == budget
                         and int(r["order"]) in orders and (float(r["gaussian_start"]) or None) in starts]
                pick = min(cands, key=lambda r: float(r["pilot_rmse"]))
                picks.append(scored[(pick["config"], budget)][seed])
                best.append(min(scored[(r["config"], budget)][seed] for r in cands))
            runs = len(orders) * len(starts) * 4
            widest = len(WIDEST["order"]) * len(WIDEST["gaussian_start"]) * 4
            reference = statistics.median(int(r["pilot_nfe"]) - widest * budget
                                          for r in pilot if int(r["budget"]) == budget)
            lines.append(f"| {label} ({runs}) | {reference + runs * budget:.0f} | {statistics.median(picks):.3f} | "
                         f"{max(picks):.3f} | {sum(p > 1 for p in picks)} | {statistics.median(best):.3f}, "
                         f"{max(best):.3f} |")
        lines.append("")
    (OUT / "select_candidates.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replot", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not args.replot:
        run_family(TUNING, OUT / "select_candidates.csv", FIELDS, run_problem)
    summarize()


if __name__ == "__main__":
    main()
