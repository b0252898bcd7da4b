"""Read an offline W&B run back without syncing it: history rows (the package's reader) and media files."""

from __future__ import annotations

import json
from pathlib import Path

from lightning_sde.tracking import offline_history as history

__all__ = ["find_run", "history", "media", "run_info"]


def find_run(wandb_dir: Path) -> Path:
    runs = sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))
    if not runs:
        raise FileNotFoundError(f"no offline W&B run under {wandb_dir}")
    return runs[-1]


def media(run_file: Path) -> list[Path]:
    return sorted((Path(run_file).parent / "files" / "media").rglob("*.*"))


def run_info(run_file: Path) -> dict:
    """What an offline run says of itself: name, group, job type, tags, the config records' top-level keys (one
    list per record) and the config's values, the defined metrics {name or glob: step metric} and the last summary
    values, and the exit code when the run was closed."""
    from wandb.proto import wandb_internal_pb2

    from lightning_sde.tracking import _payloads

    info = {"config_records": [], "config": {}, "metrics": {}, "summary": {}}
    for payload in _payloads(Path(run_file)):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            info.update(name=run.display_name, group=run.run_group, job_type=run.job_type, tags=list(run.tags),
                        id=run.run_id)
            keys = [i.key for i in run.config.update if i.key != "_wandb"]
            if keys:
                info["config_records"].append(keys)
            info["config"].update({i.key: json.loads(i.value_json) for i in run.config.update if i.key != "_wandb"})
        elif kind == "config":
            keys = [i.key for i in record.config.update if i.key not in ("_wandb", "")]
            if keys:
                info["config_records"].append(keys)
            info["config"].update({i.key: json.loads(i.value_json) for i in record.config.update
                                   if i.key not in ("_wandb", "")})
        elif kind == "metric":
            info["metrics"][record.metric.name or record.metric.glob_name] = record.metric.step_metric
        elif kind == "exit":
            info["exit_code"] = record.exit.exit_code
        elif kind == "summary":
            for item in record.summary.update:
                info["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return info
