"""How the apps fail: a mistake the user can fix (a bad config value, a file that is not a checkpoint, a training
run that diverged) is one line on stderr, `<app>: error: <what, the value, what would be right>`, also written to
the app's log, and exit status 1. Anything else is a bug: its traceback is shown. In a multirun (`-m`) a job's
failure does not stop the sweep: the other jobs run, and the sweep then fails (exit 1) naming the first failure."""

from __future__ import annotations

import functools
import logging
import re
import sys

from hydra.errors import CompactHydraException
from omegaconf.errors import InterpolationKeyError

from lightning_sde.errors import CheckpointError, DashboardError, NoConvergence, NonFiniteError, WriteError

log = logging.getLogger("lightning_sde")
# a bad value, or a path that is missing, a file where a folder belongs (or the reverse), or not the user's to write
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
               CheckpointError, DashboardError, NonFiniteError, WriteError, NoConvergence, FloatingPointError)


def error_text(err) -> str:
    """An error as its line says it: a path's OSError as `File exists: <path>`, not `[Errno 17] File exists: '...'`."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        return f"{err.strerror}: {err.filename}"
    if isinstance(err, InterpolationKeyError) and getattr(err, "full_key", None):  # a key of another app's config
        found = re.search(r"'(.+?)'", str(err))
        return (f"config {err.full_key}: refers to ${{{found.group(1) if found else '...'}}}, a key this app's config "
                f"does not have (a config written for another app?); give {err.full_key} a value")
    return str(err)


def print_error(app: str, err) -> None:
    # one write (print writes the newline apart): DDP ranks failing together cannot splice their lines
    sys.stderr.write(f"{app}: error: {from_worker(error_text(err))}\n")
    sys.stderr.flush()


def from_worker(message: str) -> str:
    """An error a DataLoader worker raised, as its own one line (torch re-raises it as 'Caught ValueError in
    DataLoader worker process 0.' followed by the worker's traceback); any other message unchanged."""
    head, _, trace = message.partition("\nOriginal Traceback")
    if not (head.startswith("Caught ") and trace):
        return message
    kind, where = head.removeprefix("Caught ").split(" in ", 1)
    lines = trace.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"{kind}: ")]  # the error's own first line
    text = " ".join(line.strip() for line in lines[starts[-1]:]).removeprefix(f"{kind}: ") if starts else lines[-1]
    return f"{text} (in {where.rstrip('.')})"


def to_console(text: str) -> None:
    """Write to stderr; where the console is a pipe whose reader is gone (`| tee` stopped by the same Ctrl-C), what
    is left to say goes nowhere, so that the exit status stays the app's (not Python's 120 for an unflushable
    stream)."""
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except OSError:
        quiet_broken_streams()


def point_at_devnull(stream) -> bool:
    """Point the file descriptor under `stream` at /dev/null and flush what it still held there; False where it has
    none (a captured stream) or that fails."""
    import os

    null = None
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        stream.flush()
        return True
    except (OSError, ValueError):
        return False
    finally:
        if null is not None:
            os.close(null)


def quiet_broken_streams() -> None:
    """Point stdout and stderr, where they can no longer be written, at /dev/null."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # (Python has none where its descriptor was closed at start)
                stream.flush()
        except OSError:
            point_at_devnull(stream)  # (False: no file descriptor, a captured stream: nothing to point)


def fail(app: str, err) -> None:
    """A user's mistake: one line on stderr, exit status 1."""
    print_error(app, err)
    sys.exit(1)


class JobFailed(CompactHydraException):
    """A multirun job that failed with a user error (already reported on its own line). Hydra records the job as
    failed and, after the sweep, prints which job and this one line (compact: no traceback), and exits 1."""


def log_to_file(message: str) -> None:
    """Into the app's log file only (Hydra's file handler): the console gets the one-line error instead."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    raising, logging.raiseExceptions = logging.raiseExceptions, False  # a full disk: no "--- Logging error ---"
    try:  # and its traceback before the one line, which says why
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
    finally:
        logging.raiseExceptions = raising


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def multirun_job() -> tuple[str, int] | None:
    """(sweep id, job number) for a job of a multirun (-m), else None."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    if not in_multirun():
        return None
    return Path(HydraConfig.get().sweep.dir).name, HydraConfig.get().job.num


def another_folder() -> str:
    """How to name another output folder: out= where the command set it (name= would not move it), else name=."""
    return "another out=" if folder_key() == "out" else "another name= (or out=)"


def folder_key() -> str:
    """The key that named the output folder: out where the command set it, else name."""
    from lightning_sde.configuration import overridden

    return "out" if overridden("out") else "name"


def job_folder_note() -> str:
    """For a refusal of the folder a multirun job writes: why it is named after the job number (empty alone)."""
    job = multirun_job()
    return "" if job is None else (f" (job {job[1]} of this multirun writes <name>_{job[1]}: a sweep over other "
                                   "values than an earlier sweep of this name needs its own name=)")


def own_folder_per_job(cfg, name_key: str | None = "name") -> None:
    """Each job of a multirun (-m) writes its own folder: `<name>_<job>` (the default out is made of it), and
    `<out>_<job>` where the command set out (or the app has no name)."""
    from lightning_sde.configuration import overridden

    job = multirun_job()
    if job is None:
        return
    if name_key is not None:
        cfg[name_key] = f"{cfg[name_key]}_{job[1]}"
    if name_key is None or overridden("out"):
        cfg.out = f"{cfg.out}_{job[1]}"


def fails_cleanly(app: str, cleanup=None, goes_on=None):
    """Decorate an app's task function (under @hydra.main): its console and log file set up (quiet_and_logged);
    user errors become one line and exit 1; `cleanup(cfg)` runs first, for whatever a failed start must not leave
    behind. Ctrl-C is one line and exit 130, with `goes_on(cfg)`: what command goes on from what was written."""

    def wrap(task):
        @functools.wraps(task)
        def run(cfg):
            from lightning_sde.tracking import quiet_and_logged

            quiet_and_logged()  # Hydra has configured logging by now
            try:
                return task(cfg)
            except KeyboardInterrupt:  # Ctrl-C: what was finished is on disk; no traceback of where it was
                log_to_file(f"{app} interrupted (KeyboardInterrupt)")
                again = f"; {goes_on(cfg)}" if goes_on is not None else ""
                to_console(f"{app}: interrupted (Ctrl-C); what it wrote before stays on disk{again}\n")
                sys.exit(130)
            except USER_ERRORS as err:
                log_to_file(f"{app} failed: {type(err).__name__}: {err}")
                if cleanup is not None:
                    cleanup(cfg)
                if in_multirun():
                    print_error(app, err)
                    # an Exception, not SystemExit: Hydra records the job as failed, runs the next ones, then raises it
                    first = from_worker(error_text(err))
                    raise JobFailed(f"{app}: error: the sweep failed; its first failure: {first}") from None
                fail(app, err)

        return run

    return wrap
