"""Run a sweep: build the target and reference once, then sample and score each cell not yet in the results file."""

from __future__ import annotations

import hashlib
import logging
import resource
import subprocess
from dataclasses import dataclass, field
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
    resolve_metrics,
    shard_cells,
    target_of,
)
from lightning_sde.exact import build_mixture
from lightning_sde.metrics import mmd, sliced_wasserstein
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


def tensor_sha256(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


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
    image_metrics: dict = field(default_factory=dict)


def build_target(cfg: DictConfig, kind: str, target_id: str, device) -> Target:
    n, start = cfg.seeds.count, cfg.seeds.start
    if kind == "mixture":
        mixture = build_mixture(**OmegaConf.to_container(cfg.mixture, resolve=True))
        sde_cfg = OmegaConf.to_container(cfg.sde, resolve=True)
        # the reference is an exact sample set, independent of the sampler seeds (as in lsde-compare)
        reference = mixture.sample(n, torch.Generator().manual_seed(10**9 + start)).float()
        return Target(target_id, mixture.denoiser(build_sde(**sde_cfg)), "points", reference,
                      {"mixture": cfg.mixture.name, "sde": sde_cfg["name"]}, mixture=mixture)
    from lightning_sde.module import ScoreModule

    ckpt = torch.load(cfg.checkpoint, map_location="cpu", weights_only=False)
    denoiser = ScoreModule.load_denoiser(cfg.checkpoint, map_location=device)
    try:
        datamodule = instantiate(cfg.data)
        reference = datamodule.reference(n)
    except Exception as err:  # noqa: BLE001  (whatever the datamodule raises, report it against its config key)
        raise ValueError(f"config data: {type(err).__name__}: {err}") from None
    if tuple(reference.shape[1:]) != tuple(denoiser.shape):
        raise ValueError(f"config data: reference shape {tuple(reference.shape[1:])} != the checkpoint's {denoiser.shape}")
    protocol = {"checkpoint": str(Path(cfg.checkpoint).resolve()), "global_step": ckpt.get("global_step"), "ema": "current_model_state" in ckpt}
    return Target(target_id, denoiser, getattr(datamodule, "kind", "points"), reference, protocol)


class Scorer:
    """Metric values of one sample set against the reference; FID/KID real-side statistics are computed once and
    cached on disk next to the results, keyed by the reference hash and the feature weights."""

    def __init__(self, target: Target, metrics, cfg: DictConfig, cache_dir: Path, device):
        self.target, self.metrics, self.device = target, metrics, device
        self.reference_hash = tensor_sha256(target.reference)
        self.protocol = {"reference_sha256": self.reference_hash}
        self.image = {}
        if set(metrics) & set(IMAGE_METRICS):
            self._build_image_metrics(cfg, cache_dir)

    def _build_image_metrics(self, cfg, cache_dir: Path):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        from lightning_sde.metrics.features import (
            build_feature_extractor,
            weights_sha256,
        )

        features = build_feature_extractor(cfg.feature_extractor)
        sha = weights_sha256(features.weights_path)
        self.protocol.update(feature_extractor=cfg.feature_extractor, feature_sha256=sha)
        n = len(self.target.reference)
        if "fid" in self.metrics:
            self.image["fid"] = FrechetInceptionDistance(feature=features, normalize=True, reset_real_features=False)
        if "kid" in self.metrics:
            self.image["kid"] = KernelInceptionDistance(feature=features, normalize=True, reset_real_features=False,
                                                        subset_size=min(1000, n // 2))
        cache = cache_dir / f"reference-{hashlib.sha256((self.reference_hash + sha).encode()).hexdigest()[:16]}.pt"
        if cache.exists():
            states = torch.load(cache, map_location="cpu")
            for name, metric in self.image.items():
                for key, value in states[name].items():  # the metric's own real-side states
                    setattr(metric, key, [v.to(self.device) for v in value] if isinstance(value, list) else value.to(self.device))
            log.info("reference statistics from %s", cache)
        else:
            states = {}
            for name, metric in self.image.items():
                metric.to(self.device).update(unit(self.target.reference.to(self.device)), real=True)
                states[name] = {k: getattr(metric, k) for k in metric._defaults if k.startswith("real")}
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save(states, tmp)
            tmp.replace(cache)
        for metric in self.image.values():
            metric.to(self.device)

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
                metric = self.image[name]
                metric.reset()  # keeps the real side (reset_real_features=False)
                metric.update(unit(x.to(self.device)), real=False)
                with torch.random.fork_rng(devices=[]):  # KID draws random subsets: seeded, so shards and reruns agree
                    torch.manual_seed(0)
                    value = metric.compute()
                out[name] = float(value[0] if isinstance(value, tuple) else value)
        return out


def unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> [0, 1], what torchmetrics takes with normalize=True."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def run_cell(cell: Cell, target: Target, scorer: Scorer, batch_size: int, device, dtype) -> list[dict]:
    sampler = build_sampler(cell.sampler, **cell.params)
    seeds = range(cell.seed_start, cell.seed_start + cell.seed_count)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    xs, nfes, wall = [], [], 0.0
    for i in range(0, len(seeds), batch_size):
        x, info = sample(sampler, target.denoiser, seeds[i : i + batch_size], device=device, dtype=dtype)
        xs.append(x)
        nfes.append(int(info["nfe"]))
        wall += info["wall_s"]
    x = torch.cat(xs)
    values = scorer(x)
    common = {
        "target": cell.target, "sampler": cell.label, "sampler_name": cell.sampler, "params": cell.params,
        "grid": cell.grid, "requested": cell.requested, "nfe": sum(nfes) / len(nfes), "nfe_per_batch": nfes,
        "batch_size": batch_size, "wall_s": wall, "samples_per_s": len(seeds) / wall if wall > 0 else None,
        "peak_memory_mb": peak_memory_mb(device), "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "n_samples": len(seeds), "seed_start": cell.seed_start, "seed_count": cell.seed_count,
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
    kind, target_id = target_of(cfg)
    data_kind = _data_kind(cfg) if kind == "checkpoint" else "points"
    metrics = resolve_metrics(cfg, kind, data_kind)
    if set(metrics) & set(IMAGE_METRICS):
        from lightning_sde.metrics.features import FEATURE_EXTRACTORS

        if cfg.feature_extractor not in FEATURE_EXTRACTORS:
            raise ValueError(f"config feature_extractor: unknown {cfg.feature_extractor!r}; choose one of {sorted(FEATURE_EXTRACTORS)}")
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
    store = ResultsStore(cfg.results)
    done = store.keys()
    todo = [c for c in mine if not all(c.key(m) in done for m in c.metrics)]
    log.info("%d cells in the sweep, %d in shard %d/%d, %d already in %s, %d to compute", len(cells), len(mine),
             cfg.shard.index, cfg.shard.count, len(mine) - len(todo), store.path, len(todo))
    if todo:
        target = build_target(cfg, kind, target_id, device)
        scorer = Scorer(target, metrics, cfg, store.path.parent, device)
        commit, dtype = git_commit(), DTYPES[cfg.dtype]
        for cell in tqdm(todo, desc="cells", unit="cell", disable=not cfg.progress):
            log.info("computing cell %s", cell)
            rows = run_cell(cell, target, scorer, cfg.batch_size, device, dtype)
            for row in rows:
                row.update(git_commit=commit, shard=f"{cfg.shard.index}/{cfg.shard.count}")
            store.append(rows)
    return {"cells": len(cells), "shard_cells": len(mine), "computed": len(todo)}
