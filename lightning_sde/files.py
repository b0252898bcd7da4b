"""Files written whole or not at all: the content goes to a temporary file beside the target, which is then renamed
over it (a rename within a directory is atomic on POSIX), so a reader, another process redrawing the same view or a
`kill -9` mid-write never leaves half a file. Checkpoints, which must also survive a power cut, have their own
writer (callbacks/checkpoint_io.py: fsync, and the previous one kept until the new one is complete)."""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import glob
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from lightning_sde.errors import writing

log = logging.getLogger(__name__)


def file_name(text: str) -> str:
    """`text` as one file name: each run of characters other than letters, digits and `_.+-` becomes `_` (a label
    such as `ddim [eight_gaussians/vp]` holds a slash)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


def previous(path: Path) -> Path:
    """Where the checkpoint that `path` replaced is kept: last.ckpt -> last.prev.ckpt."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def remove_stale_temporaries(path: Path, older_than_s: float = 600.0) -> None:
    """The temporaries of `path` (replace_atomically's, checkpoints') that a killed writer left (`kill -9` between its
    write and its rename), kept by nothing. One whose process runs here, or written in the last `older_than_s`
    seconds (the writer may run on another host sharing the folder), is left alone."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")].split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if time.time() - tmp.stat().st_mtime < older_than_s:
                continue
            os.kill(int(pid), 0)
            continue  # its writer still runs
        except (PermissionError, FileNotFoundError):  # alive, another user's; or gone already
            continue
        except (ProcessLookupError, OverflowError):
            tmp.unlink(missing_ok=True)
            log.info("removed %s, left by a writer that was killed", tmp.name)


def replace_atomically(path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` to a temporary name beside `path`, then rename it to `path`; a failed write leaves `path` as it
    was and no temporary behind. The name is the writer's own (its pid and a random token: processes of other
    containers sharing the folder may have the same pid), so two writers of one file never mix their bytes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    remove_stale_temporaries(path)
    try:
        with writing(path):
            write(tmp)
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # on a read-only file system the unlink fails too: the write's error counts
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


@contextlib.contextmanager
def appending(path: Path):
    """An exclusive lock on the JSON-lines file `path` (created if missing), for reading it and then appending whole
    lines with the function it yields: after a torn last line (a crash) it starts a new line, and a write that fails
    part way (a full disk) is cut off again, so that no torn line of its own is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)

    def append_lines(data: bytes) -> None:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        with writing(path):
            try:
                if os.write(fd, data) < len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)
                raise

    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield append_lines
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def taking_turns(path: Path):
    """An exclusive lock on the file `path` (created if missing), waited for: processes that each read a state and
    write what follows from it (the views of a results file) take turns, so an older read never lands last. Without
    locks on the file system (some Lustre mounts): a warning, and no turns."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as err:
            log.warning("%s: cannot lock it (%s): two processes writing the same files may interleave", path, err)
        yield
    finally:
        os.close(fd)  # drops the lock


LOCK_FILE = ".lock"


class FolderInUse(ValueError):
    """Another process holds the folder's lock."""


class FolderLock:
    """This process's exclusive use of a folder (a training run's directory, a likelihood result's) until it ends or
    calls release(): an flock on `<folder>/.lock`, which the system drops however the process ends (kill -9 too), so
    a crashed run leaves no stale lock. A second process is refused with FolderInUse, naming the folder; on a file
    system without locks (some Lustre mounts) there is a warning and no lock."""

    def __init__(self, folder, app: str):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.release()
            raise FolderInUse(f"{self.folder}: another {app} is using this folder now (its lock: {LOCK_FILE} "
                              "there); wait for it to end, or give this run another name") from None
        except OSError as err:
            self.release()
            log.warning("%s: cannot lock it (%s): another process using the same folder would go unnoticed",
                        self.folder, err)

    def release(self) -> None:
        if getattr(self, "_fd", None) is not None:  # (an __init__ that failed to open the file set none)
            os.close(self._fd)  # drops the lock
            self._fd = None

    __del__ = release  # a lock nobody refers to any more is given back

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def folder_in_use(folder) -> bool:
    """Whether another process holds `folder`'s FolderLock now."""
    try:
        FolderLock(folder, "process").release()
    except FolderInUse:
        return True
    return False


__all__ = ["FolderInUse", "FolderLock", "folder_in_use", "replace_atomically", "write_csv", "write_text"]
