"""The lsde-* console scripts. `--help` is answered from the app's text (cli/help.py) before the app is imported,
so it takes a second, not the ~10 s that torch, Lightning and torchmetrics take to import; so is a single run's
misspelt key or option (its overrides are composed against the app's config first); anything else runs the app's
`main`."""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
import sys
from pathlib import Path

from lightning_sde.cli.help import print_help_if_asked


def parses(override: str) -> bool:
    """Whether Hydra's parser takes this override on its own (seed=int(3) does; a path holding '(' does not)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        OverridesParser.create().parse_override(override)
    except HydraException:
        return False
    return True


def multirun_switches(argv: list[str]) -> list[str]:
    """What makes a command line a multirun: -m, --multirun, or the override hydra.mode=MULTIRUN."""
    return [arg for arg in argv if arg in ("-m", "--multirun") or arg.lower() == "hydra.mode=multirun"]


def override_error(app: str, argv: list[str]) -> str | None:
    """Hydra's complaint about a single run's overrides (a key or option the app's config does not have, a malformed
    value), from composing `<app>.yaml` with them, or None; a multirun's (-m), from composing its first job. Other
    flags and subcommands are left to the app."""
    multirun = multirun_switches(argv)
    swept = {}  # a first job's override -> the sweep it stands for, in what Hydra says of it
    if multirun:
        given = [arg for arg in argv if arg not in multirun]
        argv = first_job(given)
        swept = {first: arg for first, arg in zip(argv or (), given) if first != arg}
        if argv is None and single_run_overrides(given) and not all(map(parses, given)):
            argv = given  # one Hydra cannot parse (a path holding '(' or '='): its error, with the advice below
    if not argv or not single_run_overrides(argv):
        return None
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lightning_sde.configuration import CONFIG_PACKAGE

    try:
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose(app, overrides=argv, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as err:  # ValueError: e.g. a group set to null
        message = one_line(err)
        missing = re.match(r"Could not override '([^']+)'\. To append to your config use ", message)
        nearest = missing and nearest_key(app, argv, missing.group(1))
        if nearest:  # Hydra's advice alone (+key) makes a misspelling a new key, which the node then refuses
            message = message.replace(". To append to your config use ", f". Did you mean '{nearest}'? To add it "
                                      "as a new key use ", 1)
        for first, arg in swept.items():
            message = message.replace(first, arg)
        equals = [arg.split("=", 1) for arg in argv if "=" in arg.split("=", 1)[-1] and quotable(arg)]
        if "mismatched input '='" in message and equals:  # a path such as best-step=300.ckpt
            message += f"; quote a value that holds '=': {quoted(*equals[0], sweep=bool(multirun))}"
        token = re.search(r"mismatched input '(.+?)' expecting", message)
        holding = token and token.group(1).strip() and [
            arg.split("=", 1) for arg in argv if "=" in arg and quotable(arg) and not parses(arg)
            and token.group(1).strip() in arg.split("=", 1)[1] and not arg.split("=", 1)[1].startswith(("[", "{"))]
        if holding and "mismatched input '='" not in message:  # a path such as "Dropbox (Personal)" or a[1]
            message = (f"config {holding[0][0]}: {message}; quote a value that holds {token.group(1).strip()!r}: "
                       f"{quoted(*holding[0], sweep=bool(multirun))}")
        lexed = [arg.split("=", 1) for arg in argv if "=" in arg and quotable(arg) and f"{arg} ^" in message]
        if "LexerNoViableAltException" in message and lexed:  # e.g. a path of non-ASCII letters, ~, or it's
            key, value = lexed[0]
            refused = folder_name_error(app, key, value)  # quoting would not mend it
            if refused:
                return refused
            if value.startswith("~") and "'" in value:  # the home folder written out: ${...} would need escaping too
                message += (f"; '~' is not expanded here: give an absolute path, and double quotes around a value that "
                            f"holds \"'\": {quoted(key, str(Path.home()) + value[1:], bool(multirun))}")
            elif value.startswith("~"):
                message += (f"; '~' is not expanded here: give an absolute path, or "
                            f"'{key}=${{oc.env:HOME}}{value[1:]}' (the single quotes for the shell)")
            elif "'" in value:
                message = (f"config {key}: {message}; quote a value that holds \"'\" with double quotes: "
                           f"{quoted(key, value, bool(multirun))}")
            elif not key.isascii():  # quoting mends values only
                bad = next(c for c in key if not c.isascii())
                message += f"; a key's names are ASCII letters, digits and _: {key!r} holds {bad!r}"
            else:
                message += f"; quote the value: {quoted(key, value, bool(multirun))}"
        return message
    return other_jobs_error(app, argv, given, set(cfg.hydra.runtime.choices)) if multirun else folder_error(app, cfg)


def folder_name_error(app: str, key: str, value: str) -> str | None:
    """Why `value` cannot be the app's folder-naming key's, where `key` is that key (quoting it would not mend it)."""
    from lightning_sde.configuration import FOLDER_NAMES, check_folder_name

    if app not in FOLDER_NAMES or key.lstrip("+") != FOLDER_NAMES[app][0]:
        return None
    try:
        check_folder_name(app, {FOLDER_NAMES[app][0]: value})
    except ValueError as err:
        return str(err)
    return None


def quotable(arg: str) -> bool:
    """An override whose value quoting would mend: not quoted already, and not holding both kinds of quote."""
    value = arg.split("=", 1)[-1]
    return not value.startswith(("'", '"')) and not ("'" in value and '"' in value)


def quoted(key: str, value: str, sweep: bool = False) -> str:
    """key=value as Hydra reads a string, for the shell: single quotes inside double ones, or escaped double quotes
    where the value holds an apostrophe; in a multirun (`sweep`) each of its comma-separated values that needs it
    (quoting the whole would make the sweep one value)."""
    def one(text: str, always: bool) -> str:
        if not always and parses(f"{key}={text}"):
            return text
        return f"\\\"{text}\\\"" if "'" in text else f"'{text}'"

    several = sweep and "," in value
    text = ",".join(one(part, not several) for part in (value.split(",") if several else [value]))
    return f"\"{key}={text}\" (the {'outer ' if chr(92) in text else ''}double quotes for the shell)"


def other_jobs_error(app: str, first: list[str], given: list[str], groups: set, most: int = 20) -> str | None:
    """A multirun's later option of a config group that does not exist (`sde=vp,bogus`), from composing the first
    job with each such value (at most `most` of them); other keys' values compose whatever they are."""
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from lightning_sde.configuration import CONFIG_PACKAGE

    tries = []
    for i, override in enumerate(OverridesParser.create().parse_overrides(given)):
        key = override.get_key_element()
        if override.is_sweep_override() and key in groups:
            tries += [(i, f"{key}={value}") for value in list(override.sweep_string_iterator())[1:]]
    for i, job in tries[:most]:
        try:
            with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
                compose(app, overrides=[*first[:i], job, *first[i + 1 :]])
        except HydraException as err:
            return f"{job} (a job of the sweep): {one_line(err)}"
    return None


def nearest_key(app: str, argv: list[str], key: str) -> str | None:
    """The key of the app's config closest to a missing `key`, under the same node (its siblings), or None."""
    import difflib

    from hydra import compose, initialize_config_module
    from omegaconf import DictConfig, OmegaConf

    from lightning_sde.configuration import CONFIG_PACKAGE

    rest = [arg for arg in argv if arg.split("=", 1)[0].lstrip("+~") != key]
    parent, _, name = key.rpartition(".")
    try:
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose(app, overrides=rest)
        node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
    except Exception:  # noqa: BLE001  (another override is wrong too: no suggestion)
        return None
    if not isinstance(node, DictConfig):
        return None
    keys = [str(k) for k in node.keys()]
    if name in keys:  # there, through an interpolation (callbacks.sampler.samplers is ${samplers}): no misspelling
        return None
    match = difflib.get_close_matches(name, keys, n=1) or [k for k in OTHER_APPS_NAMES.get(name, ()) if k in keys][:1]
    return None if not match else f"{parent}.{match[0]}" if parent else match[0]


OTHER_APPS_NAMES = {"ckpt_path": ("checkpoint",), "checkpoint": ("ckpt_path",), "ckpt": ("checkpoint", "ckpt_path")}
"""A key one app has that a user may carry to another: lsde-train's checkpoint to resume is ckpt_path; the
checkpoint lsde-sample, -bench and -likelihood score is `checkpoint`."""


def first_job(argv: list[str]) -> list[str] | None:
    """A multirun's overrides for its first job (each sweep `k=a,b` / `k=range(...)` at its first value); None where
    they are not all overrides or a sweep cannot be listed here (glob, interval): the app checks those."""
    if not single_run_overrides(argv):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        overrides = OverridesParser.create().parse_overrides(argv)
        return [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override() else arg
                for o, arg in zip(overrides, argv, strict=True)]
    except (HydraException, StopIteration):
        return None


def single_run_overrides(argv: list[str]) -> bool:
    """Whether the arguments are overrides of one run only (key=value, +key=value, ~key): no flag or subcommand."""
    return all(not arg.startswith("-") and ("=" in arg or arg.startswith("~")) for arg in argv)


def folder_error(app: str, cfg) -> str | None:
    """A folder the app would create inside an existing file, or where none can be made, or under a name the app
    refuses (Hydra makes the folders before the app: its traceback, or folders left behind); nothing is made."""
    import os
    import tempfile
    from pathlib import Path

    from omegaconf import OmegaConf

    from lightning_sde.configuration import FOLDER_NAMES, check_folder_name

    if app in FOLDER_NAMES:
        try:
            check_folder_name(app, cfg)
        except ValueError as err:
            return str(err)
    for key in ("paths.root", "out", "output_dir", "hydra.run.dir"):  # the user's key before those made of it
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)  # None where it does not resolve
        if value is not None and not isinstance(value, str):  # out=5: Path's TypeError in the app
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            return f"config {key}: must be a path; got {shown!r}"
        if not isinstance(value, str):
            continue
        if value.startswith("~"):
            return (f"config {key}: {value} starts with '~', which is not expanded here (a folder named '~' would be "
                    "made): give an absolute path, or ${oc.env:HOME}/...")
        path = Path(value)
        for folder in (path, *path.parents):
            if folder.is_file():
                return f"config {key}: {value} would be a folder inside the file {folder}; give a folder"
            if folder.is_symlink() and not folder.exists():
                return (f"config {key}: {value}: {folder} is a link to {os.readlink(folder)}, which does not resolve "
                        "(missing, or a loop)")
        if key == "paths.root":  # only what is made in it: the keys below, which the app writes
            continue
        existing = next((folder for folder in (path, *path.parents) if folder.exists()), None)
        if existing == path:  # a run's folder again (a resume, an extension): nothing made in it, which other tasks
            if not os.access(path, os.W_OK):  # of an srun may be checking
                return f"config {key}: {value} cannot be written to (read-only, or not yours)"
            continue
        if existing is None:
            continue
        try:  # can a folder be made there? A probe of its own name, made and removed: the folders the config names
            os.rmdir(tempfile.mkdtemp(prefix=".lsde-probe-", dir=existing))  # are not touched (srun's tasks make them)
        except OSError as err:
            return f"config {key}: {value} cannot be made (no folder can be made in {existing}: {err.strerror})"
    return None


# Nodes built by their own classes, which refuse what they do not take; a value added anywhere else (+key=value) is
# one the app never reads: a misspelling, refused rather than ignored (lsde-train refuses its own in build()).
# `hydra` is Hydra's own (its launchers take added keys, e.g. additional_parameters); `paths` is checked here.
BUILT_NODES = {"samplers", "sampler", "problem", "sde", "data", "hydra", "trainer", "model", "logger", "callbacks",
               "loss", "optim"}


def added_key_error(app: str, argv: list[str]) -> str | None:
    """A `+key=value` that adds a value the app would silently ignore: a key outside BUILT_NODES that the config
    lacks without it (`++key=value` on an existing key sets it; `+group=option` of a user's config folder adds a
    node, or nothing under `@package _global_`)."""
    switches = multirun_switches(argv)
    if switches:  # a multirun: its first job's overrides
        argv = first_job([arg for arg in argv if arg not in switches]) or []
    added = [arg for arg in argv if arg.startswith("+") and "@" not in arg.split("=", 1)[0]]
    if not added or not single_run_overrides(argv):
        return None
    from hydra import compose, initialize_config_module
    from omegaconf import DictConfig, OmegaConf

    from lightning_sde.configuration import CONFIG_PACKAGE

    try:
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            full = compose(app, overrides=argv, return_hydra_config=True)  # hydra.* may read an added key too
            without = compose(app, overrides=[arg for arg in argv if arg not in added], return_hydra_config=True)
    except Exception:  # noqa: BLE001  (override_error reports what does not compose)
        return None
    text = OmegaConf.to_yaml(full)  # unresolved: where an added key is read through an interpolation
    absent = object()
    for arg in added:
        key = arg.split("=", 1)[0].lstrip("+")
        root, *rest = key.split(".")
        if root in BUILT_NODES and root in without:  # its class refuses what it does not take
            labels = list(without.samplers or {}) if root == "samplers" else None
            if labels is not None and len(rest) > 1 and rest[0] not in labels and OmegaConf.select(
                    full, f"samplers.{rest[0]}._target_", throw_on_resolution_failure=False) is None:
                return (f"{key}: this run has no sampler labelled {rest[0]!r} (its samplers: {', '.join(labels)}); "
                        f"add one with +sampler@samplers.{rest[0]}=<sampler>")
            continue
        if root == "sampler" and "samplers" in without:
            return (f"{key}: lsde-{app} has no single sampler: set it on each of samplers.<label> "
                    f"(samplers.{next(iter(without.samplers or {'<label>': 0}))}.{'.'.join(rest) or '...'}=...)")
        value = OmegaConf.select(full, key, throw_on_resolution_failure=False)
        there = OmegaConf.select(without, key, default=absent, throw_on_resolution_failure=False) is not absent
        if there or value is None:  # set, not added (++key on a null default too), or a group option placed
            continue  # elsewhere (`@package _global_`)
        if re.search(r"\$\{" + re.escape(key) + r"[}.:]", text):
            continue  # e.g. +paths.scratch=/x data.root=${paths.scratch}/cifar: read, not ignored
        if "." in key or not isinstance(value, DictConfig):
            return (f"{key}: lsde-{app}'s config has no such key, and the app would ignore it (a misspelling?); "
                    f"see lsde-{app} --help")
    return None


def one_line(err: Exception) -> str:
    """Hydra's multi-line complaint as one line: its options listed with commas, no search path or link, nor the
    config file that names a group ("In 'bench': ", under lsde-compare: not the user's)."""
    text, items = [], []
    for line in str(err).splitlines():
        if line.startswith("Config search path:"):
            break
        if line.startswith("\t"):  # an option of a list ("Available options in 'problem':")
            items.append(line.strip())
            continue
        if items:
            text.append(", ".join(items))
            items = []
        if line.strip() and not line.startswith("See https://hydra.cc"):
            text.append(line.strip())
    return re.sub(r"^In '[^']+': ", "", " ".join(text + ([", ".join(items)] if items else [])))


def subcommand_flags(command: str, args: list[str], known: tuple[str, ...]) -> tuple[set[str], list[str]]:
    """A subcommand's flags (`lsde-train check --planned`), anywhere among its overrides, and the overrides; any
    other `--flag` is refused in one line."""
    from lightning_sde.cli.errors import fail

    given = {arg for arg in args if arg.startswith("-")}  # -m too: a subcommand looks at one config
    unknown = sorted(given - set(known))
    if unknown:
        fail(command, f"unknown option {unknown[0]}: it takes {', '.join(known)} and config overrides (key=value)")
    return given, [arg for arg in args if not arg.startswith("-")]


def stray_argument(app: str, argv: list[str]) -> str | None:
    """A word that is neither an override nor the app's subcommand (`lsde-compare dpmpp`), on a command line of no
    flags but -m (another flag's value may be a bare word: Hydra checks those), or None."""
    from lightning_sde.cli.help import subcommands

    switches = multirun_switches(argv)
    if argv[:1] and argv[0] in subcommands(app) or any(a.startswith("-") for a in argv if a not in switches):
        return None
    argv = [arg for arg in argv if arg not in switches]
    stray = [arg for arg in argv if "=" not in arg and not arg.startswith("~")]
    if not stray:
        return None
    named = f"; or a subcommand: {', '.join(subcommands(app))}" if subcommands(app) else ""
    return f"{stray[0]!r} is not an override: give it as key=value{named}; see lsde-{app} --help"


def hydra_modes_error(argv: list[str]) -> str | None:
    """Two of Hydra's modes (`-m --cfg job`): Hydra's ValueError, as one line."""
    spelled = {"--multirun": "-m", "-c": "--cfg", "-i": "--info", "-r": "--run", "-sc": "--shell-completion"}
    modes = list(dict.fromkeys(spelled.get(arg, arg) for arg in argv if arg in (*spelled, *spelled.values())))
    if len(modes) < 2:
        return None
    return f"{modes[0]} and {modes[1]} cannot be given together: give one of -m, --cfg, --info"


def launcher_without_multirun(argv: list[str]) -> str | None:
    """hydra/launcher=... on a single run: Hydra launches only multiruns, so the run would go on here, locally."""
    given = next((arg for arg in argv if arg.lstrip("+").startswith("hydra/launcher=")), None)
    if given is None or given.endswith("=basic") or multirun_switches(argv) or any(
            arg in ("--cfg", "-c", "--info", "-i") for arg in argv):
        return None
    return f"{given} launches the runs of a multirun only: add -m (one job per run), or leave it out to run here"


class ReaderGoneGuard:
    """stdout or stderr, such that when the reader of its pipe goes away (`lsde-bench ... | head -1`) the stream is
    pointed at /dev/null, said once on the other stream, and the run goes on to its files and exit status, instead of
    a BrokenPipeError at its next line (a traceback, or one per log line, and the views never drawn)."""

    def __init__(self, stream, app: str, other=None):
        self._stream, self._app, self._other, self._dropping = stream, app, other, False

    def write(self, text):
        if self._dropping:
            return len(text)
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_gone()
            return len(text)

    def flush(self):
        if self._dropping:
            return
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        """Once: later writes reach /dev/null (or, a stream without a file descriptor, nothing)."""
        from lightning_sde.cli.errors import point_at_devnull

        self._dropping = not point_at_devnull(self._stream)
        if self._other is not None:
            name = str(getattr(self._stream, "name", "output")).strip("<>")
            self._other.write(f"lsde-{self._app}: the reader of its {name} went away: the "
                              "rest of that output is dropped; the run goes on (its files are written as usual)\n")
            self._other.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def guard_streams(app: str) -> None:
    """stdout and stderr behind ReaderGoneGuard (once: a second app run in the process keeps the first guards); a
    stream Python has none of (its file descriptor closed at start: None) stays None."""
    if sys.stderr is not None and not isinstance(sys.stderr, ReaderGoneGuard):
        sys.stderr = ReaderGoneGuard(sys.stderr, app)
    if sys.stdout is not None and not isinstance(sys.stdout, ReaderGoneGuard):
        sys.stdout = ReaderGoneGuard(sys.stdout, app, other=sys.stderr)


def run(app: str, main=None) -> None:
    """--help, then the command line's checks, then the app's `main` (imported only now, unless given: `python -m
    lightning_sde.cli.<app>` passes its own, so that route refuses what the console script refuses). Ctrl-C before
    the app's own handler applies (importing torch, composing the config) is said as the app says it."""
    guard_streams(app)
    with ctrl_c_said(app):
        checked_run(app, main)


@contextlib.contextmanager
def ctrl_c_said(app: str):
    """Ctrl-C as one line and exit status 130, not a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        from lightning_sde.cli.errors import to_console

        to_console(f"lsde-{app}: interrupted (Ctrl-C)\n")
        sys.exit(130)


def multirun_first(app: str, argv: list[str]) -> list[str]:
    """-m / --multirun moved before the overrides: Hydra's parser takes overrides on one side of it only (`lsde-bench
    nfe=[10] -m seeds.start=0,32` was "unrecognized arguments: seeds.start=0,32"). A subcommand's line is its own."""
    from lightning_sde.cli.help import subcommands

    switches = [arg for arg in argv if arg in ("-m", "--multirun")]
    if not switches or argv[:1] and argv[0] in subcommands(app):
        return argv
    return switches + [arg for arg in argv if arg not in switches]


def names_as_given(app: str, argv: list[str]) -> list[str]:
    """The command line with the app's folder-naming key (run_name, name) quoted where Hydra would read its value as
    a number of another spelling: a SLURM array task's run_name=27_0 named the folder 270 (Python's digit
    separator), where plain job 270's run went, and 1e3 named it 1000.0."""
    from lightning_sde.configuration import FOLDER_NAMES

    key = FOLDER_NAMES[app][0] if app in FOLDER_NAMES else None
    out = list(argv)
    for i, arg in enumerate(argv):
        given_key, _, text = arg.partition("=")
        parts = text.split(",")  # a multirun's choices too
        if key is None or given_key.lstrip("+") != key or not any(number_spelling(part) for part in parts):
            continue
        if all(re.fullmatch(r"[0-9A-Za-z_.+-]+", part) for part in parts):
            out[i] = f"{given_key}=" + ",".join(f"'{part}'" if number_spelling(part) else part for part in parts)
    return out


def number_spelling(text: str) -> str | None:
    """What Hydra's parser makes of an unquoted `text` where it reads a number of another spelling (27_0 -> '270',
    1e3 -> '1000.0'), else None."""
    if not re.fullmatch(r"[0-9A-Za-z_.+-]+", text) or not parses(f"x={text}"):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    value = OverridesParser.create().parse_override(f"x={text}").value()
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return str(value) if number and str(value) != text else None


def checked_run(app: str, main=None) -> None:
    if print_help_if_asked(app):
        return
    sys.argv[1:] = names_as_given(app, multirun_first(app, sys.argv[1:]))
    error = (stray_argument(app, sys.argv[1:]) or hydra_modes_error(sys.argv[1:])
             or launcher_without_multirun(sys.argv[1:])
             or override_error(app, sys.argv[1:])
             or added_key_error(app, sys.argv[1:]))
    if error is not None:
        sys.exit(f"lsde-{app}: error: {error}")
    from lightning_sde.cli.launcher import register

    register()  # hydra/launcher=slurm's
    (main or importlib.import_module(f"lightning_sde.cli.{app}").main)()


train = functools.partial(run, "train")
bench = functools.partial(run, "bench")
compare = functools.partial(run, "compare")
likelihood = functools.partial(run, "likelihood")
figures = functools.partial(run, "figures")
sample = functools.partial(run, "sample")


def prepare(main=None) -> None:
    """lsde-prepare (argparse, not Hydra): the same stream guards, and Ctrl-C as one line and status 130."""
    guard_streams("prepare")
    with ctrl_c_said("prepare"):
        status = (main or importlib.import_module("lightning_sde.cli.prepare").main)()
    sys.exit(status)
