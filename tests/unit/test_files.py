"""Files written whole or not at all (lightning_sde.files): a failed or killed write leaves the file as it was."""

import csv
import re
import signal
import subprocess
import sys

import pytest

from lightning_sde.files import (
    LOCK_FILE,
    FolderInUse,
    FolderLock,
    folder_in_use,
    replace_atomically,
    write_csv,
    write_text,
)

KILLED_MID_WRITE = """
import sys, time
from lightning_sde.files import replace_atomically

def write(tmp):
    with open(tmp, "w") as fh:
        fh.write("half of the new")
        fh.flush()
        print("writing", flush=True)
        time.sleep(60)

replace_atomically(sys.argv[1], write)
"""

HOLDS_A_FOLDER = """
import sys, time
from lightning_sde.files import FolderLock

lock = FolderLock(sys.argv[1], "test run")
print("held", flush=True)
time.sleep(60)
"""

APPENDS_IN_TWO_PARTS = """
import sys, time
from pathlib import Path
from lightning_sde.files import appending

with appending(Path(sys.argv[1])) as append:
    append(b"first half\\n")
    print("holding", flush=True)
    time.sleep(1.5)
    append(b"second half\\n")
"""


def test_an_appender_waits_for_the_one_holding_the_file(tmp_path):
    """What makes a shard's plan and a results file's rows whole: between another process's two appends under one
    hold, nothing of this one's lands."""
    from lightning_sde.files import appending

    path = tmp_path / "rows.jsonl"
    other = subprocess.Popen([sys.executable, "-c", APPENDS_IN_TWO_PARTS, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "holding\n"
        with appending(path) as append:
            append(b"ours\n")
    finally:
        other.wait(timeout=60)
    assert path.read_text() == "first half\nsecond half\nours\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text(tmp_path / "table.md", "old\n")

    def fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(path, fail)
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_two_writers_of_one_file_in_one_process_each_publish_their_own_bytes(tmp_path):
    """Two writers with one pid (threads, or processes of two containers sharing the folder) had one temporary name:
    one published a mix, the other failed to rename."""
    path = tmp_path / "stats.pt"

    def outer(tmp):
        tmp.write_text("outer, ")
        replace_atomically(path, lambda inner: inner.write_text("inner"))  # another writer, meanwhile
        with open(tmp, "a") as fh:
            fh.write("done")

    replace_atomically(path, outer)
    assert path.read_text() == "outer, done" and [p.name for p in tmp_path.iterdir()] == ["stats.pt"]


def test_a_write_killed_midway_leaves_the_old_file(tmp_path):
    path = write_text(tmp_path / "results.csv", "old\n")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "writing\n"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert path.read_text() == "old\n"
    (left,) = [p for p in tmp_path.iterdir() if p != path]  # the temporary a kill cannot remove, hidden beside it
    assert left.name.startswith(".results.csv.") and left.read_text() == "half of the new"


def test_csv_rows_take_the_first_rows_keys_unless_given_fields(tmp_path):
    rows = [{"sampler": "ddim", "nfe": 10}, {"sampler": "dpm", "nfe": 20}]
    with open(write_csv(tmp_path / "a.csv", rows)) as fh:
        assert list(csv.reader(fh)) == [["sampler", "nfe"], ["ddim", "10"], ["dpm", "20"]]
    with open(write_csv(tmp_path / "b.csv", (r for r in rows), ["nfe", "sampler"])) as fh:
        assert list(csv.reader(fh)) == [["nfe", "sampler"], ["10", "ddim"], ["20", "dpm"]]


def test_a_folder_lock_refuses_a_second_holder_until_the_first_ends_however_it_ends(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLDS_A_FOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(FolderInUse, match=f"{tmp_path / 'run'}: another lsde-train is using this folder now"):
            FolderLock(tmp_path / "run", "lsde-train")
        assert folder_in_use(tmp_path / "run")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not folder_in_use(tmp_path / "run")  # the system dropped a killed holder's lock
    with FolderLock(tmp_path / "run", "lsde-train"):
        assert folder_in_use(tmp_path / "run")  # a holder in this process counts too
    assert not folder_in_use(tmp_path / "run") and (tmp_path / "run" / LOCK_FILE).is_file()


def test_a_full_disk_is_one_named_error_and_leaves_no_partial_file(tmp_path, monkeypatch, capsys):
    """Disk full: a traceback ending in `OSError: [Errno 28]` or torch's `unexpected pos 896 vs 790`, a partial
    checkpoint temporary left beside last.ckpt, and a results row torn where the disk filled up, reported as a
    success."""
    import errno
    import os

    import torch

    from lightning_sde.bench.results import ResultsStore
    from lightning_sde.callbacks.checkpoint_io import AtomicCheckpointIO
    from lightning_sde.cli.errors import fails_cleanly
    from lightning_sde.errors import WriteError

    def no_space(tmp):
        tmp.write_text("part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError, match=f"^could not write {tmp_path / 'a.json'}: No space left on device$"):
        write_text(tmp_path / "a.json", "{}") and replace_atomically(tmp_path / "a.json", no_space)
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"] and (tmp_path / "a.json").read_text() == "{}"

    def torn(*args, **kwargs):
        args[1].write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 896 vs 790")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(WriteError, match=r"could not write .*last.ckpt: torch.save could not write it"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "ckpt" / "last.ckpt")
    assert list((tmp_path / "ckpt").iterdir()) == []
    monkeypatch.undo()

    store = ResultsStore(tmp_path / "results.jsonl")
    store.append([{"key": "a", "value": 1.0}])
    size = store.path.stat().st_size
    monkeypatch.setattr(os, "write", lambda fd, data: os.pwrite(fd, data[:5], size) and 5)  # 5 bytes fitted
    with pytest.raises(WriteError, match="results.jsonl: No space left on device"):
        store.append([{"key": "b", "value": 2.0}])
    monkeypatch.undo()
    assert store.path.stat().st_size == size and [r["key"] for r in store.rows()] == ["a"]

    @fails_cleanly("lsde-x")
    def app(cfg):
        raise WriteError(f"could not write {tmp_path}/r.jsonl: No space left on device")

    with pytest.raises(SystemExit) as ended:
        app(None)
    assert ended.value.code == 1
    assert capsys.readouterr().err == f"lsde-x: error: could not write {tmp_path}/r.jsonl: No space left on device\n"


def test_a_read_only_file_system_is_the_writes_one_error(tmp_path, monkeypatch):
    """The temporary's unlink failed too (EROFS) and its raw OSError hid the WriteError; torch.save's own reason (a
    read-only file system, a permission) was reported as "is the disk full?"."""
    import errno
    import os
    from pathlib import Path

    from lightning_sde.errors import WriteError, writing

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(WriteError, match=f"^could not write {tmp_path / 'a.csv'}: Read-only file system$"):
        replace_atomically(tmp_path / "a.csv", read_only)
    monkeypatch.undo()
    for said, detail in (("open file failed with strerror: Permission denied", "Permission denied"),
                         ("unexpected pos 896 vs 790", "is the disk full?")):
        with pytest.raises(WriteError, match=re.escape(f"a.pt: torch.save could not write it ({detail})")):
            with writing(tmp_path / "a.pt"):
                raise RuntimeError(f"[enforce fail at inline_container.cc:747] . {said}")


def test_the_log_file_on_a_full_disk_adds_no_traceback_to_the_one_line(tmp_path, capsys):
    """Logging the error into the app's log on a full disk printed "--- Logging error ---" and ~60 lines of traceback
    before the app's one line."""
    import errno
    import logging
    import os

    from lightning_sde.cli.errors import log_to_file

    class FullDisk(logging.FileHandler):
        def emit(self, record):
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                self.handleError(record)

    handler = FullDisk(tmp_path / "app.log", delay=True)
    logging.getLogger().addHandler(handler)
    try:
        log_to_file("lsde-x: error: could not write r.jsonl: No space left on device")
    finally:
        logging.getLogger().removeHandler(handler)
    assert capsys.readouterr().err == "" and logging.raiseExceptions


def test_ctrl_c_during_a_write_is_ctrl_c_not_a_full_disk(tmp_path):
    """torch.save cut short by Ctrl-C raises its zip writer's RuntimeError: lsde-train said "is the disk full?" and
    exited 1."""
    from lightning_sde.errors import writing

    with pytest.raises(KeyboardInterrupt):
        with writing(tmp_path / "last.ckpt"):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 896 vs 790") from None
