"""Views of a results file, regenerated from it (and its sample previews) alone: PNG plots, a markdown table, a
merged CSV, a plain-text table for the terminal, a W&B run."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from pathlib import Path

from lightning_sde.bench.dashboard import (
    PROTOCOL_FIELDS,
    SweepRun,
    cell_id,
    flat,
    read_sidecar,
    report_command,
    save_workspace,
    sweep_config,
    workspace,
)
from lightning_sde.bench.results import (
    SamplePreviews,
    SweepPlans,
    cell_key_of,
    for_views,
    labelled,
    load,
    protocol,
    subject,
    variant_of,
    views_of,
)
from lightning_sde.errors import DashboardError, first_line
from lightning_sde.files import taking_turns, write_csv, write_text
from lightning_sde.metrics.scorer import direction
from lightning_sde.plotting import drawable
from lightning_sde.plotting.style import natural
from lightning_sde.plotting.sweeps import code_versions, plot_metrics, plot_samples, timing_conditions, timing_note
from lightning_sde.plotting.tables import text_table
from lightning_sde.tracking import finish_wandb, wandb_disabled

log = logging.getLogger(__name__)
COLUMNS = ["sampler", "sampler_name", "grid", "requested", "nfe", "metric", "value", "ci_low", "ci_high", "ci_level",
           "wall_s", "setup_nfe", "setup_wall_s", "selected", "samples_per_s", "n_samples", "n_nonfinite", "seed_start",
           "seed_count", "dtype", "peak_memory_mb", "device", "git_commit", "time", "target", "params"]

VIEWS_LOCK = ".views.lock"  # in the views' folder: one process at a time reads the rows and writes the views


def preview(previews: SamplePreviews, row: dict):
    """The samples a row's cell kept (None when it kept none)."""
    return previews.load(row.get("sampler_label", row["sampler"]), row["grid"], row["requested"],
                         SamplePreviews.protocol(*protocol(row)), cell_key_of(row["key"]))


def reference(previews: SamplePreviews, row: dict):
    """The reference set a row's cell was scored against (its protocol's; None when the sweep kept none)."""
    return previews.load_reference(SamplePreviews.protocol(*protocol(row)))


def cells(rows: list[dict]) -> list[dict]:
    """One row per cell (its timing), for the time-vs-NFE views."""
    seen = {}
    for r in rows:
        seen.setdefault((r["target"], r["sampler"], r["grid"], r["requested"], r["seed_start"], r["seed_count"]), r)
    return list(seen.values())


def write_rows_csv(rows: list[dict], path: Path) -> None:
    """Every row, COLUMNS first (written whole: concurrent shards each regenerating the views never tear it)."""
    extra = sorted({k for r in rows for k in r} - set(COLUMNS) - {"key"})
    write_csv(path, ({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items() if k != "key"}
                     for r in rows), COLUMNS + extra)


def fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def with_interval(r: dict) -> str:
    """`value [low, high]` when the row carries a bootstrap interval, else the value ("diverged" for a sampler whose
    samples were not all finite); the three to the same decimals, two significant digits of the interval's width
    (digits below its noise say nothing)."""
    value, low, high = r.get("value"), r.get("ci_low"), r.get("ci_high")
    if value is None and r.get("n_nonfinite"):  # a diverged sampler: said, not left blank like a cell not run
        return f"diverged ({r['n_nonfinite']} of {r.get('n_samples', '?')} not finite)"
    if low is None or high is None or value is None:
        return fmt(value)
    width = high - low
    if not (math.isfinite(width) and width > 0 and math.isfinite(value)):
        return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"
    if max(abs(value), abs(low), abs(high)) >= 1e6:  # a diverging sampler's: its digits would fill the table
        return f"{value:.2e} [{low:.2e}, {high:.2e}]"
    d = max(0, 1 - math.floor(math.log10(width)))
    return f"{value:.{d}f} [{low:.{d}f}, {high:.{d}f}]"


def _column_key(col):
    grid, requested = col
    order = {"exact": 0, "configured": 1, "nfe": 2, "tol": 3}.get(grid, 4)
    return (order, 0 if requested is None else (requested if grid == "nfe" else -requested))


def column_label(grid: str, requested) -> str:
    return {"exact": "exact", "configured": "as configured"}.get(grid) or f"{grid} {fmt(requested)}"


def interval_levels(rows: list[dict]) -> str:
    """What the brackets hold, as a clause to append, e.g. "; [90% bootstrap interval]"; "" when no row has one."""
    levels = sorted({r["ci_level"] for r in rows if r.get("ci_level")})
    return f"; [{', '.join(f'{lv:.0%}' for lv in levels)} bootstrap interval]" if levels else ""


def markdown(rows: list[dict]) -> str:
    """Per metric: samplers down, requested NFE (or tolerance) across; each entry `value [interval] (actual NFE)`."""
    rows, _ = for_views(rows)
    out = []
    for metric in sorted({r["metric"] for r in rows}):
        mine = [r for r in rows if r["metric"] == metric]
        cols = sorted({(r["grid"], r["requested"]) for r in mine}, key=_column_key)
        table = defaultdict(dict)
        for r in mine:
            cost = fmt(r["nfe"]) + (f" + {fmt(r['setup_nfe'])} set-up" if r.get("setup_nfe") else "")
            table[r["sampler"]][(r["grid"], r["requested"])] = with_interval(r) + (
                "" if r["grid"] == "exact" else f" ({cost})")  # the noise floor spends no NFE
        head = ["sampler"] + [column_label(g, v) for g, v in cols]
        arrow = direction(metric)
        bracket = interval_levels(mine)
        setup = " + set-up NFE" if any(r.get("setup_nfe") for r in mine) else ""
        out += [f"### {metric} ({arrow}{bracket}; actual NFE{setup} in parentheses)", "",
                "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        floors = {r["sampler"] for r in mine if r["grid"] == "exact"}
        ordered = sorted(table, key=lambda s: (s not in floors, natural(s)))  # the noise floor first
        out += ["| " + " | ".join([s] + [table[s].get(c, "") for c in cols]) + " |" for s in ordered]
        out.append("")
    chosen = {(r["sampler"], column_label(r["grid"], r["requested"])): r["selected"] for r in rows if r.get("selected")}
    if chosen:  # grid=select ran one configuration per cell: which
        out += ["What `grid=select` chose on its pilot:", ""]
        out += [f"- {sampler} at {budget}: {choice}" for (sampler, budget), choice in sorted(
            chosen.items(), key=lambda item: (natural(item[0][0]), item[0][1]))] + [""]
    versions = code_versions(rows)
    if versions:
        out += [f"Values from {versions}: where a sampler changed between them, its values mix both (the CSV's "
                "git_commit says which made each row).", ""]
    return "\n".join(out)


def summary_table(rows: list[dict]) -> str:
    """The terminal view: one line per cell with its NFE, time and every metric with its interval (the noise floor
    first)."""
    rows, _ = for_views(rows)
    metrics = sorted({r["metric"] for r in rows})
    lines = {}
    for r in rows:
        key = (r["sampler"], r["grid"], r["requested"])
        line = lines.setdefault(key, {"sampler": r["sampler"], "budget": column_label(r["grid"], r["requested"]),
                                      "nfe": r["nfe"], "setup_nfe": r.get("setup_nfe") or "",
                                      "setup_wall_s": r.get("setup_wall_s") or "", "wall_s": r["wall_s"],
                                      "selected": r.get("selected") or "",
                                      "samples_per_s": r.get("samples_per_s") or "", "grid": r["grid"]})
        line[r["metric"]] = with_interval(r)
    ordered = sorted(lines.values(), key=lambda line: (line["grid"] != "exact", line["nfe"] or 0, line["sampler"]))
    arrows = ", ".join(f"{m} {direction(m)}" for m in metrics)
    setup = ["setup_nfe"] if any(line["setup_nfe"] for line in ordered) else []  # only samplers that set up pay it
    chosen = ["selected"] if any(line["selected"] for line in ordered) else []
    setup_s = ["setup_wall_s"] if any(line["setup_wall_s"] for line in ordered) else []
    levels, timing, versions = interval_levels(rows), timing_note(cells(rows)), code_versions(rows)
    return text_table(ordered, ["sampler", "budget", "nfe", *setup, *chosen, "wall_s", *setup_s, "samples_per_s",
                                *metrics]) + (f"\n({arrows}{levels}{'; ' + timing if timing else ''}"
                                              f"{'; values from ' + versions if versions else ''})")


def terminal_table(view: list[dict], preferred) -> str:
    """summary_table of the views' rows; after a sweep (`preferred`: its keys) in a file that holds others (earlier
    launches, a multirun's earlier jobs), of the sweep's own rows, saying where the rest are: every job of a 6-job
    multirun printed every earlier job's rows again (4247 lines)."""
    mine = [r for r in view if r.get("key") in preferred]
    if not preferred or not mine or len(mine) == len(view):
        return summary_table(view)
    cells_of = lambda rows: len({(r["sampler"], r["grid"], r["requested"]) for r in rows})  # noqa: E731
    others = cells_of(view) - cells_of(mine)
    return (summary_table(mine) + f"\n(this sweep's {cells_of(mine)} cell(s); with the {others} others the results "
            "file holds, in results.md and results.png)")


MAX_SAMPLE_PANELS = 180  # samples.png: 1056 cells made a 128-megapixel figure in 200 s (constrained layout)


def panels_within(panels: dict[str, dict], most: int) -> tuple[dict, str]:
    """(the first samplers' panels, in the figure's order, up to `most` panels in all, and the caption's note of what
    was left out); every sampler's with no note when they fit."""
    total = sum(map(len, panels.values()))
    if total <= most:
        return panels, ""
    ordered = sorted(panels, key=lambda r: "exact" not in panels[r])  # samples_figure's rows: the noise floor first
    shown, count = {}, 0
    for label in ordered:
        if shown and count + len(panels[label]) > most:
            break
        shown[label], count = panels[label], count + len(panels[label])
    return shown, (f"\n{len(shown)} of {len(panels)} samplers shown ({count} of {total} cells; at most {most} "
                   "panels): every cell's preview is under samples/")


def sample_panels(rows: list[dict], previews: SamplePreviews):
    """({sampler: {budget: samples}}, reference) from the previews the sweep kept; None when it kept none. The
    reference is drawn behind the samples only when they are all of one target (a reference is its target's)."""
    panels, sample_shape = {}, None
    shown = cells(rows)
    for cell in shown:
        x = preview(previews, cell)
        if x is None:
            continue
        if sample_shape is None:
            sample_shape = x.shape[1:]
        if x.shape[1:] != sample_shape or len(x) == 0:
            log.warning("the sample preview of %s at %s (shape %s) holds no samples of shape %s as the first; left "
                        "out of the picture", cell["sampler"], cell["requested"], tuple(x.shape), tuple(sample_shape))
            continue
        budget = (f"NFE {cell['nfe']:.4g}" if cell["grid"] == "configured"
                  else column_label(cell["grid"], cell["requested"]))
        panels.setdefault(cell["sampler"], {})[budget] = x
    if not panels or not drawable(sample_shape):
        return None
    one_target = len({cell["target"] for cell in shown}) == 1
    ref = reference(previews, shown[0]) if one_target else None
    if ref is not None and (ref.shape[1:] != sample_shape or len(ref) == 0):
        log.warning("the reference preview (shape %s) holds no samples of shape %s as the cells'; left out of the "
                    "picture", tuple(ref.shape), tuple(sample_shape))
        ref = None
    return panels, ref


def to_wandb(rows: list[dict], results: Path, project: str, name: str | None = None, run=None) -> str:
    """The sweep's one W&B run (resumed from the id kept next to the results, or `run` when the sweep just logged
    into it): the cells it has not logged yet, the results Table, and the workspace of its panels. DashboardError
    (one line) when W&B fails: the results and their views are written already."""
    state = read_sidecar(results) if run is None else run.state  # a sidecar it cannot read: its own ValueError
    try:
        return _to_wandb(rows, Path(results), project, name, run, state)
    except Exception as err:  # noqa: BLE001  (whatever W&B raises: a lost connection, an unusable folder)
        log.debug("W&B failed", exc_info=True)
        finish_wandb(1, f"{type(err).__name__}: {err}")  # a run left open would be closed by W&B's exit handler
        raise DashboardError(f"W&B: no run logged ({type(err).__name__}: {first_line(err)}); the results and their "
                             f"views are written: `{report_command(results, state.get('project', project))}` logs "
                             "them once W&B works") from None


def _to_wandb(rows: list[dict], results: Path, project: str, name: str | None, run, state: dict) -> str:
    # the sweep's name, which the run's group is (a results file of the sweep's may be outside its folder)
    sweep = state.get("group", results.parent.name)
    if run is None:  # the config describes the first protocol, whose cells have the plain keys; the tags, every row
        first = state.get("protocol") or min(rows, key=lambda r: str(r.get("time") or ""))
        config, _ = sweep_config(sweep, [r for r in rows if all(r.get(k) == first.get(k) for k in PROTOCOL_FIELDS)]
                                 or rows)
        tags = sweep_config(sweep, rows)[1]
        run = SweepRun(results, project, name or f"bench-{sweep}", sweep, flat("", config), tags)
    previews = SamplePreviews.of(results)
    by_cell = defaultdict(list)
    for r in rows:
        by_cell[(r["target"], r["sampler"], variant_of(r), r["grid"], r["requested"], r["seed_start"],
                 r["seed_count"])].append(r)
    # in the order the sweep logged them: the first protocol first
    for mine in sorted(by_cell.values(), key=lambda mine: str(mine[0].get("time") or "")):
        run.log_cell(cell_id(mine), mine, preview(previews, mine[0]), reference(previews, mine[0]))
    run.update_summaries()
    run.log_table(rows, COLUMNS)
    lines = [run.where()]
    keyed = [{**r, "sampler": run.label(r)} for r in rows]  # the panels show the keys the run logged
    definition = workspace(keyed, run.run.entity or os.environ.get("WANDB_ENTITY") or "", run.run.project,
                           run.state["group"])
    lines.append(save_workspace(definition, results.with_name(results.stem + ".workspace.json"),
                                online=not run.run.offline))
    run.finish()
    print("\n".join(lines))
    return lines[0]


def report(results, out_dir=None, use_wandb: bool = False, project: str = "lightning-sde-bench", name=None,
           run=None, preferred=frozenset()) -> dict:
    """The views of a results file; of rows alike but for their parameters, those with a `preferred` key (the cells of
    the sweep just run) are shown. Raises FileNotFoundError / ValueError (what is wrong with `results` or `out_dir`)
    before writing anything."""
    results = Path(results)
    out = Path(out_dir) if out_dir else results.parent
    if not results.exists():
        raise FileNotFoundError(f"no results file at {str(results)!r}; give the results .jsonl of a sweep")
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {str(out)!r} is a file; give a folder")
    rows_to_show(results)  # a file of no rows is refused before any folder is made
    out.mkdir(parents=True, exist_ok=True)
    with taking_turns(out / VIEWS_LOCK):  # the rows read and the views written in one turn: an older read never
        rows, paths = write_views(results, out, preferred)  # lands last (a report beside a sweep, or two shards)
    if use_wandb and wandb_disabled():
        log.info("WANDB_MODE=disabled: no W&B run is logged")
    elif use_wandb:
        # every cell, each variant of a label as the live sweep logged it (the views show the latest alone)
        paths["wandb"] = to_wandb(labelled(rows), results, project, name, run)
    return paths


def rows_to_show(results: Path) -> list[dict]:
    """The rows the views show (load); ValueError when there are none."""
    rows = load(results)
    if not rows:
        raise ValueError(f"no result rows in {str(results)!r}: the file is empty or none of its lines is a row "
                         "lsde-bench wrote; give the results .jsonl of a sweep")
    return rows


def write_views(results: Path, out: Path, preferred) -> tuple[list[dict], dict]:
    """(every row, {view: path}): the views of the rows `results` holds now."""
    rows = rows_to_show(results)
    view, hidden = for_views(rows, preferred)
    views = views_of(results, out)
    if hidden:
        log.warning("%s: %d row(s) not in the views: a sampler's curve shows the rows run as its latest ones were "
                    "(sampler parameters, dtype, device) and, of a budget computed twice, the later; %s has every "
                    "row", results, hidden, views["csv"].name)  # pragma: no mutate
    differ = timing_conditions(cells(view))
    if differ:
        log.warning("%s: the wall times shown were timed under differing conditions, so compare times only where alike "
                    "(the CSV has each row's): %s", results, "; ".join(differ))  # pragma: no mutate
    versions = code_versions(view)
    if versions:
        log.warning("%s: the values shown were computed by %s: where a sampler changed between them, its curve mixes "
                    "both (the CSV's git_commit says which made each row)", results, versions)  # pragma: no mutate
    missing = SweepPlans(results).missing({cell_key_of(r["key"]) for r in rows})
    gap = ""
    if missing:  # a shard not run yet, killed or refused: say so rather than draw a partial curve as the sweep's
        gap = (f"{len(missing)} planned cell(s) have no rows: their shards have not finished, were killed or were "
               f"refused ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); run them with the same "
               "overrides, then report again")
        log.warning("%s: %s", results, gap)
    paths = {k: views[k] for k in ("csv", "markdown", "png")}
    write_rows_csv(rows, paths["csv"])
    write_text(paths["markdown"], f"# {subject(view)}\n\n" + (f"**Incomplete:** {gap}.\n\n" if gap else "")
               + markdown(view))
    print(terminal_table(view, preferred))
    plot_metrics(view, cells(view), paths["png"], subject(view))
    samples = sample_panels(view, SamplePreviews.of(results))
    if samples is not None:
        panels, reference = samples
        shown, note = panels_within(panels, MAX_SAMPLE_PANELS)
        log.info("drawing %s (%d panels)", views["samples"], sum(map(len, shown.values())))  # pragma: no mutate
        paths["samples"] = plot_samples(shown, views["samples"], reference, note)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return rows, paths
