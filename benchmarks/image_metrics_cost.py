"""What precision / recall and the Inception Score cost per scored sample set, with their bootstrap intervals.

Synthetic image-like features (ReLU of correlated Gaussians, as in interval_coverage.py) of n samples against a
reference of n, at d = 128 (the digits network) and 2048 (Inception's pool3); random logits of 10 / 1008 classes for
IS. For each (d, n): the first set scored (the reference's k-NN radii included), each later set, the 200-replicate
intervals, and torch-fidelity's own `calculate_precision_recall_part` on the same pair (it recomputes the
reference's radii at every call). Median of `--repeats` runs, one process, the machine's threads.

    .venv/bin/python benchmarks/image_metrics_cost.py --sizes 1000 2000 4000 8000   # ~6 min, 2 cores
                                                                    # -> results/image_metrics_cost.{csv,md,png}
    .venv/bin/python benchmarks/image_metrics_cost.py --replot     # the table and plot again from the CSV
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import time
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.metrics import bootstrap, prc  # noqa: E402
from lightning_sde.metrics.image import IS_SPLITS, inception_score  # noqa: E402
from lightning_sde.plotting.style import plain_log_axis, save_atomically  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "image_metrics_cost"
N_BOOT = 200


def features(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(0)) / d**0.5
    return torch.relu(torch.randn(n, d, generator=gen) @ mix + 0.2)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(d: int, n: int, repeats: int) -> dict:
    from torch_fidelity.metric_prc import calculate_precision_recall_part

    real, fake = features(n, d, 1), features(n, d, 2)
    counts = bootstrap.resample_counts(n, N_BOOT, seed=0)
    radii = prc.knn_radii(real)
    realistic = prc.precision_recall(fake, real, radii)[2]
    logits = torch.randn(n, 10 if d == 128 else 1008, generator=torch.Generator().manual_seed(3)) * 3
    return {
        "d": d, "n": n,
        "first_set_s": timed(lambda: prc.precision_recall(fake, real), repeats),
        "later_set_s": timed(lambda: prc.precision_recall(fake, real, radii), repeats),
        "torch_fidelity_s": timed(lambda: calculate_precision_recall_part(fake, real, 3, 10000), repeats),
        "precision_interval_s": timed(lambda: bootstrap.mean_replicates(realistic.double(), counts), repeats),
        "recall_interval_s": timed(lambda: prc.recall_replicates(fake, real, counts), repeats),
        "is_s": timed(lambda: inception_score(logits), repeats),
        "is_interval_s": timed(lambda: bootstrap.inception_score_replicates(logits, counts, IS_SPLITS), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--replot", action="store_true", help="write the table and plot from the CSV")
    args = parser.parse_args()
    if args.replot:
        with open(OUT.with_suffix(".csv")) as fh:
            rows = [{k: v if k == "git_commit" else float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
        return views(rows)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    rows = []
    for d in args.dims:
        for n in args.sizes:
            row = {**measure(d, n, args.repeats), "threads": torch.get_num_threads(), "git_commit": commit}
            print(", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)
            rows.append(row)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_csv(OUT.with_suffix(".csv"), rows, list(rows[0]))
    views(rows)


def views(rows: list[dict]) -> None:
    dims = sorted({int(r["d"]) for r in rows})
    columns = ["first_set_s", "later_set_s", "torch_fidelity_s", "precision_interval_s", "recall_interval_s",
               "is_s", "is_interval_s"]
    lines = ["| d | n | " + " | ".join(columns) + " |", "|---|---|" + "---:|" * len(columns)]
    lines += [f"| {r['d']:.0f} | {r['n']:.0f} | " + " | ".join(f"{r[c]:.3g}" for c in columns) + " |" for r in rows]
    OUT.with_suffix(".md").write_text(f"Seconds per sample set, {rows[0]['threads']:.0f} threads, commit "
                                      f"{rows[0]['git_commit']}.\n\n" + "\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(dims), figsize=(5 * len(dims), 3.6), squeeze=False)
    for ax, d in zip(axes[0], dims):
        mine = [r for r in rows if r["d"] == d]
        for column, label in (("torch_fidelity_s", "torch-fidelity P/R (each call)"),
                              ("later_set_s", "P/R here (radii kept)"), ("recall_interval_s", "recall interval"),
                              ("precision_interval_s", "precision interval"), ("is_interval_s", "IS interval")):
            ax.plot([r["n"] for r in mine], [r[column] for r in mine], marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="samples = reference images", ylabel="seconds per sample set",
               title=f"{d}-d features ({N_BOOT} replicates)")
        plain_log_axis(ax.xaxis)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_atomically(fig, OUT.with_suffix(".png"))


if __name__ == "__main__":
    main()
