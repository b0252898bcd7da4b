"""The results store: a JSONL file, one row per (cell, metric), appended atomically so shards can share it.

Each append is one write() of complete lines, flushed and fsynced under an exclusive fcntl lock. A crash can
still leave a torn last line: readers skip it, and the next append starts on a fresh line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)


class ResultsStore:
    def __init__(self, path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        """All complete rows, in file order (a later row with the same key wins in `latest`)."""
        if not self.path.exists():
            return []
        rows = []
        with open(self.path) as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("%s:%d: skipping a torn or invalid line", self.path, n)  # pragma: no mutate
        return rows

    def latest(self) -> dict[str, dict]:
        """key -> row; duplicates (two shards racing on one cell) resolve to the last written."""
        return {row["key"]: row for row in self.rows()}

    def keys(self) -> set[str]:
        return set(self.latest())

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line from a crash: do not glue onto it
                data = b"\n" + data
            os.write(fd, data)
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class SamplePreviews:
    """The first `n` samples of every cell (and of the reference set), one tensor file each, so that the views can
    show what a sampler at an NFE produces next to the others, from the same seeds. Written atomically."""

    def __init__(self, folder, n: int = 64):
        self.folder = Path(folder)
        self.n = n

    @staticmethod
    def name(label: str, grid: str, requested) -> str:
        budget = "" if requested is None else f"_{grid}{requested:g}"
        return re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{label}{budget}")

    def _write(self, name: str, x) -> None:
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name}.pt"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(x[: self.n].detach().cpu().clone(), tmp)
        os.replace(tmp, path)

    def save(self, cell, x) -> None:
        self._write(self.name(cell.label, cell.grid, cell.requested), x)

    def save_reference(self, x) -> None:
        self._write("reference", x)

    def load(self, label: str, grid: str, requested):
        """The preview of a cell, or None when there is none."""
        import torch

        path = self.folder / f"{self.name(label, grid, requested)}.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
