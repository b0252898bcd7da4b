"""grid="optimized" started from one named grid or from several: how much its held-out error depends on the start.

optimize_grid runs gradient descent (Adam, 200 steps) on the pilot's endpoint error from the best named grid on the
pilot. On the 16-D mixture of fast_samplers.py, UniPC-3 at NFE 20 ended at RMSE 0.0042 from the uniform grid and
0.0145 from the trailing one, whose pilot RMSE before tuning was 0.2 % lower: the loss has several basins, and which
one a start falls in is not told by its pilot score. This script tunes UniPC-3 (from T) at NFE 10 and 20 from every
named grid on its own, on the family's problems up to --max-dim dimensions (the endpoint protocol of family.py, 256
scoring starts a problem, disjoint from the 512-seed pilot), and records each start's pilot RMSE before / after and
its RMSE on the scoring starts. The summary reads off `starts=k` (tune from the k best named grids on the pilot, keep
the lowest pilot RMSE after tuning) against k = 1, the rule before.

    .venv/bin/python benchmarks/grid_starts.py                          # tuning family, <= 16-D: 59 min on 2 cores
    .venv/bin/python benchmarks/grid_starts.py --family held-out-15     # not run: the study changed no default

Results: results/grid_starts[_<family>].{csv,md}, one problem at a time (a rerun continues).
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from family import FAMILIES, describe, draw, file_tag, oracle, run_family  # noqa: E402

from lightning_sde.samplers import GRIDS, build_sampler, optimize_grid  # noqa: E402
from lightning_sde.samplers.grids import fits  # noqa: E402

OUT = ROOT / "benchmarks/results"
STARTS, NFES = 256, (10, 20)
FIELDS = ["seed", "dim", "nfe", "init", "pilot_init", "pilot_final", "rmse", "pilot_nfe", "wall_s"]


def run_problem(seed: int) -> list[dict]:
    den, x_T, ref, _ = oracle(seed, STARTS)
    rows = []
    for nfe in NFES:
        for init in GRIDS:
            sampler = build_sampler("unipc", order=3, steps=nfe, grid="optimized")
            if not fits(den.sde, sampler.intervals, init, den.sde.T):
                continue
            started = time.perf_counter()
            times, report = optimize_grid(sampler, den, inits=(init,), starts=1)
            wall = time.perf_counter() - started
            x, _ = build_sampler("unipc", order=3, steps=nfe, times=times.tolist())(den, x_T)
            rows.append({"seed": seed, "dim": draw(seed)[1]["dim"], "nfe": nfe, "init": init,
                         "pilot_init": report["pilot_rmse_init"], "pilot_final": report["pilot_rmse_final"],
                         "rmse": float((x - ref).pow(2).mean().sqrt()), "pilot_nfe": report["pilot_nfe"],
                         "wall_s": wall})
            print(f"  NFE {nfe} from {init:9s} pilot {report['pilot_rmse_init']:.4g} -> "
                  f"{report['pilot_rmse_final']:.4g}, scored {rows[-1]['rmse']:.4g} ({wall:.0f} s)", flush=True)
    return rows


def chosen(runs: list[dict], k: int) -> dict:
    """The run optimize_grid(starts=k) returns: of the k best named grids on the pilot, the lowest pilot RMSE after
    tuning."""
    ranked = sorted(runs, key=lambda r: float(r["pilot_init"]))[:k]
    return min(ranked, key=lambda r: float(r["pilot_final"]))


def summarize(path: Path, family: str) -> None:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    problems = sorted({int(r["seed"]) for r in rows})
    lines = [f"# grid=optimized from the k best named grids ({family} family, UniPC-3 from T)", "",
             f"Command: `.venv/bin/python benchmarks/grid_starts.py --family {family}`", "",
             f"{len(problems)} problems, {STARTS} scoring starts each. Ratio: the scoring RMSE of starts=k over "
             "starts=1's, per problem: median [min, max], problems better / worse by more than 1 %; cost: the "
             "tuning's wall time over starts=1's, median.", "",
             "| NFE | k | ratio to k = 1 | better / worse | ratio to the best start in hindsight | cost |",
             "|---:|---:|---:|---:|---:|---:|"]
    for nfe in NFES:
        by_seed = {s: [r for r in rows if int(r["seed"]) == s and int(r["nfe"]) == nfe] for s in problems}
        by_seed = {s: runs for s, runs in by_seed.items() if runs}
        for k in range(1, len(GRIDS) + 1):
            ratio, hindsight, cost = [], [], []
            for runs in by_seed.values():
                one, mine = chosen(runs, 1), chosen(runs, k)
                ratio.append(float(mine["rmse"]) / float(one["rmse"]))
                hindsight.append(float(mine["rmse"]) / min(float(r["rmse"]) for r in runs))
                first = sorted(runs, key=lambda r: float(r["pilot_init"]))[:k]
                cost.append(sum(float(r["wall_s"]) for r in first) / float(one["wall_s"]))
            lines.append(f"| {nfe} | {k} | {statistics.median(ratio):.3f} [{min(ratio):.3f}, {max(ratio):.3f}] | "
                         f"{sum(v < 0.99 for v in ratio)} / {sum(v > 1.01 for v in ratio)} | "
                         f"{statistics.median(hindsight):.3f} [{max(hindsight):.3f} worst] | "
                         f"{statistics.median(cost):.1f}x |")
    lines += ["", "Per problem: scoring RMSE of starts=1 -> starts=2 -> every start (NFE 10; NFE 20)", ""]
    for s in problems:
        cells = []
        for nfe in NFES:
            runs = [r for r in rows if int(r["seed"]) == s and int(r["nfe"]) == nfe]
            if runs:
                cells.append(" -> ".join(f"{float(chosen(runs, k)['rmse']):.3g}" for k in (1, 2, len(GRIDS))))
        lines.append(f"- {describe(draw(s)[1])}: " + "; ".join(cells))
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def study_command_line(doc: str, stem: str, add_arguments=lambda parser: None):
    """(arguments, results CSV, seeds) of a grid=optimized study on the problems of --family up to --max-dim
    dimensions (this one, grid_holdout.py); `add_arguments(parser)` adds a study's own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("tuning", "held-out-15"), default="tuning")
    add_arguments(parser)
    parser.add_argument("--max-dim", type=int, default=16, help="problems of at most this dimension")
    parser.add_argument("--replot", action="store_true", help="the tables only")
    args = parser.parse_args()
    torch.set_num_threads(2)
    suffix = "" if args.family == "tuning" else f"_{file_tag(args.family)}"
    seeds = [s for s in FAMILIES[args.family] if draw(s)[1]["dim"] <= args.max_dim]
    return args, OUT / f"{stem}{suffix}.csv", seeds


def main() -> None:
    args, path, seeds = study_command_line(__doc__, "grid_starts")
    if not args.replot:
        run_family(seeds, path, FIELDS, run_problem)
    summarize(path, args.family)


if __name__ == "__main__":
    main()
