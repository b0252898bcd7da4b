"""lsde-sample: draw samples of a model with one sampler and write them to disk (for a figure, or FID elsewhere).

    lsde-sample checkpoint=outputs/train/X/checkpoints/last.ckpt nfe=10 seeds.count=10000    # the recommended sampler
    lsde-sample checkpoint=... sampler=dpmpp nfe=20 seeds.count=50000 device=cuda ddp.devices=4
    lsde-sample checkpoint=... guidance=3 labels=7                      # class 7 at guidance weight 3
    lsde-sample sampler=ode tolerance=1e-5                              # the exact 8 Gaussians, dopri5

Sample i is drawn from seed seeds.start + i, so a seed gives the same sample whatever the batch, the number of
processes or the run that draws it (deterministic samplers; an adaptive solver's steps are shared by its batch, so
there the batch and the processes are part of the settings). Under DDP (`ddp.devices`, or srun / torchrun) each
chunk's seeds are split over the processes and rank 0 writes. Written to `out` (outputs/samples/<name>):
  samples.npz   `samples` (images: uint8 (N, H, W, C), each pixel round(255 (x + 1) / 2) of the sample's [-1, 1]
                value, as the FID code reads them; points: float32 (N, D)), `seeds`, and `labels` under guidance
  images/       one PNG per image sample, <seed>.png (png=false: none); exactly the seeds asked for
  preview.png   the first 64 images, or a scatter of the points' first two coordinates
  summary.json  the settings (model, the sampler's full parameters, NFE, guidance), what grid=select chose, NFE, times,
                the code version of this run and how many seeds each code version drew (drawn_by)
Each chunk (batch_size x processes seeds) is kept in out/chunks/ as soon as it is drawn: a killed run's rerun goes
on from them, and a rerun with more seeds draws only the new ones (an adaptive solver's chunks are planned from
seeds.start, so its samples do not depend on what the folder held). Output of other settings in `out` is refused at
start-up, not replaced (name= keeps both); so is a folder of files this app did not write, and a second run of the
name while one runs; each job of a multirun writes <out>_<job>. A chunk with a NaN or infinite sample stops the run
with an error (the chunks before it are kept).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lightning_sde.bench.spec import MAX_NFE, jsonable, positive_int
from lightning_sde.cli.errors import (
    another_folder,
    fails_cleanly,
    folder_key,
    job_folder_note,
    own_folder_per_job,
)
from lightning_sde.cli.help import print_help_if_asked
from lightning_sde.configuration import (
    CONFIG_PATH,
    build,
    check_class_has_guidance,
    check_folder_name,
    checked,
    require_device,
)
from lightning_sde.configuration import device as parse_device
from lightning_sde.configuration import dtype as parse_dtype
from lightning_sde.distributed import broadcast_from_zero, check_launcher_world, launched, launched_first, rank_world
from lightning_sde.files import LOCK_FILE, FolderLock, replace_atomically, write_text
from lightning_sde.generation import batch_model, batch_settings, check_seed_range, generate, seed_labels
from lightning_sde.models.guidance import check_guidance
from lightning_sde.samplers.base import Sampler
from lightning_sde.samplers.grids import check_start, may_use_data_moments
from lightning_sde.samplers.schedule import check_grid, plan, selects_on_pilot, spent
from lightning_sde.targets import (
    as_recorded,
    check_guidance_learned,
    load_target,
    target_classes,
    target_kind,
    with_data_moments,
)
from lightning_sde.tracking import duration, source_revision

log = logging.getLogger(__name__)
CHUNKS = "chunks"
CHUNK_NAME = re.compile(r"seeds-(\d+)-(\d+)\.npz")
SEED_PNG = re.compile(r"\d{6,}\.png")  # <seed:06d>.png
PREVIEW_IMAGES = 64
PREVIEW_POINTS = 5000


def validate(cfg: DictConfig) -> tuple[Sampler, str, str, dict]:
    """(the sampler at its budget, target kind, target id, the settings the samples depend on); ValueError naming the
    key on any bad value, before anything is loaded or written."""
    check_folder_name("sample", cfg)
    if not isinstance(cfg.get("seeds"), DictConfig):
        raise ValueError(f"config seeds: must be {{start: S, count: N}} (seeds.start=S seeds.count=N); got "
                         f"{cfg.get('seeds')!r}")
    kind, target_id = target_kind(cfg, needs_data=False)
    target_id = as_recorded(target_id, recorded_targets(Path(cfg.out)))
    if kind == "mixture" and cfg.png is True:
        raise ValueError("config png: an exact mixture's samples are points, which have no PNG; leave png out")
    start = positive_int("seeds.start", OmegaConf.select(cfg, "seeds.start"), 0)
    count = positive_int("seeds.count", OmegaConf.select(cfg, "seeds.count"))
    check_seed_range(start, count)
    for key in ("batch_size", "ddp.devices", "ddp.num_nodes"):
        positive_int(key, OmegaConf.select(cfg, key))
    check_launcher_world(cfg.ddp.devices, cfg.ddp.num_nodes)
    if not isinstance(cfg.progress, bool):
        raise ValueError(f"config progress: must be true or false; got {cfg.progress!r}")
    if not (isinstance(cfg.png, bool) or cfg.png == "auto"):
        raise ValueError(f"config png: must be true, false or auto (true for images); got {cfg.png!r}")
    labels = cfg.get("labels", "cycle")
    check_writable(Path(cfg.out))
    dtype, device = parse_dtype(cfg.dtype), parse_device(cfg.device)
    sampler = build(cfg.sampler, "sampler")
    if not isinstance(sampler, Sampler):
        raise ValueError(f"config sampler: {cfg.sampler.get('_target_')!r} is not a Sampler")
    sampler = at_budget(cfg, sampler)
    guidance = cfg.get("guidance")
    check_class_has_guidance("labels", labels, guidance)
    if guidance is not None:
        check_guidance(guidance, "config guidance", " or null")
        classes = target_classes(cfg, kind)
        if classes is None:
            raise ValueError("config guidance: the model is not class-conditional (a checkpoint trained with "
                             "model.net.num_classes, or a labelled problem); set guidance=null")
        checked("labels", seed_labels, [0], labels, classes)
    check_guidance_learned(cfg, kind, [guidance])
    settings = {"target_id": target_id, "sampler": sampler.name, "params": jsonable(sampler.params()),
                "guidance": None if guidance is None else float(guidance),
                "labels": labels if guidance is not None else None, "dtype": str(dtype),
                "device": device.type}
    settings.update(batch_settings(sampler, cfg))
    check_out(Path(cfg.out), settings, cfg.get("output_dir"))
    return sampler, kind, target_id, settings


def at_budget(cfg: DictConfig, sampler: Sampler) -> Sampler:
    """The sampler at `nfe` (fixed-step: the most steps it allows) or `tolerance` (adaptive: rtol = atol), or as
    configured when both are null."""
    nfe, tol = cfg.get("nfe"), cfg.get("tolerance")
    if nfe is not None and tol is not None:
        raise ValueError(f"config nfe/tolerance: set one (nfe for fixed-step samplers, tolerance for adaptive ones); "
                         f"got nfe={nfe!r}, tolerance={tol!r}")
    if nfe is not None:
        if positive_int("nfe", nfe) > MAX_NFE:
            raise ValueError(f"config nfe: must be at most {MAX_NFE}; got {nfe}")
        if sampler.adaptive:
            raise ValueError(f"config nfe: {sampler.name} is adaptive (it chooses its steps); give tolerance= "
                             "(rtol = atol) instead")
        budgeted = checked("nfe", sampler.at_nfe, nfe)
        if budgeted is None:
            raise ValueError(f"config nfe: {nfe} is below the least budget of {sampler.name}, {sampler.step_cost()}")
        return budgeted
    if tol is not None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < math.inf:
            raise ValueError(f"config tolerance: must be a number > 0; got {tol!r}")
        if not sampler.adaptive:
            raise ValueError(f"config tolerance: {sampler.name} takes fixed steps; give nfe= instead")
        return checked("tolerance", sampler.at_tolerance, tol)  # its rtol's bounds, under the key given
    return sampler


def check_writable(out: Path) -> None:
    """`out`, or the folder it would be made in, can be written (a read-only file system fails now, in one line)."""
    folder = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"config out: {out} cannot be written ({folder} is "
                         f"{'not a folder' if not folder.is_dir() else 'not writable'})")


def check_out(out: Path, settings: dict, output_dir=None) -> None:
    """Refuse, before any work, to write into `out` the samples of other settings than those already there, or into
    a folder of files this app did not write (its lock and Hydra's `output_dir` aside, which Hydra makes first)."""
    path = out / "settings.json"
    before = None
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("%s cannot be read (edited?): going by the settings its chunks record; it is written again",
                        path)
    if not isinstance(before, dict):
        chunks = [p for p in (out / CHUNKS).glob("seeds-*.npz") if CHUNK_NAME.fullmatch(p.name)]
        if chunks:  # this app's chunks, their settings.json lost or unreadable: each says what it was drawn under
            ours = settings_text(settings)
            if any(chunk_settings(p) not in (None, ours) for p in chunks):
                raise ValueError(f"config {folder_key()}: {out} holds samples of other settings (its chunks say so; "
                                 f"its settings.json is gone or unreadable); give {another_folder()} to keep both, or "
                                 "delete it" + job_folder_note())
            return
        ours = {LOCK_FILE}
        if output_dir is not None and Path(output_dir).resolve().is_relative_to(out.resolve()):
            ours |= set(Path(output_dir).resolve().relative_to(out.resolve()).parts[:1])
        theirs = sorted(p.name for p in out.iterdir() if p.name not in ours | {path.name}) if out.is_dir() else []
        if theirs:  # a folder this app did not write: its files are not replaced or removed
            raise ValueError(f"config out: {out} holds files that lsde-sample did not write ({', '.join(theirs[:5])}"
                             f"{', ...' if len(theirs) > 5 else ''}); give {another_folder()}, or empty it")
        return
    if before != json.loads(json.dumps(settings)):
        differ = sorted(k for k in {*settings, *before} if json.dumps(before.get(k)) != json.dumps(settings.get(k)))
        raise ValueError(f"config {folder_key()}: {out} holds samples of other settings ({', '.join(differ)} differ); "
                         f"give {another_folder()} to keep both, or delete it" + job_folder_note())


def recorded_targets(out: Path) -> list[str]:
    """The target ids the samples in `out` were drawn from (settings.json's, else its chunks')."""
    texts = []
    try:
        texts.append((out / "settings.json").read_text())
    except OSError:
        pass
    if out.is_dir():
        texts += [chunk_settings(p) or "" for p in sorted((out / CHUNKS).glob("seeds-*.npz"))[:1]]
    found = []
    for text in texts:
        try:
            found.append(json.loads(text).get("target_id"))
        except (ValueError, AttributeError):
            continue
    return [t for t in found if isinstance(t, str)]


def chunk_settings(path: Path) -> str | None:
    """The settings a chunk says it was drawn under; None for a file that is not a readable chunk."""
    try:
        with np.load(path, allow_pickle=False) as chunk:
            return str(chunk["settings"])
    except Exception:  # noqa: BLE001  (a load without pickles runs nothing: whatever it raises, not a chunk)
        return None


def read_chunks(folder: Path, settings: dict, shape: tuple, dtype) -> list[dict]:
    """The chunks drawn so far under `settings` ({"seeds", "samples", "labels" (or None), "nfe"}), each checked
    against what this model writes (samples of `shape` and `dtype`, finite); a file that is not such a chunk is named
    and left out (its seeds are drawn again)."""
    found, ours = [], settings_text(settings)
    for path in sorted(folder.glob("seeds-*.npz")) if folder.is_dir() else []:
        if not CHUNK_NAME.fullmatch(path.name):
            continue
        if not path.is_file():
            raise ValueError(f"config out: {path} is not a file but has a chunk's name; move it away")
        try:
            with np.load(path, allow_pickle=False) as chunk:
                seeds, samples, nfe = chunk["seeds"], chunk["samples"], float(chunk["nfe"])
                nfe_max = float(chunk["nfe_max"]) if "nfe_max" in chunk.files else nfe  # (older chunks: their mean)
                labels = chunk["labels"] if "labels" in chunk.files else None
                theirs = str(chunk["settings"])
                commit = str(chunk["git_commit"]) if "git_commit" in chunk.files else UNRECORDED
            if theirs != ours:
                raise ValueError("drawn under other settings")
            if seeds.ndim != 1 or seeds.dtype.kind not in "iu":
                raise ValueError(f"seeds {seeds.dtype} {seeds.shape}, not integers in a row")
            if samples.dtype != dtype or samples.shape[1:] != shape or len(seeds) != len(samples) or (
                    samples.dtype.kind == "f" and not np.isfinite(samples).all()):
                raise ValueError(f"samples {samples.dtype} {samples.shape} for {len(seeds)} seeds, not {dtype} "
                                 f"{shape} each, or not finite")
            if settings["guidance"] is not None and (labels is None or labels.shape != (len(seeds),)
                                                     or labels.dtype.kind not in "iu"):
                raise ValueError(f"no class for each of its {len(seeds)} seeds")
        except Exception as err:  # noqa: BLE001  (any unreadable file: drawn again)
            log.warning("%s: not a chunk of samples (%s: %s); its seeds are drawn again", path, type(err).__name__, err)
            continue
        found.append({"seeds": seeds.astype(np.int64), "samples": samples, "labels": labels, "nfe": nfe,
                      "nfe_max": nfe_max, "git_commit": commit})
    return found


UNRECORDED = "unrecorded (drawn before chunks recorded it)"


class Drawn:
    """The samples of `seeds` drawn so far, in seed order, with each one's class (guided runs), its chunk's mean NFE
    and its largest batch's: an array each, not an object per seed (a million 2-D points took 1.3 GB as a dict)."""

    def __init__(self, seeds: range, shape: tuple, dtype, labelled: bool):
        self.seeds, n = seeds, len(seeds)
        self.filled = np.zeros(n, dtype=bool)
        self.samples = np.empty((n, *shape), dtype=dtype)
        self.labels = np.zeros(n, dtype=np.int64) if labelled else None
        self.nfe, self.nfe_max = np.zeros(n), np.zeros(n)
        self.commits, self.commit = [], np.zeros(n, dtype=np.int32)  # the code version that drew each, an index
        self.count = 0

    def put(self, seeds: np.ndarray, samples: np.ndarray, labels, nfe: float, nfe_max: float, commit: str) -> None:
        """A chunk's samples of `seeds`, drawn by code version `commit`; those outside the range are left out."""
        inside = (seeds >= self.seeds.start) & (seeds < self.seeds.stop)
        index = seeds[inside] - self.seeds.start
        self.count += len(np.unique(index[~self.filled[index]]))
        self.filled[index] = True
        self.samples[index] = samples[inside]
        if self.labels is not None:
            self.labels[index] = np.asarray(labels)[inside]
        self.nfe[index], self.nfe_max[index] = nfe, nfe_max
        if commit not in self.commits:
            self.commits.append(commit)
        self.commit[index] = self.commits.index(commit)

    def drawn_by(self) -> dict[str, int]:
        """{code version: how many of the seeds it drew} (of the filled seeds)."""
        counts = np.bincount(self.commit[self.filled], minlength=len(self.commits))
        return {commit: int(n) for commit, n in zip(self.commits, counts, strict=True) if n}


def still_to_draw(found: list[dict], drawn: Drawn, chunk_size: int, batch_dependent: bool) -> list:
    """The chunks of seeds still to draw, after putting those already drawn into `drawn`. Most samplers' sample
    depends on its seed alone, so any drawn seed counts; a batch-dependent one's (Sampler.batch_dependent) on the batch
    it was drawn in, so only whole chunks of this run's plan (from seeds.start, chunk_size at a time) count: the same
    command writes the same samples whatever the folder held."""
    seeds = drawn.seeds
    plan = [seeds[i : i + chunk_size] for i in range(0, len(seeds), chunk_size)]
    planned = {(part.start, len(part)) for part in plan}
    for chunk in found:
        ids = chunk["seeds"]
        whole = len(ids) > 0 and (int(ids[0]), len(ids)) in planned and bool((np.diff(ids) == 1).all())
        if batch_dependent and not whole:
            continue
        drawn.put(ids, chunk["samples"], chunk["labels"], chunk["nfe"], chunk.get("nfe_max", chunk["nfe"]),
                  chunk.get("git_commit", UNRECORDED))
    if batch_dependent:
        return [part for part in plan if not drawn.filled[part.start - seeds.start]]
    if not drawn.count:
        return plan
    missing = np.flatnonzero(~drawn.filled) + seeds.start
    return [missing[i : i + chunk_size] for i in range(0, len(missing), chunk_size)]


def check_memory(count: int, shape: tuple, itemsize: int) -> None:
    """Every sample is held in memory until samples.npz is written: a count this machine cannot hold is refused
    before any sampling."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not Linux: no check
        return
    need = count * (math.prod(shape) * itemsize + 41)  # the sample, whether drawn, its class and two NFE figures
    if need > total:
        raise ValueError(f"config seeds.count: {count} samples of shape {tuple(shape)} take {need / 2**30:.3g} GiB in "
                         f"memory until samples.npz is written, more than this machine's {total / 2**30:.3g} GiB; "
                         f"draw them in parts, each with its own out (seeds.start=0 seeds.count=N, then "
                         f"seeds.start=N ...)")


def settings_text(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True)


def stored(x: torch.Tensor, images: bool) -> np.ndarray:
    """Samples as written: images uint8 (N, H, W, C), round(255 (x + 1) / 2); points float32."""
    if not images:
        return x.float().numpy()
    from lightning_sde.metrics.features import to_uint8

    return to_uint8((x.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()


def save_npz(path: Path, **arrays) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # an open file: numpy adds no .npz to its name (and no copy in memory)
            np.savez(fh, **arrays)

    replace_atomically(path, write)


def run(cfg: DictConfig) -> dict | None:
    sampler, kind, target_id, settings = validate(cfg)  # a bad value fails before `out` exists
    device, dtype = parse_device(cfg.device), parse_dtype(cfg.dtype)
    require_device(device)
    with FolderLock(cfg.out, "lsde-sample") if launched_first() else contextlib.nullcontext():
        check_out(Path(cfg.out), settings, cfg.get("output_dir"))  # again under the lock
        with launched(cfg.ddp.devices, cfg.ddp.num_nodes, device) as fabric:
            return draw(cfg, sampler, kind, target_id, settings, fabric.device if fabric else device, dtype)


def draw(cfg: DictConfig, sampler: Sampler, kind: str, target_id: str, settings: dict, device, dtype) -> dict | None:
    rank, world = rank_world()
    target = load_target(cfg, kind, target_id, device)
    denoiser = target.denoiser
    if may_use_data_moments(sampler) and target.datamodule is not None:
        with_data_moments(target)
    checked("sampler", check_grid, sampler, denoiser.sde)
    checked("sampler", check_start, sampler, denoiser, guided=cfg.get("guidance") is not None)
    images = len(denoiser.shape) == 3
    shape = (*denoiser.shape[1:], denoiser.shape[0]) if images else tuple(denoiser.shape)
    if cfg.png is True and not (images and shape[-1] in (1, 3)):  # before any sampling, as for an exact mixture
        what = f"images of {shape[-1]} channels" if images else "points"
        raise ValueError(f"config png: the checkpoint's samples are {what}, which have no PNG; leave png out "
                         "(samples.npz holds them)")
    out, chunks = Path(cfg.out), Path(cfg.out) / CHUNKS
    seeds = range(cfg.seeds.start, cfg.seeds.start + cfg.seeds.count)
    chunk_size = cfg.batch_size * world
    stored_dtype = np.dtype(np.uint8 if images else np.float32)
    check_memory(len(seeds), shape, stored_dtype.itemsize)
    drawn, todo, revision = None, None, source_revision()
    if rank == 0:
        found = read_chunks(chunks, settings, shape, stored_dtype)
        drawn = Drawn(seeds, shape, stored_dtype, labelled=settings["guidance"] is not None)
        todo = still_to_draw(found, drawn, chunk_size, sampler.batch_dependent)
        del found  # held in `drawn` now: the chunks' arrays are not kept twice
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "settings.json", json.dumps(settings, indent=2) + "\n")
        if drawn.count:
            log.info("%d of %d seeds drawn by an earlier run (%s): going on from there", drawn.count, len(seeds),
                     chunks)
        other_code = {c: n for c, n in drawn.drawn_by().items() if c != revision}
        if other_code and todo:
            log.warning("%s seeds of %s were drawn by other code (%s) than this run's (%s): where the sampler or model "
                        "code changed between them, the samples mix both (summary.json's drawn_by says which drew "
                        "how many); give another out (name=...) to draw all of them with this code",
                        sum(other_code.values()), out, ", ".join(f"{c}: {n}" for c, n in other_code.items()),
                        revision)
    todo = broadcast_from_zero(todo)
    started, wall, setup_nfe, drawn_now, to_draw = time.monotonic(), 0.0, 0, 0, sum(len(p) for p in todo)
    for n, part in enumerate(todo):
        part = [int(seed) for seed in part]
        desc = f"{sampler.name} seeds {part[0]}..{part[-1]} ({n + 1}/{len(todo)})"
        kept = f"nothing of them is written (the {drawn.count if drawn else 0} drawn before are kept in {chunks})"
        try:
            samples = generate(sampler, denoiser, part, cfg.batch_size, device, dtype, progress=cfg.progress,
                               desc=desc, guidance=settings["guidance"], labels=cfg.get("labels", "cycle"))
        except FloatingPointError as err:  # an adaptive solver's step size underflowed: the model or sampler diverged
            raise ValueError(f"sampler: {err} on seeds {part[0]}..{part[-1]}; {kept}") from None
        diverged = None
        if rank == 0 and samples.n_nonfinite:
            bad = [part[j] for j in torch.nonzero(~torch.isfinite(samples.x.reshape(len(part), -1)).all(1))[:, 0]]
            diverged = (f"sampler: {samples.n_nonfinite} of the {len(part)} samples of seeds {part[0]}..{part[-1]} "
                        f"are not finite (first: seed {bad[0]}); {kept}: more NFE or another sampler")
        diverged = broadcast_from_zero(diverged)  # every process stops together, not in the next chunk's gather
        if diverged:
            raise ValueError(diverged)
        if rank != 0:
            continue
        wall += samples.wall_s
        setup_nfe = max(setup_nfe, samples.setup_nfe)  # each chunk names the one pilot its samples rest on
        arrays = {"seeds": np.asarray(part, dtype=np.int64), "samples": stored(samples.x, images),
                  "nfe": np.float64(samples.nfe), "nfe_max": np.float64(max(samples.nfe_per_batch)),
                  "settings": np.str_(settings_text(settings)), "git_commit": np.str_(revision)}
        if settings["guidance"] is not None:
            arrays["labels"] = seed_labels(part, cfg.labels, denoiser.num_classes).numpy()
        chunks.mkdir(parents=True, exist_ok=True)
        save_npz(chunks / f"seeds-{part[0]}-{part[-1]}.npz", **arrays)
        drawn.put(arrays["seeds"], arrays["samples"], arrays.get("labels"), samples.nfe, float(arrays["nfe_max"]),
                  revision)
        drawn_now += len(part)
        log.info("%d of %d seeds drawn; ETA %s", drawn.count, len(seeds),
                 duration((time.monotonic() - started) / drawn_now * (to_draw - drawn_now)))
    if rank != 0:
        return None
    if todo:  # what grid=select chose: its pilot ran for this run's chunks and is cached (no NFE now)
        report = plan(sampler, batch_model(denoiser, seeds[:1], settings["guidance"],
                                           cfg.get("labels", "cycle"))).setup.get("selection")
    else:  # every seed was drawn before: the last summary says what was chosen (a pilot now would cost its NFE)
        report, setup_nfe = earlier_selection(out)
        if report is None and selects_on_pilot(sampler):
            # a killed run wrote no summary: its pilot again (seeded: the same choice), its NFE counted
            report = plan(sampler, batch_model(denoiser, seeds[:1], settings["guidance"],
                                               cfg.get("labels", "cycle"))).setup.get("selection")
            setup_nfe = spent(report)
    # a guided run starts at T (grids.start_time): a Gaussian start of the sampler or its candidates is left out
    left_out = settings["guidance"] is not None and may_use_data_moments(sampler)
    return finish(cfg, out, drawn, images, settings, wall, setup_nfe, world, report, left_out)


def earlier_selection(out: Path) -> tuple[dict | None, int]:
    """(what grid=select chose, its pilot's NFE) for the samples already in `out`, as its summary.json recorded them
    ((None, 0) if unreadable)."""
    try:
        summary = json.loads((out / "summary.json").read_text())
        selection, setup_nfe = summary.get("selection"), summary.get("setup_nfe")
    except (OSError, ValueError, AttributeError):
        return None, 0
    valid = isinstance(selection, dict) and isinstance(setup_nfe, int) and not isinstance(setup_nfe, bool)
    return (selection, setup_nfe) if valid else (None, 0)


def preview_title(settings: dict, nfe: float) -> str:
    """The sampler and its NFE, and a guided run's weight and classes."""
    title = f"{settings['sampler']}, NFE {nfe:.4g}"
    if settings.get("guidance") is None:
        return title
    labels = settings["labels"]
    return title + f", w = {settings['guidance']:g}, " + ("classes cycled" if labels == "cycle" else f"class {labels}")


def finish(cfg, out: Path, drawn: Drawn, images: bool, settings: dict, wall: float, setup_nfe: int, world: int,
           selection: dict | None, start_left_out: bool = False) -> dict:
    """samples.npz, the PNGs and the preview from every chunk of the asked-for seeds; summary.json last."""
    seeds, x = drawn.seeds, drawn.samples
    assert drawn.filled.all(), "finish() before every seed was drawn"
    arrays = {"samples": x, "seeds": np.arange(seeds.start, seeds.stop, dtype=np.int64)}
    if settings["guidance"] is not None:
        arrays["labels"] = drawn.labels
    save_npz(out / "samples.npz", **arrays)
    pngs = images and cfg.png in (True, "auto") and x.shape[-1] in (1, 3)
    write_pngs(out / "images", seeds if pngs else [], x)
    from lightning_sde.plotting.samples import drawable, image_grid, scatter_grid

    nfe_mean = float(drawn.nfe.mean())
    preview = out / "preview.png"
    title = preview_title(settings, nfe_mean)
    if images and x.shape[-1] in (1, 3):
        first = torch.from_numpy(x[:PREVIEW_IMAGES]).permute(0, 3, 1, 2).float() / 127.5 - 1
        image_grid(first, preview, title=title)
    elif not images and drawable(x.shape[1:]):
        scatter_grid({title: torch.from_numpy(x[:PREVIEW_POINTS])}, preview, cols=1)
    summary = {"settings": settings, "seeds": {"start": seeds[0], "count": len(seeds)},
               "nfe_mean": nfe_mean, "nfe_max": float(drawn.nfe_max.max()),  # a batch's
               "selection": json.loads(json.dumps(selection, default=str)) if selection else None,
               "setup_nfe": setup_nfe, "wall_s_this_run": wall, "world_size_this_run": world,
               "gaussian_start_left_out": start_left_out,  # what ran where the settings say otherwise
               "samples": "samples.npz", "images": "images/" if pngs else None, "git_commit": source_revision(),
               "drawn_by": drawn.drawn_by()}  # {code version: its seeds}: several where an update came between runs
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    model = cfg.checkpoint or f"the exact {cfg.problem._target_.rsplit('.', 1)[-1]}"
    chose = f" ({selection['choice']}, chosen on its pilot)" if selection else ""
    print(f"{len(seeds)} samples of {model} with {settings['sampler']}{chose} at NFE {summary['nfe_mean']:.4g} "
          f"(sampling {wall:.3g} s this run)\n"
          f"written: {out / 'samples.npz'}" + (f", {out / 'images'}/" if pngs else "")
          + (f", {preview}" if preview.is_file() else "") + f", {out / 'summary.json'}")
    return summary


def write_pngs(folder: Path, seeds: list[int], x: np.ndarray) -> None:
    """<seed>.png for each seed, each written whole or not at all, and no other seed's PNG: a folder an FID tool reads
    holds exactly the samples asked for (none for no seeds: png=false)."""
    from PIL import Image

    if not seeds and not folder.is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)
    names = {f"{seed:06d}.png": j for j, seed in enumerate(seeds)}
    stale = [p for p in folder.glob("*.png") if SEED_PNG.fullmatch(p.name) and p.name not in names]
    if stale:
        log.info("removing %d PNGs of other seeds from %s (png=%s; the chunks are kept)", len(stale), folder,
                 "true" if seeds else "false")
        for path in stale:
            path.unlink()
    for name, j in names.items():
        image = Image.fromarray(x[j][..., 0] if x.shape[-1] == 1 else x[j])
        replace_atomically(folder / name, lambda tmp, image=image: image.save(tmp, format="PNG"))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="sample")
@fails_cleanly("lsde-sample", goes_on=lambda cfg: "the same command goes on from it")
def run_app(cfg: DictConfig) -> None:
    own_folder_per_job(cfg)
    run(cfg)


def main() -> None:
    if not print_help_if_asked("sample"):
        run_app()


if __name__ == "__main__":
    from lightning_sde.cli import apps  # not `run`: a name the app may have

    apps.run("sample", main)
