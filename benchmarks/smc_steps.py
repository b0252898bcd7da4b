"""Sequential Monte Carlo inpainting: steps against particles, measured against the exact conditional.

At a fixed number of steps more particles converge to the step chain's own posterior; at coarse steps that is off,
and more particles move the result further from p(x_unknown | x_known). Two exact cases, each by one statistic of
the unknown coordinate with its standard error over the samples:
  correlated 2-D Gaussian (rho = 0.9), x_1 = 1 known: the variance of x_2 (exact 1 - rho^2 = 0.19)
  8 Gaussians, x = 1.5 known: the weight of the lower mode, P(y < -3.5) (exact from GaussianMixture.given)
VP SDE, uniform grid, float64, 2000 samples (seeds 0..1999); steps {50, 200, 400} x particles {4, 32, 128}, fixed
before the run.

    .venv/bin/python benchmarks/smc_steps.py     # ~10 min on 2 cores; writes results/smc_steps/{steps.csv,md,png}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_sde.exact import GaussianMixture, eight_gaussians  # noqa: E402
from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.models.inpainting import inpainting  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402
from lightning_sde.samplers.smc import smc_inpainting  # noqa: E402
from lightning_sde.sde import VPSDE  # noqa: E402

OUT = ROOT / "benchmarks/results/smc_steps"
F64 = torch.float64
SAMPLES, STEPS, PARTICLES = 2000, (50, 200, 400), (4, 32, 128)
KNOWN = torch.tensor([True, False])


def variance(y: torch.Tensor) -> tuple[float, float]:
    return float(y.var()), float(y.var() * (2 / len(y)) ** 0.5)


def lower_mode(y: torch.Tensor) -> tuple[float, float]:
    p = float((y < -3.5).double().mean())
    return p, (p * (1 - p) / len(y)) ** 0.5


def cases():
    rho = 0.9
    gaussian = GaussianMixture(torch.zeros(1, 2, dtype=F64), covs=torch.tensor([[[1.0, rho], [rho, 1.0]]], dtype=F64))
    yield "correlated Gaussian, x_1 = 1 known", "variance of x_2", variance, gaussian, 1.0, 1 - rho**2
    mix, known_value = eight_gaussians(), 1.5
    exact = mix.given(KNOWN, torch.tensor([known_value], dtype=F64))
    truth = float((exact.sample(10**6, torch.Generator().manual_seed(1))[:, 0] < -3.5).double().mean())
    yield "8 Gaussians, x = 1.5 known", "P(y < -3.5)", lower_mode, mix, known_value, truth


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4))
    for ax, name in zip(axes, names):
        sel = [r for r in rows if r["case"] == name]
        for steps in STEPS:
            line = [r for r in sel if r["steps"] == steps]
            ax.errorbar([r["particles"] for r in line], [r["value"] for r in line],
                        yerr=[r["standard_error"] for r in line], marker="o", capsize=3, label=f"{steps} steps")
        ax.axhline(sel[0]["exact"], color="k", ls="--", lw=1, label="exact")
        ax.set_xscale("log", base=2)
        ax.set_xticks(PARTICLES, [str(k) for k in PARTICLES])
        ax.set_xlabel("particles")
        ax.set_ylabel(sel[0]["statistic"])
        ax.set_title(name, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle("SMC inpainting with exact scores: more particles help only at enough steps (bars: ±1 s.e.)")
    fig.tight_layout()
    save_atomically(fig, path)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, statistic, measure, mix, known_value, exact in cases():
        values = torch.zeros(SAMPLES, 2, dtype=F64)
        values[:, 0] = known_value
        den = inpainting(mix.denoiser(VPSDE()), KNOWN, values)
        for steps in STEPS:
            for particles in PARTICLES:
                x, info = smc_inpainting(den, range(SAMPLES), particles=particles, steps=steps, dtype=F64,
                                         progress=True)
                value, se = measure(x[:, 1])
                rows.append({"case": name, "statistic": statistic, "exact": exact, "steps": steps,
                             "particles": particles, "samples": SAMPLES, "value": value, "standard_error": se,
                             "z": (value - exact) / se, "min_ess": info["min_ess"]})
                print(rows[-1], flush=True)
    write_csv(OUT / "steps.csv", rows)
    lines = ["| case (statistic, exact) | steps | " + " | ".join(f"{k} particles" for k in PARTICLES) + " |",
             "|---|---:|" + "---:|" * len(PARTICLES)]
    for name in dict.fromkeys(r["case"] for r in rows):
        for steps in STEPS:
            sel = [r for r in rows if r["case"] == name and r["steps"] == steps]
            cells = " | ".join(f"{r['value']:.3f} ± {r['standard_error']:.3f} (min ESS {r['min_ess']:.1f})"
                               for r in sel)
            lines.append(f"| {name} ({sel[0]['statistic']}, {sel[0]['exact']:.3f}) | {steps} | {cells} |")
    (OUT / "steps.md").write_text("\n".join(lines) + "\n")
    plot(rows, OUT / "steps.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
