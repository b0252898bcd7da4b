"""`python -m <app module> args` for the tests, without paying the imports at every launch.

Importing torch, Lightning, Hydra and W&B costs an app about 5 s of CPU before it reads its config, and the suite
launches the apps hundreds of times. run_app hands a launch to a server (helpers/app_server.py, one per test
process and app module) that imported the app once and forks a child per launch: a process of its own from then
on, with the launch's environment, working directory, argv and streams, running the module as __main__ as
`python -m` does.
A server starts with the launch's startup settings (startup_settings), so the interpreter's flags, stdio and
locale, and the OpenMP thread count are a fresh process's. A launch with interpreter options (-X importtime) starts
a fresh interpreter, as do the tests that signal the process, run the console scripts or submit to SLURM, and the
processes Lightning's DDP adds.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER = Path(__file__).with_name("app_server.py")
# read when a process starts or imports (matplotlib's folders, tempfile's): PYTHON*, LC_* and XDG_* too
STARTUP = ("LANG", "LANGUAGE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "HOME", "TMPDIR", "MPLCONFIGDIR")
MAX_SERVERS = 6  # each holds an imported app: 0.4-0.6 GB not shared with the others (PSS)


def startup_settings(env: dict) -> tuple:
    """The variables a process reads as it starts (the interpreter's, the locale's, the OpenMP runtime's thread count):
    a server started with them gives its children what a fresh interpreter with them would have."""
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith(("PYTHON", "LC_", "XDG_")) or k in STARTUP))


class _Server:
    """The server process and the replies it writes: JSON lines read unbuffered, so a select sees every one."""

    def __init__(self, module: str, settings: tuple):
        env = {k: v for k, v in os.environ.items() if not startup_settings({k: v})} | dict(settings)
        self.process = subprocess.Popen([sys.executable, str(SERVER), module], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)
        atexit.register(self.process.kill)
        self.pending = b""

    def stop(self, child: int | None = None) -> None:
        for pid in filter(None, (child, self.process.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()

    def send(self, request: dict) -> None:
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()

    def reply(self, timeout: float | None = None) -> dict:
        fd = self.process.stdout.fileno()
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                raise subprocess.TimeoutExpired("app server", timeout)
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("the app server (tests/helpers/app_server.py) ended; its error is above")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)


_servers: dict[tuple, _Server] = {}  # by app module and startup settings, the last used last


def run_app(module: str, *args: str, env: dict | None = None, cwd: str | Path | None = None, timeout: float = 600,
            python_options: tuple = ()) -> subprocess.CompletedProcess:
    """subprocess.run([sys.executable, *python_options, "-m", module, *args], capture_output=True, text=True, ...)."""
    if not module.startswith("lightning_sde.cli."):
        raise ValueError(f"run_app launches the lsde-* apps, whose import runs nothing; got {module!r}")
    env = dict(os.environ if env is None else env)
    cmd = [sys.executable, *python_options, "-m", module, *map(str, args)]
    if cwd is not None and not Path(cwd).is_dir():
        raise FileNotFoundError(f"no such directory: {cwd}")
    if python_options:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, check=False)
    key = (module, startup_settings(env))
    _server = _servers.pop(key, None)
    if _server is None or _server.process.poll() is not None:
        while len(_servers) >= MAX_SERVERS:
            _servers.pop(next(iter(_servers))).stop()
        _server = _Server(*key)
    _servers[key] = _server
    with tempfile.TemporaryDirectory() as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        out.touch(), err.touch()
        pid = None
        try:
            _server.send({"module": module, "args": cmd[3:], "env": env,
                          "cwd": str(Path(cwd or os.getcwd()).resolve()), "stdout": str(out), "stderr": str(err)})
            pid = _server.reply()["pid"]
            try:
                done = _server.reply(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):  # (it may have ended since)
                    os.kill(pid, signal.SIGKILL)  # as subprocess.run does: the process, not what it started
                _server.reply()
                raise subprocess.TimeoutExpired(cmd, timeout, out.read_text(), err.read_text()) from None
        except BaseException as error:  # (a reply left unread would answer the next launch): a new server next
            if not isinstance(error, subprocess.TimeoutExpired):
                _servers.pop(key, None)
                _server.stop(pid)
            raise
        assert done["pid"] == pid, done
        return subprocess.CompletedProcess(cmd, done["returncode"], out.read_text(), err.read_text())
