"""How often a stated 90% bootstrap interval holds the value it is an interval of (lsde-bench's `ci_low`/`ci_high`).

Truth is known here: sample sets drawn exactly from a distribution, scored against a fixed reference, many times.
The value's expectation over independent sets (the reference fixed, as the intervals hold it) is estimated by the
mean over the repeats; for the log-likelihood it is E_p log p from 400,000 exact samples. Each repeat's interval
either holds it or not; the coverage's own 90% interval is Wilson's. Cases (fixed before any run):

  points   exact samples of eight_gaussians and of random_mixture (not used in designing the intervals), n = 200
           against a reference of 200, 400 repeats; and eight_gaussians at n = 5 and 20 (lsde-bench warns below 20)
  kid      noisy digits (a training image plus N(0, 0.3^2) noise, clamped) through the shipped digits features, 600
           samples against a reference of 20, and 500 against 500, 100 repeats; the interval with KID's subset
           noise (as lsde-bench computes it) and without it (the whole-set bootstrap alone, as before)

    .venv/bin/python benchmarks/interval_coverage.py      # ~4 min on 2 cores

Results: results/interval_coverage/{coverage.csv, coverage.md, coverage.png}.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
from pathlib import Path
from statistics import NormalDist

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_sde.exact import eight_gaussians, random_mixture  # noqa: E402
from lightning_sde.metrics import bootstrap  # noqa: E402
from lightning_sde.metrics.image import kid_reference_features, score_images  # noqa: E402
from lightning_sde.metrics.scorer import INTERVAL_LEVEL, N_BOOT, Scorer  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402

OUT = ROOT / "benchmarks/results/interval_coverage"
FIELDS = ["case", "metric", "n", "n_reference", "repeats", "coverage", "coverage_low", "coverage_high",
          "width_over_spread"]


def wilson(hits: int, n: int, level: float = 0.9) -> tuple[float, float]:
    z = NormalDist().inv_cdf((1 + level) / 2)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def summary(case: str, metric: str, n: int, n_ref: int, values, intervals, truth: float | None = None) -> dict:
    """Coverage of `truth` (the mean of the values when None) and the mean width over the values' 5-95% spread."""
    values = torch.tensor(values, dtype=torch.float64)
    truth = float(values.mean()) if truth is None else truth
    hits = sum(low <= truth <= high for low, high in intervals)
    spread = float(values.quantile(0.95) - values.quantile(0.05))
    width = sum(high - low for low, high in intervals) / len(intervals)
    low, high = wilson(hits, len(intervals))
    return {"case": case, "metric": metric, "n": n, "n_reference": n_ref, "repeats": len(intervals),
            "coverage": round(hits / len(intervals), 3), "coverage_low": round(low, 3),
            "coverage_high": round(high, 3), "width_over_spread": round(width / spread, 3)}


def points_case(name: str, mixture, n: int, n_ref: int, repeats: int) -> list[dict]:
    scorer = Scorer(mixture.sample(n_ref, torch.Generator().manual_seed(10**9)).float(),
                    ("sliced_w2", "mmd", "loglik"), mixture)
    truth_loglik = float(mixture.log_prob(mixture.sample(400_000, torch.Generator().manual_seed(7)).double()).mean())
    values = {m: [] for m in scorer.metrics}
    intervals = {m: [] for m in scorer.metrics}
    for r in range(repeats):
        x = mixture.sample(n, torch.Generator().manual_seed(r)).float()
        v = scorer(x)
        iv = scorer.intervals(x, v, level=INTERVAL_LEVEL, seed=r)
        for m in scorer.metrics:
            values[m].append(v[m])
            intervals[m].append(iv[m])
    return [summary(name, m, n, n_ref, values[m], intervals[m], truth_loglik if m == "loglik" else None)
            for m in scorer.metrics]


def noisy_digits(n: int, seed: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    pool = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1
    gen = torch.Generator().manual_seed(seed)
    x = pool[torch.randint(len(pool), (n,), generator=gen)]
    return (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


def kid_case(n: int, n_ref: int, repeats: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as cache:
        scorer = Scorer(noisy_digits(n_ref, 10**6), ("kid",), feature_extractor="digits", cache_dir=cache)
        metric = scorer.image["kid"]
        values, with_subsets, whole_set = [], [], []
        for r in range(repeats):
            x = noisy_digits(n, 100 + r)
            features = scorer.features(x)
            value, subset_sd = score_images(metric, features)
            reps = bootstrap.kid_replicates(features.double(), kid_reference_features(metric),
                                            bootstrap.resample_counts(n, N_BOOT, r), metric.degree,
                                            metric.gamma, metric.coef)
            values.append(value)
            with_subsets.append(bootstrap.interval(value, reps, INTERVAL_LEVEL, value_sd=subset_sd))
            whole_set.append(bootstrap.interval(value, reps, INTERVAL_LEVEL))
    return [summary("noisy digits", "kid", n, n_ref, values, with_subsets),
            summary("noisy digits", "kid (whole-set bootstrap alone)", n, n_ref, values, whole_set)]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['case']}\n{r['metric']}, n {r['n']}, ref {r['n_reference']}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.2))
    y = range(len(rows))
    ax.errorbar([r["coverage"] for r in rows], y, fmt="o", color="C0",
                xerr=[[r["coverage"] - r["coverage_low"] for r in rows],
                      [r["coverage_high"] - r["coverage"] for r in rows]], capsize=3)
    ax.axvline(INTERVAL_LEVEL, color="k", ls="--", lw=1, label=f"stated level {INTERVAL_LEVEL:.0%}")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0.3, 1.0)
    ax.set_xlabel("coverage of the truth by the stated 90% interval (bars: 90% Wilson interval of the coverage)")
    ax.legend(loc="lower left")
    fig.tight_layout()
    save_atomically(fig, path, dpi=120)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    rows += points_case("eight_gaussians", eight_gaussians(), 200, 200, 400)
    rows += points_case("random_mixture", random_mixture(), 200, 200, 400)
    rows += points_case("eight_gaussians", eight_gaussians(), 20, 200, 400)
    rows += points_case("eight_gaussians", eight_gaussians(), 5, 200, 400)
    rows += kid_case(600, 20, 100)
    rows += kid_case(500, 500, 100)
    with open(OUT / "coverage.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| case | metric | n | reference | repeats | coverage [90% interval] | width / 5-95% spread |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['metric']} | {r['n']} | {r['n_reference']} | {r['repeats']} | {r['coverage']:.3f} "
              f"[{r['coverage_low']:.3f}, {r['coverage_high']:.3f}] | {r['width_over_spread']:.2f} |" for r in rows]
    (OUT / "coverage.md").write_text("\n".join(lines) + "\n")
    plot(rows, OUT / "coverage.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
