"""Samples as a person looks at them: scatter plots of 2-D points and grids of images (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402

from lightning_sde.plotting.style import outside, outside_note, robust_limits, save_atomically  # noqa: E402


def drawable(sample_shape) -> bool:
    """Whether samples of this shape (one sample's) have a picture: points of 2 or more coordinates (a scatter of
    the first two), or images of 1 or 3 channels."""
    return len(sample_shape) == 1 and sample_shape[0] >= 2 or len(sample_shape) == 3 and sample_shape[0] in (1, 3)


def scatter_grid(panels: dict[str, Tensor], path: Path, cols: int = 4) -> Path:
    """One scatter panel per entry (the first two coordinates), on shared axes with ticks. The limits come from the
    "data" panel (else the first): a diverged sampler cannot shrink the others to a dot; a panel counts its points
    outside the limits."""
    limits = robust_limits(panels["data"] if "data" in panels else next(iter(panels.values())))
    cols = min(cols, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False, sharex=True, sharey=True,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, x) in zip(axes.flat, panels.items()):
        x = x.detach().float().cpu()
        out = outside(x, limits)
        shown = x[~out]
        ax.scatter(shown[:, 0], shown[:, 1], s=1, alpha=0.4, color="black" if title == "data" else "tab:blue",
                   rasterized=True)
        if out.any():
            ax.text(0.02, 0.02, outside_note(x, out), transform=ax.transAxes, fontsize=7, color="tab:red",
                    va="bottom")
        ax.set(title=title, xlim=limits[0], ylim=limits[1], aspect="equal")
        ax.tick_params(labelsize=7)
    return save_atomically(fig, path, bbox_inches="tight")  # equal-aspect panels: constrained layout alone can clip


def image_grid(x: Tensor, path: Path, nrow: int | None = None, title: str | None = None) -> Path:
    """Images in [-1, 1], shape (N, C, H, W), tiled into one PNG."""
    from torchvision.utils import make_grid

    x = x.detach().float().cpu().clamp(-1, 1)
    nrow = nrow or max(1, int(len(x) ** 0.5))
    grid = make_grid((x + 1) / 2, nrow=nrow, padding=1, pad_value=1.0).permute(1, 2, 0)
    size = max(3.0, 0.5 * nrow)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_atomically(fig, path)
