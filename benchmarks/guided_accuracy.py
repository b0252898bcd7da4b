"""How much harder guided ODEs are: endpoint RMSE of every deterministic sampler at NFE 10 and 20, unguided (w = 0)
and guided (w = 2), each against its own converged reference (dopri5 at rtol = atol = 1e-10 on the same guided
model), on labelled mixtures whose conditional scores are exact. Float64, 4096 starts (seeds 0..4095), seed i of
class i mod C, VP (beta 0.1..20, eps 1e-3). The problems and w were fixed before the first run.

    .venv/bin/python benchmarks/guided_accuracy.py        # writes results/guided_accuracy.{csv,md,png}
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_sde.exact import eight_gaussians, random_mixture  # noqa: E402
from lightning_sde.generation import seed_labels  # noqa: E402
from lightning_sde.models.guidance import guided  # noqa: E402
from lightning_sde.samplers import build_sampler, sample  # noqa: E402
from lightning_sde.sde import VPSDE  # noqa: E402

PROBLEMS = {
    "eight_gaussians (8 classes)": lambda: eight_gaussians(labels=list(range(8))),
    "random_mixture 16-D (2 classes)": lambda: random_mixture(16, 10, 0, labels=[k % 2 for k in range(10)]),
}
SAMPLERS = {"ddim": ("ddim", {}), "dpmpp_2m": ("dpmpp", {"order": 2}), "dpmpp_3m": ("dpmpp", {"order": 3}),
            "unipc_2": ("unipc", {"order": 2}), "unipc_3": ("unipc", {"order": 3}), "heun": ("heun", {}),
            "ode_rk4": ("ode", {"method": "rk4"})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/guided_accuracy")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sde, seeds, rows = VPSDE(), range(args.points), []
    for problem, make in PROBLEMS.items():
        mixture = make()
        labels = seed_labels(seeds, "cycle", mixture.num_classes)
        for w in (0.0, 2.0):
            model = guided(mixture.denoiser(sde), labels, w)
            reference, ref_info = sample(build_sampler("ode", rtol=1e-10, atol=1e-10), model, seeds,
                                         dtype=torch.float64)
            for label, (name, params) in SAMPLERS.items():
                for nfe in (10, 20):
                    sampler = build_sampler(name, **params).at_nfe(nfe)
                    x, info = sample(sampler, model, seeds, dtype=torch.float64)
                    rmse = float((x - reference).pow(2).mean().sqrt())
                    rows.append({"problem": problem, "guidance": w, "sampler": label, "nfe": info["nfe"],
                                 "requested_nfe": nfe, "rmse": rmse, "reference_nfe": ref_info["nfe"]})
                    print(rows[-1], flush=True)
    for r in rows:
        base = next(b for b in rows if b["problem"] == r["problem"] and b["sampler"] == r["sampler"]
                    and b["requested_nfe"] == r["requested_nfe"] and b["guidance"] == 0.0)
        r["ratio_to_unguided"] = r["rmse"] / base["rmse"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = ["| problem | sampler | NFE | RMSE w=0 | RMSE w=2 | guided / unguided |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["guidance"] == 2.0:
            base = r["rmse"] / r["ratio_to_unguided"]
            table.append(f"| {r['problem']} | {r['sampler']} | {r['nfe']} | {base:.2e} | {r['rmse']:.2e} | "
                         f"{r['ratio_to_unguided']:.2f} |")
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    fig, axes = plt.subplots(1, len(PROBLEMS), figsize=(5.5 * len(PROBLEMS), 3.8))
    for ax, problem in zip(axes, PROBLEMS):
        sel = [r for r in rows if r["problem"] == problem and r["guidance"] == 2.0]
        for nfe, offset in ((10, -0.2), (20, 0.2)):
            pts = [r for r in sel if r["requested_nfe"] == nfe]
            ax.bar([i + offset for i in range(len(pts))], [r["ratio_to_unguided"] for r in pts], 0.4,
                   label=f"NFE {nfe}")
        ax.axhline(2, color="tab:red", ls="--", lw=1, label="target: 2x")
        ax.axhline(1, color="grey", lw=0.8)
        ax.set_xticks(range(len(SAMPLERS)), list(SAMPLERS), fontsize=7, rotation=20)
        ax.set(ylabel="endpoint RMSE, w = 2 / w = 0", title=problem)
        ax.legend(fontsize=8)
    fig.suptitle("Guided (w = 2) vs unguided endpoint error, each against its own dopri5 1e-10 reference", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
