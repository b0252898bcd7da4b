"""A sweep spec (the Hydra config) -> an ordered list of cells, validated before any sampling.

A cell is (target, sampler label, requested NFE or tolerance, seed range); it yields one row per metric. Cells are
ordered by the config's sampler order, then the grid, so every shard expands the same list and cell i belongs to
shard i % count.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lightning_sde.exact import build_mixture
from lightning_sde.metrics.image import IMAGE_METRICS
from lightning_sde.samplers import SAMPLERS, build_sampler
from lightning_sde.samplers.ode import ADAPTIVE_METHODS
from lightning_sde.sde import build_sde

log = logging.getLogger(__name__)
POINT_METRICS = ("sliced_w2", "mmd")
MIXTURE_METRICS = ("loglik",)  # exact mean log-likelihood of the samples under the mixture
ALL_METRICS = POINT_METRICS + MIXTURE_METRICS + IMAGE_METRICS


@dataclass(frozen=True)
class Cell:
    target: str  # checkpoint or mixture id
    label: str  # the sampler's label in the config
    sampler: str  # its registered name
    params: dict = field(hash=False)  # every parameter it is built with (steps / rtol / atol included)
    grid: str  # "nfe" (fixed-step) or "tol" (adaptive)
    requested: float  # requested NFE or tolerance
    seed_start: int
    seed_count: int
    metrics: tuple[str, ...]

    def key(self, metric: str) -> str:
        """The identity of one result row: what resume looks up."""
        return json.dumps([self.target, self.label, self.sampler, self.params, self.grid, self.requested,
                           self.seed_start, self.seed_count, metric], sort_keys=True)

    def __str__(self) -> str:
        return f"{self.label} {self.grid}={self.requested} seeds {self.seed_start}+{self.seed_count}"


def _fail(key: str, msg: str):
    raise ValueError(f"config {key}: {msg}")


def positive_int(key: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, f"must be an integer >= {minimum}; got {value!r}")
    return value


def target_of(cfg: DictConfig) -> tuple[str, str]:
    """("checkpoint" | "mixture", id). The id keys the rows, so a different model or problem never matches."""
    has_ckpt, has_mix = cfg.get("checkpoint") is not None, cfg.get("mixture") is not None
    if has_ckpt == has_mix:
        _fail("checkpoint/mixture", "set exactly one: checkpoint=<path.ckpt> data=<datamodule> mixture=null, or mixture.name=<problem> with sde")
    if has_ckpt:
        path = Path(cfg.checkpoint)
        if not path.is_file():
            _fail("checkpoint", f"no checkpoint file at {str(path)!r}")
        if cfg.get("data") is None:
            _fail("data", "a checkpoint needs a data config for the reference set, e.g. data=toy2d or data=digits")
        # the step is part of the id: a checkpoint overwritten by further training (last.ckpt) is a new target
        step = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step")
        return "checkpoint", f"{path.resolve()}@step{step}"
    mixture = OmegaConf.to_container(cfg.mixture, resolve=True)
    sde = OmegaConf.to_container(cfg.sde, resolve=True) if cfg.get("sde") is not None else None
    if sde is None:
        _fail("sde", "a mixture target needs an sde config, e.g. sde=vp")
    for key, builder, params in (("mixture", build_mixture, mixture), ("sde", build_sde, sde)):
        try:
            builder(**params)
        except (TypeError, ValueError) as err:
            _fail(key, str(err))
    return "mixture", "mixture:" + json.dumps(mixture, sort_keys=True) + "|sde:" + json.dumps(sde, sort_keys=True)


def resolve_metrics(cfg: DictConfig, kind: str, data_kind: str) -> tuple[str, ...]:
    """`auto` -> what fits the target: points get sliced_w2, mmd (+ loglik on a mixture); images get fid, kid."""
    requested = cfg.metrics
    allowed = POINT_METRICS + (MIXTURE_METRICS if kind == "mixture" else ()) if data_kind == "points" else IMAGE_METRICS
    if requested == "auto":
        return allowed
    if isinstance(requested, str) or not requested:
        _fail("metrics", f"must be 'auto' or a non-empty list of {list(allowed)}; got {requested!r}")
    bad = [m for m in requested if m not in allowed]
    if bad:
        _fail("metrics", f"unknown or unusable metric(s) {bad} for this {data_kind} {kind} target; allowed: {list(allowed)}")
    return tuple(requested)


def expand(cfg: DictConfig, target: str, metrics: tuple[str, ...]) -> list[Cell]:
    """All cells of the sweep, in a fixed order. Raises ValueError naming the key on any bad value."""
    start = positive_int("seeds.start", cfg.seeds.start, 0)
    count = positive_int("seeds.count", cfg.seeds.count)
    positive_int("batch_size", cfg.batch_size)
    if not cfg.samplers:
        _fail("samplers", "empty; add one, e.g. samplers.ddim={name: ddim}")
    nfes = list(cfg.nfe or [])
    tols = list(cfg.tolerances or [])
    for i, n in enumerate(nfes):
        positive_int(f"nfe[{i}]", n)
    for i, tol in enumerate(tols):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
            _fail(f"tolerances[{i}]", f"must be a number > 0; got {tol!r}")
    cells = []
    for label, scfg in cfg.samplers.items():
        key = f"samplers.{label}"
        fixed = OmegaConf.to_container(scfg, resolve=True)
        name = fixed.pop("name", None)
        if name not in SAMPLERS:
            _fail(f"{key}.name", f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
        for swept in ("steps", "rtol", "atol"):
            if swept in fixed:
                _fail(f"{key}.{swept}", "is set by the sweep (nfe / tolerances grid), not per sampler")
        try:
            # steps=1 only to learn NFE per step; adaptive ODE methods take no steps
            adaptive = getattr(SAMPLERS[name], "adaptive", False) is True or (
                name == "ode" and fixed.get("method", "dopri5") in ADAPTIVE_METHODS)
            probe = build_sampler(name, **fixed, **({} if adaptive else {"steps": 1}))
        except (TypeError, ValueError) as err:
            _fail(key, str(err))
        if getattr(probe, "adaptive", False):
            if not tols:
                _fail("tolerances", f"empty, but sampler {label!r} is adaptive and sweeps rtol = atol over it")
            for tol in tols:
                params = {**fixed, "rtol": float(tol), "atol": float(tol)}
                build_sampler(name, **params)
                cells.append(Cell(target, label, name, params, "tol", float(tol), start, count, metrics))
            continue
        if not nfes:
            _fail("nfe", f"empty, but sampler {label!r} is fixed-step and sweeps NFE over it; e.g. nfe=[10,20,50,100]")
        for n in nfes:
            steps = n // probe.nfe_per_step
            if steps < 1:
                log.warning("skipping %s at nfe=%d: it takes %d NFE a step", label, n, probe.nfe_per_step)
                continue
            cells.append(Cell(target, label, name, {**fixed, "steps": steps}, "nfe", int(n), start, count, metrics))
    return cells


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    count = positive_int("shard.count", count)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        _fail("shard.index", f"must be an integer in [0, {count}); got {index!r}")
    return cells[index::count]
