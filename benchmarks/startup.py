"""Start-up of the lsde-* apps on an exact mixture: the wall time of a small run, and whether it imported Lightning.

Each app runs as a user runs it (a fresh `python -m lightning_sde.cli.<app>` process) on the 8 Gaussians with a
tiny workload, so the wall time is mostly imports and set-up; `import torch` and `import lightning` alone are timed
beside them for scale. The runs alternate over rounds and each figure is the median. One more run per app under
`python -X importtime` records whether it imported `lightning`.

    .venv/bin/python benchmarks/startup.py                           # this checkout -> results/startup.{csv,md,png}
    .venv/bin/python benchmarks/startup.py --source /tmp/old --label before   # another checkout's lightning_sde
                                                                     # (PYTHONPATH), added to the same files

Rows of other labels already in results/startup.csv are kept, so a before/after pair ends in one table and plot.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "startup"
TINY = {  # app -> its arguments; {tmp} is a fresh directory per run
    "import torch": ["-c", "import torch"],
    "import lightning": ["-c", "import lightning"],
    "lsde-compare": ["-m", "lightning_sde.cli.compare", "seeds.count=64", "batch_size=64", "progress=false",
                     "~samplers.em_1000", "~samplers.pc_1000", "~samplers.ddim_100", "~samplers.heun_50",
                     "~samplers.ode_dopri5", "output_dir={tmp}"],
    "lsde-bench": ["-m", "lightning_sde.cli.bench", "seeds.count=64", "batch_size=64", "progress=false",
                   "nfe=[10]", "tolerances=[1e-3]", "results={tmp}/results.jsonl", "output_dir={tmp}/logs"],
    "lsde-likelihood": ["-m", "lightning_sde.cli.likelihood", "n=8", "batch_size=8", "out={tmp}",
                        "output_dir={tmp}/hydra"],
}


def run(app: str, env: dict, options=()) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as tmp:
        args = [a.replace("{tmp}", tmp) for a in TINY[app]]
        proc = subprocess.run([sys.executable, *options, *args], capture_output=True, text=True, env=env, cwd=tmp,
                              check=False)
    if proc.returncode != 0:
        sys.exit(f"{app} failed:\n{proc.stderr[-2000:]}")
    return proc


def measure(label: str, source: str | None, rounds: int) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "WANDB_MODE": "offline"}
    if source:
        env["PYTHONPATH"] = str(Path(source).resolve())
    rows = []
    for app in TINY:
        proc = run(app, env, ("-X", "importtime"))
        modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                   if line.startswith("import time:")}
        rows.append({"label": label, "app": app, "round": "imports", "wall_s": "",
                     "imports_lightning": "lightning" in modules})
    for r in range(rounds):
        for app in TINY:
            start = time.perf_counter()
            run(app, env)
            wall = time.perf_counter() - start
            print(f"{label} round {r + 1}/{rounds}: {app} {wall:.2f} s", flush=True)
            rows.append({"label": label, "app": app, "round": r, "wall_s": round(wall, 3), "imports_lightning": ""})
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        for app in TINY:
            mine = [r for r in rows if r["label"] == label and r["app"] == app]
            walls = [float(r["wall_s"]) for r in mine if r["round"] != "imports"]
            flag = [r["imports_lightning"] for r in mine if r["round"] == "imports"]
            out.append({"label": label, "app": app, "median_s": statistics.median(walls), "min_s": min(walls),
                        "max_s": max(walls), "rounds": len(walls), "imports_lightning": flag[0] if flag else ""})
    return out


def write(rows: list[dict]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_csv(OUT.with_suffix(".csv"), rows)
    table = summary(rows)
    lines = ["| checkout | app (8 Gaussians, tiny run) | median wall [min, max] (s) | rounds | imports Lightning |",
             "|---|---|---:|---:|---|"]
    lines += [f"| {t['label']} | {t['app']} | {t['median_s']:.2f} [{t['min_s']:.2f}, {t['max_s']:.2f}] | "
              f"{t['rounds']} | {t['imports_lightning']} |" for t in table]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    labels = list(dict.fromkeys(t["label"] for t in table))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        mine = [t for t in table if t["label"] == label]
        ys = [t["median_s"] for t in mine]
        err = [[t["median_s"] - t["min_s"] for t in mine], [t["max_s"] - t["median_s"] for t in mine]]
        ax.barh([j + i * width for j in range(len(mine))], ys, height=width, xerr=err, label=label, capsize=2)
    ax.set_yticks([j + width * (len(labels) - 1) / 2 for j in range(len(TINY))], list(TINY))
    ax.invert_yaxis()
    ax.set_xlabel("wall time of a fresh process, median and range (s)")
    ax.set_title("start-up of the apps on an exact mixture")
    ax.legend()
    fig.tight_layout()
    save_atomically(fig, OUT.with_suffix(".png"), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="a checkout whose lightning_sde to time (PYTHONPATH); default: installed")
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    kept = []
    if OUT.with_suffix(".csv").exists():
        with open(OUT.with_suffix(".csv"), newline="") as fh:
            kept = [r for r in csv.DictReader(fh) if r["label"] != args.label]
    rows = kept + measure(args.label, args.source, args.rounds)
    write(rows)
    print(OUT.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
