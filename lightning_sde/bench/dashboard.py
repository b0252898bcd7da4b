"""A sweep on W&B: one run per results file, logged live cell by cell, resumed by a rerun and updated by
`lsde-bench report --wandb`, plus a ready-made workspace of its panels.

The run's id is kept next to the results file (`results.wandb.json`, with the cells already logged), so a resumed
sweep, another shard's report or a later `report --wandb` continue the same run and never log a cell twice.

History keys, one row per cell (W&B's step counts the rows, on across launches; the charts use `nfe` as x axis):
  nfe, cell/sampler, cell/grid, cell/requested, cell/params   what the cell was (its configured parameters)
  cell/selected, cell/setup_nfe                               what grid=select chose to run, and its tuning's cost
  <metric>/<sampler>                                          its value (fid/ddim, sliced_w2/em, ...)
  <metric>_ci/<sampler>                                       half-width of its interval, when the harness made one
  wall_s/<sampler>                                            sampling time
  samples/<sampler>/nfe_<NNNNN>                               the first samples (same seeds for every sampler)
Summaries, from every row of the results file (whichever launch computed it): best/<metric>/<sampler> (the best over
its NFEs, with /nfe; for loglik the closest to the floor's, none without a floor), and floor/<metric> for the noise
floor (no sampler: no history row, no best); each with /ci_low and /ci_high, its interval, when it has one. The
run's protocol is in its config.
<sampler> is the cell's label under the run's first protocol (kept in the sidecar); under another (a multirun into one
results file: other seeds or target) it is the report's label against the first, `ddim [seeds 0+64]`, so the two
protocols never share a curve.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import uuid
from pathlib import Path

from lightning_sde.bench.results import (
    ResultsStore,
    cell_key_of,
    for_views,
    protocol_labels,
    unreadable,
    variant_of,
)
from lightning_sde.files import file_name, replace_atomically, write_text
from lightning_sde.metrics.scorer import ALL_METRICS, direction, ranks_above
from lightning_sde.tracking import check_wandb_mode, offline_history, sync_command, wandb_configured

log = logging.getLogger(__name__)
SIDECAR_SUFFIX = ".wandb.json"
# best/ and floor/ summaries are recomputed from the whole results file (0.3 s at 3150 rows): at most this often while
# cells are logged, and once after the last (a report's); per cell, a 1056-cell backfill took about 20 minutes
SUMMARY_EVERY_S = 30.0
# What the sidecar keeps of the run's first protocol: results.protocol's fields and those that name its target.
PROTOCOL_FIELDS = ("target", "seed_start", "seed_count", "checkpoint", "global_step", "problem", "sde")


def sidecar_path(results) -> Path:
    results = Path(results)
    return results.with_name(results.stem + SIDECAR_SUFFIX)


SIDECAR_TYPES = {"id": str, "project": str, "name": str, "group": str, "logged": list, "summaries_only": list,
                 "protocol": dict, "config": dict, "step": int}
# Config keys a later launch of the same protocol may extend (more budgets, samplers, metrics) or update; the others
# name the protocol, which the run's config keeps from its first.
EXTENDABLE_CONFIG = ("nfe", "tolerances", "metrics", "guidance", "samplers.", "batch_size", "git_commit", "shard")


def read_sidecar(results) -> dict:
    """The W&B state kept beside a results file ({} when there is none); ValueError naming the file for anything
    this package did not write there (read by lsde-bench before any sampling)."""
    path = sidecar_path(results)
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            raise ValueError(f"a JSON {type(state).__name__}, not an object")
        for key, kind in SIDECAR_TYPES.items():
            if key in state and not isinstance(state[key], kind):
                raise ValueError(f"{key} is not a {kind.__name__}")
        if "id" in state and not re.fullmatch(r"[A-Za-z0-9_-]+", state["id"]):
            raise ValueError(f"id {state['id']!r} is not a W&B run id")
        if isinstance(state.get("step"), bool) or state.get("step", 0) < 0:
            raise ValueError(f"step {state['step']!r} is not a W&B step")
        first = state.get("protocol")  # the first cell's protocol, that labels the others' (SweepRun.label)
        if first is not None and not (isinstance(first.get("target"), str) and all(
                isinstance(first.get(k), int) and not isinstance(first.get(k), bool)
                for k in ("seed_start", "seed_count"))):
            raise ValueError("protocol has no target (a string) and seed_start, seed_count (integers)")
    except (OSError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a readable W&B sidecar ({type(err).__name__}: {err}); delete it to start a "
                         "new W&B run") from None
    return state


def write_sidecar(results, state: dict) -> None:
    write_text(sidecar_path(results), json.dumps(state, indent=1, sort_keys=True))


def remember_sweep(results, project: str, name: str, group: str) -> dict:
    """The run's project, name and group, kept beside the results before any W&B call (first ones win): a later
    `report --wandb` logs into that group and project even when no live run was made (shards, W&B out of reach)."""
    state = read_sidecar(results)
    if any(state.get(k) is None for k in ("project", "name", "group")):
        for key, value in (("project", project), ("name", name), ("group", group)):
            state.setdefault(key, value)
        write_sidecar(results, state)
    return state


def report_command(results, project: str | None = None) -> str:
    """The command that logs a results file's W&B run, pasteable whatever its path holds."""
    import shlex

    return f"lsde-bench report {shlex.quote(str(results))} --wandb" + (
        f" --project {shlex.quote(project)}" if project else "")


def flat(prefix: str, value) -> dict:
    """{'a.b': 1} from {'a': {'b': 1}}: config keys a runs table can filter and group on."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


# The fields of a result row (runner.rows_of) that describe its cell or its measurement (or, `target`, identify it);
# the rest is the protocol.
CELL_FIELDS = frozenset({
    "target", "key", "time", "value", "metric", "ci_low", "ci_high", "ci_level", "sampler", "sampler_name",
    "sampler_label", "params", "grid", "requested", "nfe", "nfe_per_batch", "wall_s", "samples_per_s",
    "peak_memory_mb", "n_nonfinite", "setup_nfe", "setup_wall_s", "world_size", "device", "shard", "n_samples",
    "seed_start", "seed_count", "batch_size", "guidance", "labels", "guidance_batch_factor", "definitions",
    "launch", "threads", "host"})


def sweep_config(name: str, rows: list[dict]) -> tuple[dict, list[str]]:
    """A sweep run's W&B config and tags from its rows (before any is computed: its cells as rows), so that a run
    logged live and one `report --wandb` made after the shards have the same keys to filter and group on: the
    protocol the rows share, the target, seeds, metrics, batch size, NFE or tolerance grid and {label: sampler};
    for a guided sweep, its weights and labels rule."""
    shared = lambda key: rows[0].get(key) if all(r.get(key) == rows[0].get(key) for r in rows) else None  # noqa: E731
    protocol = {k: v for k, v in rows[0].items() if k not in CELL_FIELDS and shared(k) == v}
    sampled = [r for r in rows if r["grid"] != "exact"]
    budgets = lambda grid: sorted({r["requested"] for r in sampled if r["grid"] == grid}) or None  # noqa: E731
    metrics = sorted({r["metric"] for r in rows})
    config = {"sweep": name, "target": protocol.get("problem") or protocol.get("checkpoint"), **protocol,
              "seeds": {"start": shared("seed_start"), "count": shared("seed_count")}, "metrics": metrics,
              "batch_size": shared("batch_size"), "nfe": budgets("nfe"), "tolerances": budgets("tol"),
              "samplers": {r["sampler"]: r["sampler_name"] for r in sampled}}
    guided = [r for r in sampled if r.get("guidance") is not None]
    if guided:
        labels = {str(r.get("labels")) for r in guided}
        config.update(guidance=sorted({r["guidance"] for r in guided}), labels=guided[0].get("labels")
                      if len(labels) == 1 else None)
    from lightning_sde.metrics.image import IMAGE_METRICS

    tags = {f"sampler:{sampler_family(r['sampler_name'])}" for r in sampled}
    tags.add(f"target:{'images' if set(metrics) & set(IMAGE_METRICS) else 'points'}")
    for field in ("sde", "data"):
        if protocol.get(field):
            tags.add(f"{field}:{str(protocol[field]).split('/')[0]}")
    return config, sorted(tags)


def cell_id(rows: list[dict]) -> str:
    """A cell's identity in the sidecar and its W&B row: a hash of its key without the metric (cell_key_of), so that a
    cell recomputed with more metrics is the one already logged."""
    return hashlib.sha1(cell_key_of(rows[0]["key"]).encode()).hexdigest()[:16]


def legacy_cell_id(rows: list[dict]) -> str:
    """What sidecars written before cell_id took the metric out list: a hash of the smallest of the rows' keys."""
    return hashlib.sha1(min(r["key"] for r in rows).encode()).hexdigest()[:16]


def budget_key(nfe) -> str:
    return f"nfe_{int(round(float(nfe))):05d}"


def sampler_family(name: str) -> str:
    """A sampler's tag to filter runs by: its registered name (ddim, dpmpp, sde_dpmpp, unipc, ode, euler_maruyama,
    pc, ...). Name prefixes filed sde_dpmpp under 'sde' and dpmpp under 'dpm'."""
    return name.lower()


class SweepRun:
    """The W&B run of one results file (rank 0 only). Every call degrades to a warning if W&B fails: the results
    file is the record, W&B a view of it."""

    def __init__(self, results, project: str, name: str, group: str, config: dict, tags: list[str], out_dir=None):
        import wandb

        self.results = Path(results)
        self.state = remember_sweep(results, project, name, group)  # the run keeps its first ones
        for key, value in (("project", project), ("name", name), ("group", group)):
            if self.state[key] != value:
                log.warning("W&B: %s %r not used: the run of %s keeps its first %s, %r (to start another run, "
                            "delete %s)", key, value, self.results, key, self.state[key], sidecar_path(results))
        self.media_dir = self.results.parent / "wandb_media"
        check_wandb_mode()
        mode = "online" if wandb_configured() else "offline"
        run_id = self.state.get("id") or uuid.uuid4().hex[:12]
        name, group = self.state["name"], self.state["group"]
        self.run = wandb.init(project=self.state["project"], id=run_id, resume="allow", name=name,
                              group=group, job_type="bench", tags=sorted(set(tags)), mode=mode,
                              dir=str(out_dir or self.results.parent), config=self._config(config),
                              allow_val_change=True, settings=wandb.Settings(quiet=True))
        self.state.update(id=run_id, project=self.run.project, name=name, group=group)
        self.state.setdefault("logged", [])
        self._summarized = -math.inf  # when the summaries were last updated (time.monotonic)
        earlier = self._earlier_rows() if self.run.offline else []
        if self.run.offline:
            self._forget_lost_cells(earlier)
        # every launch goes on from the run's last step (the sidecar's, or its files' when a kill beat the sidecar):
        # W&B keeps one row per step, so a launch starting again at 0 would have its rows dropped or interleaved
        steps = [r["_step"] + 1 for r in earlier if isinstance(r.get("_step"), int)]
        self.state["step"] = max(self.state.get("step", 0), self.run.step, *steps)
        write_sidecar(self.results, self.state)
        for key in [*ALL_METRICS, *(f"{m}_ci" for m in ALL_METRICS), "wall_s"]:
            self.run.define_metric(f"{key}/*", step_metric="nfe")  # charts against NFE; summaries below

    def _config(self, config: dict) -> dict:
        """The config this launch gives the run: the run's config describes the protocol of its plain keys (its first
        cell's). A later launch of that protocol extends it (its budgets, samplers and metrics join the earlier ones);
        a launch of another protocol (other seeds, another target) leaves it as it is."""
        first = self.state.get("config")
        if first is None or not self.state.get("protocol"):  # no cell logged yet: this launch's protocol is the first
            self.state["config"] = config
            return config
        protocol = lambda c: {k: v for k, v in c.items() if not k.startswith(EXTENDABLE_CONFIG)}  # noqa: E731
        if protocol(config) != protocol(first):
            log.info("W&B: the run's config stays its first protocol's, that of its plain keys; this launch's cells "
                     "are labelled with what differs")
            return first
        merged = {**first, **config}
        if first.get("batch_size") != config.get("batch_size"):  # launches at several: none, as report's config says
            merged["batch_size"] = None
        for key in ("nfe", "tolerances", "metrics", "guidance"):
            lists = [v for v in (first.get(key), config.get(key)) if isinstance(v, list)]
            if lists:
                merged[key] = sorted(set().union(*lists))
        self.state["config"] = merged
        return merged

    def _earlier_rows(self) -> list[dict]:
        """The history rows of this run's earlier launches' files in its folder."""
        current = Path(self.run.dir).resolve().parent
        earlier = [f for f in current.parent.glob(f"*run-*-{self.run.id}/run-{self.run.id}.wandb")  # offline-run-*
                   if f.parent.resolve() != current]  # and run-* (an online launch's local record)
        return [r for f in earlier for r in offline_history(f)]

    def _log(self, row: dict) -> None:
        self.run.log(row, step=self.state["step"])
        self.state["step"] += 1

    def _forget_lost_cells(self, rows: list[dict]) -> None:
        """A sweep killed (kill -9) just after logging a cell may leave it out of its run file, though the sidecar
        lists it (W&B may not have written a single row): keep listed only the cells the earlier files of this run
        (`rows`, their history) hold, so that the report logs the others again; and list the cells they hold that the
        sidecar does not (killed between W&B's write and the sidecar's), so that none is logged twice. (Files whose
        rows lack `cell/id`, written before cells carried it, are taken at the sidecar's word.)"""
        if rows and not any("cell/id" in r for r in rows):
            return
        in_files = {r["cell/id"] for r in rows if r.get("cell/id")}
        held = in_files | set(self.state.get("summaries_only", []))
        lost = [c for c in self.state["logged"] if c not in held]
        if lost:
            log.warning("W&B: %d cell(s) listed as logged are not in the offline run files (the sweep was killed "
                        "before W&B wrote them); they are logged again", len(lost))
        unlisted = sorted(in_files - set(self.state["logged"]))  # killed after W&B wrote the cell, before the sidecar
        self.state["logged"] = [c for c in self.state["logged"] if c in held] + unlisted

    def logged(self, cell_id: str) -> bool:
        return cell_id in self.state["logged"]

    def label(self, row: dict) -> str:
        """A row's sampler in this run's keys: its plain label under the run's first protocol, else the report's
        label of it against that protocol (`ddim [seeds 0+64]`); a label rerun with other parameters or settings
        (results.variant_of; e.g. denoise=true) keys its rows `ddim #<hash>`, a curve of its own."""
        first = self.state.get("protocol")
        # another target's short name carries its hash: two later targets alike in it are never one W&B key
        label = (protocol_labels([first, row], hash_targets=row["target"] != first.get("target"))(row) if first
                 else row.get("sampler_label", row["sampler"]))
        variant = variant_of(row)
        if row["grid"] == "exact" or variant == self.state.setdefault("variants", {}).setdefault(label, variant):
            return label
        return f"{label} #{hashlib.sha256(variant.encode()).hexdigest()[:6]}"

    def log_cell(self, cell_id: str, rows: list[dict], preview=None, reference=None) -> None:
        """One history row for a finished cell (its rows, one per metric), with its sample image; the noise floor
        only updates the summaries."""
        if not rows or self.logged(cell_id) or self.logged(legacy_cell_id(rows)):
            return
        first = rows[0]
        self.state.setdefault("protocol", {k: first.get(k) for k in PROTOCOL_FIELDS})
        if first["grid"] != "exact":
            self._log_history(cell_id, rows, preview, reference)
        else:  # no history row to find in the run's files later (its summaries come from the results file)
            self.state.setdefault("summaries_only", []).append(cell_id)
        if time.monotonic() - self._summarized >= SUMMARY_EVERY_S:
            self.update_summaries()
        self.state["logged"].append(cell_id)
        write_sidecar(self.results, self.state)

    def update_summaries(self) -> None:
        """The run's best/ and floor/ summaries, from the results file as it is now."""
        summaries = self.summaries()
        for key in [k for k in self.run.summary.keys() if k.endswith(("/ci_low", "/ci_high")) and k not in summaries]:
            del self.run.summary[key]  # an earlier best's interval, left beside a best that has none
        self.run.summary.update(summaries)
        self._summarized = time.monotonic()

    def _log_history(self, cell_id: str, rows: list[dict], preview, reference) -> None:
        import wandb

        first = rows[0]
        label, nfe = self.label(first), first["nfe"]
        row = {"nfe": nfe, "cell/id": cell_id, "cell/sampler": label, "cell/grid": first["grid"],
               "cell/requested": first["requested"],
               "cell/params": json.dumps(first.get("params") or {}, sort_keys=True),
               "cell/selected": first.get("selected"), "cell/setup_nfe": first.get("setup_nfe"),
               f"wall_s/{label}": first.get("wall_s")}
        for r in rows:
            row[f"{r['metric']}/{label}"] = r["value"]
            if r.get("ci_low") is not None and r.get("ci_high") is not None:
                row[f"{r['metric']}_ci/{label}"] = (r["ci_high"] - r["ci_low"]) / 2
        if preview is not None and nfe:
            path = self._picture(label, nfe, preview, reference)
            if path is not None:
                row[f"samples/{label}/{budget_key(nfe)}"] = wandb.Image(str(path), caption=f"{label}, NFE {nfe:g}")
        self._log({k: v for k, v in row.items() if v is not None})

    def summaries(self) -> dict:
        """best/<metric>/<sampler> (and its /nfe) and floor/<metric> over the rows of the results file, so that a
        resumed sweep's launch never overwrites an earlier launch's better value; rows alike but for their key
        count as the views show them (the last written)."""
        rows, _ = for_views([r for r in ResultsStore(self.results).latest().values() if unreadable(r) is None])
        rows = [r for r in rows if r["value"] is not None and r["value"] == r["value"]]
        # the floor's keys carry what its label adds for another protocol
        floor_key = lambda r: f"floor/{r['metric']}{self.label(r).removeprefix(r['sampler_label'])}"
        out, best = {floor_key(r): r["value"] for r in rows if r["grid"] == "exact"}, {}
        for r in rows:
            key = f"best/{r['metric']}/{self.label(r)}"
            if r["grid"] != "exact" and ranks_above(r["metric"], r["value"], out.get(key), out.get(floor_key(r))):
                out[key], out[f"{key}/nfe"], best[key] = r["value"], r["nfe"], r
        for key, r in [*best.items(), *((floor_key(r), r) for r in rows if r["grid"] == "exact")]:
            for bound in ("ci_low", "ci_high"):  # the value's interval: a best inside the floor's is no better
                if r.get(bound) is not None:
                    out[f"{key}/{bound}"] = r[bound]
        return out

    def _picture(self, label: str, nfe, x, reference):
        from lightning_sde.plotting import drawable, image_grid, scatter_grid

        if len(x) == 0 or not drawable(x.shape[1:]):
            return None
        self.media_dir.mkdir(parents=True, exist_ok=True)
        path = self.media_dir / f"{file_name(label)}_{budget_key(nfe)}.png"
        if x.ndim == 4:
            return image_grid(x[:64], path, title=f"{label}, NFE {nfe:g}")
        fits = reference is not None and reference.shape[1:] == x.shape[1:] and len(reference)
        panels = {"reference": reference} if fits else {}
        panels[f"{label}, NFE {nfe:g}"] = x
        return scatter_grid(panels, path)

    def log_table(self, rows: list[dict], columns: list[str]) -> None:
        """The whole results table, as a W&B Table (the report's final view)."""
        import wandb

        value = lambda r, k: json.dumps(r[k]) if isinstance(r.get(k), (dict, list)) else r.get(k)
        self._log({"results": wandb.Table(columns=columns, data=[[value(r, k) for k in columns] for r in rows])})
        write_sidecar(self.results, self.state)

    def where(self) -> str:
        if self.run.offline:
            folder = Path(self.run.dir).resolve().parent
            every = sync_command(folder.parent, self.run.id)  # a resumed sweep's earlier starts too
            return f"W&B (offline): {folder}\n  sync it with: {every}"
        return f"W&B: {self.run.url}"

    def finish(self) -> None:
        self.run.finish()


def workspace(rows: list[dict], entity: str, project: str, group: str, name: str | None = None):
    """The sweep's W&B workspace: per metric a panel of value against NFE (log axes, one line per sampler), the
    wall-time panel, and per sampler its sample images side by side across NFE; runs filtered to the sweep's group.
    Built offline (wandb_workspaces objects); `save_workspace` sends it."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    samplers = sorted({r["sampler"] for r in rows if r.get("nfe")})
    metrics = sorted({r["metric"] for r in rows})
    sections = []
    for metric in metrics:
        arrow = direction(metric)
        values = [r["value"] for r in rows if r["metric"] == metric and r["value"] is not None]
        spans_decades = bool(values) and min(values) > 0 and max(values) / min(values) > 10
        sections.append(ws.Section(name=f"{metric} vs NFE", is_open=True, panels=[
            wr.LinePlot(title=f"{metric} ({arrow})", x="nfe", y=[f"{metric}/{s}" for s in samplers], log_x=True,
                        log_y=spans_decades, title_x="NFE (score evaluations)", title_y=metric,
                        legend_position="east")]))
    sections.append(ws.Section(name="wall time vs NFE", is_open=True, panels=[
        wr.LinePlot(title="wall time [s] (lower is better)", x="nfe", y=[f"wall_s/{s}" for s in samplers],
                    log_x=True, log_y=True, title_x="NFE (score evaluations)", title_y="seconds",
                    legend_position="east")]))
    budgets = {s: sorted({budget_key(r["nfe"]) for r in rows if r["sampler"] == s and r.get("nfe")})
               for s in samplers}
    sections.append(ws.Section(name="samples (same seeds)", is_open=True, panels=[
        wr.MediaBrowser(title=s, media_keys=[f"samples/{s}/{b}" for b in budgets[s]], num_columns=len(budgets[s]),
                        mode="grid") for s in samplers if budgets[s]]))
    return ws.Workspace(entity=entity, project=project, name=name or f"sweep {group}", sections=sections,
                        runset_settings=ws.RunsetSettings(filters=[ws.Metric("Group") == group]))  # not a name search


def save_workspace(definition, path: Path, online: bool) -> str:
    """Write the definition (JSON) next to the results; online, also create the workspace on W&B."""
    from pydantic import TypeAdapter

    replace_atomically(path, lambda tmp: tmp.write_bytes(TypeAdapter(type(definition)).dump_json(definition, indent=1)))
    if not online:
        return f"W&B workspace: defined in {path}; made by `lsde-bench report ... --wandb` once the run is synced"
    try:
        definition.save()
        return f"W&B workspace: {definition.url}"
    except Exception as err:  # noqa: BLE001  (the runs are there; the view can be made again)
        log.warning("W&B workspace not saved (%s: %s); its definition is in %s", type(err).__name__, err, path)
        return f"W&B workspace: not saved ({type(err).__name__}); definition in {path}"
