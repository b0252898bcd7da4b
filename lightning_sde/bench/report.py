"""Views of a results file, regenerated from it alone: PNG plots, a markdown table, a merged CSV, a W&B run."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict
from pathlib import Path

from lightning_sde.bench.results import ResultsStore

log = logging.getLogger(__name__)
COLUMNS = ["sampler", "sampler_name", "grid", "requested", "nfe", "metric", "value", "wall_s", "samples_per_s",
           "n_samples", "seed_start", "seed_count", "peak_memory_mb", "device", "git_commit", "time", "target", "params"]
LOWER_IS_BETTER = {"fid": True, "kid": True, "sliced_w2": True, "mmd": True, "loglik": False}


def load(path) -> list[dict]:
    """The rows of a results file (duplicates resolved to the last written), in a stable order."""
    rows = list(ResultsStore(path).latest().values())
    return sorted(rows, key=lambda r: (r["target"], r["sampler"], r["metric"], r["grid"], r["requested"]))


def cells(rows: list[dict]) -> list[dict]:
    """One row per cell (its timing), for the time-vs-NFE views."""
    seen = {}
    for r in rows:
        seen.setdefault((r["target"], r["sampler"], r["grid"], r["requested"], r["seed_start"], r["seed_count"]), r)
    return list(seen.values())


def _atomic(path: Path, write) -> None:
    """Write to a temp file and rename: concurrent shards each regenerating the views never leave a torn file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    tmp.replace(path)


def write_csv(rows: list[dict], path: Path) -> None:
    extra = sorted({k for r in rows for k in r} - set(COLUMNS) - {"key"})
    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=COLUMNS + extra)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items() if k != "key"})
    _atomic(path, write)


def fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(rows: list[dict]) -> str:
    """Per metric: samplers down, requested NFE (or tolerance) across; each entry `value (actual NFE)`."""
    out = []
    for metric in sorted({r["metric"] for r in rows}):
        mine = [r for r in rows if r["metric"] == metric]
        cols = sorted({(r["grid"], r["requested"]) for r in mine}, key=lambda c: (c[0] != "nfe", c[1] if c[0] == "nfe" else -c[1]))
        table = defaultdict(dict)
        for r in mine:
            table[r["sampler"]][(r["grid"], r["requested"])] = f"{fmt(r['value'])} ({fmt(r['nfe'])})"
        head = ["sampler"] + [f"{g} {fmt(v)}" for g, v in cols]
        arrow = "lower is better" if LOWER_IS_BETTER.get(metric, True) else "higher is better"
        out += [f"### {metric} ({arrow}; actual NFE in parentheses)", "", "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head)]
        out += ["| " + " | ".join([s] + [table[s].get(c, "") for c in cols]) + " |" for s in sorted(table)]
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({r["metric"] for r in rows})
    panels = [(m, [r for r in rows if r["metric"] == m], "value") for m in metrics] + [("wall seconds", cells(rows), "wall_s")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (title, mine, y) in zip(axes[0], panels):
        for sampler in sorted({r["sampler"] for r in mine}):
            pts = sorted((r["nfe"], r[y]) for r in mine if r["sampler"] == sampler and r[y] is not None)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=sampler)
        ax.set_xscale("log")
        ax.set_xlabel("NFE (actual)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if y == "wall_s":
            ax.set_yscale("log")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def to_wandb(rows: list[dict], out_dir: Path, project: str, name: str | None = None) -> Path | None:
    """One W&B run: a Table of every row, and line charts of metric vs NFE and time vs NFE per sampler."""
    import wandb

    from lightning_sde.cli.train import wandb_configured

    mode = "online" if wandb_configured() else "offline"
    run = wandb.init(project=project, name=name, dir=str(out_dir), mode=mode, job_type="bench-report",
                     config={"results_rows": len(rows)})
    value = lambda r, k: json.dumps(r[k]) if isinstance(r.get(k), (dict, list)) else r.get(k)
    logged = {"results": wandb.Table(columns=COLUMNS, data=[[value(r, k) for k in COLUMNS] for r in rows])}
    for metric in sorted({r["metric"] for r in rows}):
        table = wandb.Table(columns=["sampler", "nfe", metric],
                            data=[[r["sampler"], r["nfe"], r["value"]] for r in rows if r["metric"] == metric])
        logged[f"charts/{metric}_vs_nfe"] = wandb.plot.line(table, "nfe", metric, stroke="sampler", title=f"{metric} vs NFE")
    timing = wandb.Table(columns=["sampler", "nfe", "wall_s"], data=[[r["sampler"], r["nfe"], r["wall_s"]] for r in cells(rows)])
    logged["charts/wall_s_vs_nfe"] = wandb.plot.line(timing, "nfe", "wall_s", stroke="sampler", title="wall seconds vs NFE")
    run.log(logged)
    where = Path(run.dir).parent if mode == "offline" else None
    print(f"W&B ({mode}): " + (f"{where}\n  sync it with: wandb sync {where}" if where else run.url))
    run.finish()
    return where


def report(results, out_dir=None, use_wandb: bool = False, project: str = "lightning-sde-bench", name=None) -> dict:
    results = Path(results)
    out = Path(out_dir) if out_dir else results.parent
    out.mkdir(parents=True, exist_ok=True)
    rows = load(results)
    if not rows:
        raise ValueError(f"no result rows in {results}")
    paths = {"csv": out / "results.csv", "markdown": out / "results.md", "png": out / "results.png"}
    write_csv(rows, paths["csv"])
    text = markdown(rows)
    _atomic(paths["markdown"], lambda tmp: tmp.write_text(text))
    plot(rows, paths["png"])
    print(text)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if use_wandb:
        paths["wandb"] = to_wandb(rows, out, project, name)  # the run lands in out/wandb/
    return paths
