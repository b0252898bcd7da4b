"""grid="optimized" choosing its iterate on pilot rows it did not tune on: does it carry better to other seeds?

optimize_grid keeps the Adam iterate with the lowest error on the same 512 pilot rows it descends on, and the tuned
grid fits them (benchmarks/grid_starts.py: on one problem a pilot RMSE of 0.0041 scored 0.016 on other seeds).
`holdout=h` tunes on the first (1 - h) of the pilot and chooses the start, the iterate and (with several starts) the
run by the error of the rest. Variants, UniPC-3 from T at NFE 10 and 20 on the family's problems up to --max-dim
dimensions (family.py's endpoint protocol, 256 scoring starts disjoint from the pilot):
  base      pilot 512, every row tunes and chooses (the default)
  half      pilot 512, tune on 256, choose on 256 (about the same cost)
  double    pilot 1024, tune on 512, choose on 512 (the reference and each forward run twice the rows)
  base1024  pilot 1024, every row tunes and chooses (double's cost without the held-back rows)
The summary gives each variant's scoring RMSE over base's per problem. None was better at the median (results/
grid_holdout.md), so no default changed and the held-out family was not scored.

    .venv/bin/python benchmarks/grid_holdout.py                # tuning family, <= 16-D: 94 min beside other work
    .venv/bin/python benchmarks/grid_holdout.py --family held-out-15 --variants base half     # not run

Results: results/grid_holdout[_<family>].{csv,md}, one problem at a time (a rerun continues).
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from family import describe, draw, oracle  # noqa: E402
from grid_starts import NFES, STARTS, study_command_line  # noqa: E402  (grid_starts.py's problems and scoring)

from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.samplers import build_sampler, optimize_grid  # noqa: E402

VARIANTS = {"base": {"pilot": 512, "holdout": 0.0}, "half": {"pilot": 512, "holdout": 0.5},
            "double": {"pilot": 1024, "holdout": 0.5}, "base1024": {"pilot": 1024, "holdout": 0.0}}
FIELDS = ["seed", "dim", "nfe", "variant", "init", "pilot_init", "pilot_final", "rmse", "pilot_nfe", "wall_s"]


def run_variants(seeds, path: Path, variants) -> None:
    """Every (problem, variant) not yet in the CSV, one problem at a time (written whole after each: a killed run
    loses one problem at most, and a variant added later runs on the problems done before)."""
    rows = list(csv.DictReader(open(path))) if path.exists() else []
    for seed in seeds:
        todo = [v for v in variants if not any(int(r["seed"]) == seed and r["variant"] == v for r in rows)]
        if todo:
            print(describe(draw(seed)[1]), flush=True)
            rows += run_problem(seed, todo)
            write_csv(path, rows, FIELDS)


def run_problem(seed: int, variants) -> list[dict]:
    den, x_T, ref, _ = oracle(seed, STARTS)
    rows = []
    for nfe in NFES:
        for name in variants:
            sampler = build_sampler("unipc", order=3, steps=nfe, grid="optimized")
            started = time.perf_counter()
            times, report = optimize_grid(sampler, den, **VARIANTS[name])
            wall = time.perf_counter() - started
            x, _ = build_sampler("unipc", order=3, steps=nfe, times=times.tolist())(den, x_T)
            rows.append({"seed": seed, "dim": draw(seed)[1]["dim"], "nfe": nfe, "variant": name,
                         "init": report["init"], "pilot_init": report["pilot_rmse_init"],
                         "pilot_final": report["pilot_rmse_final"], "rmse": float((x - ref).pow(2).mean().sqrt()),
                         "pilot_nfe": report["pilot_nfe"], "wall_s": wall})
            print(f"  NFE {nfe} {name:6s} from {report['init']:9s} pilot {report['pilot_rmse_init']:.4g} -> "
                  f"{report['pilot_rmse_final']:.4g}, scored {rows[-1]['rmse']:.4g} ({wall:.0f} s)", flush=True)
    return rows


def summarize(path: Path, family: str) -> None:
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    problems = sorted({int(r["seed"]) for r in rows})
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    cell = {(int(r["seed"]), int(r["nfe"]), r["variant"]): r for r in rows}
    lines = [f"# grid=optimized choosing on held-back pilot rows ({family} family, UniPC-3 from T)", "",
             f"Command: `.venv/bin/python benchmarks/grid_holdout.py --family {family} --variants "
             f"{' '.join(variants)}`", "",
             f"{len(problems)} problems, {STARTS} scoring starts each. Ratio: a variant's scoring RMSE over base's, "
             "per problem: median [min, max], geometric mean, problems better / worse by more than 1 %; cost: its "
             "pilot NFE x pilot rows over base's, median (the wall times were measured beside other work).", "",
             "| NFE | variant | ratio to base | geometric mean | better / worse | cost |",
             "|---:|---|---:|---:|---:|---:|"]
    for nfe in NFES:
        for name in variants:
            pairs = [(cell[s, nfe, name], cell[s, nfe, "base"]) for s in problems
                     if (s, nfe, name) in cell and (s, nfe, "base") in cell]
            if not pairs:
                continue
            ratio = [float(v["rmse"]) / float(b["rmse"]) for v, b in pairs]
            rows_ratio = VARIANTS[name]["pilot"] / VARIANTS["base"]["pilot"]  # a network call takes every pilot row
            cost = [rows_ratio * float(v["pilot_nfe"]) / float(b["pilot_nfe"]) for v, b in pairs]
            geo = statistics.geometric_mean(ratio)
            lines.append(f"| {nfe} | {name} | {statistics.median(ratio):.3f} [{min(ratio):.3f}, {max(ratio):.3f}] | "
                         f"{geo:.3f} | {sum(v < 0.99 for v in ratio)} / {sum(v > 1.01 for v in ratio)} | "
                         f"{statistics.median(cost):.1f}x |")
    lines += ["", "Per problem: scoring RMSE of " + " / ".join(variants) + " (NFE 10; NFE 20)", ""]
    for s in problems:
        cells = [" / ".join(f"{float(cell[s, nfe, v]['rmse']):.3g}" if (s, nfe, v) in cell else "-" for v in variants)
                 for nfe in NFES]
        lines.append(f"- {describe(draw(s)[1])}: " + "; ".join(cells))
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    add = lambda parser: parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS),  # noqa: E731
                                             default=tuple(VARIANTS))
    args, path, seeds = study_command_line(__doc__, "grid_holdout", add)
    if "base" not in args.variants:
        sys.exit("grid_holdout.py: --variants must include base (the ratios are to it)")
    if not args.replot:
        run_variants(seeds, path, args.variants)
    summarize(path, args.family)


if __name__ == "__main__":
    main()
