"""Read an offline W&B run back without syncing it: history rows (the package's reader) and media files."""

from __future__ import annotations

from pathlib import Path

from lightning_sde.tracking import offline_history as history

__all__ = ["find_run", "history", "media"]


def find_run(wandb_dir: Path) -> Path:
    runs = sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))
    if not runs:
        raise FileNotFoundError(f"no offline W&B run under {wandb_dir}")
    return runs[-1]


def media(run_file: Path) -> list[Path]:
    return sorted((Path(run_file).parent / "files" / "media").rglob("*.*"))
