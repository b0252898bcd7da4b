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
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)


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


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger with two changes.

    - Every row carries the global step as W&B's own step, so one run's history is one curve: after a resume under the
      same id, W&B keeps each step once (it drops rows below its last step) instead of appending a second copy.
    - W&B is a view, the CSV and results files are the record: when W&B fails (its service killed by SLURM's SIGTERM
      to every process of a preempted job, a lost connection), W&B logging stops with one warning instead of taking
      training, and the checkpoint it is about to write, down with it.
    """

    _broken = False

    def _guarded(self, fn, *args, **kwargs):
        if self._broken:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  (whatever W&B raises, the run goes on without it)
            self._broken = True
            log.warning("W&B logging stopped (%s: %s); the CSV logs and checkpoints go on", type(err).__name__, err)
            return None

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self._guarded(self._log_metrics, metrics, step)

    def _log_metrics(self, metrics, step) -> None:
        if self._prefix:
            metrics = {f"{self._prefix}{self.LOGGER_JOIN_CHAR}{k}": v for k, v in metrics.items()}
        if step is None:
            self.experiment.log(metrics)
        else:
            self.experiment.log({**metrics, "trainer/global_step": step}, step=int(step))

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        self._guarded(super().log_hyperparams, params)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self._guarded(super().after_save_checkpoint, checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._guarded(super().finalize, status)


def finish_wandb(exit_code: int) -> bool:
    """Close this process's W&B run, if any, with `exit_code`; False when its service is gone (killed with the job),
    in which case W&B's own exit handler would fail too: the caller should leave without running it."""
    import wandb

    if wandb.run is None:
        return True
    try:
        wandb.finish(exit_code=exit_code)
        return True
    except Exception as err:  # noqa: BLE001  (the CSV logs and the checkpoint are the record)
        log.warning("W&B could not close its run (%s: %s); sync the offline files later", type(err).__name__, err)
        return False


def trim_history(run_dir, step: int) -> list[str]:
    """Before a run resumes from a checkpoint at global step `step`, drop from its CSV histories (every launch's
    csv/version_*/metrics.csv, and samples/sampler_metrics.csv) the rows that the resumed run will log again: those a
    hard kill left after the checkpoint (training rows from `step` on, evaluation rows after it; the evaluation at
    `step` itself is not repeated). Each file is rewritten atomically; returns the files changed."""
    run_dir = Path(run_dir)
    changed = []
    for path in [*sorted(run_dir.glob("csv/version_*/metrics.csv")), run_dir / "samples" / "sampler_metrics.csv"]:
        if not path.is_file():
            continue
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields, rows = reader.fieldnames or [], list(reader)
        kept = [row for row in rows if not _logged_again(row, step)]
        if len(kept) == len(rows):
            continue
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)
        changed.append(str(path))
        log.warning("%s: dropped %d row(s) logged after the checkpoint at step %d (the resumed run logs them again)",
                    path, len(rows) - len(kept), step)
    return changed


def _logged_again(row: dict, step: int) -> bool:
    try:
        at = int(float(row.get("step") or ""))
    except ValueError:
        return False
    training = any(value not in ("", None) and (key.startswith("train/") or key.startswith("lr-"))
                   for key, value in row.items())
    return at > step or (training and at >= step)


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


def backfill_wandb(logger: WandbLogger, run_dir, step: int) -> int:
    """On resume from a checkpoint at global step `step`: log to the resumed W&B run the CSV rows up to that step
    that W&B never got (those its service had not written when the job was killed). Returns the rows logged."""
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
    for at, metrics in sorted(rows, key=lambda r: r[0]):
        logger.log_metrics(metrics, step=at)
    if rows:
        log.warning("W&B: logged again %d row(s) (steps %d-%d) from the CSV that the interrupted run lost",
                    len(rows), rows[0][0], rows[-1][0])
    return len(rows)
