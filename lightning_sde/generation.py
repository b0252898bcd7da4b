"""The one path from a sampler and a seed list to samples, shared by the sampler callback, lsde-bench and
lsde-compare: split the seeds exactly across processes (rank r takes seeds r, r + W, ...: no padding, no
duplicates), sample in batches, and gather the shards back into seed order on rank 0.

NFE is reported per batch (what one batch cost; adaptive solvers differ between batches), never summed over them.
Set-up work (a grid tuned or selected on a pilot, once per model in a process) is reported apart: setup_nfe,
setup_wall_s, also where an earlier generation in this process paid it (the tuned grid was cached).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from lightning_sde.distributed import broadcast_from_zero, gather_to_zero, rank_world
from lightning_sde.models.guidance import batch_factor, guided
from lightning_sde.samplers import sample
from lightning_sde.samplers.noise import SEED_LIMIT
from lightning_sde.tracking import Progress


def check_seed_range(start: int, count: int) -> None:
    """Seeds start..start + count - 1 name distinct samples (SeededNoise: below 2**32)."""
    if start + count > SEED_LIMIT:
        raise ValueError(f"config seeds: seeds.start + seeds.count must be at most 2**32 (torch keeps a seed's low 32 "
                         f"bits: seed 2**32 would draw seed 0's sample); got {start + count}")


def batch_settings(sampler, cfg) -> dict:
    """What a batch-dependent sampler's samples were also made with (Sampler.batch_dependent: an adaptive solver's
    shared steps, PC's score_sde Langevin step): the batch size per process and the processes; {} for the others.
    Part of a result row's and a sample chunk's settings."""
    if sampler is None or not sampler.batch_dependent:
        return {}
    return {"batch_size": int(cfg.batch_size), "world_size": int(cfg.ddp.devices) * int(cfg.ddp.num_nodes)}


class GenerationStopped(Exception):
    """Raised on every process when `generate`'s `stop` answered True on any of them: it sampled no more."""


class _Stop(Exception):
    pass


@dataclass
class Samples:
    """One sampler's samples for a seed list, in seed order, and what making them cost."""

    x: Tensor  # (n, *shape), on the CPU
    nfe_per_batch: list[int]  # every batch of every process
    wall_s: float  # the slowest process's sampling time
    peak_memory_mb: float | None  # the largest process's peak of this generation (CUDA); None on CPU
    world_size: int
    batch_factor: int = 1  # network inputs per sample in one NFE: 2 under classifier-free guidance
    setup_nfe: int = 0  # the set-up NFE (a tuning's pilot) the samples rest on, the largest process's; never in `nfe`
    setup_wall_s: float = 0.0  # that tuning's time, the slowest process's
    selected: str | None = None  # what grid="select" chose on its pilot (e.g. "logsnr, order=3"); None otherwise
    batch_sizes: list[int] | None = None  # the samples of each batch of nfe_per_batch; None: batches of one size

    @property
    def nfe(self) -> float:
        """Mean NFE of a sample: each batch's NFE (every sample of a batch costs it: an adaptive solver's steps are
        the batch's) weighted by its samples. Exact for fixed-step samplers; adaptive ones vary with the batch."""
        sizes = self.batch_sizes or [1] * len(self.nfe_per_batch)
        return sum(n * b for n, b in zip(self.nfe_per_batch, sizes, strict=True)) / sum(sizes)

    @property
    def n_nonfinite(self) -> int:
        """Samples with a NaN or infinite coordinate: a diverged sampler or model."""
        return int((~torch.isfinite(self.x.reshape(len(self.x), -1))).any(dim=1).sum())


def peak_memory_mb(device: torch.device) -> float | None:
    """The peak since this generation began: CUDA's allocator counts it; on CPU the only peak there is, the
    process's lifetime maximum RSS, says nothing about one generation, so none is reported."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def seed_labels(seeds, labels, num_classes: int) -> Tensor:
    """The class of each seed: `labels` = "cycle" gives seed i the class i mod num_classes (balanced, and the same
    for a seed whatever its batch); an integer gives every seed that class."""
    seeds = torch.as_tensor(list(seeds), dtype=torch.long)
    if labels == "cycle":
        return seeds % num_classes
    if isinstance(labels, bool) or not isinstance(labels, int) or not 0 <= labels < num_classes:
        raise ValueError(f"labels must be 'cycle' or a class in 0..{num_classes - 1}; got {labels!r}")
    return torch.full_like(seeds, labels)


def batch_model(denoiser, batch, guidance: float | None, labels="cycle"):
    """The denoiser a batch of seeds samples with: under guidance, conditioned on each seed's class (seed_labels), with
    a pilot (grid="select" / "optimized") over every class the rule gives, so that all batches tune alike."""
    if guidance is None:
        return denoiser
    classes = seed_labels(range(denoiser.num_classes), labels, denoiser.num_classes).unique()
    return guided(denoiser, seed_labels(batch, labels, denoiser.num_classes), guidance, pilot_labels=classes)


def warm_up_compiled(denoiser, sizes: set[int], seeds: list[int], guidance, labels, device, dtype) -> None:
    """A compiled network (model.compile) compiles at its first call of each batch shape: done here, outside the
    timed sampling (a bench's first cell took 18 s for 0.01 s of sampling) and outside the NFE (counted per batch)."""
    if getattr(denoiser.net, "_compiled_call_impl", None) is None:
        return
    t_mid = 0.5 * (denoiser.sde.T + denoiser.sde.eps)
    with torch.no_grad():
        for n in sorted(sizes):
            model = batch_model(denoiser, seeds[:n], guidance, labels)
            # one time for the whole batch, as the fixed-step solvers pass it (a solver passing per-row times
            # compiles another graph, within its first timed batch)
            model(torch.zeros(n, *denoiser.shape, dtype=dtype, device=device), torch.tensor(t_mid, dtype=dtype))


def pilot_within(sampler, batch_size: int):
    """A sampler that tunes its grid on a pilot larger than `batch_size` rows, with no pilot_batch of its own, runs
    the pilot `batch_size` rows a network call (the same choice: pilot_batch bounds memory alone): a batch_size
    lowered to fit memory bounds the pilot too."""
    pilot = getattr(sampler, "pilot", None)
    if getattr(sampler, "grid", None) in ("select", "optimized") and getattr(sampler, "pilot_batch", 0) is None \
            and isinstance(pilot, int) and pilot > batch_size and dataclasses.is_dataclass(sampler):
        return dataclasses.replace(sampler, pilot_batch=batch_size)
    return sampler


def generate(sampler, denoiser, seeds, batch_size: int, device, dtype=torch.float32, progress: bool = False,
             desc: str | None = None, guidance: float | None = None, labels="cycle",
             stop: Callable[[], bool] | None = None) -> Samples | None:
    """All processes call this with the same `seeds`; rank 0 gets the Samples of all of them, the others None.
    With `guidance` (a class-conditional model) each seed is sampled for its class (seed_labels) at that
    classifier-free guidance weight (lightning_sde.models.guidance: one guided NFE = one doubled batch).
    `stop` (e.g. "SLURM's requeue signal came") is asked before each batch and at each step; once it answers True
    on a process, that process samples no more, and every process raises GenerationStopped. A solve that diverges on
    one process (FloatingPointError: an adaptive step size underflowed) is raised on every process, none left waiting
    in the gather."""
    seeds = list(seeds)  # an iterator would be spent by the first pass
    if not seeds:
        raise ValueError("generate: no seeds")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"generate: batch_size must be an integer >= 1; got {batch_size!r}")
    sampler = pilot_within(sampler, batch_size)
    rank, world = rank_world()
    device = torch.device(device)
    mine = seeds[rank::world]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    x = torch.empty(len(mine), *denoiser.shape, dtype=dtype)  # this rank's samples, each batch written in place
    nfes, sizes, wall, setup_nfe, setup_wall, selected = [], [], 0.0, 0, 0.0, None
    sde = denoiser.sde
    # progress in samples: finished batches plus the running batch's share, by how far its time has run (T -> eps)
    stopped, failed = False, None
    warm_up_compiled(denoiser, {len(mine[i : i + batch_size]) for i in range(0, len(mine), batch_size)}, mine,
                     guidance, labels, device, dtype)
    with Progress(len(mine), desc or sampler.name, "", enabled=progress and rank == 0) as bar:
        for i in range(0, len(mine), batch_size):
            batch = mine[i : i + batch_size]
            model = batch_model(denoiser, batch, guidance, labels)
            nfe_before = model.nfe

            def on_step(state):
                if stop is not None and stop():
                    raise _Stop
                if progress:
                    if state["i"] == 0 and state.get("setup_s"):  # a grid tuned on a pilot: not sampling time
                        bar.set_aside(state["setup_s"])
                    t = float(state["t"].max()) if torch.is_tensor(state["t"]) else float(state["t"])
                    bar.update(i + len(batch) * min(1.0, (sde.T - t) / (sde.T - sde.eps)), seeds_done=i,
                               batch_nfe=state.get("nfe", model.nfe - nfe_before))

            try:
                if stop is not None and stop():
                    raise _Stop
                batch_x, info = sample(sampler, model, batch, device, dtype,
                                       callback=on_step if progress or stop is not None else None)
            except _Stop:
                stopped = True
                break
            except FloatingPointError as err:  # this process's solve diverged: the others hear of it before they wait
                failed = str(err)  # for its samples in the gather
                break
            x[i : i + len(batch)] = batch_x
            nfes.append(int(info["nfe"]))
            sizes.append(len(batch))
            wall += info["wall_s"]
            tuning = info.get("selection") or info.get("tuning")
            if tuning and not setup_nfe:  # the set-up this sampler rests on, once: its first batch's, or cached
                setup_nfe, setup_wall = int(tuning["pilot_nfe"]), float(tuning["wall_s"])  # earlier in this process
                selected = tuning.get("choice")
            bar.update(i + len(batch), seeds_done=i + len(batch), batch_nfe=info["nfe"])
    flags = gather_to_zero((stopped, failed)) or []
    any_stopped, failure = broadcast_from_zero((any(s for s, _ in flags), next((f for _, f in flags if f), None)))
    if failure is not None:  # every process raises it, not only the one whose solve diverged
        raise FloatingPointError(failure)
    if stop is not None and any_stopped:
        raise GenerationStopped("generation stopped by its stop check")
    parts = gather_to_zero((x, nfes, wall, peak_memory_mb(device), setup_nfe, setup_wall, sizes))
    if parts is None:
        return None
    if world == 1:
        full = x  # already in seed order: no second copy
    else:
        full = torch.empty(len(seeds), *denoiser.shape, dtype=dtype)
        for r, (x_r, *_rest) in enumerate(parts):
            full[r::world] = x_r
            parts[r] = (None, *_rest)  # each shard freed once placed
    return Samples(full, [n for p in parts for n in p[1]], max(p[2] for p in parts),
                   max((p[3] for p in parts if p[3] is not None), default=None), world,
                   batch_factor=batch_factor(guidance), setup_nfe=max(p[4] for p in parts),
                   setup_wall_s=max(p[5] for p in parts), selected=selected,
                   batch_sizes=[b for p in parts for b in p[6]])
