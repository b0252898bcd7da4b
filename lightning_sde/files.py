"""Files written whole or not at all: the content goes to a temporary file beside the target, which is then renamed
over it (a rename within a directory is atomic on POSIX), so a reader, another process redrawing the same view or a
`kill -9` mid-write never leaves half a file. Checkpoints, which must also survive a power cut, have their own
writer (callbacks/checkpoint_io.py: fsync, and the previous one kept until the new one is complete)."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path


def file_name(text: str) -> str:
    """`text` as one file name: each run of characters other than letters, digits and `_.+-` becomes `_` (a label
    such as `ddim [eight_gaussians/vp]` holds a slash)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


def previous(path: Path) -> Path:
    """Where the checkpoint that `path` replaced is kept: last.ckpt -> last.prev.ckpt."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def replace_atomically(path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` to a temporary name beside `path`, then rename it to `path`; a failed write leaves `path` as it
    was and no temporary behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path, text: str) -> Path:
    return replace_atomically(path, lambda tmp: tmp.write_text(text))


def write_csv(path, rows: Iterable[dict], fields: list[str] | None = None) -> Path:
    """`rows` as a CSV with a header row: `fields`, or the first row's keys."""
    rows = list(rows)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(fields or rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    return replace_atomically(path, write)


__all__ = ["replace_atomically", "write_csv", "write_text"]
