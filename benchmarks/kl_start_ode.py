"""The Gaussian start for the ODE: the std-ratio start against the KL-bound start, on the tuning family.

UniPC-3 on the log-SNR grid at NFE 10 and 20, on every tuning problem of family.py (the endpoint protocol: 256
starts, float64, reference dopri5 at rtol = atol = 1e-10 from the same x_T), from T, from the std-ratio starts
0.15 / 0.3 (gaussian_start, what `recommended` selects among) and from the KL starts 0.03 / 0.1 / 0.3 / 1 nats
(gaussian_start_kl). Each run's RMSE is divided by the best of T and the ratio starts on that problem: below 1 a KL
start does better than every start `recommended` has today. An exploration for a proposal: nothing is frozen from it.

    .venv/bin/python benchmarks/kl_start_ode.py            # 15-20 min on 2 cores: results/kl_start_ode.{csv,md}
    .venv/bin/python benchmarks/kl_start_ode.py --replot
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from family import oracle, tuning_study  # noqa: E402

from lightning_sde.samplers import build_sampler  # noqa: E402

OUT = ROOT / "benchmarks/results/kl_start_ode"
STARTS, NFES = 256, (10, 20)
TODAY = {"from T": {}, "ratio 0.15": {"gaussian_start": 0.15}, "ratio 0.3": {"gaussian_start": 0.3}}
KL = {f"kl {k:g}": {"gaussian_start_kl": k} for k in (0.03, 0.1, 0.3, 1.0)}
FIELDS = ["seed", "dim", "nfe", "start", "start_time", "rmse"]


def run_problem(seed: int) -> list[dict]:
    den, x_T, ref, _ = oracle(seed, STARTS)
    dim = den.shape[0]
    rows = []
    for nfe in NFES:
        for label, start in {**TODAY, **KL}.items():
            x, info = build_sampler("unipc", order=3, grid="logsnr", steps=nfe, **start)(den, x_T)
            rows.append({"seed": seed, "dim": dim, "nfe": nfe, "start": label,
                         "start_time": round(info.get("start_time", float(den.sde.T)), 4),
                         "rmse": float((x - ref).pow(2).mean(1).mean().sqrt())})
    return rows


def summarize(csv_path: Path) -> None:
    with open(csv_path) as fh:
        rows = list(csv.DictReader(fh))
    rmse = {(int(r["seed"]), int(r["nfe"]), r["start"]): float(r["rmse"]) for r in rows}
    dims = {int(r["seed"]): int(r["dim"]) for r in rows}
    seeds = sorted(dims)
    lines = [f"# kl_start_ode: UniPC-3, log-SNR grid, {len(seeds)} tuning problems, {STARTS} starts", "",
             "RMSE over the best of T and the ratio starts on the same problem (median / worst; in brackets: the "
             "problems of 64-256 dimensions).", "", "| start | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
             "|---|" + "---:|" * len(NFES)]
    for label in {**TODAY, **KL}:
        cells = []
        for nfe in NFES:
            ratio = {s: rmse[(s, nfe, label)] / min(rmse[(s, nfe, t)] for t in TODAY) for s in seeds}
            high = [ratio[s] for s in seeds if dims[s] >= 64]
            cells.append(f"{statistics.median(ratio.values()):.3f} / {max(ratio.values()):.2f} "
                         f"[{statistics.median(high):.3f} / {max(high):.2f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    csv_path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    tuning_study(__doc__, OUT.with_suffix(".csv"), FIELDS, run_problem, summarize)
