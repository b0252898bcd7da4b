"""Run a sweep: build the target and reference once, then sample and score each cell not yet in the results file."""

from __future__ import annotations

import logging
import resource
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from lightning_sde.bench.results import ResultsStore
from lightning_sde.bench.spec import (
    IMAGE_METRICS,
    Cell,
    expand,
    positive_int,
    resolve_metrics,
    shard_cells,
    target_of,
)
from lightning_sde.distributed import gather_to_zero, launch, rank_world
from lightning_sde.exact import build_mixture
from lightning_sde.metrics import mmd, sliced_wasserstein
from lightning_sde.metrics.image import (
    reference_image_metrics,
    score_images,
    tensor_sha256,
)
from lightning_sde.samplers import build_sampler, sample
from lightning_sde.sde import build_sde

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
REPO = Path(__file__).resolve().parents[2]


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class Target:
    """What is sampled (a Denoiser) and what the samples are compared with (the reference set)."""

    id: str
    denoiser: object
    kind: str  # "points" | "images"
    reference: torch.Tensor
    protocol: dict  # constant fields of every row: checkpoint/global_step/ema or mixture/sde
    mixture: object = None


def build_target(cfg: DictConfig, kind: str, target_id: str, device, with_reference: bool = True) -> Target:
    """The denoiser, and (`with_reference`: on the process that scores) the reference set: `reference_count`
    samples, default as many as the sweep's seeds."""
    n, start = cfg.get("reference_count") or cfg.seeds.count, cfg.seeds.start
    if kind == "mixture":
        mixture = build_mixture(**OmegaConf.to_container(cfg.mixture, resolve=True))
        sde_cfg = OmegaConf.to_container(cfg.sde, resolve=True)
        # the reference is an exact sample set, independent of the sampler seeds (as in lsde-compare)
        reference = mixture.sample(n, torch.Generator().manual_seed(10**9 + start)).float() if with_reference else None
        return Target(target_id, mixture.denoiser(build_sde(**sde_cfg)), "points", reference,
                      {"mixture": cfg.mixture.name, "sde": sde_cfg["name"]}, mixture=mixture)
    from lightning_sde.module import ScoreModule

    ckpt = torch.load(cfg.checkpoint, map_location="cpu", weights_only=False)
    denoiser = ScoreModule.load_denoiser(cfg.checkpoint, map_location=device)
    try:
        datamodule = instantiate(cfg.data)
        reference = datamodule.reference(n) if with_reference else None
    except Exception as err:  # noqa: BLE001  (whatever the datamodule raises, report it against its config key)
        raise ValueError(f"config data: {type(err).__name__}: {err}") from None
    if reference is not None and tuple(reference.shape[1:]) != tuple(denoiser.shape):
        raise ValueError(f"config data: reference shape {tuple(reference.shape[1:])} != the checkpoint's {denoiser.shape}")
    protocol = {"checkpoint": str(Path(cfg.checkpoint).resolve()), "global_step": ckpt.get("global_step"), "ema": "current_model_state" in ckpt}
    return Target(target_id, denoiser, getattr(datamodule, "kind", "points"), reference, protocol)


class Scorer:
    """Metric values of one sample set against the reference. FID/KID real-side statistics come from the cache
    (`lightning_sde.metrics.image`), computed there once per reference set and feature weights."""

    def __init__(self, target: Target, metrics, cfg: DictConfig, cache_dir, device):
        self.target, self.metrics = target, metrics
        self.protocol = {"reference_sha256": tensor_sha256(target.reference), "n_reference": len(target.reference)}
        self.image = {}
        image_metrics = [m for m in metrics if m in IMAGE_METRICS]
        if image_metrics:
            self.image, protocol = reference_image_metrics(target.reference, image_metrics, cfg.feature_extractor,
                                                           cache_dir, device)
            self.protocol.update(protocol)

    def __call__(self, x: torch.Tensor) -> dict[str, float]:
        out = {}
        ref = self.target.reference
        for name in self.metrics:
            if name == "sliced_w2":
                out[name] = sliced_wasserstein(x.float().cpu(), ref)
            elif name == "mmd":
                out[name] = mmd(x.float().cpu(), ref)
            elif name == "loglik":
                out[name] = float(self.target.mixture.log_prob(x.cpu().double()).mean())
            else:
                out[name] = score_images(self.image[name], x)
        return out


@dataclass
class Part:
    """One process's share of a cell: its samples (seeds[rank::world]) and how they were made."""

    x: torch.Tensor
    nfe_per_batch: list[int]
    wall_s: float
    peak_memory_mb: float


def sample_part(cell: Cell, denoiser, rank: int, world: int, batch_size: int, device, dtype) -> Part:
    sampler = build_sampler(cell.sampler, **cell.params)
    seeds = range(cell.seed_start, cell.seed_start + cell.seed_count)[rank::world]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    xs, nfes, wall = [], [], 0.0
    for i in range(0, len(seeds), batch_size):
        x, info = sample(sampler, denoiser, seeds[i : i + batch_size], device=device, dtype=dtype)
        xs.append(x.cpu())
        nfes.append(int(info["nfe"]))
        wall += info["wall_s"]
    x = torch.cat(xs) if xs else torch.empty(0, *denoiser.shape, dtype=dtype)
    return Part(x, nfes, wall, peak_memory_mb(device))


def score_cell(cell: Cell, parts: list[Part], target: Target, scorer: Scorer, batch_size: int, device) -> list[dict]:
    """Rows of one cell from every process's part (rank order): samples back in seed order, then scored."""
    world = len(parts)
    x = torch.empty(cell.seed_count, *parts[0].x.shape[1:], dtype=parts[0].x.dtype)
    for rank, part in enumerate(parts):
        x[rank::world] = part.x
    values = scorer(x)
    nfes = [n for part in parts for n in part.nfe_per_batch]
    wall = max(part.wall_s for part in parts)  # the cell takes as long as its slowest process
    common = {
        "target": cell.target, "sampler": cell.label, "sampler_name": cell.sampler, "params": cell.params,
        "grid": cell.grid, "requested": cell.requested, "nfe": sum(nfes) / len(nfes), "nfe_per_batch": nfes,
        "nfe_per_rank": [sum(p.nfe_per_batch) / max(len(p.nfe_per_batch), 1) for p in parts], "world_size": world,
        "batch_size": batch_size, "wall_s": wall, "samples_per_s": cell.seed_count / wall if wall > 0 else None,
        "peak_memory_mb": max(part.peak_memory_mb for part in parts),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "n_samples": cell.seed_count, "seed_start": cell.seed_start, "seed_count": cell.seed_count,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **target.protocol, **scorer.protocol,
    }
    return [{**common, "key": cell.key(m), "metric": m, "value": values[m]} for m in cell.metrics]


def prepare(cfg: DictConfig):
    """Everything that can be checked without sampling: raises ValueError naming the config key."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"config dtype: {cfg.dtype!r} is not one of {sorted(DTYPES)}")
    try:
        device = torch.device(cfg.device)
    except RuntimeError as err:
        raise ValueError(f"config device: {err}") from None
    for key in ("ddp.devices", "ddp.num_nodes"):
        positive_int(key, OmegaConf.select(cfg, key))
    if cfg.get("reference_count") is not None:
        positive_int("reference_count", cfg.reference_count)
    kind, target_id = target_of(cfg)
    data_kind = _data_kind(cfg) if kind == "checkpoint" else "points"
    metrics = resolve_metrics(cfg, kind, data_kind)
    if set(metrics) & set(IMAGE_METRICS):
        from lightning_sde.metrics.features import FEATURE_EXTRACTORS

        if cfg.feature_extractor not in FEATURE_EXTRACTORS:
            raise ValueError(f"config feature_extractor: unknown {cfg.feature_extractor!r}; choose one of {sorted(FEATURE_EXTRACTORS)}")
        if cfg.feature_extractor != "digits":  # the protocol belongs to a row's identity (digits: the original keys)
            target_id += f"|features={cfg.feature_extractor}"
    if cfg.get("reference_count") is not None:
        target_id += f"|reference_count={cfg.reference_count}"
    cells = expand(cfg, target_id, metrics)
    mine = shard_cells(cells, cfg.shard.index, cfg.shard.count)
    return kind, target_id, device, metrics, cells, mine


def _data_kind(cfg: DictConfig) -> str:
    """The datamodule class's `kind` ("points" | "images"), read off the class: no data is loaded yet."""
    from hydra.utils import get_class

    try:
        return get_class(cfg.data._target_).kind
    except Exception as err:  # noqa: BLE001  (an import error or a typo in the class path: name the key)
        raise ValueError(f"config data._target_: {type(err).__name__}: {err}") from None


def run_sweep(cfg: DictConfig) -> dict:
    kind, target_id, device, metrics, cells, mine = prepare(cfg)
    fabric = launch(cfg.ddp.devices, cfg.ddp.num_nodes, device)  # each process samples seeds[rank::world] of a cell
    rank, world = rank_world(fabric)
    device = fabric.device if fabric else device
    store = ResultsStore(cfg.results)
    todo = None
    if rank == 0:
        done = store.keys()
        todo = [i for i, c in enumerate(mine) if not all(c.key(m) in done for m in c.metrics)]
        log.info("%d cells in the sweep, %d in shard %d/%d, %d already in %s, %d to compute on %d process(es)",
                 len(cells), len(mine), cfg.shard.index, cfg.shard.count, len(mine) - len(todo), store.path,
                 len(todo), world)
    if fabric:  # rank 0 decides: the others must not see its appends as a different to-do list
        todo = fabric.broadcast(todo, src=0)
    todo = [mine[i] for i in todo]
    if todo:
        target = build_target(cfg, kind, target_id, device, with_reference=rank == 0)
        scorer = Scorer(target, metrics, cfg, cfg.stats_cache, device) if rank == 0 else None
        commit, dtype = git_commit(), DTYPES[cfg.dtype]
        for cell in tqdm(todo, desc="cells", unit="cell", disable=not cfg.progress or rank != 0):
            log.info("computing cell %s", cell)
            parts = gather_to_zero(sample_part(cell, target.denoiser, rank, world, cfg.batch_size, device, dtype), fabric)
            if rank == 0:
                rows = score_cell(cell, parts, target, scorer, cfg.batch_size, device)
                for row in rows:
                    row.update(git_commit=commit, shard=f"{cfg.shard.index}/{cfg.shard.count}")
                store.append(rows)
    if fabric:
        fabric.barrier()
    return {"cells": len(cells), "shard_cells": len(mine), "computed": len(todo), "rank": rank, "world_size": world}
