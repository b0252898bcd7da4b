"""What the library adds to a sampler's cost on a cheap network: seconds per NFE over the network called alone.

Every registered sampler at 20 steps on VP, with a small random MLP (2-D, width 128, depth 3: ~50 µs a call at batch
256 on this CPU) where per-step bookkeeping shows most; the network alone is the same number of calls in a bare loop.
`--trees` times other checkouts of the package the same way, each run in its own process, the trees alternating
round by round (drift on a shared machine hits them alike): e.g. the commit before a change and the one after.

    .venv/bin/python benchmarks/sampler_overhead.py --trees /tmp/base . --rounds 7   # writes results/sampler_overhead.*
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# one round in a fresh process of one tree: {sampler: [seconds of the sampler, seconds of the network alone, nfe]}
ROUND = r"""
import json, sys, time, torch
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.models.mlp import MLP
from lightning_sde.samplers import SeededNoise, build_sampler
from lightning_sde.samplers.base import SAMPLERS
from lightning_sde.sde import VPSDE

batch, steps, repeats = (int(a) for a in sys.argv[1:4])
torch.manual_seed(0)
net = MLP(dim=2, width=128, depth=3, time_embed_dim=32).eval()
den = Denoiser(net, VPSDE(), "eps", (2,))
noise = SeededNoise(range(batch), (2,))
x_T = den.sde.prior_sample(noise.prior())
out = {}
with torch.no_grad():
    for name in sorted(SAMPLERS):
        try:
            sampler = build_sampler(name, steps=steps)
        except (TypeError, ValueError):
            continue  # an adaptive sampler: no fixed steps
        if sampler.adaptive:
            continue
        sampler(den, x_T, noise)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            den.nfe = 0
            start = time.perf_counter()
            sampler(den, x_T, noise)
            best = min(best, time.perf_counter() - start)
        nfe = den.nfe
        t = torch.full((batch,), 0.5)
        alone = float("inf")
        for _ in range(repeats):
            x = x_T
            start = time.perf_counter()
            for _ in range(nfe):
                x = net(x, t)
            alone = min(alone, time.perf_counter() - start)
        out[name] = [best, alone, nfe]
print(json.dumps(out))
"""


def one_round(tree: Path, batch: int, steps: int, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", ROUND, str(batch), str(steps), str(repeats)], env=env,
                          capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", nargs="+", default=[str(ROOT)], help="checkouts to time (default: this one)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls in a round (the fastest is kept)")
    parser.add_argument("--rounds", type=int, default=5, help="processes per tree, alternating (the median is kept)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sampler_overhead"))
    args = parser.parse_args()
    trees = [Path(t).resolve() for t in args.trees]
    labels = [subprocess.run(["git", "-C", str(t), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
              .stdout.strip() or t.name for t in trees]
    rounds = {label: [] for label in labels}
    for i in range(args.rounds):
        for tree, label in zip(trees, labels):
            rounds[label].append(one_round(tree, args.batch, args.steps, args.repeats))
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    rows = []
    for label in labels:
        for name in rounds[label][0]:
            runs = [r[name] for r in rounds[label]]
            total = statistics.median(r[0] for r in runs)
            alone = statistics.median(r[1] for r in runs)
            nfe = runs[0][2]
            rows.append({"tree": label, "sampler": name, "nfe": nfe, "batch": args.batch, "sampler_s": total,
                         "network_s": alone, "overhead_us_per_nfe": 1e6 * (total - alone) / nfe,
                         "overhead_pct": 100 * (total / alone - 1),
                         "low_us_per_nfe": 1e6 * (min(r[0] for r in runs) - alone) / nfe,  # the rounds' range
                         "high_us_per_nfe": 1e6 * (max(r[0] for r in runs) - alone) / nfe})
    write(rows, Path(args.out), labels, args)


def write(rows: list[dict], out: Path, labels: list[str], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lightning_sde.files import write_csv, write_text
    from lightning_sde.plotting.style import save_atomically

    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_suffix(".csv"), rows, list(rows[0]))
    samplers = sorted({r["sampler"] for r in rows})
    cell = {(r["tree"], r["sampler"]): r for r in rows}
    head = ["sampler", "NFE"] + [f"{label}: µs/NFE over the network (%)" for label in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in samplers:
        first = cell[(labels[0], name)]
        lines.append("| " + " | ".join([name, str(first["nfe"])] + [
            f"{cell[(label, name)]['overhead_us_per_nfe']:.1f} ({cell[(label, name)]['overhead_pct']:+.0f} %)"
            for label in labels]) + " |")
    alone = statistics.median(r["network_s"] / r["nfe"] for r in rows)
    command = "benchmarks/sampler_overhead.py " + " ".join(f"--{k} {v}" for k, v in (
        ("batch", args.batch), ("steps", args.steps), ("repeats", args.repeats), ("rounds", args.rounds)))
    write_text(out.with_suffix(".md"), f"`{command}` (trees: {', '.join(labels)}); the network alone: "
               f"{1e6 * alone:.0f} µs a call (median)\n\n" + "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(samplers) + 1.5), constrained_layout=True)
    height = 0.8 / len(labels)
    for k, label in enumerate(labels):
        mine = [cell[(label, s)] for s in samplers]
        ax.barh([i + k * height for i in range(len(samplers))], [r["overhead_us_per_nfe"] for r in mine],
                height=height, label=label, xerr=[[r["overhead_us_per_nfe"] - r["low_us_per_nfe"] for r in mine],
                                                  [r["high_us_per_nfe"] - r["overhead_us_per_nfe"] for r in mine]],
                capsize=2)
    ax.set_yticks([i + height * (len(labels) - 1) / 2 for i in range(len(samplers))], samplers)
    ax.set_xlabel(f"µs per NFE over the network alone (network: {1e6 * alone:.0f} µs a call, batch {args.batch})")
    ax.set_title("What the library adds per NFE (lower is better; whiskers: range over rounds)")
    ax.legend()
    save_atomically(fig, out.with_suffix(".png"), dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
