"""The guidance trade-off on the class-conditional digits model: class accuracy of guided samples (the shipped
digits classifier, DigitsCNN, 10 classes) and FID (its features) against the guidance weight w, for DDIM,
DPM-Solver++(2M) and UniPC(2) at two NFE budgets.

Seeds 0..n-1, seed i sampled for class i mod 10 (balanced, as `lsde-bench labels=cycle`); FID against n training
digits with a 90 % bootstrap interval (the same Scorer as lsde-bench). The w grid and the seeds were fixed before
the first run. One guided NFE is one forward of the doubled batch (docs/conditional.md).

    .venv/bin/python -m lightning_sde.cli.train experiment=digits_cond run_dir=benchmarks/runs/digits_cond \\
        run_name=cond logger=csv samplers=quick callbacks.best.monitor=val/ddim_10/fid          # 2.7 min, CPU
    .venv/bin/python benchmarks/guidance_digits.py                     # writes results/guidance_digits.*
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_sde import load_denoiser  # noqa: E402
from lightning_sde.data import DigitsDataModule  # noqa: E402
from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.generation import generate, seed_labels  # noqa: E402
from lightning_sde.metrics.features import DigitsFeatures  # noqa: E402
from lightning_sde.metrics.scorer import Scorer  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402
from lightning_sde.samplers import build_sampler  # noqa: E402

SAMPLERS = {"ddim": ("ddim", {}), "dpmpp_2m": ("dpmpp", {"order": 2}), "unipc_2": ("unipc", {"order": 2})}


def class_accuracy(classifier, x: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((classifier(x.clamp(-1, 1)).argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "benchmarks/runs/digits_cond/checkpoints/last.ckpt")
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 3.0, 5.0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/guidance_digits")
    args = parser.parse_args()
    torch.set_num_threads(2)
    denoiser = load_denoiser(args.checkpoint)
    if denoiser.num_classes != 10:
        raise SystemExit(f"{args.checkpoint}: not a 10-class conditional digits model (num_classes "
                         f"{denoiser.num_classes}); train experiment=digits_cond first")
    reference = DigitsDataModule().reference(args.n)
    scorer = Scorer(reference, ("fid",), feature_extractor="digits")
    classifier = DigitsFeatures(input_range="symmetric").net.eval()
    seeds = range(args.n)
    labels = seed_labels(seeds, "cycle", 10)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for nfe in args.nfe:
        for label, (name, params) in SAMPLERS.items():
            sampler = build_sampler(name, **params).at_nfe(nfe)
            for w in args.weights:
                samples = generate(sampler, denoiser, seeds, 500, "cpu", guidance=w, progress=True,
                                   desc=f"{label} NFE {nfe} w {w:g}")
                values = scorer(samples.x)
                low, high = scorer.intervals(samples.x, values)["fid"]
                rows.append({"sampler": label, "nfe": nfe, "guidance": w, "n": args.n,
                             "class_accuracy": round(class_accuracy(classifier, samples.x, labels), 4),
                             "fid": round(values["fid"], 3), "fid_ci_low": round(low, 3), "fid_ci_high": round(high, 3),
                             "measured_nfe": samples.nfe, "batch_factor": samples.batch_factor,
                             "wall_s": round(samples.wall_s, 2), "checkpoint": str(args.checkpoint), "commit": commit})
                print(rows[-1], flush=True)
                write_csv(args.out.with_suffix(".csv"), rows)  # after every cell
    write_views(rows, args.out)


def write_views(rows: list[dict], out: Path) -> None:
    table = ["| sampler | NFE | w | class accuracy | FID (90 % interval) |", "|---|---:|---:|---:|---|"]
    table += [f"| {r['sampler']} | {r['nfe']} | {r['guidance']:g} | {100 * r['class_accuracy']:.1f} % | "
              f"{r['fid']:.2f} ({r['fid_ci_low']:.2f}-{r['fid_ci_high']:.2f}) |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (sampler, nfe) in dict.fromkeys((r["sampler"], r["nfe"]) for r in rows):
        sel = [r for r in rows if r["sampler"] == sampler and r["nfe"] == nfe]
        w = [r["guidance"] for r in sel]
        style = "-" if nfe == min(r["nfe"] for r in rows) else "--"
        axes[0].plot(w, [100 * r["class_accuracy"] for r in sel], style, marker="o", label=f"{sampler}, NFE {nfe}")
        axes[1].errorbar(w, [r["fid"] for r in sel], yerr=[[r["fid"] - r["fid_ci_low"] for r in sel],
                                                          [r["fid_ci_high"] - r["fid"] for r in sel]],
                         fmt=style, marker="o", capsize=2, label=f"{sampler}, NFE {nfe}")
    axes[0].axhline(95, color="grey", lw=0.8, ls=":")
    axes[0].set(xlabel="guidance weight w", ylabel="class accuracy of samples (%)",
                title="Do the samples show their class?")
    axes[1].set(xlabel="guidance weight w", ylabel="FID (digits features, 90 % bootstrap)",
                title="What guidance costs in sample quality")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Class-conditional digits, {rows[0]['n']} samples (seed i: class i mod 10)", fontsize=10)
    fig.tight_layout()
    save_atomically(fig, out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
