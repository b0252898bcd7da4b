"""A sweep spec (the Hydra config) -> an ordered list of cells, validated before any sampling.

A cell is (target, sampler label, its budget, seed range, and with `guidance` its classifier-free guidance weight:
label `<sampler>@w<w>`); it yields one row per metric. The budget comes from the
Sampler contract alone: fixed-step samplers take `at_nfe(n)` for each n of `nfe`, adaptive ones `at_tolerance(tol)`
for each tolerance, and with `nfe` (or `tolerances`) null they run as configured. Cells are ordered by the config's
sampler order, then the grid, so every shard expands the same list and cell i belongs to shard i % count.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import sys
from dataclasses import dataclass, field

from omegaconf import DictConfig, ListConfig

from lightning_sde.bench.results import KEY_FIELDS
from lightning_sde.configuration import build
from lightning_sde.generation import batch_settings, check_seed_range
from lightning_sde.models.guidance import check_guidance
from lightning_sde.samplers import Sampler
from lightning_sde.samplers.schedule import MAX_NFE, MEMORY_ONLY

log = logging.getLogger(__name__)
NOISE_FLOOR = "exact (noise floor)"  # the label of the cell that scores a second exact sample set


@dataclass(frozen=True)
class Cell:
    target: str  # checkpoint or mixture id
    label: str  # the sampler's label in the config
    sampler: str  # its registered name ("exact" for the noise floor)
    params: dict = field(hash=False)  # every parameter it is built with (steps / rtol / atol included)
    grid: str  # "nfe" (fixed-step), "tol" (adaptive), "configured" (as configured) or "exact"
    requested: float | None  # requested NFE or tolerance (None: as configured)
    seed_start: int
    seed_count: int
    metrics: tuple[str, ...]
    settings: dict = field(default_factory=dict, hash=False)  # what else changes the numbers (see run_settings)
    built: Sampler | None = field(default=None, hash=False, compare=False)
    guidance: float | None = None  # classifier-free guidance weight (its settings carry it and the labels)

    def key(self, metric: str) -> str:
        """The identity of one result row, what resume looks up: everything that changes its numbers (so not the
        memory-only knobs: a sweep resumed with a smaller pilot_batch after running out of memory keeps its rows)."""
        params = {k: v for k, v in self.params.items() if k not in MEMORY_ONLY}
        given = {"params": params, "metric": metric}
        return json.dumps([given[name] if name in given else getattr(self, name) for name in KEY_FIELDS],
                          sort_keys=True)

    def cell_key(self) -> str:
        """The identity of the cell, whatever its metrics: the key of its rows without the metric (results.cell_key_of
        reads it from a row)."""
        return self.key(None)

    def __str__(self) -> str:
        budget = "as configured" if self.requested is None else f"{self.grid}={self.requested:g}"
        return f"{self.label} {budget} seeds {self.seed_start}+{self.seed_count}"


def _fail(key: str, msg: str):
    raise ValueError(f"config {key}: {msg}")


def positive_int(key: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(key, f"must be an integer >= {minimum}; got {value!r}")
    return value


def jsonable(params: dict) -> dict:
    """A sampler's parameters as JSON values (explicit times become a list)."""
    out = {}
    for k, v in params.items():
        if hasattr(v, "tolist"):
            v = v.tolist()
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


def _grid(cfg: DictConfig, key: str, check) -> list | None:
    values = cfg.get(key)
    if values is None:
        return None
    if not isinstance(values, (list, tuple, ListConfig)):
        example = "<value>, ..."  # not the value: a string's list ([a]) would fail too
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            check(key, values)  # a number that is no budget is said to be so, not put in a list in the advice
            example = values
        _fail(key, f"must be a list, e.g. '{key}=[{example}]' (quoted for the shell), or null; got {values!r}")
    values = list(values)
    if not values:
        _fail(key, "is empty; give values, or null to run every sampler as configured")
    for i, v in enumerate(values):
        check(f"{key}[{i}]", v)
    repeated = sorted({v for i, v in enumerate(values) if v in values[:i]})
    if repeated:
        _fail(key, f"lists {repeated} more than once; give each value once")
    return values


def _check_nfe(key, n):
    positive_int(key, n)
    if n > MAX_NFE:
        _fail(key, f"must be at most {MAX_NFE}; got {n}")


def _check_tol(key, tol):
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0 or not math.isfinite(tol):
        _fail(key, f"must be a number > 0; got {tol!r}")


def _check_guidance(key, w):
    check_guidance(w, f"config {key}")


def weight_text(w, weights) -> str:
    """A guidance weight as its label shows it: 6 significant digits, or every digit where those would give another
    weight of the sweep (`weights`) the same label (1.0000001 and 1.0000002)."""
    short = f"{float(w):g}"
    shared = sum(f"{float(v):g}" == short for v in weights) > 1
    return repr(float(w)) if shared else short


def user_source(sampler: Sampler | None) -> str | None:
    """A hash of the source of the sampler's classes from outside this package (None for this package's own, whose
    version the rows' git_commit records): a user editing their sampler gets new cells, not the old rows."""
    if sampler is None:
        return None
    own = [c for c in type(sampler).__mro__
           if c.__module__.split(".")[0] not in ("lightning_sde", *sys.stdlib_module_names)]
    if not own:
        return None
    try:
        code = "".join(inspect.getsource(c) for c in own)
    except (OSError, TypeError):  # defined where no source is kept (an interactive session)
        return None
    return hashlib.sha256(code.encode()).hexdigest()[:16]


def run_settings(cfg: DictConfig, sampler: Sampler | None) -> dict:
    """The settings besides the sampler's own that change a cell's samples: the dtype and the kind of device
    always; for adaptive samplers also the batch size and the number of processes (torchdiffeq takes shared steps
    for the whole batch, so the batches a process solves change each sample within the tolerance)."""
    device = str(cfg.device).split(":")[0]
    settings = {"dtype": str(cfg.dtype), "device": device}
    source = user_source(sampler)
    if source:  # a user's sampler class: its code, which an edit changes, is part of what its rows measured
        settings["source_sha256"] = source
    settings.update(batch_settings(sampler, cfg))
    return settings


def expand(cfg: DictConfig, target: str, metrics: tuple[str, ...], noise_floor: bool = False) -> list[Cell]:
    """All cells of the sweep, in a fixed order. Raises ValueError naming the key on any bad value."""
    start = positive_int("seeds.start", cfg.seeds.start, 0)
    count = positive_int("seeds.count", cfg.seeds.count)
    check_seed_range(start, count)
    positive_int("batch_size", cfg.batch_size)
    if not cfg.get("samplers"):  # `~samplers` deletes the key
        _fail("samplers", "empty; pick a set (samplers=sweep) or add one (+sampler@samplers.ddim=ddim)")
    nfes = _grid(cfg, "nfe", _check_nfe)
    tols = _grid(cfg, "tolerances", _check_tol)
    weights = _grid(cfg, "guidance", _check_guidance)
    labels = cfg.get("labels", "cycle")
    if weights is not None and labels != "cycle" and (isinstance(labels, bool) or not isinstance(labels, int)
                                                      or labels < 0):
        _fail("labels", f"must be 'cycle' (seed i: class i mod num_classes) or a class index; got {labels!r}")
    cells = []
    if noise_floor:  # exact samples: float64 draws of the mixture, whatever the sweep's dtype or device
        cells.append(Cell(target, NOISE_FLOOR, "exact", {}, "exact", None, start, count, metrics))

    def add(label, sampler, grid, requested):
        for w in weights if weights is not None else [None]:
            settings = run_settings(cfg, sampler)
            if w is not None:
                settings.update(guidance=float(w), labels=labels)
            cells.append(Cell(target, label if w is None else f"{label}@w{weight_text(w, weights)}", sampler.name,
                              jsonable(sampler.params()), grid, requested, start, count, metrics, settings,
                              built=sampler, guidance=None if w is None else float(w)))

    for label, node in cfg.samplers.items():
        sampler = build(node, f"samplers.{label}")
        if not isinstance(sampler, Sampler):
            _fail(f"samplers.{label}", f"{node.get('_target_')!r} is not a Sampler")
        if sampler.adaptive and tols is not None:
            for i, tol in enumerate(tols):
                try:
                    tuned = sampler.at_tolerance(tol)
                except ValueError as err:
                    _fail(f"tolerances[{i}]", f"samplers.{label}: {err}")
                add(label, tuned, "tol", float(tol))
        elif not sampler.adaptive and nfes is not None:
            budgets = {}  # its parameters at each budget -> the first budget giving them
            for n in nfes:
                try:
                    budgeted = sampler.at_nfe(n)
                except ValueError as err:  # explicit times: their steps are fixed
                    _fail(f"samplers.{label}", str(err))
                if budgeted is None:
                    log.warning("skipping %s at nfe=%d: its least budget is %s", label, n, sampler.step_cost())
                    continue
                same = budgets.setdefault(json.dumps(jsonable(budgeted.params()), sort_keys=True), n)
                if same != n:  # e.g. 2 NFE a step at nfe 8 and 9: one sampler, one cell
                    log.warning("skipping %s at nfe=%d: it runs the same %d steps as at nfe=%d", label, n,
                                budgeted.steps, same)
                    continue
                add(label, budgeted, "nfe", int(n))
        else:
            add(label, sampler, "configured", None)
    if all(cell.sampler == "exact" for cell in cells):  # every budget below every sampler's least: a table of nothing
        _fail("nfe", f"{list(nfes)} leaves no sampler a cell: each is below every sampler's least budget (see the "
                     "warnings above)")
    return cells


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    count = positive_int("shard.count", count)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        _fail("shard.index", f"must be an integer in [0, {count}); got {index!r}")
    return cells[index::count]
