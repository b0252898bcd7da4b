"""Views of a sampler sweep: each metric and the wall time against the actual NFE, and the samples of every cell
side by side (rows: samplers, columns: budgets), all drawn from the results alone.

`metrics_figure` / `samples_figure` build the matplotlib Figure (tests inspect it); `plot_metrics` / `plot_samples`
save it.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, SymmetricalLogLocator  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from lightning_sde.metrics.scorer import CLOSEST_TO_EXACT  # noqa: E402
from lightning_sde.plotting.style import (  # noqa: E402
    METRIC_UNITS,
    choose_yscale,
    metric_label,
    metric_name,
    metric_title,
    natural,
    outside,
    outside_note,
    plain_log_axis,
    robust_limits,
    sampler_styles,
    save_atomically,
)

FLOOR_COLORS = ("0.35", "0.62", "0.15", "0.8")  # one grey per protocol's noise floor
PROTOCOL_LINES = ("-", "--", ":", "-.")  # a sampler keeps its colour in every protocol; the protocols differ by line
PROTOCOL_FILLS = ("full", "none", "left", "top")  # ... and by marker fill (a one-budget point has no line)
DODGE, DODGE_SPAN = 1.1, 1.35  # samplers at one NFE drawn 10 % apart along the axis, all within 35 %
DIVERGED_COLOR = "crimson"
DODGED = "; samplers that share an NFE drawn side by side (up to 35 % apart on the axis)"
FLOOR_LABELS = {True: "noise floor (real samples the reference does not hold)",  # a checkpoint's: its data's
                False: "noise floor (a second exact sample set)"}


def _finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


def _is_floor(r: dict) -> bool:
    return r.get("grid") == "exact" or r.get("nfe") == 0  # no sampler ran: the second exact sample set


def _protocol(r: dict) -> str:
    """What the views appended to the row's sampler label (' [seeds 0+64]'), or ''."""
    return r["sampler"][len(r.get("sampler_label", r["sampler"])):]


def line_styles(rows: list[dict]) -> dict[str, dict]:
    """view label -> {'color', 'marker', 'ls', 'fillstyle'}: a sampler's colour and marker are its own in every
    protocol (the rows' `sampler_label`); the line style and the marker's fill (a protocol with one budget draws no
    line) tell the protocols apart, in the order they were first run (the first keeps its solid line and full markers
    when another is added); floors get a grey per protocol."""
    first_run = {}
    for r in rows:
        first_run[_protocol(r)] = min(first_run.get(_protocol(r), "~"), str(r.get("time") or ""))
    protocols = sorted(first_run, key=lambda p: (first_run[p], natural(p)))
    plain = sampler_styles(sorted({r.get("sampler_label", r["sampler"]) for r in rows if not _is_floor(r)},
                                  key=natural))
    styles = {}
    for r in rows:
        i = protocols.index(_protocol(r))
        # (line, fill) and (grey, line) pairs stay distinct up to 16 protocols (a multirun over seed ranges)
        if _is_floor(r):
            styles[r["sampler"]] = {"color": FLOOR_COLORS[i % len(FLOOR_COLORS)], "marker": "",
                                    "ls": ("--", ":", "-.", "-")[i // len(FLOOR_COLORS) % 4]}
        else:
            styles[r["sampler"]] = {**plain[r.get("sampler_label", r["sampler"])],
                                    "ls": PROTOCOL_LINES[i % len(PROTOCOL_LINES)],
                                    "fillstyle": PROTOCOL_FILLS[(i + i // len(PROTOCOL_LINES)) % len(PROTOCOL_FILLS)]}
    return styles


def from_floor(rows: list[dict]) -> list[dict] | None:
    """A CLOSEST_TO_EXACT metric's rows as differences from their protocol's noise floor (value, interval; the floor
    itself at 0), or None when some protocol has no finite floor. Log-likelihoods near exact samples' (-2.45 against
    -2.5) are then read on their own scale, not crushed by a diverged sampler's -1000."""
    floors = {_protocol(r): float(r["value"]) for r in rows if _is_floor(r) and _finite(r.get("value"))}
    if not floors or any(_protocol(r) not in floors for r in rows):
        return None
    shift = ("value", "ci_low", "ci_high")
    return [{**r, **{k: float(r[k]) - floors[_protocol(r)] for k in shift if _finite(r.get(k))}} for r in rows]


def _panel(ax, metric: str, mine: list[dict], y: str, styles: dict, relative: bool = False) -> None:
    """One metric (or the wall time) against NFE: a line per sampler with its bootstrap intervals as error bars,
    the noise floor as a dashed line in a grey band (its own interval); `relative`: the values are differences from
    the floor (`from_floor`)."""
    by_sampler = defaultdict(list)
    floors = []
    for r in mine:
        if not _finite(r.get(y)):
            continue
        (floors if _is_floor(r) else by_sampler[r["sampler"]]).append(r)
    order = sorted(by_sampler, key=natural)
    sharing = defaultdict(list)  # NFE -> the samplers with a point there, drawn side by side: none hidden
    for sampler in order:
        for r in by_sampler[sampler]:
            sharing[r["nfe"]].append(sampler)

    def dodged(r, sampler) -> float:
        """The point's x: its NFE, moved aside only where other samplers have a point at the same NFE."""
        there = sharing[r["nfe"]]
        step = min(DODGE, DODGE_SPAN ** (1 / max(len(there) - 1, 1)))
        return r["nfe"] * step ** (there.index(sampler) - (len(there) - 1) / 2)

    for sampler in order:
        pts = sorted(by_sampler[sampler], key=lambda r: r["nfe"])
        xs, ys = [dodged(r, sampler) for r in pts], [float(r[y]) for r in pts]
        has_ci = y == "value" and any(_finite(r.get("ci_low")) and _finite(r.get("ci_high")) for r in pts)
        style = styles[sampler]
        if has_ci:
            lo = [v - float(r["ci_low"]) if _finite(r.get("ci_low")) else float("nan") for v, r in zip(ys, pts)]
            hi = [float(r["ci_high"]) - v if _finite(r.get("ci_high")) else float("nan") for v, r in zip(ys, pts)]
            ax.errorbar(xs, ys, yerr=[[max(v, 0.0) for v in lo], [max(v, 0.0) for v in hi]], color=style["color"],
                        marker=style["marker"], fillstyle=style["fillstyle"], ls=style["ls"], ms=4, lw=1.2,
                        elinewidth=0.8, capsize=2, label=sampler)
        else:
            ax.plot(xs, ys, color=style["color"], marker=style["marker"], fillstyle=style["fillstyle"], ls=style["ls"],
                    ms=4, lw=1.2, label=sampler)
    diverged = [r for r in mine if y == "value" and r.get("value") is None and r.get("n_nonfinite")]
    if diverged:  # at the top of the panel, where no value is: a sampler that diverged, not a cell never run
        ax.plot([r["nfe"] for r in diverged], [0.97] * len(diverged), ls="", marker="x", color=DIVERGED_COLOR, ms=7,
                transform=blended_transform_factory(ax.transData, ax.transAxes), clip_on=False)
    for i, r in enumerate(sorted(floors, key=lambda r: natural(r["sampler"]))):
        v, color = float(r[y]), styles[r["sampler"]]["color"]
        ax.axhline(v, color=color, ls=styles[r["sampler"]]["ls"], lw=1, zorder=1)
        if _finite(r.get("ci_low")) and _finite(r.get("ci_high")):
            ax.axhspan(float(r["ci_low"]), float(r["ci_high"]), color=color, alpha=0.15, lw=0, zorder=0)
        # protocols' labels at the left, the right, then under the line: close floors' labels do not overprint
        ax.annotate(f"noise floor{_protocol(r)}", xy=(0.99 if i % 2 else 0.01, v), xycoords=("axes fraction", "data"),
                    ha="right" if i % 2 else "left", va="top" if i % 4 > 1 else "bottom", fontsize=7, color=color)
    values = [float(r[y]) for r in mine if _finite(r.get(y))]
    scale, linthresh = choose_yscale(values)
    title = metric_title(metric)
    if relative:
        title = f"{metric_name(metric)} minus exact samples' (0 is best)" + title[len(title.split(chr(10))[0]):]
    if scale == "log":
        ax.set_yscale("log")
        plain_log_axis(ax.yaxis, label_between=True)
    elif scale == "symlog":
        ax.set_yscale("symlog", linthresh=linthresh)
        decades = math.log10(max(abs(v) for v in values) / linthresh)
        subs = (1.0, 2.0, 5.0) if decades <= 1.5 else (1.0,)  # ticks that do not collide
        ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=linthresh, subs=subs))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        title += f" (log axis beyond ±{linthresh:g})"
    ax.set_xscale("log")
    plain_log_axis(ax.xaxis)
    nfes = sorted({float(r["nfe"]) for pts in by_sampler.values() for r in pts} | {float(r["nfe"]) for r in diverged})
    label = lambda v: f"{v:.0f}" if v >= 100 else f"{v:.3g}"  # noqa: E731
    lo, hi = ax.get_xlim()
    # the axes' width once laid out: a panel is 4.3 inches with its labels (its position now, before the constrained
    # layout, spans more of a figure with a wide legend: 10 and 12 collided)
    width = min(ax.get_position().width * ax.figure.get_figwidth(), 3.4)
    points_a_decade = width * 72 / max(math.log10(hi / lo), 1e-9)
    ticks = []
    for v in nfes:  # labels that do not collide: half of each label's width (6.5 pt a digit) and a gap apart
        apart = 3.25 * (len(label(v)) + len(label(ticks[-1]))) + 6 if ticks else 0
        if not ticks or math.log10(v / ticks[-1]) * points_a_decade >= apart:
            ticks.append(v)
    if 1 <= len(ticks) <= 12:  # the NFE values of the sweep, where decades alone would leave them unlabelled
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: label(v)))
    ax.set_xlabel("NFE (score evaluations)")
    ax.set_ylabel(f"difference [{METRIC_UNITS[metric]}]" if relative and metric in METRIC_UNITS else
                  metric_label(metric))
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)


def metrics_figure(rows: list[dict], cell_rows: list[dict], subject: str | None = None):
    """One panel per metric and one of wall seconds, each against the actual NFE (log x), a line per sampler; the
    legend outside the panels, on the right; `subject` (what was measured) heads the footer."""
    metrics = sorted({r["metric"] for r in rows})
    panels = []
    for m in metrics:
        mine = [r for r in rows if r["metric"] == m]
        shifted = from_floor(mine) if m in CLOSEST_TO_EXACT else None
        panels.append((m, shifted or mine, "value", shifted is not None))
    panels.append(("wall_s", [r for r in cell_rows if r.get("nfe")], "wall_s", False))
    samplers = sorted({r["sampler"] for r in rows if not _is_floor(r)}, key=natural)
    styles = line_styles(rows)
    ncols = 2 if len(panels) == 4 else min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    entries = len(samplers) + len({r["sampler"] for r in rows if _is_floor(r)}) + 1
    legend_cols = 1 if entries <= 22 else -(-entries // 34)  # the figure grows with its legend, not the panels shrink
    height = max(3.9 * nrows, 0.2 * -(-entries // legend_cols) + 1.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols + 2.6 * legend_cols, height), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (metric, mine, y, relative) in zip(axes.flat, panels):
        _panel(ax, metric, mine, y, styles, relative)
    handles = [Line2D([], [], color=styles[s]["color"], marker=styles[s]["marker"], fillstyle=styles[s]["fillstyle"],
                      ls=styles[s]["ls"], ms=5, lw=1.2) for s in samplers]
    labels = list(samplers)
    floors = {r["sampler"]: (_protocol(r), bool(r.get("checkpoint"))) for r in rows if _is_floor(r)}
    for floor in sorted(floors, key=natural):
        color = styles[floor]["color"]
        handles.append((Line2D([], [], color=color, ls=styles[floor]["ls"], lw=1), Patch(color=color, alpha=0.15)))
        labels.append(FLOOR_LABELS[floors[floor][1]] + floors[floor][0])
    if any(r.get("value") is None and r.get("n_nonfinite") for r in rows):
        handles.append(Line2D([], [], ls="", marker="x", color=DIVERGED_COLOR, ms=6))
        labels.append("diverged: samples not all finite (x at the top, at its NFE)")
    fig.legend(handles, labels, loc="outside right upper", fontsize="small", title="sampler", ncols=legend_cols)
    versions = code_versions(rows)
    caption = "; ".join(filter(None, [_caption(rows) + (DODGED if len(samplers) > 1 else ""),
                                      timing_note(cell_rows), versions and f"values from {versions}"]))
    caption = textwrap.fill(caption, width=int(fig.get_figwidth() * 15))  # about 15 characters an inch at 9 pt
    fig.supxlabel(f"{subject}\n{caption}" if subject else caption, fontsize=9)  # a title would run under the legend
    return fig


TIMING_CONDITIONS = {"batch_size": "batch sizes", "world_size": "process counts", "threads": "threads",
                     "host": "hosts", "device": "devices"}  # what a cell's wall time depends on besides its sampler


def timing_conditions(cell_rows: list[dict]) -> list[str]:
    """Where the timed cells' wall times were measured under different conditions, which: e.g. ["batch sizes 1 / 400",
    "3 launches (...)"] (a launch: one lsde-bench process, a shard's or a later extension's, by its start time; rows
    written before launches were recorded: their code version). Empty when they are alike."""
    timed = [r for r in cell_rows if r.get("nfe")]
    differ = []
    for field, name in TIMING_CONDITIONS.items():
        values = {r[field] for r in timed if r.get(field) is not None}
        if len(values) > 1:
            differ.append(f"{name} {' / '.join(map(str, sorted(values, key=lambda v: natural(str(v)))))}")
    launches = {r.get("launch") or r.get("git_commit") for r in timed} - {None}
    if len(launches) > 1:
        differ.append(f"{len(launches)} launches (shards or later extensions)")
    return differ


def code_versions(rows: list[dict]) -> str:
    """Where the cells of `rows` were computed by more than one code version (an extension after an update: a sampler
    changed between them changes its values), which, e.g. "2 code versions (8c1d43b: 6 cells; 87ebc1f: 2 cells)" (a
    cell whose metrics two versions computed counts for both), the earliest first; empty when one made them all."""
    cells_of, first = defaultdict(set), {}
    for r in rows:
        if r.get("git_commit"):
            first[r["git_commit"]] = min(first.get(r["git_commit"], "~"), str(r.get("time") or "~"))
            cells_of[r["git_commit"]].add((r.get("target"), r.get("sampler"), r.get("grid"), r.get("requested"),
                                           r.get("seed_start"), r.get("seed_count")))
    count = Counter({commit: len(cells) for commit, cells in cells_of.items()})
    if len(count) < 2:
        return ""
    short = lambda commit: re.sub(r"^([0-9a-f]{12})[0-9a-f]{28}", r"\1", commit)  # noqa: E731  (-dirty kept)
    return (f"{len(count)} code versions ("
            + "; ".join(f"{short(commit)}: {n} cell{'s' * (n > 1)}"
                        for commit, n in sorted(count.items(), key=lambda kv: (first[kv[0]], kv[0]))) + ")")


def timing_note(cell_rows: list[dict]) -> str:
    """What the wall times are, for the views: the sampling alone, measured once a cell, without a grid's set-up;
    where they were measured under different conditions, which."""
    timed = [r for r in cell_rows if r.get("nfe")]
    if not timed:
        return ""
    text = "wall time: the sampling alone, measured once a cell"
    setup = max((float(r.get("setup_wall_s") or 0) for r in timed), default=0.0)
    if setup:
        text += f", without a grid's set-up (up to {setup:.3g} s a cell: the CSV's setup_wall_s)"
    differ = timing_conditions(timed)
    if differ:
        text += f"; timed under differing conditions, so compare times only where alike: {'; '.join(differ)}"
    return text


def _caption(rows: list[dict]) -> str:
    sizes = sorted({r.get("n_samples") for r in rows if r.get("n_samples")})
    text = f"{sizes[0]} samples per cell" if len(sizes) == 1 else "samples per cell: " + ", ".join(map(str, sizes))
    levels = sorted({r.get("ci_level") or 0.9 for r in rows if _finite(r.get("ci_low"))})
    if levels:
        text += (f"; error bars: {', '.join(f'{lv:.0%}' for lv in levels)} bootstrap intervals (the samples "
                 "resampled, the reference fixed)")
    else:
        text += "; no intervals in these rows (written before the harness computed them): do not rank close values"
    return text


def plot_metrics(rows: list[dict], cell_rows: list[dict], path: Path, subject: str | None = None) -> Path:
    """`metrics_figure`, saved."""
    return save_atomically(metrics_figure(rows, cell_rows, subject), path, bbox_inches="tight")


def samples_figure(panels: dict[str, dict[str, torch.Tensor]], reference: torch.Tensor | None = None,
                   note: str = ""):
    """panels[sampler][budget] -> samples: a scatter per cell for 2-D points (the reference in grey behind), a tile of
    images per cell for images. A sweep is a matrix (samplers down, budgets across); one budget each, a grid.
    Scatter limits come from the reference (else the first panel): a diverged sampler does not shrink the rest;
    its points outside are counted in the panel."""
    rows = sorted(panels, key=lambda r: "exact" not in panels[r])  # the noise floor first
    cols = sorted({c for r in rows for c in panels[r]}, key=_column_order)
    if all(len(panels[r]) == 1 for r in rows):  # every sampler at one budget (lsde-compare): wrap into a grid
        cells = [(f"{r}\n{next(iter(panels[r]))}", next(iter(panels[r].values()))) for r in rows]
        ncols = min(4, len(cells))
        layout = [cells[i : i + ncols] for i in range(0, len(cells), ncols)]
    else:  # fixed-NFE budgets share columns; a row of other budgets (tolerances, exact) fills from the left
        nfe_cols = [c for c in cols if c.startswith("nfe ")]
        layout = []
        for r in rows:
            if all(c in nfe_cols for c in panels[r]):
                layout.append([(f"{r}\n{c}", panels[r].get(c)) for c in nfe_cols])
            else:
                own = sorted(panels[r], key=_loose_first)
                layout.append([(f"{r}\n{c}", panels[r][c]) for c in own])
    first = next(x for line in layout for _, x in line if x is not None)
    images = first.ndim == 4
    size = 1.8 if images else 2.6
    width = max(len(line) for line in layout)
    fig, axes = plt.subplots(len(layout), width, figsize=(size * width, (size + 0.45) * len(layout) + 0.4),
                             squeeze=False, layout="constrained")  # unshared: each panel's limits are set (shared
    # axes made every set walk all the others: 160 panels took a minute, a 297-cell sweep's did not finish)
    limits = None if images else robust_limits(reference if reference is not None else first)
    for i, line in enumerate(layout):
        for j in range(width):
            ax = axes[i][j]
            if j >= len(line) or line[j][1] is None:
                ax.axis("off")
                continue
            title, x = line[j]
            ax.set_title(title, fontsize=8)
            if images:
                ax.set_xticks([])
                ax.set_yticks([])
                ax.imshow(_tile(x), cmap="gray" if x.shape[1] == 1 else None, interpolation="nearest")
                continue
            if reference is not None:
                ax.scatter(reference[:, 0], reference[:, 1], s=1, color="0.8", rasterized=True)
            out = outside(x, limits)
            shown = x[~out].float()
            ax.scatter(shown[:, 0], shown[:, 1], s=1, color="tab:blue", alpha=0.6, rasterized=True)
            if out.any():
                ax.text(0.02, 0.02, outside_note(x, out), transform=ax.transAxes, fontsize=6, color="tab:red",
                        va="bottom")
            ax.set(xlim=limits[0], ylim=limits[1], aspect="equal")
            ax.tick_params(labelsize=6)
            ax.label_outer()  # the same limits in every panel: tick labels on the outer ones only
    what = ("the first samples of every cell (same seeds)" + ("" if images or first.shape[1] == 2 else
                                                              f"; coordinates 1 and 2 of {first.shape[1]}"))
    fig.suptitle(what + ("; grey: reference samples" if reference is not None and not images else "") + note,
                 fontsize=9)
    return fig


def plot_samples(panels: dict[str, dict[str, torch.Tensor]], path: Path, reference: torch.Tensor | None = None,
                 note: str = "") -> Path:
    """`samples_figure`, saved."""
    return save_atomically(samples_figure(panels, reference, note), path, bbox_inches="tight")


def _column_order(label: str):
    number = label.split(" ")[-1]
    try:
        return (0, float(number))
    except ValueError:
        return (1, label)


def _loose_first(label: str):
    """Budgets from the fewest NFE: fixed NFE ascending, tolerances descending (loose first)."""
    kind, number = _column_order(label)
    return (kind, -number if label.startswith("tol ") else number) if kind == 0 else (kind, number)


def _tile(x: torch.Tensor):
    from torchvision.utils import make_grid

    nrow = max(1, int(len(x) ** 0.5))
    grid = make_grid((x.float().clamp(-1, 1) + 1) / 2, nrow=nrow, padding=1, pad_value=1.0).permute(1, 2, 0)
    return grid.squeeze(-1) if x.shape[1] == 1 else grid
