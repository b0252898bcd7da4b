"""The trailing grid against the uniform one, and against diffusers' UniPC on its trailing spacing (tuning family).

On the held-out families the worst runs of the recommended sampler were ties with diffusers' UniPC-3 on its trailing
spacing where select had picked UniPC-3 on our uniform grid (e.g. #4028: 1.013x on 2048 starts). The two grids
differ by i/N eps in t_i (uniform spans [eps, T], trailing [0, T] with its last point moved to eps), and with the
same times our UniPC and diffusers' agree to 1e-5 (relative RMSE), so any gap is the grid's. This script measures it
on the tuning family (the endpoint protocol of family.py, 256 starts a problem): UniPC-2/3 from T on both grids at
NFE 10 and 20, and diffusers' UniPC-2/3 (trailing) on the same x_T and reference.

    .venv/bin/python benchmarks/trailing_grid.py      # ~8 min on 2 cores; needs the `peers` extra (diffusers)

Results: results/trailing_grid.{csv,md}, one problem at a time (a rerun continues).
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

from family import FAMILIES, describe, draw, oracle, run_family  # noqa: E402
from recommend import diffusers_schedulers, run_diffusers  # noqa: E402

from lightning_sde.samplers import build_sampler  # noqa: E402

OUT = ROOT / "benchmarks/results/trailing_grid"
STARTS, NFES, ORDERS = 256, (10, 20), (2, 3)
FIELDS = ["seed", "dim", "nfe", "order", "uniform", "trailing", "diffusers"]


def run_problem(seed: int) -> list[dict]:
    den, x_T, ref, _ = oracle(seed, STARTS)
    rmse = lambda x: float((x - ref).pow(2).mean().sqrt())  # noqa: E731
    public = diffusers_schedulers()
    rows = []
    for nfe in NFES:
        for order in ORDERS:
            row = {"seed": seed, "dim": draw(seed)[1]["dim"], "nfe": nfe, "order": order}
            for grid in ("uniform", "trailing"):
                row[grid] = rmse(build_sampler("unipc", order=order, steps=nfe, grid=grid)(den, x_T)[0])
            row["diffusers"] = rmse(run_diffusers(public[f"diffusers UniPC-{order} trailing"], den, x_T, nfe)[0])
            rows.append(row)
    return rows


def summarize() -> None:
    with open(OUT.with_suffix(".csv")) as fh:
        rows = list(csv.DictReader(fh))
    lines = ["# The trailing grid against the uniform one (tuning family, UniPC from T)", "",
             "Command: `.venv/bin/python benchmarks/trailing_grid.py`", "",
             f"{len({r['seed'] for r in rows})} problems, {STARTS} starts each; RMSE ratios per problem: median "
             "[min, max], and the problems where the first is worse (> 1).", "",
             "| NFE | order | trailing / uniform | > 1 | ours trailing / diffusers trailing | uniform / diffusers "
             "| > 1 |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for nfe in NFES:
        for order in ORDERS:
            sel = [r for r in rows if int(r["nfe"]) == nfe and int(r["order"]) == order]
            ratio = lambda a, b: [float(r[a]) / float(r[b]) for r in sel]  # noqa: E731
            cells = []
            for a, b in (("trailing", "uniform"), ("trailing", "diffusers"), ("uniform", "diffusers")):
                v = ratio(a, b)
                cells.append(f"{statistics.median(v):.4f} [{min(v):.4f}, {max(v):.4f}]")
                if b != "diffusers" or a == "uniform":
                    cells.append(f"{sum(x > 1 for x in v)} / {len(v)}")
            lines.append(f"| {nfe} | {order} | " + " | ".join(cells) + " |")
    lines += ["", "Per problem (NFE 20, order 3): trailing / uniform", ""]
    lines += [f"- {describe(draw(int(r['seed']))[1])}: {float(r['trailing']) / float(r['uniform']):.4f}"
              for r in rows if int(r["nfe"]) == 20 and int(r["order"]) == 3]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:10 + len(NFES) * len(ORDERS)]))


def main() -> None:
    torch.set_num_threads(2)
    run_family(FAMILIES["tuning"], OUT.with_suffix(".csv"), FIELDS, run_problem)
    summarize()


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
