"""Views of a sampler sweep: each metric and the wall time against the actual NFE, and the samples of every cell
side by side (rows: samplers, columns: budgets), all drawn from the results alone."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def save_atomically(fig, path: Path, dpi: int = 120) -> Path:
    """Write to a temp file and rename: concurrent shards each redrawing the views never leave a torn file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_metrics(rows: list[dict], cell_rows: list[dict], path: Path) -> Path:
    """One panel per metric and one of wall seconds, each against the actual NFE (log x), a line per sampler."""
    metrics = sorted({r["metric"] for r in rows})
    panels = [(m, [r for r in rows if r["metric"] == m], "value") for m in metrics]
    panels.append(("wall seconds", [r for r in cell_rows if r.get("nfe")], "wall_s"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (title, mine, y) in zip(axes[0], panels):
        for sampler in sorted({r["sampler"] for r in mine}):
            pts = sorted((r["nfe"], r[y]) for r in mine if r["sampler"] == sampler and r[y] is not None)
            if len(pts) == 1 and pts[0][0] == 0:  # the noise floor: a horizontal line
                ax.axhline(pts[0][1], color="grey", ls="--", lw=1, label=sampler)
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=sampler)
        ax.set_xscale("log")
        ax.set_xlabel("NFE (actual)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if y == "wall_s":
            ax.set_yscale("log")
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return save_atomically(fig, path)


def plot_samples(panels: dict[str, dict[str, torch.Tensor]], path: Path, reference: torch.Tensor | None = None) -> Path:
    """panels[sampler][budget] -> samples: a scatter per cell for 2-D points (the reference in grey behind), a tile of
    images per cell for images. A sweep is a matrix (samplers down, budgets across); one budget each, a grid."""
    rows = list(panels)
    cols = sorted({c for r in rows for c in panels[r]}, key=_column_order)
    if all(len(panels[r]) == 1 for r in rows):  # every sampler at one budget (lsde-compare): wrap into a grid
        cells = [(f"{r}\n{next(iter(panels[r]))}", next(iter(panels[r].values()))) for r in rows]
        ncols = min(4, len(cells))
        layout = [cells[i : i + ncols] for i in range(0, len(cells), ncols)]
    else:
        layout = [[(f"{r}\n{c}", panels[r].get(c)) for c in cols] for r in rows]
    first = next(x for line in layout for _, x in line if x is not None)
    images = first.ndim == 4
    size = 1.8 if images else 2.6
    width = max(len(line) for line in layout)
    fig, axes = plt.subplots(len(layout), width, figsize=(size * width, (size + 0.4) * len(layout)), squeeze=False)
    lim = None
    if not images:
        pts = [x for line in layout for _, x in line if x is not None] + ([reference] if reference is not None else [])
        finite = torch.cat([p[:, :2].float()[torch.isfinite(p[:, :2].float()).all(1)] for p in pts])
        lim = 1.1 * float(finite.abs().max()) if len(finite) else 1.0
    for i, line in enumerate(layout):
        for j in range(width):
            ax = axes[i][j]
            if j >= len(line) or line[j][1] is None:
                ax.axis("off")
                continue
            title, x = line[j]
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if images:
                ax.imshow(_tile(x), cmap="gray" if x.shape[1] == 1 else None, interpolation="nearest")
            else:
                if reference is not None:
                    ax.scatter(reference[:, 0], reference[:, 1], s=1, color="0.8")
                ax.scatter(x[:, 0].float(), x[:, 1].float(), s=1, color="tab:blue", alpha=0.6)
                ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    fig.tight_layout()
    return save_atomically(fig, path)


def _column_order(label: str):
    number = label.split(" ")[-1]
    try:
        return (0, float(number))
    except ValueError:
        return (1, label)


def _tile(x: torch.Tensor):
    from torchvision.utils import make_grid

    nrow = max(1, int(len(x) ** 0.5))
    grid = make_grid((x.float().clamp(-1, 1) + 1) / 2, nrow=nrow, padding=1, pad_value=1.0).permute(1, 2, 0)
    return grid.squeeze(-1) if x.shape[1] == 1 else grid
