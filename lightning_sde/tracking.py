"""Experiment tracking with W&B: online where this machine has credentials, otherwise offline files synced later.

The CSV logs are the record and W&B the view: when W&B loses rows (its service killed by a preemption before it
wrote them), a resumed run logs them again to W&B from the CSV (`backfill_wandb`), so the dashboard shows one curve.
"""

from __future__ import annotations

import csv
import json
import logging
import netrc
import os
import struct
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from lightning_sde.files import write_csv

log = logging.getLogger(__name__)


def source_revision() -> str:
    """What code made a result: this checkout's git commit (`<sha>-dirty` when its package or configs differ from
    it), or, for an installed package (whose folder is no
    repository's top level, though it may sit inside someone else's), `lightning-sde==<version>`."""
    package = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(["git", "-C", str(package.parent), "rev-parse", "--show-toplevel", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=False)
        out = proc.stdout.split() if proc.returncode == 0 else []  # a repository without commits: no HEAD
    except (OSError, subprocess.SubprocessError):
        out = []
    if len(out) == 2 and Path(out[0]).resolve() == package.parent:
        try:  # code or configs changed since the commit: the commit alone would name code that did not run
            status = ["git", "-C", out[0], "status", "--porcelain", "--", "lightning_sde", "configs"]  # new files too
            dirty = bool(subprocess.run(status, capture_output=True, text=True, timeout=10, check=False).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            dirty = False
        return out[1] + ("-dirty" if dirty else "")
    try:
        return f"lightning-sde=={version('lightning-sde')}"
    except PackageNotFoundError:  # on PYTHONPATH, neither installed nor a checkout
        return "lightning-sde (not installed, no git checkout)"


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m: a log line's elapsed time or ETA."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Progress of long work: a bar in a terminal, a line at most every `every_s` seconds (and at the end) in a
    log file, where a bar's carriage returns would be noise. `update(done, **info)` sets how much is done."""

    def __init__(self, total: float, desc: str, unit: str = "", enabled: bool = True, every_s: float | None = None,
                 terminal: bool | None = None):
        import sys
        import time

        self.total, self.desc, self.unit, self.enabled = float(total), desc, unit, enabled
        self.every_s = float(os.environ.get("LSDE_PROGRESS_EVERY_S", 30.0)) if every_s is None else every_s
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._clock = time.monotonic
        self._start = self._last = self._clock()
        self.done, self.info, self.set_aside_s = 0.0, {}, 0.0
        self._bar, self._logged = None, None
        if enabled and self.terminal:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False)

    def update(self, done: float, **info) -> None:
        self.done, self.info = float(done), info
        if self._bar is not None:
            self._bar.n = min(self.done, self.total)
            self._bar.set_postfix(info, refresh=False)
            self._bar.refresh()
        elif self.enabled and self._clock() - self._last >= self.every_s:
            self._line()

    def set_aside(self, seconds: float) -> None:
        """Leave `seconds` of the time so far (a one-off set-up, e.g. a grid tuned on a pilot) out of the rate and the
        ETA; the line says how long it took."""
        self._start += seconds
        self.set_aside_s += seconds
        if self._bar is not None:
            self._bar.start_t += seconds

    def line(self) -> str:
        elapsed = self._clock() - self._start
        frac = self.done / self.total if self.total else 1.0
        parts = [f"{self.desc}: {100 * frac:.0f}% ({self.done:.4g}/{self.total:.4g} {self.unit})".replace(" )", ")"),
                 f"{duration(elapsed)} elapsed" + (f" (+{duration(self.set_aside_s)} set-up)" if self.set_aside_s
                                                   else "")]
        if 0 < frac < 1:
            parts.append(f"ETA {duration(elapsed * (1 - frac) / frac)}")
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.info.items()]
        return ", ".join(parts)

    def _line(self) -> None:
        self._last, self._logged = self._clock(), self.done
        log.info(self.line())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self._clock() - self._start >= self.every_s and self._logged != self.done:
            self._line()  # the last state, once (short work: no line at all)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _DropAdverts(logging.Filter):
    """Lightning's "💡 Tip: try installing ..." lines advertise other products; its "`weights_only` was not set"
    line on a checkpoint *save* (a preemption's: the whole state) reads like an unsafe load. Neither is about the
    run (every load is weights_only=True)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("💡 Tip", "`weights_only` was not set"))


def quiet_and_logged() -> None:
    """An app's console and log file: what matters to the run, once, in both.

    Lightning gives its loggers a console handler of their own (when imported before logging is configured), so
    its messages skip the app's handlers: they are routed through the root logger, which Hydra points at the console
    and at the run's `<app>.log`. Start-up noise that is not about the run is dropped at its source, each for a
    reason:
      - Lightning's `srun` hint: it fires on any machine with SLURM installed; our sbatch templates run under srun.
      - Lightning's product tips (litlogger, litmodels), and its note on saving a whole checkpoint.
      - torch's `LeafSpec` deprecation, raised inside Lightning's own pytree helper, not by anything we call.
      - "fewer training batches than the logging interval": training runs by max_steps and Lightning counts the
        interval in optimizer steps across epochs, so small datasets (digits: 12 batches) are logged as configured.
      - torchmetrics' note that KID keeps every feature in memory: it is how KID works, and our sets are bounded.
    """
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.trainer.connectors.checkpoint_connector"):
        source = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in source.filters):
            source.addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")
    warnings.filterwarnings("ignore", message=r"Metric `Kernel Inception Distance` will save all extracted features")
    # a run's checkpoint folder holds checkpoints when it resumes (lsde-train resumes the run of its name)
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def sync_command(wandb_dir, run_id: str | None = None) -> str:
    """The command that syncs a run's offline folders under `wandb_dir` (every launch's, for one id), pasteable
    whatever the path holds (spaces: quoted; the glob left for the shell)."""
    import shlex

    return f"wandb sync {shlex.quote(str(wandb_dir))}/offline-run-*" + (f"-{run_id}" if run_id else "")


def wandb_disabled() -> bool:
    """WANDB_MODE=disabled: the user wants no W&B run at all, not even offline files (as W&B itself reads it)."""
    return os.environ.get("WANDB_MODE") == "disabled"


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "shared", "run")  # what W&B's settings take


def check_wandb_mode() -> None:
    """A WANDB_MODE that W&B refuses, named (its own error is a settings ValidationError that names no variable)."""
    mode = os.environ.get("WANDB_MODE")
    if mode is not None and mode not in WANDB_MODES:
        raise ValueError(f"WANDB_MODE={mode!r} is not one of W&B's modes ({', '.join(WANDB_MODES[:3])}): set one, or "
                         "unset it")


def wandb_configured() -> bool:
    """True when this machine can reach W&B with credentials: otherwise log offline and sync later."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_MODE") == "online" or os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def finish_wandb(exit_code: int, error: str | None = None) -> bool:
    """Close this process's W&B run, if any, with `exit_code` (and the `error` that ended it as the summary's
    `error`); False when its service is gone (killed with the job), in which case W&B's own exit handler would fail
    too: the caller should leave without running it."""
    import wandb

    if wandb.run is None:
        return True
    if error is not None:
        try:
            wandb.run.summary["error"] = error
        except Exception as err:  # noqa: BLE001  (the run is still closed, with its exit code)
            log.warning("W&B: the error not recorded in the summary (%s: %s)", type(err).__name__, err)
    try:
        wandb.finish(exit_code=exit_code)
        return True
    except Exception as err:  # noqa: BLE001  (the CSV logs and the checkpoint are the record)
        log.warning("W&B could not close its run (%s: %s); sync the offline files later", type(err).__name__, err)
        return False


def trim_history(run_dir, step: int, redo_evaluation: bool = False) -> list[str]:
    """Before a run resumes from a checkpoint at global step `step`, drop from its CSV histories (every launch's
    csv/version_*/metrics.csv, and samples/sampler_metrics.csv) the rows that the resumed run will log again: those a
    hard kill left after the checkpoint (training rows from `step` on, evaluation rows after it; the evaluation at
    `step` itself is not repeated unless `redo_evaluation`: a stopped one, whose val/loss Lightning logged at
    step - 1). Each file is rewritten atomically; returns the files changed."""
    run_dir = Path(run_dir)
    changed = []
    for path in [*sorted(run_dir.glob("csv/version_*/metrics.csv")), run_dir / "samples" / "sampler_metrics.csv"]:
        if not path.is_file():
            continue
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [row for row in rows if not _logged_again(row, step, redo_evaluation)]
        if len(kept) == len(rows):
            continue
        write_csv(path, kept, fields)
        changed.append(str(path))
        log.warning("%s: dropped %d row(s) logged after the checkpoint at step %d (the resumed run logs them again)",
                    path, len(rows) - len(kept), step)
    return changed


def _logged_again(row: dict, step: int, redo_evaluation: bool = False) -> bool:
    try:
        at = int(float(row.get("step") or ""))
    except ValueError:
        return False
    logged = {key for key, value in row.items() if value not in ("", None)}
    training = any(key.startswith(("train/", "lr-")) for key in logged)
    # the module's validation values (val/loss), which Lightning logs at the evaluation's step - 1; the sampler rows
    # (val/<sampler>/<metric>) are logged at their evaluation's own step, so step - 1's are the evaluation before
    validation = any(key.startswith("val/") and key.count("/") == 1 for key in logged)
    return at > step or (training and at >= step) or (redo_evaluation and validation and at == step - 1)


# --- W&B's offline record log, read back ------------------------------------------------------------------------------
# A `.wandb` file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of records
# [crc32c u32][length u16][type u8][payload]; a record that does not fit its block is split FIRST/MIDDLE/LAST. Each
# payload is a protobuf `Record` (wandb.proto). W&B keeps its own reader private.
_BLOCK, _HEADER = 32 * 1024, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run log (no ':W&B' header)")
    pos, out, pending = _HEADER, [], b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            out.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            out.append(pending + chunk)
        elif kind == 0 and length == 0:  # zero padding up to the end of the block
            pos += _BLOCK - pos % _BLOCK if pos % _BLOCK else 0
    return out


def recorded_group(wandb_dir, run_id: str) -> str | None:
    """The W&B group that the newest local record of run `run_id` under `wandb_dir` names (None: no record names
    one): a run resumed on its own keeps the group its sweep gave it."""
    from wandb.proto import wandb_internal_pb2

    for run_file in sorted(Path(wandb_dir).glob(f"*run-*-{run_id}/run-{run_id}.wandb"), reverse=True):
        try:
            payloads = _payloads(run_file)
        except (OSError, ValueError):
            continue
        for payload in payloads:
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(payload)
            except Exception:  # noqa: BLE001  (a record torn by a kill: the end of what was written)
                break
            if record.WhichOneof("record_type") == "run" and record.run.run_group:
                return record.run.run_group
    return None


def offline_history(run_file) -> list[dict]:
    """The history rows of an offline W&B run file (`run-<id>.wandb`), each a dict key -> value; a file cut short
    by a kill gives the rows written before it."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for payload in _payloads(Path(run_file)):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(payload)
        except Exception:  # noqa: BLE001  (a record torn by the kill: the end of what was written)
            break
        if record.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def picture_path(samples_dir, label: str, step: int) -> Path:
    """An evaluation's picture (the sampler callback's): `scatter` (every sampler's points) or a sampler's image grid;
    W&B's key for it is samples/<label>."""
    return Path(samples_dir) / f"{label}_step{step:07d}.png"


def pictures_at(samples_dir, step: int) -> list[tuple[str, Path]]:
    """(W&B key, path) of the pictures the evaluation at `step` drew."""
    return [(f"samples/{p.name.removesuffix(f'_step{step:07d}.png')}", p)
            for p in sorted(Path(samples_dir).glob(f"*_step{step:07d}.png"))]


def backfill_wandb(logger, run_dir, step: int) -> int:
    """On resume from a checkpoint at global step `step`: log through `logger` (the run's `lightning_sde.logger.
    WandbLogger`) the CSV rows up to that step that W&B never got (those its service had not written when the job was
    killed), and the pictures of their evaluations. Returns the rows logged."""
    try:
        run = logger.experiment
    except Exception as err:  # noqa: BLE001  (no W&B: nothing to fill)
        log.warning("W&B: not backfilled (%s: %s)", type(err).__name__, err)
        return 0
    run_dir = Path(run_dir)
    if run.offline:  # what the earlier offline runs of this id hold
        current = Path(run.dir).resolve().parent
        earlier = [f for f in run_dir.glob(f"wandb/offline-run-*-{run.id}/run-{run.id}.wandb")
                   if f.parent.resolve() != current]
        logged = [r.get("trainer/global_step", -1) for f in earlier for r in offline_history(f)]
    else:  # what the server holds
        logged = [run.summary.get("trainer/global_step", -1)]
    have = max((int(s) for s in logged if isinstance(s, (int, float))), default=-1)
    rows = []
    for path in sorted(run_dir.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                at = int(float(row.get("step") or -1))
                if have < at and not _logged_again(row, step):
                    rows.append((at, {k: float(v) for k, v in row.items() if k != "step" and v not in ("", None)}))
    pictured = set()
    for at, metrics in sorted(rows, key=lambda r: r[0]):
        logger.log_metrics(metrics, step=at)
        if at not in pictured:  # the lost evaluation's pictures too, at its step
            pictured.add(at)
            for key, path in pictures_at(run_dir / "samples", at):
                logger.log_image(key=key, images=[str(path)], step=at)
    if rows and have < 0:  # a W&B run new to this run's history: a copied run, W&B turned on later, its folder gone
        log.info("W&B: logged the run's %d earlier row(s) (steps %d-%d) from its CSV: this W&B run had none of them",
                 len(rows), rows[0][0], rows[-1][0])
    elif rows:
        log.warning("W&B: logged again %d row(s) (steps %d-%d) from the CSV that the interrupted run lost",
                    len(rows), rows[0][0], rows[-1][0])
    return len(rows)
