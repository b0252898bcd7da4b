"""The endpoint-error protocol shared by fast_samplers.py and peers.py: the problems, the SDE, the starting points
and the converged reference, and how their views are saved."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_sde.exact import eight_gaussians, random_mixture
from lightning_sde.plotting.style import save_atomically  # noqa: E402
from lightning_sde.samplers import SeededNoise, build_sampler
from lightning_sde.sde import build_sde

OUT = Path(__file__).resolve().parent / "results"
N = 4096  # starting points, seeds 0..N-1
PROBLEMS = {"eight_gaussians": eight_gaussians, "random16d": lambda: random_mixture(16, 10, 0)}


def vp_sde():
    return build_sde("vp", beta_min=0.1, beta_max=20.0, eps=1e-3)


def oracle(problem: str, sde, seeds=range(N)):
    """(exact denoiser, x_T of the seeds (0..N-1) in float64, dopri5 solution at rtol = atol = 1e-10 from x_T)."""
    den = PROBLEMS[problem]().denoiser(sde)
    x_T = sde.prior_sample(SeededNoise(seeds, den.shape, dtype=torch.float64).prior())
    ref, _ = build_sampler("ode", method="dopri5", rtol=1e-10, atol=1e-10)(den, x_T)
    return den, x_T, ref


def oracles():
    """(problem, exact denoiser, x_T, reference) for each problem, on 2 threads (the machine the figures are from)."""
    torch.set_num_threads(2)
    sde = vp_sde()
    for problem in PROBLEMS:
        yield (problem, *oracle(problem, sde))


TITLES = {"eight_gaussians": "8 Gaussians (2-D)", "random16d": "random 16-D mixture (10 components)"}


def save_views(fig, axes, lines: list[str], stem: str) -> None:
    """Finish the log-log axes (plain-number ticks, readable titles), put one legend right of the panels, write
    <stem>.png and <stem>.md next to the CSV."""
    from lightning_sde.plotting.style import plain_log_axis

    fig.set_layout_engine("constrained")
    for ax in axes:
        ax.set_title(TITLES.get(ax.get_title(), ax.get_title()))
        ax.set(xlabel="NFE (score evaluations)", ylabel="endpoint RMSE vs converged ODE (lower is better)")
        plain_log_axis(ax.xaxis)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, title="sampler (grid)")
    fig.set_size_inches(fig.get_figwidth() + 3.2, fig.get_figheight())
    save_atomically(fig, OUT / f"{stem}.png", dpi=130)
    (OUT / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT / stem}.csv, .md, .png")
