"""The loss weightings on toy data: the samples' sliced W2 after the same training, per weighting and sampler.

Each cell is a real `lsde-train experiment=toy2d` run (4000 steps, the MLP, EMA; the in-fit evaluation of
EM-1000, DDIM-50 and dopri5 on 2000 seeds against the reference, and the noise floor: 2000 more real samples scored
the same way). The arms, problems and seeds were fixed before the first run; every weighting runs at its paper's
defaults (Min-SNR gamma = 5; EDM's P_mean = -1.2, P_std = 1.2, sigma_data = model.sigma_data), nothing tuned:
  sigma2     the eps-MSE, t uniform (the default)
  min_snr    Min-SNR-gamma, eps network
  edm        EDM's levels and weighting, eps network (what `loss=edm` alone gives)
  edm_v      the same with a v network (`model.parameterization=v`), EDM's pairing
A cell's run folder is kept, so the script resumes: a finished cell is read back, not trained again.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loss_weightings.py   # ~45 min on 2 cores (2 runs at once)
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402

ARMS = {"sigma2": [], "min_snr": ["loss=min_snr"], "edm": ["loss=edm"],
        "edm_v": ["loss=edm", "model.parameterization=v"]}
PROBLEMS = ("eight_gaussians", "checkerboard")
SEEDS = (11, 12)
SAMPLERS = ("em_1000", "ddim_50", "ode_dopri5")
STEPS = 4000


def train(run_dir: Path, problem: str, arm: str, seed: int) -> Path:
    metrics = run_dir / "samples" / "sampler_metrics.csv"
    if not (metrics.exists() and any(r["step"] == str(STEPS) for r in csv.DictReader(metrics.open()))):
        command = [str(ROOT / ".venv/bin/lsde-train"), "experiment=toy2d", f"data.name={problem}", f"seed={seed}",
                   f"trainer.max_steps={STEPS}", "logger=csv", f"run_dir={run_dir}", "run_name=bench", *ARMS[arm]]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs share two cores
        log = run_dir.with_suffix(".log")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as fh:
            if subprocess.run(command, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode:
                raise SystemExit(f"{' '.join(command)} failed: see {log}")
    return metrics


def final_rows(metrics: Path, problem: str, arm: str, seed: int) -> list[dict]:
    rows = [r for r in csv.DictReader(metrics.open()) if r["step"] == str(STEPS)]
    floor = next(float(r["sliced_w2"]) for r in rows if r["sampler"] == "noise_floor")
    return [{"problem": problem, "arm": arm, "seed": seed, "sampler": r["sampler"], "nfe": int(float(r["nfe"])),
             "sliced_w2": round(float(r["sliced_w2"]), 4), "noise_floor": round(floor, 4),
             "mmd": round(float(r["mmd"]), 5)} for r in rows if r["sampler"] in SAMPLERS]


def table(rows: list[dict]) -> str:
    """Per problem, each weighting's sliced W2 per sampler: the median over the seeds (worst); the noise floor's
    values are the measurement's own spread (2000 real samples scored the same way, per seed)."""
    lines = []
    for problem in PROBLEMS:
        mine = [r for r in rows if r["problem"] == problem]
        floors = sorted({(r["seed"], r["noise_floor"]) for r in mine})
        lines += [f"**{problem}** (noise floor per seed: {', '.join(f'{f:.3f}' for _, f in floors)})", "",
                  "| weighting | " + " | ".join(f"{s}: median (worst)" for s in SAMPLERS) + " |",
                  "|---|" + "---|" * len(SAMPLERS)]
        for arm in ARMS:
            cells = []
            for sampler in SAMPLERS:
                values = [r["sliced_w2"] for r in mine if r["arm"] == arm and r["sampler"] == sampler]
                cells.append(f"{statistics.median(values):.3f} ({max(values):.3f})")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(SAMPLERS), figsize=(4 * len(SAMPLERS), 3.6), sharey=True)
    markers = dict(zip(PROBLEMS, "os^v"))
    for ax, sampler in zip(axes, SAMPLERS):
        for i, arm in enumerate(ARMS):
            for r in (r for r in rows if r["arm"] == arm and r["sampler"] == sampler):
                color = f"C{PROBLEMS.index(r['problem'])}"
                jitter = 0.08 * (SEEDS.index(r["seed"]) - 0.5)
                ax.scatter(i + jitter, r["sliced_w2"], marker=markers[r["problem"]], color=color)
                ax.scatter(i + jitter, r["noise_floor"], marker="_", s=80, color=color, alpha=0.6)
        ax.set_xticks(range(len(ARMS)), list(ARMS))
        ax.set_title(sampler)
        ax.set_yscale("log")
    axes[0].set_ylabel("sliced W2 (dashes: that seed's noise floor)")
    handles = [plt.Line2D([], [], marker=m, ls="", color=f"C{i}", label=p) for i, (p, m) in enumerate(markers.items())]
    axes[-1].legend(handles=handles, fontsize=8)
    fig.suptitle(f"Loss weightings on toy2d after {STEPS} steps (seeds {', '.join(map(str, SEEDS))})")
    fig.tight_layout()
    save_atomically(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "benchmarks/runs/loss_weightings")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/loss_weightings")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cells = [(problem, arm, seed) for problem in PROBLEMS for seed in SEEDS for arm in ARMS]
    with ThreadPoolExecutor(args.workers) as pool:
        paths = list(pool.map(lambda c: train(args.runs / f"{c[0]}_{c[1]}_s{c[2]}", *c), cells))
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = [{**row, "commit": commit} for path, cell in zip(paths, cells) for row in final_rows(path, *cell)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(args.out.with_suffix(".csv"), rows)
    text = table(rows)
    args.out.with_suffix(".md").write_text(text + "\n")
    plot(rows, args.out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
