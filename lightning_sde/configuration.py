"""Config nodes -> objects, one way: Hydra's `instantiate` of a `_target_` node, with errors that name the config
key; and where the config tree is (the package `lightning_sde.configs`, shipped in the wheel).

Config nodes that come from a file rather than from the user's command line (a checkpoint's hyperparameters) may
name only trusted targets: `check_targets` refuses any but classes defined under the trusted module prefixes
before anything is built (resolving a name imports only modules under those prefixes).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:
    import torch

log = logging.getLogger("lightning_sde")
CONFIG_PACKAGE = "lightning_sde.configs"
CONFIG_PATH = f"pkg://{CONFIG_PACKAGE}"  # for @hydra.main
TRUSTED_TARGETS = ("lightning_sde.",)  # what a file may name by default
TRUSTED_ENV = "LSDE_TRUSTED_MODULES"  # more module prefixes a checkpoint may name, comma-separated (your own classes)
LOADING_KEYS = ("batch_size", "num_workers", "download", "download_timeout")  # how data is read, not what
DTYPES = ("float32", "float64")  # torch dtypes by name (torch is imported when one is asked for: --help needs none)


def config_root() -> Path:
    """The config tree as a directory (a source checkout's configs/, or the installed package's)."""
    from importlib.resources import files

    return Path(str(files(CONFIG_PACKAGE)))


SITE_SBATCH = {"LSDE_MEM": "mem", "LSDE_MAIL_TYPE": "mail_type", "LSDE_MAIL_USER": "mail_user"}


def site_file() -> Path | None:
    """$LSDE_SITE_ENV; else slurm/site.env of the source checkout the package runs from, or of the current folder (an
    installed package, run where its checkout is); None if there is none."""
    if os.environ.get("LSDE_SITE_ENV"):
        path = Path(os.environ["LSDE_SITE_ENV"])
        if not path.is_file():
            raise ValueError(f"LSDE_SITE_ENV={str(path)!r} is not a file")
        return path
    found = [p for p in (config_root().parent / "slurm" / "site.env", Path("slurm") / "site.env") if p.is_file()]
    return found[0].resolve() if found else None


def site_file_settings() -> dict[str, str]:
    """The site file's KEY=VALUE lines (or `export KEY=VALUE`, as bash reads them too), read as data, never run."""
    path = site_file()
    settings = {}
    if path is not None:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = re.match(r"\s*(?:export\s+)?([A-Za-z_]\w*)=(.*)", line)
            if match:
                try:
                    settings[match[1]] = bash_value(match[2], settings)
                except ValueError as err:
                    raise ValueError(f"{path}, line {number}: {err}") from None
    return settings


def bash_value(text: str, known: dict[str, str]) -> str:
    """An assignment's value as bash gives it: quotes taken off, $NAME and ${NAME} replaced outside single quotes
    (by `known`, the file's settings above, then the environment; unset: empty), ~ at the start or after a colon the
    home folder; it ends at an unquoted blank (a comment after it). What bash would run or compute (`$(...)`,
    backquotes, `${NAME:-...}` and other parameter forms, `;`, `|`, `&`, redirections) is refused, not passed on."""
    out, quote, i = [], None, 0
    while i < len(text):
        c = text[i]
        if quote is None and c == "~" and (i == 0 or text[i - 1] == ":") and re.match(r"~(/|:|\s|$)", text[i:]):
            out.append(os.path.expanduser("~"))
        elif quote is None and c in ";|&<>()`" or quote == '"' and c == "`" or (
                c == "$" and quote != "'" and text[i + 1 : i + 2] in ("(", "{") and not re.match(
                    r"\{[A-Za-z_]\w*\}", text[i + 1 :])):
            raise ValueError(f"{text.strip()!r}: only plain values and $NAME / ${{NAME}} are read (no commands, "
                             "defaults or other expansions); write the value out")
        elif c == "$" and quote != "'" and text[i + 1 : i + 2].isdigit():
            i += 1  # a positional parameter: empty, as in a sourced file without arguments
        elif quote == "'":
            quote = None if c == "'" else quote
            out += [] if c == "'" else [c]
        elif c == "\\" and i + 1 < len(text) and (quote is None or text[i + 1] in '$"\\`'):
            out.append(text[i + 1])
            i += 1
        elif c == "$" and (name := re.match(r"\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*)", text[i + 1 :])):
            key = name[1] or name[2]
            out.append(known.get(key, os.environ.get(key, "")))
            i += name.end()
        elif c == '"' or (c == "'" and quote is None):
            quote = None if quote == c else c
        elif c.isspace() and quote is None:
            break
        else:
            out.append(c)
        i += 1
    if quote is not None:
        raise ValueError(f"an unmatched {quote} in {text.strip()!r}")
    return "".join(out)


def site_settings() -> dict[str, str]:
    """The cluster's settings (slurm/site.env.example): the site file, then the environment's LSDE_* on top; empty
    values are left out."""
    settings = {**site_file_settings(), **{k: v for k, v in os.environ.items() if k.startswith("LSDE_")}}
    return {k: v for k, v in settings.items() if v != ""}


def _site_value(key: str):
    return site_settings().get(key)


def site_sbatch() -> dict:
    """The site's sbatch options without a submitit field of their own (mem, mail), for `additional_parameters`."""
    site = site_settings()
    return {option: site[key] for key, option in SITE_SBATCH.items() if key in site}


_NO_SITE_FILE_SAID: list = []


def _site_setup(*lines) -> list:
    """The submitit job's set-up lines: ours, the site's settings exported (TORCH_HOME, LSDE_CACHE, ...: what the
    templates' jobs get by sourcing the file), then the site's LSDE_SETUP."""
    site = site_settings()
    if site_file() is None and not _NO_SITE_FILE_SAID:
        _NO_SITE_FILE_SAID.append(True)  # once: each composition of the config resolves this
        log.warning("hydra/launcher=slurm: no site file (slurm/site.env in the package's checkout or the current "
                    "folder, or $LSDE_SITE_ENV): the jobs get no site account, partition or set-up but the LSDE_* "
                    "of this environment")
    exports = [f"export {key}={shlex.quote(site[key])}" for key in site_file_settings()
               if key in site and key != "LSDE_SETUP"]
    return [*lines, *exports, *([site["LSDE_SETUP"]] if "LSDE_SETUP" in site else [])]


def _gpus_per_node(tasks_per_node, device) -> int:
    """A submitit job's GPUs per node: one per task, none for a run on the CPU (trainer.accelerator or device
    `cpu`, and the apps without a device)."""
    return 0 if str(device).split(":")[0] == "cpu" else tasks_per_node


def _array_task(field: str, default):
    """SLURM_ARRAY_TASK_<field> (ID, COUNT) of the job array whose tasks share a sweep (bench.sbatch), or `default`:
    outside an array, and in a submitit job, whose array holds a multirun's jobs, each a whole sweep."""
    value = os.environ.get(f"SLURM_ARRAY_TASK_{field}")
    if value is None or os.environ.get("SUBMITIT_EXECUTOR"):
        return default
    return int(value) if value.strip().isdigit() else value  # a value that is not a number: the app names it


OmegaConf.register_new_resolver("lsde_array_task", _array_task, replace=True)
OmegaConf.register_new_resolver("lsde_site", _site_value, replace=True)
OmegaConf.register_new_resolver("lsde_gpus_per_node", _gpus_per_node, replace=True)
OmegaConf.register_new_resolver("lsde_site_setup", _site_setup, replace=True)


def plain(node):
    """A config node as plain Python containers (interpolations resolved)."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def dtype(name: str, key: str = "dtype") -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"config {key}: {name!r} is not one of {list(DTYPES)}")
    import torch

    return getattr(torch, name)


def device(name: str, key: str = "device") -> torch.device:
    import torch

    if name is None or isinstance(name, bool):  # torch's multi-line signature listing (an int: a CUDA index)
        raise ValueError(f"config {key}: must be a device's name (cpu, cuda, cuda:1); got {name!r}")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"config {key}: {err}") from None


def require_device(dev, key: str = "device") -> None:
    """At a run's start (not when planning one on a login node): a CUDA device must be visible here; the CPU, CUDA
    and (where torch has it) Apple's MPS are the devices the apps run on."""
    import torch

    if dev.type == "mps" and not torch.backends.mps.is_available() or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"config {key}: {str(dev)!r} is not available here; use {key}=cpu"
                         + (f" or {key}=cuda" if torch.cuda.is_available() else ""))
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"config {key}: {str(dev)!r}, but {torch.cuda.device_count()} CUDA device(s) are visible "
                         "here (CUDA_VISIBLE_DEVICES, the job's GPU request); use device=cpu on this machine")


def require_accelerator(accelerator) -> None:
    """A trainer's GPU accelerator on a machine without one (Lightning's `gpu`: CUDA or Apple's MPS) is refused at
    start-up, naming the CPU trainers (Lightning's own error names none)."""
    import torch

    accelerator = str(accelerator)
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and not (
            accelerator == "gpu" and torch.backends.mps.is_available()):
        raise ValueError(f"config trainer.accelerator: {accelerator!r}, but torch sees no GPU here; on the CPU use "
                         "trainer=cpu (one process) or trainer=ddp_cpu (DDP over gloo)")


# The key that names an app's folder: what it names, and the characters it may hold beside letters, digits, . _ - + @
FOLDER_NAMES = {
    "train": ("run_name", "the run directory and the W&B run's id", ()),
    "sample": ("name", "the samples' folder under the outputs root", ("=", ",")),
    "bench": ("name", "the sweep's folder under the outputs root", ("=", ",")),
    "likelihood": ("name", "the results' folder under the outputs root", ("=", ",")),
}
FOLDER_NAMES["compare"] = FOLDER_NAMES["bench"]


def check_folder_name(app: str, cfg) -> None:
    """The app's folder-naming key (FOLDER_NAMES): letters, digits, . _ - + @ and its extra characters, not only dots
    (no '', '..' or path separators), not null; ValueError naming the key."""
    key, names, extra = FOLDER_NAMES[app]
    value = cfg[key]
    allowed = (".", "_", "-", "+", "@", *extra)
    if value is None or isinstance(value, bool):  # null: a folder named 'None' (resumed by the next null)
        raise ValueError(f"config {key}: must be a name (it names {names}); got {'null' if value is None else value}"
                         f": leave {key} out for its default")
    text = str(value)
    if not re.fullmatch(f"[A-Za-z0-9{''.join(re.escape(c) for c in allowed)}]+", text) or text.strip(".") == "":
        raise ValueError(f"config {key}: may hold ASCII letters, digits and {' '.join(allowed)} only (it names "
                         f"{names}); got {text!r}")


CYCLE = "'cycle' (seed i: class i mod num_classes) or "


def check_class_has_guidance(key: str, label, guidance, set_guidance: str = "guidance=<w>", cycle: bool = True) -> None:
    """A class asked for (`key`=label: a class index, or 'cycle' where `cycle`) draws under classifier-free guidance
    only: refused without it (the samples would be of every class, unguided)."""
    if cycle and label == "cycle" or label is None:
        return
    if isinstance(label, bool) or not isinstance(label, int) or label < 0:
        raise ValueError(f"config {key}: must be {CYCLE if cycle else ''}a class index; got {label!r}")
    if guidance is None:
        raise ValueError(f"config {key}: {key}={label} draws class {label} under guidance; set {set_guidance} too "
                         f"(0: the conditional model alone), or leave {key} out")


def build(node, key: str, **kwargs):
    """instantiate(node, **kwargs); any failure becomes a ValueError "config <key>: ..." with the cause's message."""
    return checked(key, instantiate, node, **kwargs)


def checked(key: str, fn, *args, **kwargs):
    """fn(*args, **kwargs); any failure becomes a ValueError "config <key>: ..." (a start-up check of a built node)."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # report which config node failed, with the library's own message
        raise config_error(key, err) from None


def config_error(key: str, err: Exception) -> ValueError:
    """A ValueError naming the config key; Hydra's wrappers are unwrapped to the target's own message, and the
    innermost node Hydra names (full_key) replaces `key` when it is deeper."""
    full_key = None
    while isinstance(err, InstantiationException):
        match = re.search(r"full_key: (\S+)", str(err))
        full_key = match.group(1) if match else full_key
        if err.__cause__ is None:
            break
        err = err.__cause__
    message = str(err)
    if isinstance(err, ValueError) and message.startswith("config "):  # already names its own, deeper key
        return err
    if isinstance(err, InstantiationException):
        message = re.sub(r"\s*full_key: \S+", "", message)
    if isinstance(err, OmegaConfBaseException):  # its message, without the lines of where (full_key, object_type)
        full_key = getattr(err, "full_key", None) or full_key
        message = "\n".join(line for line in message.splitlines()
                            if not re.match(r"\s*(full_key|object_type|reference_type|child_node)[:=]", line))
    where = key if full_key is None or full_key == key or not full_key.startswith(key.split(".")[0]) else full_key
    unknown = re.search(r"unexpected keyword argument '(\w+)'", message) if isinstance(err, TypeError) else None
    if unknown:  # a misspelt key, or one an experiment sets for another class (sigma_min with sde=vp)
        message += f"; the class takes no {unknown.group(1)}: remove it (~{where}.{unknown.group(1)}) or pick its class"
    leaf = where.rsplit(".", 1)[-1]
    if type(err) is ValueError and message.startswith(f"{leaf} "):  # "labels must be ...": the key said once
        return ValueError(f"config {where}: {message[len(leaf) + 1:]}")
    return ValueError(f"config {where}: {type(err).__name__}: {message}")


def overridden(key: str) -> bool:
    """True when the running app's command line set `key` (or a key below it, or its config group); removing it
    (`~key`) does not set it, nor does a group placed elsewhere (`+problem@other=...` sets `other`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return False
    for override in OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task)):
        if override.is_delete():
            continue
        name = override.key_or_group
        if override.package not in (None, "", "_global_"):  # group@package: the option lands at `package`
            name = override.package
        if name == key or name.startswith(key + "."):
            return True
    return False


def targets(node) -> list[str]:
    """Every `_target_` in a nested config (dicts and lists)."""
    node = plain(node)
    found = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(str(node["_target_"]))
        for value in node.values():
            found += targets(value)
    elif isinstance(node, list):
        for value in node:
            found += targets(value)
    return found


def interpolations(node, where: str = "") -> list[str]:
    """The keys (dotted) of every string in a nested config that holds an interpolation, `${...}`: instantiate would
    resolve it, and a resolver such as oc.create builds whatever it names, past check_targets."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in interpolations(value, f"{where}.{key}".lstrip("."))]
    if isinstance(node, (list, tuple)):
        return [k for i, value in enumerate(node) for k in interpolations(value, f"{where}[{i}]")]
    return [where] if isinstance(node, str) and "${" in node else []


def trusted_targets(also=()) -> tuple[str, ...]:
    """The module prefixes a checkpoint may name classes from: this package's, the packages listed in
    $LSDE_TRUSTED_MODULES (e.g. `my_package`: an SDE or a network of your own, in every app and on resume) and those
    in `also` (load_denoiser's `trusted`)."""
    if isinstance(also, str):
        raise ValueError(f"trusted: a list of module names, e.g. [{also!r}]; got the string {also!r}")
    listed = [(f"${TRUSTED_ENV}", name) for name in os.environ.get(TRUSTED_ENV, "").split(",")]
    extra = []
    for where, name in [*listed, *(("trusted", name) for name in also)]:
        if not isinstance(name, str):
            raise ValueError(f"{where}: {name!r} is not a module name (e.g. my_package)")
        name = name.strip().rstrip(".")
        if not name:
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
            raise ValueError(f"{where}: {name!r} is not a module name (e.g. my_package)")
        extra.append(f"{name}.")
    return (*TRUSTED_TARGETS, *dict.fromkeys(extra))


def check_targets(node, where: str, trusted: tuple[str, ...]) -> None:
    """Refuse a config read from a file unless every `_target_` is a class defined in a module under `trusted`
    (module prefixes), resolved as `instantiate` resolves it: a name a trusted module merely imports
    (`lightning_sde.loading.Path`), a function or a method is refused, and nothing is built."""
    trusted = tuple(trusted)
    bad = [t for t in targets(node) if not trusted_class(t, trusted)]
    yours = [t for t in bad if t.startswith(trusted) and not t.startswith(TRUSTED_TARGETS)]
    if yours:  # under a trusted package of yours
        raise ValueError(f"{where} names {yours[0]!r}, {why_not_a_class(yours[0])}; nothing was built")
    if bad:
        raise ValueError(f"{where} names {bad}, outside the trusted targets {list(trusted)} (classes defined in "
                         f"those modules); nothing was built. If you wrote that class, trust its package: "
                         f"{TRUSTED_ENV}=<your_package> (or load_denoiser(..., trusted=...))")


def why_not_a_class(target: str) -> str:
    """What `target` (under a trusted module) is instead of a class defined there."""
    from hydra.utils import get_object

    try:
        found = get_object(target)
    except Exception:  # noqa: BLE001  (any import failure)
        return "not a name this Python can import (is its package installed, or on PYTHONPATH?)"
    if not isinstance(found, type):
        return f"a {type(found).__name__}, not a class"
    return f"a class defined in {found.__module__}, outside the trusted modules (a name a trusted module imports)"


def trusted_class(target: str, trusted: tuple[str, ...] | None = None) -> type | None:
    """The class `target` names if it is defined in a module under `trusted`, else None. Only modules under
    `trusted` are imported to find out (the name is resolved from its trusted first part)."""
    from hydra.utils import get_class

    trusted = trusted_targets() if trusted is None else tuple(trusted)
    if not target.startswith(trusted):
        return None
    try:
        cls = get_class(target)
    except Exception:  # noqa: BLE001  (not importable, not a class: either way not a trusted class)
        return None
    return cls if f"{cls.__module__}.".startswith(trusted) else None


def node_settings(node, by_name: dict | None = None) -> dict:
    """A config node of one class (the sde's, the network's) resolved: its class as `_target_` (however spelt; an
    sde of a checkpoint from before 0.2 names it by `name`, a key of `by_name`) and every parameter of its
    constructor, defaults filled in, so that a parameter left at its default (or missing from an older checkpoint)
    and one stated equal to it are the same. Hydra's own keys (_convert_, ...) are no part of it."""
    if not isinstance(node, dict):
        return {"_target_": node}
    node = dict(node)
    if "_target_" not in node and by_name is not None and node.get("name") in by_name:
        target, cls = None, by_name[node.pop("name")]
    else:
        target = node.pop("_target_", None)
        cls = trusted_class(target) if isinstance(target, str) else None
    params = {k: v for k, v in node.items() if not k.startswith("_")}
    if cls is None:  # not a class of this package: compared as written
        return {"_target_": target, **params}
    try:
        bound = inspect.signature(cls).bind_partial(**params)
    except TypeError:  # cannot have been built from this node: compared as written
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **params}
    bound.apply_defaults()
    return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **bound.arguments}


def comparable(value):
    """A setting as compared: a list and a tuple of the same items are one value (a config's channel_mult [1, 2]
    and a constructor's default (1, 2), the form a checkpoint that left it out compares by)."""
    if isinstance(value, (list, tuple)):
        return tuple(comparable(v) for v in value)
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    return value


def node_changes(key: str, theirs, ours, free: tuple[str, ...] = (), by_name: dict | None = None
                 ) -> list[tuple[str, object, object]]:
    """(config key, checkpoint's value, this config's value) for each setting, outside `free`, in which the config
    node `ours` differs from `theirs` (see node_settings). Another class is one change (<key>._target_): its
    parameters are another family's."""
    a, b = node_settings(theirs, by_name), node_settings(ours, by_name)
    if a["_target_"] != b["_target_"]:
        return [(f"{key}._target_", a["_target_"], b["_target_"])]
    return [(f"{key}.{k}", a.get(k), b.get(k)) for k in sorted((set(a) | set(b)) - {"_target_"})
            if k not in free and comparable(a.get(k)) != comparable(b.get(k))]


def shown(value) -> str:
    """A value for a one-line message: its repr, cut at 80 characters (an SDE's table of alphas would be long)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


# The data a checkpoint was trained on: its class and every setting but how it is read (LOADING_KEYS) and where
# (root: a copy of the dataset elsewhere). Another dataset, split seed, augmentation or dequantization would train
# the weights on, or score them against, other data, and the checkpoint's data moments (the Gaussian start) would no
# longer be the data's.
DATA_FREE_KEYS = (*LOADING_KEYS, "root")
# Scoring a checkpoint's samples (lsde-bench) may also take another split or view of the same distribution: its
# size and seed, the labels, the flips. Not dequantisation: it moves the pixel levels (17 digit levels: k -> 2k/16 - 1
# plain, around 2(k + 1/2)/17 - 1 dequantised), and a perfect model's FID against the other scale doubles.
EVALUATION_FREE_KEYS = (*DATA_FREE_KEYS, "n_train", "n_val", "seed", "labels", "hflip")
# Its likelihood (lsde-likelihood) may also be measured on uniformly dequantised data (the bits/dim bound).
LIKELIHOOD_FREE_KEYS = (*EVALUATION_FREE_KEYS, "dequantize")


def check_same_data(path, theirs: dict | None, ours: dict | None, remedy: str, free=DATA_FREE_KEYS) -> None:
    """Refuse to resume, or to score, a checkpoint on other data than it was trained on (checkpoints from before
    this check hold none: not compared); `remedy`: what to do instead."""
    if theirs is None or ours is None:
        return
    changes = node_changes("data", theirs, ours, free)
    if changes:
        diffs = "; ".join(f"{key}: {shown(there)} there, {shown(here)} here" for key, there, here in changes)
        raise ValueError(f"config data: the checkpoint {path} was trained on other data ({diffs}); {remedy}")
