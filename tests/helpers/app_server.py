"""The other end of helpers.launch: imports the apps once, then forks one child per launch that runs the app's module
as `python -m` does. Requests and replies are JSON lines on stdin and stdout.

The server was started with the launch's startup settings (helpers.launch.startup_settings): its interpreter
flags, locale and OpenMP runtime are a fresh process's. A child sets up the rest: the launch's environment (with the
LC_CTYPE Python's C-locale coercion added here), working directory and sys.path[0], argv, /dev/null as stdin and
the launch's output files as stdout and stderr (set up as this interpreter set up its own), with what importing
printed here written there first. It exits through the interpreter's own end (atexit handlers, flushes), with the
code `python -m` would give."""

import json
import os
import runpy
import sys
import tempfile

APPS = ("train", "sample", "bench", "likelihood", "figures", "prepare")


def import_apps() -> bytes:
    """Import every app, returning what the imports wrote to stderr (a fresh process of the app writes it too)."""
    with tempfile.TemporaryFile() as said:
        saved = os.dup(2)
        os.dup2(said.fileno(), 2)
        try:
            for app in APPS:
                __import__(f"lightning_sde.cli.{app}")
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        said.seek(0)
        return said.read()


def become(request: dict, import_output: bytes) -> None:
    """Turn this forked child into the launch it is asked for, then run the app's module as __main__."""
    coerced = {"LC_CTYPE": os.environ["LC_CTYPE"]} if "LC_CTYPE" in os.environ else {}  # (settings: not asked)
    os.environ.clear()
    os.environ.update(coerced | request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = os.getcwd()  # -m puts the working directory first
    for fd, (path, flags) in enumerate(((os.devnull, os.O_RDONLY), (request["stdout"], os.O_WRONLY),
                                        (request["stderr"], os.O_WRONLY))):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    streams = []
    for fd, own in enumerate((sys.__stdin__, sys.__stdout__, sys.__stderr__)):
        stream = open(fd, "r" if fd == 0 else "w", encoding=own.encoding, errors=own.errors, closefd=False)
        stream.reconfigure(line_buffering=own.line_buffering, write_through=own.write_through)
        streams.append(stream)
    sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = streams
    os.write(2, import_output)
    sys.argv = [request["module"], *request["args"]]  # runpy puts the module's file first, as -m does
    sys.modules.pop(request["module"], None)  # imported here, not yet in a fresh `python -m`
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


def serve() -> None:
    sys.path[0] = os.getcwd()  # not this script's folder: the apps import as `python -m` would find them
    import_output = import_apps()
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()
            become(request, import_output)
            sys.exit(0)  # the module returned: as `python -m` does, through the interpreter's end
        print(json.dumps({"pid": pid}), file=replies)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}), file=replies)


if __name__ == "__main__":
    serve()
