"""Run a sweep: load the target and reference once, then sample and score each cell not yet in the results file.

Sampling and scoring are the shared path (lightning_sde.generation, metrics.scorer): every process samples its
share of a cell's seeds, rank 0 gathers, scores, appends the rows and keeps a preview of the samples.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lightning_sde.bench.dashboard import (
    SweepRun,
    cell_id,
    flat,
    read_sidecar,
    remember_sweep,
    report_command,
    sidecar_path,
    sweep_config,
)
from lightning_sde.bench.report import with_interval
from lightning_sde.bench.results import (
    DEFINITIONS,
    WANDB_RUN_KEY,
    Claim,
    Claimed,
    ResultsStore,
    SamplePreviews,
    SweepPlans,
    cell_key_of,
)
from lightning_sde.bench.spec import Cell, expand, positive_int, shard_cells
from lightning_sde.configuration import check_class_has_guidance, check_folder_name, checked, overridden, require_device
from lightning_sde.configuration import device as parse_device
from lightning_sde.configuration import dtype as parse_dtype
from lightning_sde.distributed import broadcast_from_zero, check_launcher_world, launched, rank_world
from lightning_sde.errors import first_line
from lightning_sde.generation import Samples, generate
from lightning_sde.metrics.image import IMAGE_METRICS, check_image_sample_count, check_kid_reference, check_stats_cache
from lightning_sde.metrics.scorer import INTERVAL_LEVEL, Scorer, Scores, resolve_metrics
from lightning_sde.models.pretrained import is_diffusers_spec
from lightning_sde.samplers.grids import check_start, may_use_data_moments
from lightning_sde.samplers.schedule import check_grid
from lightning_sde.targets import (
    as_recorded,
    check_guidance_learned,
    check_one_target,
    data_kind,
    floor_samples,
    its_data,
    load_target,
    reference_samples,
    target_classes,
    target_kind,
    with_data_moments,
)
from lightning_sde.tracking import duration, source_revision, wandb_disabled

log = logging.getLogger(__name__)


@dataclass
class Sweep:
    """Everything checked before any sampling: the target's kind and id, the metrics, the cells and this shard's."""

    kind: str
    target_id: str
    device: torch.device
    dtype: torch.dtype
    metrics: tuple[str, ...]
    cells: list[Cell]
    mine: list[Cell]


def prepare(cfg: DictConfig) -> Sweep:
    """Raises ValueError naming the config key on any bad value."""
    dtype, device = check_run_settings(cfg)
    kind, target_id = target_kind(cfg)
    if kind == "checkpoint" and Path(cfg.results).is_file():  # its rows' checkpoint moved here: the same target
        try:
            target_id = as_recorded(target_id, (row.get("target") for row in ResultsStore(cfg.results).rows(True)))
        except OSError:  # unreadable: said by the start-up checks that need it
            pass
    return plan_cells(cfg, kind, target_id, dtype, device)


def check_run_settings(cfg: DictConfig) -> tuple[torch.dtype, torch.device]:
    """(dtype, device): the settings of the sweep's run, whatever its target; ValueError naming the key."""
    dtype = parse_dtype(cfg.dtype)
    if Path(cfg.results).is_dir():
        raise ValueError(f"config results: {str(cfg.results)!r} is a folder; give a .jsonl file, e.g. "
                         f"results={Path(cfg.results) / 'results.jsonl'}")
    check_results_file(Path(cfg.results))
    device = parse_device(cfg.device)
    for key in ("noise_floor", "progress", "wandb.enabled"):
        if not isinstance(OmegaConf.select(cfg, key), bool):
            raise ValueError(f"config {key}: must be true or false; got {OmegaConf.select(cfg, key)!r}")
    if "name" in cfg:
        check_folder_name("bench", cfg)
    for key in ("ddp.devices", "ddp.num_nodes"):
        positive_int(key, OmegaConf.select(cfg, key))
    check_launcher_world(cfg.ddp.devices, cfg.ddp.num_nodes)
    if cfg.get("reference_count") is not None:
        positive_int("reference_count", cfg.reference_count)
    return dtype, device


def reference_key(cfg: DictConfig) -> str:
    """The key that sizes the reference set: reference_count where set, else seeds.count (as many as a cell's)."""
    return "reference_count" if cfg.get("reference_count") is not None else "seeds.count"


def sweep_metrics(cfg: DictConfig, kind: str) -> tuple[str, ...]:
    """The sweep's metrics and what the config alone says of them and of its labels (a planned checkpoint too)."""
    points_or_images = data_kind(cfg) if kind == "checkpoint" else "points"
    metrics = resolve_metrics(cfg.metrics, points_or_images, has_mixture=kind == "mixture")
    if overridden("feature_extractor") and not set(metrics) & set(IMAGE_METRICS):
        raise ValueError(f"config feature_extractor: it applies to the image metrics ({', '.join(IMAGE_METRICS)}); "
                         f"this sweep's metrics are {list(metrics)}: leave it out")
    if set(metrics) & set(IMAGE_METRICS):
        from lightning_sde.metrics.features import FEATURE_EXTRACTORS

        if cfg.feature_extractor not in FEATURE_EXTRACTORS:
            raise ValueError(f"config feature_extractor: unknown {cfg.feature_extractor!r}; choose one of "
                             f"{sorted(FEATURE_EXTRACTORS)}")
        check_stats_cache("stats_cache", cfg.stats_cache)
        for key in dict.fromkeys(["seeds.count", reference_key(cfg)]):  # a cell's samples, the reference's
            scored = metrics if key == "seeds.count" else [m for m in metrics if m != "is"]  # IS reads no reference
            try:
                check_image_sample_count(scored, positive_int(key, OmegaConf.select(cfg, key)))
            except ValueError as err:
                raise ValueError(str(err) if str(err).startswith("config ") else f"config {key}: {err}") from None
    if "kid" in metrics:
        key = reference_key(cfg)
        try:
            check_kid_reference(positive_int(key, OmegaConf.select(cfg, key)))
        except ValueError as err:
            raise ValueError(str(err) if str(err).startswith("config ") else f"config {key}: {err}") from None
    labels = cfg.get("labels", "cycle")
    check_class_has_guidance("labels", labels, cfg.get("guidance"), "guidance=[<w>, ...]")
    if cfg.get("guidance") is not None and labels != "cycle" and kind == "checkpoint" and not cfg.data.get("labels"):
        raise ValueError(f"config data.labels: a sweep of class {labels} is scored against that class's training "
                         "samples, which needs the data's labels: set data.labels=true")
    return metrics


def plan_cells(cfg: DictConfig, kind: str, target_id: str, dtype, device) -> Sweep:
    metrics = sweep_metrics(cfg, kind)
    if set(metrics) & set(IMAGE_METRICS) and cfg.feature_extractor != "digits":
        target_id += f"|features={cfg.feature_extractor}"  # a row's protocol (digits: the original keys)
    if cfg.get("reference_count") is not None:
        target_id += f"|reference_count={cfg.reference_count}"
    guidance = cfg.get("guidance")
    check_guidance_learned(cfg, kind, list(guidance) if OmegaConf.is_list(guidance) else [guidance],
                           instead="sweep it at guidance=[0] (seed i of class i mod num_classes, or labels=<class> "
                                   "with data.labels=true)")
    if guidance is not None:
        classes = target_classes(cfg, kind)
        if classes is None:
            raise ValueError("config guidance: the target is not class-conditional (a checkpoint trained with "
                             "model.net.num_classes, or a labelled problem); set guidance=null")
        if cfg.get("labels", "cycle") != "cycle" and not (isinstance(cfg.labels, int) and cfg.labels < classes):
            raise ValueError(f"config labels: must be 'cycle' or a class in 0..{classes - 1}; got {cfg.labels!r}")
        if kind == "mixture":  # scored against the labels' own distribution (targets.scored_distribution)
            target_id += f"|scored_on_labels={cfg.get('labels', 'cycle')}"
        elif cfg.get("labels", "cycle") != "cycle":  # scored against that class's training samples
            target_id += f"|scored_on_labels={cfg.labels}"
    cells = expand(cfg, target_id, metrics, noise_floor=bool(cfg.get("noise_floor")))
    return Sweep(kind, target_id, device, dtype, metrics, cells, shard_cells(cells, cfg.shard.index, cfg.shard.count))


def rows_of(cell: Cell, samples: Samples | None, values: dict, batch_size: int, device, protocol: dict) -> list[dict]:
    """One row per metric of a cell: the values, what sampling cost, and the protocol that makes rows comparable."""
    common = {
        "target": cell.target, "sampler": cell.label, "sampler_name": cell.sampler, "params": cell.params,
        "grid": cell.grid, "requested": cell.requested, "n_samples": cell.seed_count, "seed_start": cell.seed_start,
        "seed_count": cell.seed_count, "batch_size": batch_size,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "definitions": DEFINITIONS, **protocol,
    }
    if samples is None:  # the noise floor: no sampler ran
        common.update(nfe=0, nfe_per_batch=[], wall_s=0.0, samples_per_s=None, world_size=1, n_nonfinite=0,
                      setup_nfe=0, setup_wall_s=0.0)
    else:
        common.update(nfe=samples.nfe, nfe_per_batch=samples.nfe_per_batch, wall_s=samples.wall_s,
                      setup_nfe=samples.setup_nfe, setup_wall_s=samples.setup_wall_s,
                      samples_per_s=cell.seed_count / samples.wall_s if samples.wall_s > 0 else None,
                      peak_memory_mb=samples.peak_memory_mb, world_size=samples.world_size,
                      n_nonfinite=samples.n_nonfinite)
        if samples.selected is not None:  # what grid="select" ran: the row's samples are that configuration's
            common["selected"] = samples.selected
    if cell.guidance is not None:  # one guided NFE is one forward over batch_factor x the samples
        common.update(guidance=cell.guidance, labels=cell.settings["labels"],
                      guidance_batch_factor=samples.batch_factor if samples is not None else None)
        if cell.built is not None and may_use_data_moments(cell.built):  # guided samplers start at T
            common["gaussian_start_left_out"] = True
    intervals = getattr(values, "intervals", {})  # Scores carry bootstrap intervals; a plain dict has none
    return [{**common, "key": cell.key(m), "metric": m, "value": values[m],
             "ci_low": intervals[m][0] if m in intervals else None,
             "ci_high": intervals[m][1] if m in intervals else None,
             "ci_level": getattr(values, "level", None) if m in intervals else None} for m in cell.metrics]


def score(scorer: Scorer, cell: Cell, samples: Samples | None, x) -> Scores:
    """The metrics of a cell's samples with their bootstrap intervals (Scorer.intervals, INTERVAL_LEVEL); None for
    every metric, and no interval, when some samples are not finite: a diverged sampler is reported (n_nonfinite in
    its rows), never scored as if its samples were samples."""
    if samples is None and x is None:  # a noise floor the data holds too few samples for
        return Scores({m: None for m in cell.metrics})
    if samples is not None and samples.n_nonfinite:
        log.warning("%s: %d of %d samples are not finite; its rows are not scored", cell, samples.n_nonfinite,
                    len(samples.x))
        return Scores({m: None for m in cell.metrics})
    values = scorer(x)
    if len(x) < 2:  # no resampling of a single sample
        return Scores(values)
    return Scores(values, scorer.intervals(x, values, level=INTERVAL_LEVEL), INTERVAL_LEVEL)


def count_cells(cfg: DictConfig, existing: bool = False) -> int:
    """The number of cells of the sweep, checked as `prepare` checks it, except that a checkpoint need not exist yet
    (its step is part of the target's id, not of the cell count) unless `existing`."""
    checkpoint = cfg.get("checkpoint")
    if existing and checkpoint is not None and not Path(checkpoint).exists() and not is_diffusers_spec(checkpoint):
        raise ValueError(f"config checkpoint: no checkpoint file at {checkpoint!r} (for one that a job still to end "
                         "writes, submit the sweep with --dependency=afterok:<that job>)")
    if checkpoint is None or Path(checkpoint).is_file() or existing:
        return len(prepare(cfg).cells)
    check_run_settings(cfg)
    check_one_target(cfg)
    if cfg.get("data") is None:
        raise ValueError(f"config data: a checkpoint needs the config of its data, {its_data(checkpoint)}")
    metrics = sweep_metrics(cfg, "checkpoint")
    return len(expand(cfg, f"planned:{checkpoint}", metrics, noise_floor=bool(cfg.get("noise_floor"))))


def run_sweep(cfg: DictConfig) -> dict:
    sweep = prepare(cfg)
    require_device(sweep.device)
    with launched(cfg.ddp.devices, cfg.ddp.num_nodes, sweep.device) as fabric:  # processes split each cell's seeds
        return compute(cfg, sweep, fabric.device if fabric else sweep.device)


FEWEST_FOR_INTERVALS = 20  # below it the bootstrap's intervals are too narrow (docs/benchmarking.md)


def warn_small_counts(n_samples: int, reference_count: int | None) -> None:
    """Counts whose intervals claim more than they hold: few samples, or a reference smaller than the samples (the
    intervals hold the reference fixed, so its own noise is not in them)."""
    if n_samples < FEWEST_FOR_INTERVALS:
        log.warning("seeds.count=%d: below %d samples a cell's bootstrap interval is too narrow (on exact samples "
                    "the log-likelihood's stated 90%% covered 74%% at 5 samples); draw more seeds before reading them",
                    n_samples, FEWEST_FOR_INTERVALS)
    if reference_count is not None and reference_count < n_samples:
        log.warning("reference_count=%d is below seeds.count=%d: the intervals hold the reference fixed, so its "
                    "noise, the larger part here, is not in them; give a reference at least as large as a cell",
                    reference_count, n_samples)


def compute(cfg: DictConfig, sweep: Sweep, device: torch.device) -> dict:
    """The sweep's cells not yet in its results file, this process's share of each cell's seeds."""
    rank, world = rank_world()
    store = ResultsStore(cfg.results)
    todo = claim = refused = None
    if rank == 0:
        warn_small_counts(cfg.seeds.count, cfg.get("reference_count"))
        done = store.keys()
        todo = [i for i, c in enumerate(sweep.mine) if not all(c.key(m) in done for m in c.metrics)]
        older = store.of_older_definitions({c.key(m) for c in sweep.mine for m in c.metrics})
        if older:
            log.warning("%d row(s) of this sweep's cells were computed by an older version, which computed a metric "
                        "or the NFE otherwise: their cells are computed again (the old rows stay in %s; the views "
                        "show the new)", len(older), store.path.name)
            if wandb_wanted(cfg) and sidecar_path(cfg.results).exists():
                log.warning("the sweep's W&B run (%s) keeps the old values of those cells in its history and charts: "
                            "for one way of computing there, move that file aside after this sweep and log a new run "
                            "of every row with `%s`", sidecar_path(cfg.results).name,
                            report_command(cfg.results, cfg.wandb.project))
        log.info("%d cells in the sweep, %d in shard %d/%d, %d already in %s, %d to compute on %d process(es)",
                 len(sweep.cells), len(sweep.mine), cfg.shard.index, cfg.shard.count, len(sweep.mine) - len(todo),
                 store.path, len(todo), world)
        keys = [c.key(m) for i in todo for c in [sweep.mine[i]] for m in c.metrics]
        logs_wandb = wandb_wanted(cfg)
        try:  # held until the views are made (lsde-bench's run): the W&B run too, where this sweep logs it
            claim = Claim(cfg.results, keys + ([WANDB_RUN_KEY] if logs_wandb else []))
        except Claimed as err:
            refused = str(err)
        except OSError as err:  # e.g. a read-only folder: said before any work, by every process
            refused = f"results {cfg.results!r}: its lock file cannot be used ({type(err).__name__}: {err})"
        if claim is not None:
            try:  # before any sampling: the W&B state beside the results readable, the results appendable
                if logs_wandb:
                    read_sidecar(cfg.results)
                if store.path.exists():
                    store.path.open("ab").close()
                record_plan(cfg, sweep, store, write=False)  # written once the start-up checks pass
            except OSError as err:  # read-only, immutable
                refused = f"results {cfg.results!r}: cannot be appended to ({type(err).__name__}: {err})"
            except ValueError as err:
                refused = str(err)
            if refused:
                claim.release()
            done = store.keys()  # again, under the claim: a sweep that held these cells until now finished some
            todo = [i for i in todo if not all(sweep.mine[i].key(m) in done for m in sweep.mine[i].metrics)]
    todo, refused = broadcast_from_zero((todo, refused))  # rank 0 decides: its own appends never race the rest
    if refused:
        raise ValueError(refused)
    try:
        return compute_cells(cfg, sweep, device, store, [sweep.mine[i] for i in todo]) | {"claim": claim}
    except BaseException:
        if claim is not None:
            claim.release()
        raise


def compute_cells(cfg: DictConfig, sweep: Sweep, device: torch.device, store: ResultsStore, todo: list[Cell]) -> dict:
    rank, world = rank_world()
    live = None
    if todo:
        target = load_target(cfg, sweep.kind, sweep.target_id, device)
        if set(sweep.metrics) & set(IMAGE_METRICS) and target.datamodule is not None:
            from lightning_sde.metrics.features import check_features_take

            try:
                check_features_take(cfg.feature_extractor, target.datamodule.shape)
            except ValueError as err:
                raise ValueError(f"config feature_extractor: {err}") from None
        if any(cell.built is not None and may_use_data_moments(cell.built) for cell in todo):
            with_data_moments(target)
        for cell in todo:  # a grid this SDE cannot hold, or a start its data never reaches, fails before sampling
            if cell.built is not None:
                checked(f"samplers.{cell.label}", check_grid, cell.built, target.denoiser.sde)
                checked(f"samplers.{cell.label}", check_start, cell.built, target.denoiser,
                        guided=cfg.get("guidance") is not None)
        if target.datamodule is not None and one_class(cfg, target) is None:
            key = reference_key(cfg)
            try:  # the reference is that many training samples
                target.datamodule.check_reference_size(OmegaConf.select(cfg, key))
            except ValueError as err:
                raise ValueError(f"config {key}: {err}") from None
        seeds = range(cfg.seeds.start, cfg.seeds.start + cfg.seeds.count)
        scorer = previews = changed = planned = None
        if rank == 0:
            reference_n = OmegaConf.select(cfg, reference_key(cfg))
            reference = reference_samples(target, reference_n, cfg.seeds.start, one_class(cfg, target))
            scorer = Scorer(reference, sweep.metrics, target.mixture, cfg.feature_extractor, cfg.stats_cache, device)
            changed = changed_scoring(store, todo, scorer.protocol)
            if not changed:
                try:  # every start-up check passed: the list this launch will compute is recorded
                    record_plan(cfg, sweep, store)
                except ValueError as err:
                    planned = str(err)
                except OSError as err:
                    planned = f"results {cfg.results!r}: its plans file cannot be written ({type(err).__name__}: {err})"
        # before anything is written: the earlier rows' preview stays theirs
        changed, planned = broadcast_from_zero((changed, planned))
        if changed:
            raise ValueError(f"results {cfg.results!r}: {changed}. Give this sweep its own results (e.g. "
                             f"name=<another name>), or move the file aside to compute every cell again")
        if planned:
            raise ValueError(planned)
        if rank == 0:
            previews = SamplePreviews.of(cfg.results, n=64 if target.kind == "images" else 1000)
            previews.save_reference(reference, SamplePreviews.protocol(sweep.target_id, cfg.seeds.start,
                                                                       cfg.seeds.count))
        protocol = {**target.protocol, **(scorer.protocol if scorer else {}), "dtype": cfg.dtype,
                    "git_commit": source_revision(), "shard": f"{cfg.shard.index}/{cfg.shard.count}",
                    **timing_context()}
        live = open_sweep_run(cfg, target, protocol, sweep) if rank == 0 else None
        started = time.monotonic()
        try:
            for n_done, cell in enumerate(todo):
                cell_started = time.monotonic()
                if rank == 0:
                    log.info("computing cell %d/%d: %s", n_done + 1, len(todo), cell)
                samples = None
                if cell.built is None:  # the noise floor: a second real set of the cell's size, scored like a sampler's
                    x = None
                    if rank == 0:
                        x, why = floor_samples(target, cell.seed_count, cell.seed_start, reference_n,
                                               one_class(cfg, target))
                        if x is None:
                            log.warning("the noise floor has no value: %s (seeds.count=%d, reference_count=%d)", why,
                                        cell.seed_count, reference_n)
                else:
                    samples = generate(cell.built, target.denoiser, seeds, cfg.batch_size, device, sweep.dtype,
                                       progress=cfg.progress, desc=str(cell), guidance=cell.guidance,
                                       labels=cell.settings.get("labels", "cycle"))
                    x = samples.x if samples is not None else None
                if rank == 0:
                    values = score(scorer, cell, samples, x)
                    store.append(rows_of(cell, samples, values, cfg.batch_size, device, protocol))
                    if x is not None:  # a floor the data is too small for has no samples
                        previews.save(cell, x, SamplePreviews.protocol(cell.target, cell.seed_start, cell.seed_count))
                    report_cell(store, cell, n_done + 1, len(todo), started, live, previews,
                                time.monotonic() - cell_started)
        finally:  # a stopped or failed sweep's W&B summaries hold its last cells too (they are throttled while it runs)
            if live is not None:
                try:
                    live.update_summaries()
                except Exception as err:  # noqa: BLE001  (the error that stopped the sweep is the one to see)
                    log.warning("W&B: summaries not updated (%s: %s)", type(err).__name__, err)
    return {"cells": len(sweep.cells), "shard_cells": len(sweep.mine), "computed": len(todo), "rank": rank,
            "world_size": world, "wandb_run": live,  # left open: the report adds the table and finishes it
            # W&B could not start (warned): the report does not wait for it again
            "wandb_failed": rank == 0 and live is None and bool(todo) and wandb_wanted(cfg),
            "keys": {c.key(m) for c in sweep.cells for m in c.metrics}}  # what the views show of rows alike


def record_plan(cfg: DictConfig, sweep: Sweep, store: ResultsStore, write: bool = True) -> None:
    """This launch's list of cells beside its results (SweepPlans; `write=False`: the check alone, before the
    start-up checks, so a launch they refuse leaves no plan), refused (ValueError) where shards of the same count
    were launched with another list sharing cells with this one (shards of one sweep launched with other overrides)
    that still has cells to compute. Lists without a common cell (a multirun over seeds.count into one file) are
    other sweeps."""
    plans = SweepPlans(cfg.results)
    cells = [[c.cell_key(), str(c)] for c in sweep.cells]
    # the noise floor's cell is every list's of a target and seeds: a common sampler cell makes two lists one sweep
    mine = {c.cell_key() for c in sweep.cells if c.grid != "exact"}
    listed = hashlib.sha256("\n".join(key for key, _ in cells).encode()).hexdigest()

    def check(earlier: list[dict]) -> None:
        others = [p for p in earlier if p.get("count") == cfg.shard.count > 1 and p.get("list") != listed
                  and mine.intersection(key for key, _ in p["cells"])]
        done = {cell_key_of(key) for key in store.keys(any_definitions=True)} if others else set()  # rows, not values
        for plan in others:
            left = [described for key, described in plan["cells"] if key not in done]
            if left:
                raise ValueError(
                    f"results {str(cfg.results)!r}: a launch as shard {plan.get('shard')} ({plan.get('time')}) "
                    f"listed other cells of this sweep ({len(plan['cells'])} cells; this one: {len(cells)}) and "
                    f"{len(left)} of them are not computed yet (e.g. {left[0]}). Shards split the list by position, "
                    "so shards launched with other overrides leave cells out: launch every shard with the same "
                    f"overrides, or, to drop that list's cells, delete {str(plans.path)!r}")

    if not write:
        check(plans.read())
        return
    plans.record({"list": listed, "shard": f"{cfg.shard.index}/{cfg.shard.count}", "count": cfg.shard.count,
                  "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cells": cells}, check)


SCORED_AGAINST = {"reference_sha256": "reference data (the files under the data's root, or its settings)",
                  "feature_sha256": "feature network (its weights file)"}


def changed_scoring(store: ResultsStore, todo: list[Cell], protocol: dict) -> str | None:
    """What the rows of these cells' target and seeds were scored against that this run's scorer is not (the images
    or the Inception weights changed under the same paths: the keys name them by path), else None. Beside them, new
    cells would be read as one curve with the old."""
    groups = {(c.target, c.seed_start, c.seed_count) for c in todo}
    rows = [r for r in store.rows(quiet=True) if (r.get("target"), r.get("seed_start"), r.get("seed_count")) in groups]
    for field, what in SCORED_AGAINST.items():
        now = protocol.get(field)
        before = sorted({r[field] for r in rows if isinstance(r.get(field), str)} - {now})
        if now is not None and before:
            return (f"its rows of this target and seeds were scored against another {what}: {field} "
                    f"{before[0][:12]}..., now {now[:12]}...")
    return None


def check_results_file(path: Path) -> None:
    """A sweep appends to a .jsonl file of result rows, or makes one: anything else there (a checkpoint, a view's
    .csv) is refused before any work, not appended to or overwritten."""
    if path.suffix != ".jsonl":
        raise ValueError(f"config results: must be a .jsonl file (its views are written beside it as "
                         f"{path.stem}.csv, .md and .png); got {str(path)!r}")
    if path.exists() and not path.is_dir() and not path.is_file():
        raise ValueError(f"config results: {str(path)!r} is not a regular file (a device, a pipe); give a .jsonl file")
    if path.is_file() and path.stat().st_size and not ResultsStore(path).rows(quiet=True):
        raise ValueError(f"config results: {str(path)!r} holds no result rows (none of its lines is a row lsde-bench "
                         "wrote); give a new file or a sweep's results .jsonl")


def one_class(cfg: DictConfig, target) -> int | None:
    """The class a checkpoint's guided sweep draws every seed of (labels=<k>), whose training samples its reference
    and noise floor are; None otherwise (a mixture's scored distribution is already the labels')."""
    labels = cfg.get("labels", "cycle")
    return labels if cfg.get("guidance") is not None and labels != "cycle" and target.mixture is None else None


def wandb_wanted(cfg: DictConfig) -> bool:
    """Whether the sweep logs a live W&B run (one shard: shards log through `report --wandb` once all are done)."""
    return cfg.wandb.enabled and cfg.shard.count == 1 and not wandb_disabled()


def timing_context() -> dict:
    """Where this launch measures its wall times (dashboard.CELL_FIELDS: no part of the protocol); the views say
    when a file's cells differ in them (plotting.sweeps.timing_conditions)."""
    return {"launch": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": torch.get_num_threads(),
            "host": socket.gethostname()}


def planned_rows(cells, protocol: dict, batch_size: int) -> list[dict]:
    """The rows the cells will give, as far as their config shows them: a live W&B run's config is made of them
    (sweep_config), as `report --wandb`'s is of the rows written."""
    return [{**protocol, "sampler": c.label, "sampler_name": c.sampler, "grid": c.grid, "requested": c.requested,
             "seed_start": c.seed_start, "seed_count": c.seed_count, "batch_size": batch_size, "metric": m,
             **({} if c.guidance is None else {"guidance": c.guidance, "labels": c.settings["labels"]})}
            for c in cells for m in c.metrics]


def open_sweep_run(cfg: DictConfig, target, protocol: dict, sweep: Sweep) -> SweepRun | None:
    """The sweep's W&B run, logged cell by cell (rank 0; one shard: shards log through `report --wandb` once all
    are done, since a W&B run has one writer)."""
    if not wandb_wanted(cfg):
        if cfg.wandb.enabled and not wandb_disabled():  # shards: the run `report --wandb` makes keeps the sweep's name
            remember_sweep(cfg.results, cfg.wandb.project, f"bench-{cfg.name}", cfg.name)
        return None
    config, tags = sweep_config(cfg.name, planned_rows(sweep.cells, protocol, cfg.batch_size))
    try:
        return SweepRun(cfg.results, cfg.wandb.project, f"bench-{cfg.name}", cfg.name, flat("", config), tags)
    except Exception as err:  # noqa: BLE001  (the results file is the record; the view can be made by report)
        log.debug("W&B could not start", exc_info=True)
        log.warning("W&B: no live run (%s: %s); `%s` makes it later", type(err).__name__, first_line(err),
                    report_command(cfg.results, cfg.wandb.project))
        return None


def report_cell(store: ResultsStore, cell: Cell, n_done: int, n_todo: int, started: float, live, previews,
                cell_s: float) -> None:
    """A cell is done: one log line with its values and times (sampling; the whole cell, scoring and set-up
    included), and its W&B row (when a live run is open)."""
    rows = [r for r in store.latest().values() if r["key"] in {cell.key(m) for m in cell.metrics}]
    if not rows:
        return
    elapsed = time.monotonic() - started
    values = ", ".join(f"{r['metric']} {with_interval(r)}" if isinstance(r["value"], float) else f"{r['metric']} -"
                       for r in rows)
    eta = elapsed / n_done * (n_todo - n_done)
    log.info("cell %d/%d done: %s at NFE %.4g: %s; sampling %.3g s, cell %.3g s; ETA %s", n_done, n_todo, cell.label,
             rows[0]["nfe"], values, rows[0]["wall_s"], cell_s, duration(eta))
    if live is not None:
        try:
            protocol = SamplePreviews.protocol(cell.target, cell.seed_start, cell.seed_count)
            live.log_cell(cell_id(rows), rows, previews.load(cell.label, cell.grid, cell.requested, protocol,
                                                             cell.cell_key()),
                          previews.load_reference(protocol))
        except Exception as err:  # noqa: BLE001
            log.warning("W&B: cell not logged (%s: %s); `report --wandb` logs it later", type(err).__name__, err)


__all__ = ["Sweep", "count_cells", "prepare", "rows_of", "run_sweep"]
