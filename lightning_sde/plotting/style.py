"""What every plot of the project shares: readable metric names with units and direction, a colour x marker cycle
that keeps ~20 samplers apart, log axes with plain-number ticks, the choice of a y scale from the values, scatter
limits taken from the data rather than from the worst sampler, and a save that never leaves half a file."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from lightning_sde.files import replace_atomically  # noqa: E402
from lightning_sde.metrics.scorer import direction  # noqa: E402


def save_atomically(fig, path, dpi: int = 120, close: bool = True, **savefig) -> Path:
    """Save `fig` as `path` (its format from the suffix) whole or not at all: concurrent shards redrawing the same
    view, or a kill mid-save, never leave a torn file. Closes it unless `close` is false (more formats to come)."""
    path = Path(path)
    try:
        return replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png",
                                                                **savefig))
    finally:
        if close:
            plt.close(fig)


METRIC_NAMES = {"fid": "FID", "kid": "KID", "is": "IS", "sliced_w2": "sliced W2", "mmd": "MMD",
                "loglik": "log-likelihood", "wall_s": "wall time"}
METRIC_UNITS = {"sliced_w2": "data units", "loglik": "nats per sample", "wall_s": "s"}
METRIC_NOTES = {"kid": "unbiased: can be < 0", "is": "from 1 to the number of classes",
                "precision": "share of samples inside the data's manifold",
                "recall": "share of the data inside the samples' manifold", "loglik": "exact, under the true density"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
DECADE = 8.0  # a panel whose values span more than this ratio (about a decade) gets a log axis


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


def metric_label(metric: str) -> str:
    """An axis label: name [unit], e.g. 'sliced W2 [data units]', 'wall time [s]'."""
    return metric_name(metric) + (f" [{METRIC_UNITS[metric]}]" if metric in METRIC_UNITS else "")


def metric_title(metric: str) -> str:
    """A panel title: name (direction), and the metric's note on a second line, e.g. 'KID (lower is better)\n
    unbiased: can be < 0'."""
    title = f"{metric_name(metric)} ({direction(metric)})"
    return title + (f"\n{METRIC_NOTES[metric]}" if metric in METRIC_NOTES else "")


def natural(label: str) -> list:
    """A sort key that orders numbers within labels by value (ddim_50 before ddim_100)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", label) if part]


def palette(n: int) -> list:
    """n colours: tab20's dark shades first, then its light ones (adjacent entries are far apart)."""
    colours = plt.cm.tab20.colors
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return [colours[order[i % 20]] for i in range(n)]


def sampler_styles(labels) -> dict[str, dict]:
    """label -> {'color', 'marker'}: distinct colours for up to 20 labels and a marker cycle on top, so (colour,
    marker) pairs stay distinct up to 100 labels and a line can be told apart without colour; the light shade of a
    hue (labels 10-19) has another marker than its dark shade's (labels 0-9)."""
    labels = list(dict.fromkeys(labels))
    colours = palette(len(labels))
    return {label: {"color": colours[i], "marker": MARKERS[(i + i // 10) % len(MARKERS)]}
            for i, label in enumerate(labels)}


def plain_log_axis(axis, label_between: bool = False) -> None:
    """Ticks of a log axis as plain numbers (10, 100, 1000; 20 and 50 in between on ranges of up to two decades, where
    decades alone leave one or two labels), no 10^k; `label_between`: on such ranges 3, 4 and 7 too (a value axis)."""
    lo, hi = sorted(axis.get_view_interval())
    narrow = lo > 0 and hi / lo <= 100
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
    if narrow and label_between:  # values between two labels (FIDs of 37-39 between 20 and 50), smaller
        axis.set_minor_locator(LogLocator(base=10, subs=(3.0, 4.0, 7.0)))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_tick_params(which="minor", labelsize=7)


def choose_yscale(values) -> tuple[str, float | None]:
    """('linear' | 'log' | 'symlog', linthresh): log when the positive values span more than ~a decade; symlog when
    some are <= 0 and the magnitudes span that much (linear within +-linthresh, log outside)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if len(vals) < 2:
        return "linear", None
    mags = sorted(abs(v) for v in vals if v != 0)
    if not mags or mags[-1] / mags[0] <= DECADE:
        return "linear", None
    if min(vals) > 0:
        return "log", None
    # the linear band: the small magnitudes (the 10th percentile), at least 1/1000 of the median (not of the largest:
    # a diverged sampler's 1e22 made a band of 1e19, with every other value flat on 0 inside it)
    small = max(mags[len(mags) // 10], mags[len(mags) // 2] * 1e-3)
    return "symlog", 10.0 ** math.floor(math.log10(small))  # a float: 10 ** 22 as an int is too large for symlog


def robust_limits(x: torch.Tensor, quantile: float = 0.005, pad: float = 0.1) -> tuple[tuple, tuple]:
    """((xmin, xmax), (ymin, ymax)) of the first two coordinates: the central 1 - 2 quantile of the finite points,
    padded by `pad` of the range, widened to a common side (equal aspect)."""
    x = x[:, :2].detach().double().cpu()
    x = x[torch.isfinite(x).all(1)]
    if len(x) == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    q = torch.quantile(x, torch.tensor([quantile, 1 - quantile], dtype=torch.float64), dim=0)
    centre, half = (q[0] + q[1]) / 2, float((q[1] - q[0]).max()) / 2 * (1 + 2 * pad)
    half = half if half > 0 else 1.0
    return tuple((float(c) - half, float(c) + half) for c in centre)


def outside(x: torch.Tensor, limits) -> torch.Tensor:
    """A mask of the points (first two coordinates) outside the limits, non-finite ones included."""
    x = x[:, :2].detach().double().cpu()
    (x0, x1), (y0, y1) = limits
    inside = (x[:, 0] >= x0) & (x[:, 0] <= x1) & (x[:, 1] >= y0) & (x[:, 1] <= y1)
    return ~inside


def outside_note(x: torch.Tensor, out: torch.Tensor) -> str:
    """What a scatter panel leaves out (`out`: outside's mask): `3 of 500 outside; 2 of 500 not finite`."""
    nonfinite = int((~torch.isfinite(x[:, :2].detach())).any(1).sum())
    said = [f"{int(out.sum()) - nonfinite} of {len(x)} outside"] if int(out.sum()) > nonfinite else []
    return "; ".join(said + ([f"{nonfinite} of {len(x)} not finite"] if nonfinite else []))


__all__ = ["choose_yscale", "metric_label", "metric_name", "metric_title", "natural", "outside", "outside_note",
           "palette", "plain_log_axis", "robust_limits", "sampler_styles", "save_atomically"]
