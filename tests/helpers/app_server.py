"""The other end of helpers.launch: imports one app's module once (`python app_server.py <module>`), then forks one
child per launch that runs the module as `python -m` does. Requests and replies are JSON lines on stdin and stdout.

The server was started with the launch's startup settings (helpers.launch.startup_settings): its interpreter
flags, locale, stdio objects (encodings, buffering) and OpenMP runtime are a fresh process's. A child sets up the
rest: the launch's environment (with the LC_CTYPE Python's C-locale coercion added here), working directory and
sys.path[0], fresh seeds of numpy's and torch's global generators (the hash seed stays the server's), argv,
/dev/null as stdin and the launch's output files under stdout and stderr, with what importing printed here written
there first. It exits through the interpreter's own end (atexit handlers, flushes), with the code `python -m` would
give. Unlike subprocess.run, the launch ends when the app's process does: a process it leaves behind is not waited
for."""

import importlib
import json
import os
import runpy
import sys
import tempfile


def import_app(module: str) -> tuple[bytes, bytes]:
    """Import the app's module (so what it imports, and nothing else: lsde-sample never imports Lightning), returning
    what the imports wrote to stdout and stderr (a fresh process of the app writes it too)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        saved = [os.dup(1), os.dup(2)]
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            importlib.import_module(module)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)
        out.seek(0), err.seek(0)
        return out.read(), err.read()


def become(request: dict, import_output: tuple[bytes, bytes]) -> None:
    """Turn this forked child into the launch it is asked for, then run the app's module as __main__."""
    coerced = {"LC_CTYPE": os.environ["LC_CTYPE"]} if "LC_CTYPE" in os.environ else {}  # (settings: not asked)
    os.environ.clear()
    os.environ.update(coerced | request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = os.getcwd()  # -m puts the working directory first
    tempfile.tempdir = None  # found again from this environment's TMPDIR
    for name, reseed in (("numpy", lambda np: np.random.seed()), ("torch", lambda torch: torch.seed())):
        if name in sys.modules:  # a fresh process's global generators start from fresh entropy
            reseed(sys.modules[name])
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):  # under the interpreter's own stdout/stderr
        opened = os.open(path, os.O_WRONLY)
        os.dup2(opened, fd)
        os.close(opened)
    os.write(1, import_output[0])
    os.write(2, import_output[1])
    sys.argv = [request["module"], *request["args"]]  # runpy puts the module's file first, as -m does
    sys.modules.pop(request["module"], None)  # imported here, not yet in a fresh `python -m`
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


def serve(module: str) -> None:
    sys.path[0] = os.getcwd()  # not this script's folder: the app imports as `python -m` would find it
    requests, replies = os.fdopen(os.dup(0), "r"), os.fdopen(os.dup(1), "w", buffering=1)
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_WRONLY)):  # the children's stdin; nothing printed reaches a reply
        quiet = os.open(os.devnull, flags)
        os.dup2(quiet, fd)
        os.close(quiet)
    try:
        import_output = import_app(module)
    except Exception:  # each child imports it again and fails as a fresh process would, its traceback its own
        import_output = (b"", b"")
    for line in requests:
        request = json.loads(line)
        assert request["module"] == module, (request["module"], module)
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            requests.close(), replies.close()
            become(request, import_output)
            sys.exit(0)  # the module returned: as `python -m` does, through the interpreter's end
        print(json.dumps({"pid": pid}), file=replies)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "returncode": os.waitstatus_to_exitcode(status)}), file=replies)


if __name__ == "__main__":
    serve(sys.argv[1])
