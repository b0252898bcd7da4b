"""Every held-out family's score of the recommended sampler in one table and one plot, read from the committed runs.

Each run of recommend.py scored the recommended configuration of its day (RUNS: the family, its results file and the
version of select it scored, VERSIONS) against the best of 30 public configurations on each problem. A problem that
was rescored on 2048 starts (recommend_<family>_<seeds>_2048starts.csv) counts with its rescored ratio and 95 %
paired bootstrap interval, if the rescore ran the same configuration, or another whose RMSE was identical to it on
that problem in the run (the same pick: select is deterministic). The pooled rows take each family once, in its
latest run (the first two families' first runs scored version 1 and are left out: their rescoring scored version 2),
and give the median and high quantiles of the ratio with a bootstrap interval over the problems, the problems above
1, and those whose own interval lies above 1 (ratio_lo > 1). Reads CSVs only: seconds, no solver runs.

    .venv/bin/python benchmarks/heldout_summary.py   # -> results/recommend_heldout_summary.{csv,md,png}
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from family import draw, file_tag  # noqa: E402
from recommend import NFES, OUT, ratios, recommended_in, split_ratios  # noqa: E402

from lightning_sde.files import write_csv, write_text  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402

VERSIONS = {
    1: "UniPC-3; select over 4 grids x start {T, 0.15}",
    2: "UniPC-2/3; select over order x start {T, 0.15, 0.3} x 4 grids",
    3: "version 2 with the trailing grid (5 grids)",
    4: "version 3 with trailing in place of uniform",
    5: "version 4 comparing only UniPC-3 from T or 0.15 from 20 steps on (today's)",
}
RUNS = (("held-out", "recommend_heldout", 1), ("held-out-2", "recommend_heldout2", 1),
        ("held-out", "recommend_heldout_rescored", 2), ("held-out-2", "recommend_heldout2_rescored", 2),
        ("held-out-3", "recommend_heldout3", 2), ("held-out-4", "recommend_heldout4", 2),
        ("held-out-8", "recommend_heldout8", 3), ("held-out-9", "recommend_heldout9", 3),
        ("held-out-10", "recommend_heldout10", 4), ("held-out-11", "recommend_heldout11", 4),
        ("held-out-12", "recommend_heldout12", 4), ("held-out-13", "recommend_heldout13", 5),
        ("held-out-14", "recommend_heldout14", 5))
QUANTILES = (0.5, 0.9, 0.95)
DIMENSION_BINS = ((2, 8), (16, 32), (64, 64), (128, 256))
BOOTSTRAP = 2000
FIELDS = ["family", "run", "version", "seed", "dim", "separation", "budget", "ratio", "ratio_lo", "ratio_hi",
          "starts", "rescored", "out_of_sample", "first_ratio", "first_ratio_lo", "first_starts", "above_one",
          "first_above_one"]


def read(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def ours_rows(rows: list[dict], label: str) -> dict:
    """{(seed, budget): row} of `label`'s runs."""
    return {(int(r["seed"]), int(r["budget"])): r for r in rows if r["config"] == label}


def rescores(family: str) -> list[Path]:
    tag = file_tag(family)
    return sorted(p for p in OUT.glob(f"recommend_{tag}_*starts.csv")
                  if re.fullmatch(rf"recommend_{tag}(_\d+)+_\d+starts", p.stem))


def run_rows(family: str, stem: str, version: int) -> list[dict]:
    """One row per problem and budget of the recommended configuration in run `stem`, rescored problems replaced."""
    rows = read(OUT / f"{stem}.csv")
    table, _ = ratios(rows)
    label = recommended_in({config for config, _ in table})
    split = split_ratios(rows)
    mine, rescored = ours_rows(rows, label), {}
    same_run = {(int(r["seed"]), int(r["budget"]), r["config"]) for r in rows if r["kind"] == "ours"
                and r["rmse"] == mine.get((int(r["seed"]), int(r["budget"])), {}).get("rmse")}
    for path in rescores(family):
        more = read(path)
        more_table, _ = ratios(more)
        more_split = split_ratios(more)
        for r in sorted(more, key=lambda r: r["config"] == label):  # the label itself last: it wins
            key = (int(r["seed"]), int(r["budget"]))
            if r["kind"] == "ours" and (*key, r["config"]) in same_run:
                held = more_split.get((r["config"], key[1]), {}).get(r["seed"])
                rescored[key] = (more_table[(r["config"], key[1])][r["seed"]], held, r)
    out = []
    for (seed, budget), r in sorted(mine.items()):
        first = table[(label, budget)][str(seed)]
        ratio, held, source = rescored.get((seed, budget), (first, split.get((label, budget), {}).get(str(seed)), r))
        info = draw(seed)[1]
        out.append({"family": family, "run": stem, "version": version, "seed": seed, "dim": info["dim"],
                    "separation": round(info["separation"], 3), "budget": budget, "ratio": round(ratio, 4),
                    "ratio_lo": source["ratio_lo"], "ratio_hi": source["ratio_hi"], "starts": source["starts"],
                    "rescored": (seed, budget) in rescored, "out_of_sample": "" if held is None else round(held, 4),
                    "first_ratio": round(first, 4), "first_ratio_lo": r["ratio_lo"], "first_starts": r["starts"],
                    "above_one": ratio > 1, "first_above_one": first > 1})  # unrounded: a tie at 1.000002 is above
    return out


def pooled(rows: list[dict]) -> list[dict]:
    """Each family once, in its latest run."""
    latest = {family: stem for family, stem, _ in RUNS}  # later runs of a family come later in RUNS
    return [r for r in rows if latest[r["family"]] == r["run"]]


def quantile_interval(values, q: float, seed: int = 0) -> tuple[float, float, float]:
    """The q-quantile of `values` and its 95 % percentile-bootstrap interval over the problems."""
    values = np.asarray(values, dtype=float)
    draws = np.random.default_rng(seed).choice(values, (BOOTSTRAP, len(values)))
    low, high = np.quantile(np.quantile(draws, q, axis=1), (0.025, 0.975))
    return float(np.quantile(values, q)), float(low), float(high)


def above_one(rows: list[dict]) -> tuple[int, int]:
    """(problems with a ratio above 1, unrounded, those whose 95 % interval lies above 1)."""
    return sum(r["above_one"] for r in rows), sum(float(r["ratio_lo"]) > 1 for r in rows)


def markdown(rows: list[dict]) -> str:
    lines = ["# The recommended sampler on every held-out family: RMSE / the best public solver's", "",
             "Per problem, the recommended configuration's endpoint RMSE over the best of 30 diffusers / k-diffusion "
             "/ torchdiffeq configurations on that problem (recommend.py's protocol); rescored problems (2048 starts) "
             "count with their rescored ratio (from the ninth family on, the ratios above 0.9 on the first starts but "
             "the slowest 256-D runs and exact ties; before it, the widest intervals).", "",
             "`> 1 (sig.)`: problems above 1, and those whose 95 % paired bootstrap interval lies above 1.", "",
             "Versions of select: "
             + "; ".join(f"**{v}**: {text}" for v, text in VERSIONS.items()) + ".", "",
             "| family | run | version | problems | rescored | " + " | ".join(
                 f"NFE {b}: median | worst | > 1 (sig.) | out of sample median" for b in NFES) + " |",
             "|---|---|---:|---:|---:|" + "---:|---:|---:|---:|" * len(NFES)]
    for family, stem, version in RUNS:
        mine = [r for r in rows if r["run"] == stem]
        cells = []
        for budget in NFES:
            at = [r for r in mine if r["budget"] == budget]
            values = [r["ratio"] for r in at]
            held = [r["out_of_sample"] for r in at if r["out_of_sample"] != ""]
            over, sig = above_one(at)
            cells.append(f"{statistics.median(values):.3f} | {max(values):.3f} | {over} ({sig}) | "
                         + (f"{statistics.median(held):.3f}" if len(held) == len(at) else "n/a"))
        problems = len({r["seed"] for r in mine})
        rescored = len({r["seed"] for r in mine if r["rescored"]})
        lines.append(f"| {family} | {stem} | {version} | {problems} | {rescored} | " + " | ".join(cells) + " |")
    pool = pooled(rows)
    lines += ["", f"## Pooled: each family once, in its latest run ({len({(r['family'], r['seed']) for r in pool})} "
              "problems, versions 2-5)", "",
              "Only problems that looked bad on their first starts were rescored (regression to the mean pulls "
              "those down), so the tail figures with rescores are lower than on the first runs' starts, which are "
              "given too. The first two families had been seen before version 2 was made (on tuning seeds).", "",
              "| NFE | problems | " + " | ".join(f"{q:.0%} quantile [95 %]" for q in QUANTILES)
              + " | worst | > 1 | interval above 1 |", "|---:|---:|" + "---:|" * (len(QUANTILES) + 3)]
    today = [r for r in pool if r["version"] == max(VERSIONS)]
    first = [{**r, "ratio": r["first_ratio"], "ratio_lo": r["first_ratio_lo"], "above_one": r["first_above_one"]}
             for r in pool]
    for subset, name in ((pool, "all"), (first, "all, first runs' starts only"), (today, "today's version")):
        for budget in NFES:
            at = [r for r in subset if r["budget"] == budget]
            values = [r["ratio"] for r in at]
            quantiles = [quantile_interval(values, q) for q in QUANTILES]
            over, sig = above_one(at)
            lines.append(f"| {budget} ({name}) | {len(at)} | " + " | ".join(
                f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in quantiles)
                + f" | {max(values):.3f} | {over} | {sig} |")
    lines += ["", "## Pooled by dimension", "",
              "| dimension | problems | " + " | ".join(f"NFE {b}: median / 90 % / worst" for b in NFES) + " |",
              "|---|---:|" + "---:|" * len(NFES)]
    for low, high in DIMENSION_BINS:
        cells = [[r["ratio"] for r in pool if r["budget"] == b and low <= r["dim"] <= high] for b in NFES]
        lines.append(f"| {low if low == high else f'{low}-{high}'} | {len(cells[0])} | " + " | ".join(
            f"{statistics.median(c):.2f} / {float(np.quantile(c, 0.9)):.2f} / {max(c):.2f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Top: per family (latest run), every problem's ratio at NFE 10 and 20, coloured by select's version. Bottom:
    the same problems pooled against dimension and separation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pool = pooled(rows)
    families = list(dict.fromkeys(r["family"] for r in pool))
    colors = dict(zip(VERSIONS, ("tab:gray", "tab:green", "tab:purple", "tab:orange", "tab:blue")))
    jitter = np.random.default_rng(0)
    fig, axes = plt.subplots(2, len(NFES), figsize=(12, 8.4), sharey=True)
    for ax, budget in zip(axes[0], NFES):
        for i, family in enumerate(families):
            at = [r for r in pool if r["family"] == family and r["budget"] == budget]
            xs = i + jitter.uniform(-0.25, 0.25, len(at))
            ax.scatter(xs, [r["ratio"] for r in at], s=10, alpha=0.7, color=colors[at[0]["version"]])
            ax.hlines(statistics.median(r["ratio"] for r in at), i - 0.35, i + 0.35, color="k", lw=2)
        ax.set(title=f"NFE {budget}", xlabel="held-out family", xticks=range(len(families)),
               xticklabels=[f.removeprefix("held-out").removeprefix("-") or "1" for f in families])
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[v], label=f"select version {v}")
               for v in sorted({r["version"] for r in pool})]
    axes[0, -1].legend(handles=handles, fontsize=7, loc="upper right")
    for ax, key, label in ((axes[1, 0], "dim", "dimension"), (axes[1, 1], "separation", "separation (mean gap / std)")):
        for budget, color in zip(NFES, ("tab:blue", "tab:orange")):
            at = [r for r in pool if r["budget"] == budget]
            spread = jitter.uniform(0.92, 1.08, len(at)) if key == "dim" else 1.0  # dimensions are a few values
            ax.scatter(np.array([r[key] for r in at]) * spread, [r["ratio"] for r in at], s=8, alpha=0.5,
                       color=color, label=f"NFE {budget}")
        ax.set(xscale="log", xlabel=label)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes.flat:
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(0.5, color="k", lw=0.8, ls="--")
        ax.set_yscale("log")
    for ax in axes[:, 0]:
        ax.set_ylabel("RMSE / best public solver's (per problem)")
    fig.suptitle(f"The recommended sampler on {len({(r['family'], r['seed']) for r in pool})} held-out problems "
                 "(bar: a family's median; dashed: the 0.5x target; solid: 1x)")
    fig.tight_layout()
    save_atomically(fig, path, dpi=120)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    rows = [r for family, stem, version in RUNS for r in run_rows(family, stem, version)]
    out = OUT / "recommend_heldout_summary"
    write_csv(out.with_suffix(".csv"), rows, FIELDS)
    text = markdown(rows)
    write_text(out.with_suffix(".md"), text)
    plot(rows, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
