"""The results store: a JSONL file, one row per (cell, metric), appended atomically so shards can share it.

Each append is one write() of complete lines, flushed and fsynced under an exclusive fcntl lock. A crash can
still leave a torn last line: readers skip it, and the next append starts on a fresh line.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from pathlib import Path

from lightning_sde.files import appending, file_name, replace_atomically

log = logging.getLogger(__name__)
WANDB_RUN_KEY = "the results file's W&B run"  # claimed like a cell: a W&B run has one writer


def _varying_nfe(row: dict) -> bool:
    return isinstance(row.get("nfe_per_batch"), list) and len(set(map(str, row["nfe_per_batch"]))) > 1


# How a row's numbers are computed: each change of how a metric or the NFE is computed adds a version here, with the
# rows it changes; a sweep resumed by a newer version computes again the cells whose rows of an earlier version it
# changes (the old rows stay in the file, the views show the newer: a later row of a key wins), and no other.
DEFINITION_CHANGES = {
    # an NFE that varies by batch is the mean over samples, not batches; sliced W2 between sets of different sizes is
    # exact (rows without a `definitions` field came before this version, or after both changes and before the field)
    1: lambda row: _varying_nfe(row) or (row.get("metric") == "sliced_w2"
                                         and row.get("n_reference") not in (None, row.get("n_samples"))),
    # the noise floor of a guided mixture sweep with labels=cycle draws each seed's class, as its samplers do
    2: lambda row: row.get("grid") == "exact" and str(row.get("target")).endswith("|scored_on_labels=cycle"),
}
DEFINITIONS = max(DEFINITION_CHANGES)  # what new rows record
_WARNED: set[tuple[str, int, str]] = set()  # (file, line number, line) already warned about


class ResultsStore:
    def __init__(self, path):
        self.path = Path(path)

    def rows(self, quiet: bool = False) -> list[dict]:
        """All complete rows, in file order (a later row with the same key wins in `latest`); each line that is not
        one is said once (not when `quiet`)."""
        if not self.path.exists():
            return []
        if self.path.is_dir():
            raise ValueError(f"results {str(self.path)!r} is a folder; give a .jsonl file, e.g. "
                             f"{str(self.path / 'results.jsonl')!r}")
        if not self.path.is_file():  # a device or a pipe: read without end, or never
            raise ValueError(f"results {str(self.path)!r} is not a regular file; give a .jsonl file")
        rows = []
        with open(self.path, errors="replace") as fh:  # bytes that are not UTF-8 make an invalid line, no crash
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    if not quiet:
                        self._warn_once(n, line, "a torn or invalid line")
                    continue
                if not isinstance(row, dict) or not isinstance(row.get("key"), str):
                    if not quiet:
                        self._warn_once(n, line, 'a line that is not a result row (a JSON object with a string "key")')
                    continue
                rows.append(row)
        return rows

    def _warn_once(self, n: int, line: str, what: str) -> None:
        """Each bad line once per process, not at every read (a sweep reads the file after every cell)."""
        seen = (str(self.path), n, line)
        if seen not in _WARNED:
            _WARNED.add(seen)
            log.warning("%s:%d: skipping %s", self.path, n, what)  # pragma: no mutate

    def latest(self) -> dict[str, dict]:
        """key -> row; duplicates (two shards racing on one cell) resolve to the last written."""
        return {row["key"]: row for row in self.rows()}

    def keys(self, any_definitions: bool = False) -> set[str]:
        """The keys of the rows the views can read, computed as this version computes them (`any_definitions`: or
        as an older one did): a cell whose row they cannot show (edited), or of older definitions, is computed again."""
        return {key for key, row in self.latest().items()
                if unreadable(row) is None and (any_definitions or not of_older_definitions(row))}

    def of_older_definitions(self, keys) -> list[str]:
        """Those of `keys` whose rows were computed under older definitions (DEFINITIONS)."""
        latest = self.latest()
        return [k for k in keys if k in latest and of_older_definitions(latest[k])]

    def append(self, rows: list[dict]) -> None:
        if rows:
            with appending(self.path) as append_lines:
                append_lines("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode())


class SweepPlans:
    """The cell lists sweeps of a results file were launched with, one line a list and shard
    (`<results>.plans.jsonl`). Shards split a list by position, so shards launched with two lists would leave
    cells out: a shard whose list differs from an unfinished one of the same shard count and shares a sampler cell
    with it is refused (`record`), and the report names the planned cells that have no rows (`missing`)."""

    def __init__(self, results):
        results = Path(results)
        self.path = results.with_name(results.stem + ".plans.jsonl")

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        plans = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                plan = json.loads(line)
            except json.JSONDecodeError:  # a torn line: its launch wrote its plan again, or never started
                continue
            if isinstance(plan, dict) and isinstance(plan.get("cells"), list):
                plans.append(plan)
        return plans

    def record(self, plan: dict, check) -> None:
        """Append `plan` unless already there, after `check(earlier plans)` (which raises to refuse it), both under
        an exclusive lock: of two shards launched at once with other lists, the second sees the first."""
        with appending(self.path) as append_lines:
            earlier = self.read()
            check(earlier)
            if not any(p.get("list") == plan["list"] and p.get("shard") == plan["shard"] for p in earlier):
                append_lines((json.dumps(plan, sort_keys=True) + "\n").encode())

    def missing(self, done_cells: set[str]) -> list[str]:
        """The planned cells (their descriptions) that are not in `done_cells` (cell keys), in plan order."""
        out = {}
        for plan in self.read():
            for key, described in plan["cells"]:
                if key not in done_cells:
                    out.setdefault(key, described)
        return list(out.values())


class Claimed(ValueError):
    def __init__(self, results, busy: set[str], keys: set[str]):
        rows = f"{len(busy - {WANDB_RUN_KEY})} of its {len(keys - {WANDB_RUN_KEY})} result rows"
        what = rows if WANDB_RUN_KEY not in busy else "the W&B run" + (f" and {rows}" if len(busy) > 1 else "")
        super().__init__(f"results {str(results)!r}: another lsde-bench is writing {what} (its locks: "
                         f"{Path(results).name}.lock); wait for it to end, or give this one another results file")


class Claim:
    """This process's claim on result rows (their keys) of a results file, so that two sweeps never compute the same
    cell at once: one POSIX lock per key, on one byte of `<results>.lock` (its offset a hash of the key). The system
    drops the locks when the process ends, however it ends, so a killed sweep leaves no stale claim. Sweeps of
    disjoint cells (other shards, other samplers) share the file."""

    def __init__(self, results, keys):
        self.path = Path(results).with_name(Path(results).name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        keys = set(keys)
        try:
            busy = {key for key in keys if not self._lock(key)}
        except OSError:
            self.release()
            raise
        if busy:
            self.release()
            raise Claimed(results, busy, keys)

    def _lock(self, key: str) -> bool:
        offset = int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
        except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: held by another process (else: raised)
            return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops every lock of this process on the file
            self._fd = None


def views_of(results, out=None) -> dict[str, Path]:
    """The files drawn from a results file <stem>.jsonl, in `out` (default: beside it): <stem>.csv, .md, .png and the
    samples' picture; named after it, so that two results files in one folder keep their own."""
    results = Path(results)
    out = Path(out) if out else results.parent
    return {"csv": out / f"{results.stem}.csv", "markdown": out / f"{results.stem}.md",
            "png": out / f"{results.stem}.png", "samples": out / f"{samples_name(results)}.png"}


def samples_name(results: Path) -> str:
    """What a results file's sample previews are named after: `samples` for results.jsonl, `<stem>.samples` else."""
    return "samples" if results.stem == "results" else f"{results.stem}.samples"


KEY_FIELDS = ("target", "label", "sampler", "params", "grid", "requested", "seed_start", "seed_count", "metric",
              "settings")  # a row's key (spec.Cell.key): these of its cell, a JSON list in this order


def key_fields(row_key) -> dict | None:
    """A row's key as {field: value} (KEY_FIELDS; keys written before `settings` was added have no `settings`), or
    None for a key of another form, not this package's."""
    try:
        fields = json.loads(row_key)
    except (ValueError, TypeError):
        return None
    if not isinstance(fields, list) or not KEY_FIELDS.index("metric") < len(fields) <= len(KEY_FIELDS):
        return None
    return dict(zip(KEY_FIELDS, fields))


def cell_key_of(row_key: str) -> str:
    """A row's cell: its key without the metric (spec.Cell.cell_key), the same for every metric the cell has (a key
    of another form: the key itself)."""
    fields = key_fields(row_key)
    if fields is None:
        return row_key
    return json.dumps(list({**fields, "metric": None}.values()), sort_keys=True)


class SamplePreviews:
    """The first `n` samples of every cell (and of the reference set), one tensor file each, so that the views can
    show what a sampler at an NFE produces next to the others, from the same seeds. Written atomically."""

    def __init__(self, folder, n: int = 64):
        self.folder = Path(folder)
        self.n = n

    @classmethod
    def of(cls, results, n: int = 64) -> "SamplePreviews":
        """The previews of a results file <stem>.jsonl: `samples/` beside it (`<stem>.samples/` for another stem)."""
        return cls(Path(results).parent / samples_name(Path(results)), n)

    @staticmethod
    def protocol(target: str, seed_start: int, seed_count: int) -> str:
        """What keeps the previews of one sampler and budget under two protocols apart (two seed ranges or targets
        in one results file): the seed range and a hash of the target."""
        return f"seeds{seed_start}+{seed_count}_{hashlib.sha1(target.encode()).hexdigest()[:8]}"

    @staticmethod
    def name(label: str, grid: str, requested, protocol: str | None = None, cell: str | None = None) -> str:
        """The preview's file name; `cell` (Cell.cell_key) keeps apart cells alike in label, budget and protocol but
        not in parameters, dtype or device (a rerun with other settings)."""
        budget = "" if requested is None else f"_{grid}{requested:g}"
        suffix = "" if protocol is None else f"_{protocol}"
        tag = "" if cell is None else f"_{hashlib.sha1(cell.encode()).hexdigest()[:8]}"
        return file_name(f"{label}{budget}{suffix}{tag}")

    def _write(self, name: str, x) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        replace_atomically(self.folder / f"{name}.pt", lambda tmp: torch.save(x[: self.n].detach().cpu().clone(), tmp))

    def save(self, cell, x, protocol: str | None = None) -> None:
        self._write(self.name(cell.label, cell.grid, cell.requested, protocol, cell.cell_key()), x)

    def save_reference(self, x, protocol: str | None = None) -> None:
        """The reference set's preview, tagged like the cells' previews: two targets in one file keep their own."""
        self._write(self.name("reference", None, None, protocol), x)

    def load_reference(self, protocol: str | None = None):
        return self.load("reference", None, None, protocol)

    def load(self, label: str, grid: str, requested, protocol: str | None = None, cell: str | None = None):
        """The preview of a cell (`cell`: its Cell.cell_key), or None when there is none; the names of previews
        written before cells (then protocols) were kept apart are the fallbacks."""
        import torch

        names = [(protocol, cell)] * (cell is not None) + [(protocol, None)] + [(None, None)] * (protocol is not None)
        paths = [self.folder / f"{self.name(label, grid, requested, p, c)}.pt" for p, c in names]
        path = next((p for p in paths if p.is_file()), None)
        if path is None:
            return None
        try:
            x = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001  (a weights-only load runs nothing; a torn or foreign file)
            log.warning("sample preview %s not read (%s); the views go on without it", path, type(err).__name__)
            return None
        if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim == 0:
            log.warning("sample preview %s is not a tensor of samples; the views go on without it", path)
            return None
        return x


def protocol(row: dict) -> tuple:
    """What a row's numbers are measured under besides its sampler and budget: the target (checkpoint and step, or
    problem and SDE; with the feature extractor and reference count) and the seed range."""
    return row["target"], row["seed_start"], row["seed_count"]


PROTOCOL_NAMES = {"features": "features", "reference_count": "ref"}  # what a target's id adds to its protocol


def _target_names(rows: list[dict], hash_all: bool = False) -> dict[str, str]:
    """target -> a short name (checkpoint file and step, or problem/SDE), with a hash of the target where two
    targets' short names coincide (or everywhere: `hash_all`)."""
    short, classes = {}, {}
    for r in rows:
        if r.get("checkpoint"):
            short[r["target"]] = f"{Path(str(r['checkpoint'])).name}@step{r.get('global_step')}"
        elif r.get("problem"):
            short[r["target"]] = f"{r['problem']}/{r.get('sde')}"
        else:
            short[r["target"]] = r["target"][:24]
        if r.get("labels") not in (None, "cycle"):  # one class's sweep (its noise floor's rows carry no labels)
            classes[r["target"]] = r["labels"]
    short.update({t: f"{short[t]} class {c}" for t, c in classes.items()})
    taken = Counter(short.values())
    for t in short:  # a sweep's own reference set or features (runner.plan_cells) say so before a hash would
        if taken[short[t]] > 1:
            short[t] += "".join(f" {PROTOCOL_NAMES[k]} {v}" for k, v in re.findall(r"\|(features|reference_count)="
                                                                                  r"([^|]+)", t))
    taken = Counter(short.values())
    return {t: s if taken[s] == 1 and not hash_all else f"{s} #{hashlib.sha1(t.encode()).hexdigest()[:6]}"
            for t, s in short.items()}


def subject(rows: list[dict]) -> str:
    """What the rows measured, in one line for a caption: each target (problem/SDE or checkpoint@step), the dtype
    and, for image metrics, the feature network (FIDs of other features are not comparable)."""
    from lightning_sde.metrics.image import IMAGE_METRICS

    parts = sorted(set(_target_names(rows).values()))
    for field, what in (("dtype", ""), ("feature_extractor", "features: ")):
        values = sorted({str(r[field]) for r in rows if r.get(field) and (field != "feature_extractor"
                                                                         or r["metric"] in IMAGE_METRICS)})
        parts += [what + v for v in values]
    return " · ".join(parts)


def protocol_labels(rows: list[dict], hash_targets: bool = False):
    """label(row): a row's sampler label among `rows` (its original label, `sampler_label` when relabelled), followed
    by what differs between their protocols when they have several: `ddim [seeds 0+64]`, `ddim [problem/sde]`
    (`hash_targets`: each target's name with its hash, `ddim [problem/sde #1a2b3c]`)."""
    protocols = {protocol(r) for r in rows}
    names = _target_names(rows, hash_targets) if len({p[0] for p in protocols}) > 1 else None
    seeds_differ = len({p[1:] for p in protocols}) > 1

    def label(r: dict) -> str:
        plain = r.get("sampler_label", r["sampler"])
        parts = ([names[r["target"]]] if names else []) + (
            [f"seeds {r['seed_start']}+{r['seed_count']}"] if seeds_differ else [])
        return f"{plain} [{', '.join(parts)}]" if parts else plain

    return label


# --- what the views read of the rows -------------------------------------------------------------------------

NUMBER = (int, float)
# The fields the views read, and their types; a row without them (another program's or an older version's) is
# skipped. The optional ones may be missing or null (rows from before the bootstrap intervals have no ci_*).
NEEDED = {"key": (str,), "target": (str,), "sampler": (str,), "sampler_name": (str,), "metric": (str,),
          "grid": (str,), "requested": (*NUMBER, type(None)), "nfe": NUMBER, "value": (*NUMBER, type(None)),
          "wall_s": NUMBER, "seed_start": (int,), "seed_count": (int,)}
OPTIONAL = {"ci_low": NUMBER, "ci_high": NUMBER, "ci_level": NUMBER, "samples_per_s": NUMBER, "n_samples": NUMBER,
            "setup_nfe": NUMBER, "setup_wall_s": NUMBER, "selected": (str,)}


NONNEGATIVE_FIELDS = ("requested", "nfe", "wall_s", "seed_start", "seed_count", "setup_nfe", "setup_wall_s",
                      "n_samples", "samples_per_s")


def of_older_definitions(row: dict) -> bool:
    """Whether a later change of definitions changes this row's numbers."""
    definitions = row.get("definitions", 0)
    if not isinstance(definitions, int) or isinstance(definitions, bool):
        return True
    return any(changes(row) for version, changes in DEFINITION_CHANGES.items() if version > definitions)


def unreadable(row: dict) -> str | None:
    """Why the views cannot show a row (a field missing, or of the wrong type), or None."""
    missing = [field for field in NEEDED if field not in row]
    if missing:
        return "no " + ", ".join(map(repr, missing))
    for field, types in NEEDED.items():
        if isinstance(row[field], bool) or not isinstance(row[field], types):
            return f"{field!r} is {json.dumps(row[field])[:40]}"
    for field, types in OPTIONAL.items():
        value = row.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            return f"{field!r} is {json.dumps(value)[:40]}"
    for field in NONNEGATIVE_FIELDS:  # what the plots take logarithms and ratios of
        value = row.get(field)
        if value is not None and not (0 <= value < math.inf):
            return f"{field!r} is {json.dumps(value)[:40]}"
    return None


def row_order(r: dict):
    return r["target"], r["sampler"], r["metric"], r["grid"], r["requested"] or 0


def load(path) -> list[dict]:
    """The rows of a results file (duplicates resolved to the last written), in a stable order; rows the views
    cannot read are skipped, with a warning."""
    rows, skipped = [], Counter()
    for row in ResultsStore(path).latest().values():
        why = unreadable(row)
        if why is None:
            rows.append(row)
        else:
            skipped[why] += 1
    for why, n in skipped.items():
        log.warning("%s: skipping %d row(s) the views cannot read (%s; written by another program or version?)",
                    path, n, why)  # pragma: no mutate
    return sorted(rows, key=row_order)


BUDGET_PARAMS = {"nfe": ("steps",), "tol": ("rtol", "atol")}  # what a sweep's budget sets (spec.expand)


def variant_of(row: dict) -> str:
    """What a row's sampler ran as besides its budget: the sampler, its other parameters and the run settings (dtype,
    device, guidance; read from its key, spec.Cell.key). A curve joins the budgets of one variant."""
    fields = key_fields(row.get("key"))
    if fields is None or "settings" not in fields or not isinstance(fields["params"], dict):
        return ""  # another form of key (or an older version's, without settings): one variant
    params = {k: v for k, v in fields["params"].items() if k not in BUDGET_PARAMS.get(fields["grid"], ())}
    return json.dumps([fields["sampler"], params, fields["settings"]], sort_keys=True)


def for_views(rows: list[dict], preferred=frozenset()) -> tuple[list[dict], int]:
    """(the rows the views show, how many they hide). A file with rows of several protocols (seed ranges or
    targets: a multirun into one file, a rerun with another seeds.count) shows each sampler once per protocol, its
    label followed by what differs (`protocol_labels`); its original label is kept in `sampler_label`. A label's
    curve is one variant (`variant_of`): of rows run with other sampler parameters, dtype or device (a rerun, or a
    shard launched with other overrides) the views show the variant of the last written row, or of a `preferred`
    key (the sweep just run), and of its rows alike in budget and metric the last; the CSV view (views_of) has all."""
    ranked = sorted(labelled(rows), key=lambda r: (r.get("key") in preferred, str(r.get("time") or "")))  # ties: later
    chosen = {r["sampler"]: variant_of(r) for r in ranked}
    shown = {}
    for view in ranked:
        if variant_of(view) == chosen[view["sampler"]]:
            shown[(view["sampler"], view["grid"], view["requested"], view["metric"])] = view
    return sorted(shown.values(), key=row_order), len(rows) - len(shown)


def labelled(rows: list[dict]) -> list[dict]:
    """Every row as the views label it: `sampler` its label against the file's other protocols (protocol_labels),
    `sampler_label` its own."""
    label = protocol_labels(rows)
    return [{**r, "sampler": label(r), "sampler_label": r.get("sampler_label", r["sampler"])} for r in rows]
