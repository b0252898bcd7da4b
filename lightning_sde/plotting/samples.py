"""Samples as a person looks at them: scatter plots of 2-D points and grids of images (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402


def scatter_grid(panels: dict[str, Tensor], path: Path, lim: float | None = None, cols: int = 4) -> Path:
    """One scatter panel per entry (the first two coordinates), sharing the axes' limits."""
    if lim is None:
        lim = 1.15 * max(float(x[:, :2].abs().max()) for x in panels.values())
    cols = min(cols, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, x) in zip(axes.flat, panels.items()):
        x = x.detach().float().cpu()
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4, color="black" if title == "data" else "tab:blue")
        ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


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
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
