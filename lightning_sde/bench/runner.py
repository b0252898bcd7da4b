"""Run a sweep: load the target and reference once, then sample and score each cell not yet in the results file.

Sampling and scoring are the shared path (lightning_sde.generation, metrics.scorer): every process samples its
share of a cell's seeds, rank 0 gathers, scores, appends the rows and keeps a preview of the samples.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from lightning_sde.bench.results import ResultsStore, SamplePreviews
from lightning_sde.bench.spec import Cell, expand, positive_int, shard_cells
from lightning_sde.configuration import dtype as parse_dtype
from lightning_sde.distributed import broadcast_from_zero, launch, rank_world
from lightning_sde.generation import Samples, generate
from lightning_sde.metrics.image import IMAGE_METRICS
from lightning_sde.metrics.scorer import Scorer, resolve_metrics
from lightning_sde.targets import data_kind, floor_samples, load_target, reference_samples, target_kind

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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
    dtype = parse_dtype(cfg.dtype)
    try:
        device = torch.device(cfg.device)
    except RuntimeError as err:
        raise ValueError(f"config device: {err}") from None
    for key in ("ddp.devices", "ddp.num_nodes"):
        positive_int(key, OmegaConf.select(cfg, key))
    if cfg.get("reference_count") is not None:
        positive_int("reference_count", cfg.reference_count)
    kind, target_id = target_kind(cfg)
    points_or_images = data_kind(cfg) if kind == "checkpoint" else "points"
    metrics = resolve_metrics(cfg.metrics, points_or_images, has_mixture=kind == "mixture")
    if set(metrics) & set(IMAGE_METRICS):
        from lightning_sde.metrics.features import FEATURE_EXTRACTORS

        if cfg.feature_extractor not in FEATURE_EXTRACTORS:
            raise ValueError(f"config feature_extractor: unknown {cfg.feature_extractor!r}; choose one of "
                             f"{sorted(FEATURE_EXTRACTORS)}")
        if cfg.feature_extractor != "digits":  # the protocol belongs to a row's identity (digits: the original keys)
            target_id += f"|features={cfg.feature_extractor}"
    if cfg.get("reference_count") is not None:
        target_id += f"|reference_count={cfg.reference_count}"
    cells = expand(cfg, target_id, metrics, noise_floor=bool(cfg.get("noise_floor")) and kind == "mixture")
    return Sweep(kind, target_id, device, dtype, metrics, cells, shard_cells(cells, cfg.shard.index, cfg.shard.count))


def rows_of(cell: Cell, samples: Samples | None, values: dict, batch_size: int, device, protocol: dict) -> list[dict]:
    """One row per metric of a cell: the values, what sampling cost, and the protocol that makes rows comparable."""
    common = {
        "target": cell.target, "sampler": cell.label, "sampler_name": cell.sampler, "params": cell.params,
        "grid": cell.grid, "requested": cell.requested, "n_samples": cell.seed_count, "seed_start": cell.seed_start,
        "seed_count": cell.seed_count, "batch_size": batch_size,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **protocol,
    }
    if samples is None:  # the noise floor: no sampler ran
        common.update(nfe=0, nfe_per_batch=[], wall_s=0.0, samples_per_s=None, world_size=1, n_nonfinite=0)
    else:
        common.update(nfe=samples.nfe, nfe_per_batch=samples.nfe_per_batch, wall_s=samples.wall_s,
                      samples_per_s=cell.seed_count / samples.wall_s if samples.wall_s > 0 else None,
                      peak_memory_mb=samples.peak_memory_mb, world_size=samples.world_size,
                      n_nonfinite=samples.n_nonfinite)
    return [{**common, "key": cell.key(m), "metric": m, "value": values[m]} for m in cell.metrics]


def score(scorer: Scorer, cell: Cell, samples: Samples | None, x) -> dict:
    """The metrics of a cell's samples; None for every metric when some samples are not finite: a diverged sampler
    is reported (n_nonfinite in its rows), never scored as if its samples were samples."""
    if samples is not None and samples.n_nonfinite:
        log.warning("%s: %d of %d samples are not finite; its rows are not scored", cell, samples.n_nonfinite,
                    len(samples.x))
        return {m: None for m in cell.metrics}
    return scorer(x)


def run_sweep(cfg: DictConfig) -> dict:
    sweep = prepare(cfg)
    fabric = launch(cfg.ddp.devices, cfg.ddp.num_nodes, sweep.device)  # processes split each cell's seeds
    rank, world = rank_world()
    device = fabric.device if fabric else sweep.device
    store = ResultsStore(cfg.results)
    todo = None
    if rank == 0:
        done = store.keys()
        todo = [i for i, c in enumerate(sweep.mine) if not all(c.key(m) in done for m in c.metrics)]
        log.info("%d cells in the sweep, %d in shard %d/%d, %d already in %s, %d to compute on %d process(es)",
                 len(sweep.cells), len(sweep.mine), cfg.shard.index, cfg.shard.count, len(sweep.mine) - len(todo),
                 store.path, len(todo), world)
    todo = [sweep.mine[i] for i in broadcast_from_zero(todo)]  # rank 0 decides: its own appends never race the rest
    if todo:
        target = load_target(cfg, sweep.kind, sweep.target_id, device)
        seeds = range(cfg.seeds.start, cfg.seeds.start + cfg.seeds.count)
        scorer = previews = None
        if rank == 0:
            reference = reference_samples(target, cfg.get("reference_count") or cfg.seeds.count, cfg.seeds.start)
            scorer = Scorer(reference, sweep.metrics, target.mixture, cfg.feature_extractor, cfg.stats_cache, device)
            previews = SamplePreviews(Path(cfg.results).parent / "samples", n=64 if target.kind == "images" else 1000)
            previews.save_reference(reference)
        protocol = {**target.protocol, **(scorer.protocol if scorer else {}), "dtype": cfg.dtype,
                    "git_commit": git_commit(), "shard": f"{cfg.shard.index}/{cfg.shard.count}"}
        for cell in tqdm(todo, desc="cells", unit="cell", disable=not cfg.progress or rank != 0):
            log.info("computing cell %s", cell)
            samples = None
            if cell.built is None:  # the noise floor: a second exact sample set, scored like a sampler's
                x = floor_samples(target, len(scorer.reference), cfg.seeds.start) if rank == 0 else None
            else:
                samples = generate(cell.built, target.denoiser, seeds, cfg.batch_size, device, sweep.dtype,
                                   progress=cfg.progress, desc=str(cell))
                x = samples.x if samples is not None else None
            if rank == 0:
                store.append(rows_of(cell, samples, score(scorer, cell, samples, x), cfg.batch_size, device, protocol))
                previews.save(cell, x)
    if fabric:
        fabric.barrier()
    return {"cells": len(sweep.cells), "shard_cells": len(sweep.mine), "computed": len(todo), "rank": rank,
            "world_size": world}


__all__ = ["Sweep", "prepare", "rows_of", "run_sweep"]
