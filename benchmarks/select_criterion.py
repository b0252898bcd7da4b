"""Which pilot criterion should grid="select" rank its candidates by? Studied on the tuning family only.

grid="select" runs UniPC-3 on 4 named grids x {from T, from the Gaussian start 0.15} over a 512-row pilot and keeps
the candidate closest to the ODE's solution. Ranked by the pilot's RMSE, a few rows that end in a rare mixture
component can decide the choice (held-out #1008: pilot RMSE uniform 0.19 < quadratic 0.35, scored 0.10 vs 0.019).
This script records, per tuning problem and NFE, each candidate's per-row pilot errors summarised by several
criteria (the pilot exactly as select_schedule runs it), then joins them with the candidates' scored RMSE over the
best public solver's from results/recommend_tuning.csv: the criterion whose picks score best there is frozen.

    .venv/bin/python benchmarks/select_criterion.py            # 24 tuning problems (about 10 min, 2 cores)
    .venv/bin/python benchmarks/select_criterion.py --replot   # the table only

Results: results/select_criterion.csv (one problem at a time: a rerun continues), results/select_criterion.md.
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
from recommend import NFES, TUNED_GAUSSIAN_START, ratios  # noqa: E402
from select_candidates import config_name  # noqa: E402

from lightning_sde.samplers import build_sampler  # noqa: E402
from lightning_sde.samplers.tuning import pilot_errors  # noqa: E402

OUT = ROOT / "benchmarks/results"
SUMMARIES = {  # criterion: per-row errors -> one number (lower is better)
    "rms": lambda e: e.pow(2).mean().sqrt(),
    "rms trimmed 1%": lambda e: e.sort().values[: int(0.99 * len(e))].pow(2).mean().sqrt(),
    "rms trimmed 5%": lambda e: e.sort().values[: int(0.95 * len(e))].pow(2).mean().sqrt(),
    "mean": lambda e: e.mean(),
    "geometric mean": lambda e: e.log().mean().exp(),
    "median": lambda e: e.median(),
    "90th percentile": lambda e: e.quantile(0.9),
}
FIELDS = ["seed", "budget", "config", "pilot_nfe", *SUMMARIES]


def run_problem(seed: int) -> list[dict]:
    den = draw(seed)[0].denoiser(vp_sde())
    rows = []
    for nfe in NFES:
        sampler = build_sampler("unipc", order=3, steps=nfe, grid="select", gaussian_start=TUNED_GAUSSIAN_START)
        candidates, pilot_nfe = pilot_errors(sampler, den)
        for grid, knobs, _, _, errors in candidates.values():
            config = config_name(3, grid, knobs["gaussian_start"])
            rows.append({"seed": seed, "budget": nfe, "config": config, "pilot_nfe": pilot_nfe,
                         **{name: float(f(errors)) for name, f in SUMMARIES.items()}})
    return rows


def summarize() -> None:
    with open(OUT / "select_criterion.csv") as fh:
        pilot = list(csv.DictReader(fh))
    with open(OUT / "recommend_tuning.csv") as fh:
        scored, _ = ratios(list(csv.DictReader(fh)))
    seeds = sorted({r["seed"] for r in pilot}, key=int)
    lines = [f"# grid=select's pilot criterion on the tuning family ({len(seeds)} problems)", "",
             "Per criterion, the scored RMSE / best public solver's of the candidate it picks on each problem "
             "(results/recommend_tuning.csv, 256 starts); `oracle`: the best of the 8 candidates on the scored "
             "starts themselves.", ""]
    for budget in NFES:
        lines += [f"## NFE {budget}", "", "| criterion | median | worst | problems > 1 | picks = oracle's |",
                  "|---|---:|---:|---:|---:|"]
        oracle = {}
        picks = {}
        for seed in seeds:
            cands = [r for r in pilot if r["seed"] == seed and int(r["budget"]) == budget]
            oracle[seed] = min(cands, key=lambda r: scored[(r["config"], budget)][seed])["config"]
            for name in SUMMARIES:
                picks.setdefault(name, {})[seed] = min(cands, key=lambda r: float(r[name]))["config"]
        for name, chosen in [*picks.items(), ("oracle", oracle)]:
            got = [scored[(chosen[s], budget)][s] for s in seeds]
            same = sum(chosen[s] == oracle[s] for s in seeds)
            lines.append(f"| {name} | {statistics.median(got):.3f} | {max(got):.3f} | {sum(g > 1 for g in got)} | "
                         f"{same}/{len(seeds)} |")
        lines.append("")
    (OUT / "select_criterion.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replot", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not args.replot:
        run_family(TUNING, OUT / "select_criterion.csv", FIELDS, run_problem)
    summarize()


if __name__ == "__main__":
    main()
