"""The SDE chapter's figures, drawn from an exact mixture (exact marginals) and/or a Denoiser (lsde-figures draws them).

  schematic      p_t(x) over (t, x) as a heat map, forward SDE paths (data -> noise) and reverse-SDE paths
                 (noise -> data); 2-D: p_t at five times with the forward samples
  trajectories   probability-flow ODE against reverse SDE from the same x_T (deterministic vs random)
  schedules      sigma_t^2, alpha_t and log-SNR lambda_t of VE, VP and sub-VP
  interpolation  slerp between two latents (a line in 1-D), decoded through the ODE (points or an image strip)

The heat maps are the exact marginals of the mixture; the paths come from the project's samplers (Euler-Maruyama,
rk4 on the ODE) driven by the exact score or a trained network.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from lightning_sde.flow import decode, slerp  # noqa: E402
from lightning_sde.plotting.style import palette, save_atomically  # noqa: E402
from lightning_sde.probability_flow import ODEOptions  # noqa: E402
from lightning_sde.samplers import build_sampler  # noqa: E402
from lightning_sde.samplers.noise import SeededNoise  # noqa: E402
from lightning_sde.sde import build_sde  # noqa: E402

FIGURES = ("schematic", "trajectories", "schedules", "interpolation")
SDE_COLORS = {"ve": "tab:red", "vp": "tab:blue", "subvp": "tab:green"}


METADATA_KEY = {"png": "Description", "svg": "Description", "pdf": "Subject"}  # a free-text field each format has


def save(fig, out: Path, name: str, formats, source: str | None = None) -> list[Path]:
    """The figure as out/<name>.<format> for each format; `source` (what it was drawn from: a checkpoint's path, step
    and content hash) in the file's metadata."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        return [save_atomically(fig, out / f"{name}.{fmt}", dpi=150, close=False, bbox_inches="tight",
                                metadata={METADATA_KEY[fmt]: source} if source else None)
                for fmt in formats]
    finally:
        plt.close(fig)


def dtype_of(denoiser) -> torch.dtype:
    """A network's own dtype; the exact oracle (no parameters) computes in float64."""
    return next((p.dtype for p in denoiser.parameters()), torch.float64)


def trajectory(sampler, denoiser, seeds) -> tuple[torch.Tensor, torch.Tensor]:
    """(times (S+1,), states (S+1, n, *shape)) of one sampler run from the seeds' x_T."""
    sde = denoiser.sde
    noise = SeededNoise(seeds, denoiser.shape, dtype=dtype_of(denoiser))
    x_T = sde.prior_sample(noise.prior())
    times, states = [sde.T], [x_T]

    def record(step):
        times.append(float(step["t"]))
        states.append(step["x"].clone())

    sampler(denoiser, x_T, noise, callback=record)
    return torch.tensor(times), torch.stack(states)


def forward_paths(sde, x0: torch.Tensor, steps: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward SDE sample paths from x0 on a uniform grid, by the exact transition x_t | x_s."""
    times = torch.linspace(sde.eps, sde.T, steps + 1, dtype=torch.float64)
    xs = [x0]
    for s, t in zip(times[:-1], times[1:]):
        a, var = sde.transition(t, s)
        xs.append(a * xs[-1] + var.sqrt() * torch.randn(x0.shape, generator=generator, dtype=torch.float64))
    return times, torch.stack(xs)


def density_map(mixture, sde, x_grid: torch.Tensor, t_grid: torch.Tensor) -> torch.Tensor:
    """p_t(x) on a (t, x) grid of a 1-D mixture: (len(x), len(t))."""
    cols = [mixture.marginal_log_prob(sde, x_grid[:, None], t.expand(len(x_grid))).exp() for t in t_grid]
    return torch.stack(cols, dim=1)


def _heat(ax, dens, t_grid, x_grid):
    ax.imshow(dens.numpy(), origin="lower", aspect="auto", cmap="Greys", norm=PowerNorm(0.4),
              extent=(float(t_grid[0]), float(t_grid[-1]), float(x_grid[0]), float(x_grid[-1])))


def schematic_1d(mixture, sde, n_paths: int, seed: int, model=None):
    """The forward SDE's paths over the exact p_t(x), and the reverse SDE's: with the exact score, or with `model`'s
    (a trained denoiser of this data) where given."""
    x_grid = torch.linspace(-5, 5, 300, dtype=torch.float64)
    t_grid = torch.linspace(sde.eps, sde.T, 200, dtype=torch.float64)
    dens = density_map(mixture, sde, x_grid, t_grid)
    g = torch.Generator().manual_seed(seed)
    t_f, x_f = forward_paths(sde, mixture.sample(n_paths, g), 500, g)
    t_r, x_r = trajectory(build_sampler("euler_maruyama", steps=500), model or mixture.denoiser(sde),
                          range(seed, seed + n_paths))
    t_r, x_r = t_r.double(), x_r.double()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    reverse = "reverse SDE: noise $\\to$ data" + (", the model's score" if model is not None else "")
    for ax, t, x, title, color in ((left, t_f, x_f, "forward SDE: data $\\to$ noise", "tab:blue"),
                                   (right, t_r, x_r, reverse, "tab:orange")):
        _heat(ax, dens, t_grid, x_grid)
        ax.plot(t.numpy(), x[..., 0].numpy(), color=color, lw=0.8, alpha=0.85)
        ax.set(title=title, xlabel="t", xlim=(0, sde.T), ylim=(-5, 5))
    right.invert_xaxis()  # generation runs from t = T on the left to t = 0
    left.set_ylabel("x")
    fig.suptitle(f"{sde.name.upper()} SDE: $p_t(x)$ (grey) with sample paths", y=1.02)
    return fig


def schematic_2d(mixture, sde, n_paths: int, seed: int):
    times = [sde.eps, 0.1, 0.25, 0.5, sde.T]
    g = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(max(n_paths, 500), g)
    lim = 6.0
    fig, axes = plt.subplots(1, len(times), figsize=(3 * len(times), 3.2), sharey=True)
    for ax, t in zip(axes, times):
        tt = torch.tensor(t, dtype=torch.float64)
        _density_2d(ax, mixture, sde, tt, lim)
        xt = sde.alpha(tt) * x0 + sde.sigma(tt) * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        ax.scatter(xt[:, 0], xt[:, 1], s=2, color="tab:blue", alpha=0.5)
        ax.set(title=f"t = {t:.3g}", xlim=(-lim, lim), ylim=(-lim, lim), xticks=[], yticks=[])
    fig.suptitle(f"{sde.name.upper()} SDE: $p_t$ and forward samples, data $\\to$ noise", y=1.02)
    return fig


def trajectories_figure(denoiser, mixture, n_paths: int, seed: int):
    sde = denoiser.sde
    seeds = range(seed, seed + n_paths)
    t_o, x_o = trajectory(build_sampler("ode", method="rk4", steps=250), denoiser, seeds)
    t_s, x_s = trajectory(build_sampler("euler_maruyama", steps=500), denoiser, seeds)
    colors = palette(n_paths)  # 20 distinct before a colour repeats (an SDE path is matched to its ODE path by it)
    if len(denoiser.shape) == 1 and denoiser.shape[0] == 1:
        fig, ax = plt.subplots(figsize=(7, 4))
        if mixture is not None:
            x_grid = torch.linspace(-5, 5, 300, dtype=torch.float64)
            t_grid = torch.linspace(sde.eps, sde.T, 200, dtype=torch.float64)
            _heat(ax, density_map(mixture, sde, x_grid, t_grid), t_grid, x_grid)
        for i in range(n_paths):
            ax.plot(t_s, x_s[:, i, 0], color=colors[i], lw=0.6, alpha=0.6)
            ax.plot(t_o, x_o[:, i, 0], color=colors[i], lw=2.0)
        ax.invert_xaxis()
        ax.set(xlabel="t", ylabel="x", ylim=(-5, 5))
    else:
        fig, ax = plt.subplots(figsize=(5.5, 5.5))
        if mixture is not None:
            _density_2d(ax, mixture)
        for i in range(n_paths):
            ax.plot(x_s[:, i, 0], x_s[:, i, 1], color=colors[i], lw=0.5, alpha=0.5)
            ax.plot(x_o[:, i, 0], x_o[:, i, 1], color=colors[i], lw=1.8)
            ax.scatter(x_o[0, i, 0], x_o[0, i, 1], color=colors[i], marker="x", s=30)
        ax.set(xlim=(-6, 6), ylim=(-6, 6), aspect="equal")
    ax.plot([], [], color="k", lw=2.0, label="probability-flow ODE (rk4, deterministic)")
    ax.plot([], [], color="k", lw=0.6, alpha=0.6, label="reverse SDE (Euler-Maruyama, random)")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_title(f"{sde.name.upper()}: the same $x_T$ through the ODE and the SDE")
    return fig


def _density_2d(ax, mixture, sde=None, t=None, lim: float = 6.0):
    """A 2-D mixture's density as a grey image: the data's, or p_t under `sde` at time `t`."""
    grid = torch.linspace(-lim, lim, 200, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    logp = mixture.log_prob(pts) if sde is None else mixture.marginal_log_prob(sde, pts, t.expand(len(pts)))
    dens = logp.exp().reshape(200, 200)
    ax.imshow(dens.numpy(), origin="lower", extent=(-lim, lim, -lim, lim), cmap="Greys", norm=PowerNorm(0.4))


def schedules_figure(own=None):
    """The three SDEs' schedules at their defaults, `own` (the run's SDE: an override's or a checkpoint's parameters,
    or an SDE of the user's) in place of its class's."""
    t = torch.linspace(1e-5, 1.0, 500, dtype=torch.float64)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    sdes = {name: build_sde(name) for name in ("ve", "vp", "subvp")}
    if own is not None:
        sdes[own.name] = own
    for name, sde in sdes.items():
        shown = {"subvp": "sub-VP"}.get(name, name.upper())
        kw = {"color": SDE_COLORS.get(name, "black"), "label": f"{shown} ({_params(sde)})" if _params(sde) else shown,
              "ls": "--" if name == "subvp" else "-"}  # sub-VP has VP's alpha_t: dashed, so both show
        axes[0].plot(t, sde.sigma(t) ** 2, **kw)
        axes[1].plot(t, sde.alpha(t), **kw)
        axes[2].plot(t, sde.log_snr(t), **kw)
    axes[0].set(yscale="log", title=r"noise variance $\sigma_t^2$", xlabel="t")
    axes[1].set(title=r"signal scale $\alpha_t$", xlabel="t")
    axes[2].set(title=r"log-SNR $\lambda_t = \log(\alpha_t / \sigma_t)$", xlabel="t")
    axes[0].legend(fontsize=8)
    fig.suptitle(r"$x_t = \alpha_t x_0 + \sigma_t z$ for VE, VP and sub-VP", y=1.02)
    return fig


def _params(sde) -> str:
    if hasattr(sde, "sigma_min") and hasattr(sde, "sigma_max"):
        return f"$\\sigma$ {sde.sigma_min:g}..{sde.sigma_max:g}"
    if hasattr(sde, "beta_min") and hasattr(sde, "beta_max"):
        return f"$\\beta$ {sde.beta_min:g}..{sde.beta_max:g}"
    return ""


def interpolation_figure(denoiser, mixture, seeds, n: int):
    sde = denoiser.sde
    noise = SeededNoise(list(seeds), denoiser.shape, dtype=dtype_of(denoiser))
    z0, z1 = sde.prior_sample(noise.prior())
    path = slerp(z0, z1, n)
    x = decode(denoiser, path, ODEOptions("dopri5", rtol=1e-5, atol=1e-5)).float()
    if len(denoiser.shape) == 3:  # images: one strip
        from torchvision.utils import make_grid

        grid = make_grid((x.clamp(-1, 1) + 1) / 2, nrow=n, padding=1, pad_value=1.0).permute(1, 2, 0)
        fig, ax = plt.subplots(figsize=(1.1 * n, 1.8))
        ax.imshow(grid.numpy(), interpolation="nearest")
        ax.axis("off")
        ax.set_title(f"slerp between two latents, decoded by the probability-flow ODE ({sde.name.upper()})", fontsize=9)
        return fig
    fig, ax = plt.subplots(figsize=(5.5, 5.5) if denoiser.shape[0] == 2 else (7, 3))
    w = torch.linspace(0, 1, n)
    if denoiser.shape[0] == 2:
        if mixture is not None:
            _density_2d(ax, mixture)
        # a prior wider than the data's frame (VE: sigma_max 50) puts the latents outside it: drawn scaled to unit std
        scale = sde.prior_std if sde.prior_std > 2 else 1.0
        shown = path.float() / scale
        label = "latents $x_T$ (slerp)" if scale == 1 else f"latents $x_T / {scale:g}$ (slerp; prior std {scale:g})"
        ax.plot(shown[:, 0], shown[:, 1], color="tab:gray", ls="--", lw=1, label=label)
        ax.plot(x[:, 0], x[:, 1], color="tab:orange", lw=1, zorder=1, label="decoded $x_0$")
        ax.scatter(x[:, 0], x[:, 1], c=w, cmap="viridis", s=25, zorder=2)
        ax.scatter(shown[:, 0], shown[:, 1], c=w, cmap="viridis", s=10, marker="x")
        ax.legend(loc="upper right", fontsize=8)
        ax.set(xlim=(-6, 6), ylim=(-6, 6), aspect="equal")
    else:
        ax.scatter(w, x[:, 0], c=w, cmap="viridis", s=40)
        ax.set(xlabel="interpolation weight", ylabel="decoded x")
    ax.set_title(("slerp($z_0$, $z_1$)" if denoiser.shape[0] > 1 else "the line from $z_0$ to $z_1$")
                 + " decoded by the probability-flow ODE")
    return fig
