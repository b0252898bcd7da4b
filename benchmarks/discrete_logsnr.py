"""Exact likelihoods by dopri5 in t or in log-SNR lambda, against the true log p of the 8 Gaussians (exact score):
why adaptive solves of a discrete schedule (DiscreteVPSDE, whose f and g^2 jump at each timestep) run in lambda and
those of the continuous SDEs stay in t.

For VP, sub-VP, VE (sigma_max 30) and a 1000-step DDPM schedule (linear betas 1e-4..0.02), dopri5 at
rtol = atol = 1e-3 .. 1e-6 on 48 exact samples and 16 points off the data; the error is |log p - true log p| after
the prior mismatch at T (the only other approximation). "t" is the solve with `drift_jumps` off, "lambda" with it on.

    .venv/bin/python benchmarks/discrete_logsnr.py      # ~5 min on 2 cores

Results: results/discrete_logsnr.{csv,md,png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from lightning_sde.exact import eight_gaussians  # noqa: E402
from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.flow import ODEOptions, log_likelihood  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402
from lightning_sde.sde import DiscreteVPSDE, build_sde  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "discrete_logsnr"
TOLERANCES = (1e-3, 1e-4, 1e-5, 1e-6)


def sdes() -> dict:
    ddpm = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    return {"vp": build_sde("vp"), "subvp": build_sde("subvp"), "ve": build_sde("ve", sigma_max=30.0),
            "ddpm_1000": DiscreteVPSDE(ddpm)}


def main() -> None:
    mixture = eight_gaussians()
    g = torch.Generator().manual_seed(0)
    x = torch.cat([mixture.sample(48, g), 3 * torch.randn(16, 2, generator=g, dtype=torch.float64)])
    rows = []
    for name, sde in sdes().items():
        eps, T = (torch.tensor(v, dtype=torch.float64) for v in (sde.eps, sde.T))
        truth = mixture.marginal_log_prob(sde, x, eps)
        for variable in ("t", "lambda"):
            sde.drift_jumps = variable == "lambda"  # the instance's choice of integration variable
            for tol in TOLERANCES:
                out = log_likelihood(mixture.denoiser(sde), x, ODEOptions("dopri5", rtol=tol, atol=tol))
                mismatch = out["prior_logp"] - mixture.marginal_log_prob(sde, out["x_T"], T)
                err = (out["logp"] - mismatch - truth).abs()
                rows.append({"sde": name, "variable": variable, "tol": tol, "nfe": out["nfe"],
                             "median_error": float(err.median()), "max_error": float(err.max())})
                print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_csv(OUT.with_suffix(".csv"), rows)
    lines = ["| SDE | tol | NFE in t | median / max error in t (nats) | NFE in lambda | median / max error in lambda |",
             "|---|---|---|---|---|---|"]
    for name in sdes():
        for tol in TOLERANCES:
            a, b = (next(r for r in rows if (r["sde"], r["variable"], r["tol"]) == (name, v, tol))
                    for v in ("t", "lambda"))
            lines.append(f"| {name} | {tol:g} | {a['nfe']} | {a['median_error']:.1e} / {a['max_error']:.1e} | "
                         f"{b['nfe']} | {b['median_error']:.1e} / {b['max_error']:.1e} |")
    OUT.with_suffix(".md").write_text("Made by `.venv/bin/python benchmarks/discrete_logsnr.py`.\n\n"
                                      + "\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(sdes()), figsize=(4 * len(sdes()), 3.5), sharey=True)
    for ax, name in zip(axes, sdes()):
        for variable, style in (("t", "o-"), ("lambda", "s--")):
            mine = [r for r in rows if r["sde"] == name and r["variable"] == variable]
            ax.loglog([r["nfe"] for r in mine], [r["median_error"] for r in mine], style, label=f"in {variable}")
        ax.set(title=name, xlabel="NFE (dopri5, tol 1e-3..1e-6)")
    axes[0].set_ylabel("median |log p error| (nats)")
    axes[0].legend()
    fig.tight_layout()
    save_atomically(fig, OUT.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    main()
