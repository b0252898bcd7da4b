"""Reading what training wrote, safely: checkpoints are unpickled with `weights_only=True` (tensors, numbers,
strings and containers; nothing in a file is ever imported or called), checked to be lightning-sde checkpoints, and
their hyperparameters may name only trusted classes before any of them is built.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import zipfile
from pathlib import Path

import torch

from lightning_sde.configuration import TRUSTED_TARGETS, check_targets, interpolations, trusted_class, trusted_targets
from lightning_sde.errors import CheckpointError, first_line, nonfinite_keys
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.models.moments import DataMoments
from lightning_sde.models.pretrained import is_diffusers_spec
from lightning_sde.models.pretrained import load as load_pretrained
from lightning_sde.sde import SDE

log = logging.getLogger(__name__)
REQUIRED_HPARAMS = ("net", "sde", "shape")
SCORE_NETWORKS = ("lightning_sde.models.mlp.MLP", "lightning_sde.models.unet.UNet")  # what a checkpoint's net may be


def file_sha256(path) -> str:
    """SHA-256 hex digest of a file (checkpoints and weights), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_checkpoint(path, map_location="cpu", trusted=()) -> dict:
    """A lightning-sde checkpoint's contents; CheckpointError (one line: the path and what was expected) for
    anything else, be it a text file, a truncated file, or a pickle that would import or run code. Its classes may
    come from configuration.trusted_targets(trusted): this package, $LSDE_TRUSTED_MODULES and the packages
    `trusted` names."""
    trusted = trusted_targets(trusted or ())
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    expected = "a lightning-sde checkpoint (a torch.save'd dict written by lsde-train)"
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a text file or a cut-off write is not one
        raise CheckpointError(f"{path}: not {expected}: not a torch.save archive (another kind of file, or a "
                              "truncated one)")
    try:
        # mmap: tensors are read when used, so a resume that reads every checkpoint of a run for its step (and the
        # chosen one again to check it fits the model) costs little more than the files' directories
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[-1] if "Weights only load failed" not in str(err) else (
            "it holds objects other than tensors, numbers, strings and containers; nothing was imported or run")
        raise CheckpointError(f"{path}: not {expected}: {reason}") from None
    except Exception as err:  # noqa: BLE001  (a weights-only load runs nothing: whatever it raises, the file is bad)
        raise CheckpointError(f"{path}: not {expected}: cannot be read ({type(err).__name__}: "
                              f"{first_line(err) or 'truncated?'})") from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in ckpt or not all(k in hparams for k in REQUIRED_HPARAMS):
        raise CheckpointError(f"{path}: not {expected}: no state_dict and hyper_parameters {list(REQUIRED_HPARAMS)}")
    for part in ("state_dict", "current_model_state"):  # names -> tensors, or the code that reads them fails oddly
        weights = ckpt.get(part, {})
        if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                                    for k, v in weights.items()):
            raise CheckpointError(f"{path}: not {expected}: its {part} is not a mapping of names to tensors")
    for part in ("hyper_parameters", "data_config"):  # lsde-train saves them resolved: an interpolation was put there
        found = interpolations(ckpt.get(part))
        if found:
            raise CheckpointError(f"{path}: its {part} hold an interpolation (${{...}}) at {found}; a checkpoint "
                                  "written by lsde-train holds none; nothing was built")
    try:
        check_targets(hparams, f"{path}: its hyper_parameters", trusted)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    for key, base in (("net", torch.nn.Module), ("sde", SDE)):  # what each node must build, checked before it is
        target = hparams[key].get("_target_") if isinstance(hparams[key], dict) else None
        cls = trusted_class(target, tuple(trusted)) if target is not None else None
        if target is not None and not issubclass(cls, base):
            raise CheckpointError(f"{path}: its hyper_parameters' {key} names {target!r}, not a {base.__name__}; "
                                  "nothing was built")
        # this package's other modules (feature extractors, wrappers) may read files when built: not a network
        if key == "net" and cls is not None and f"{cls.__module__}.".startswith(TRUSTED_TARGETS) and \
                f"{cls.__module__}.{cls.__qualname__}" not in SCORE_NETWORKS:
            raise CheckpointError(f"{path}: its hyper_parameters' net names {target!r}, not one of this package's "
                                  f"score networks {list(SCORE_NETWORKS)}; nothing was built")
    return ckpt


def load_denoiser(path, map_location="cpu", trusted=()) -> Denoiser:
    """The Denoiser a model spec names, in eval mode: a lightning-sde checkpoint path (its EMA weights, rebuilt from
    the checkpoint alone) or `diffusers:<folder or hub id>[#subfolder]` (lightning_sde.models.pretrained).

    `trusted`: the packages of your own whose classes (network, SDE) the checkpoint may name, besides this package's
    and those of $LSDE_TRUSTED_MODULES, e.g. ["my_package"]."""
    from lightning_sde.module import ScoreModule

    if is_diffusers_spec(path):
        return load_pretrained(path, map_location=map_location)

    ckpt = read_checkpoint(path, map_location="cpu", trusted=trusted)
    try:
        module = ScoreModule(**ckpt["hyper_parameters"])
        module.load_state_dict(ckpt["state_dict"])
        module.on_load_checkpoint(ckpt)
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError) as err:  # parts that do not fit together
        reason = " ".join(line.strip() for line in str(err).strip().splitlines()[:2]) or "no detail"
        raise CheckpointError(f"{path}: its contents do not fit together (edited, or not written by lsde-train): "
                              f"{type(err).__name__}: {reason}") from None
    bad = nonfinite_keys(module.denoiser.state_dict())  # the weights it samples with (the average, where kept)
    if bad:
        more = " ..." if len(bad) > 1 else ""
        raise CheckpointError(f"{path}: its weights hold NaN or infinite values ({bad[0]}{more}): a run that "
                              "diverged; take an earlier checkpoint")
    return module.denoiser.to(map_location).eval()


def newest_loadable(folder, trusted=()) -> tuple[Path | None, list[str]]:
    """(the checkpoint in `folder` at the highest global step that reads back, the reasons others did not): what a
    resume takes, and falls back from when a kill or a disk fault has left the latest one broken. Chosen by the step
    each file holds, not by its modification time (a copy of the run directory does not keep those); at the same
    step last.ckpt wins (a best-*.ckpt written at that step holds the same weights)."""
    folder = Path(folder)
    candidates = sorted(p for p in folder.glob("*.ckpt") if not p.name.startswith(".")) if folder.is_dir() else []
    readable, problems = [], []
    for path in candidates:
        try:
            readable.append((resume_step(path, trusted), path.name == "last.ckpt", path))
        except (CheckpointError, FileNotFoundError) as err:
            problems.append(str(err))
    if not readable:
        return None, problems
    return max(readable, key=lambda entry: entry[:2])[2], problems


NONFINITE_SUFFIX = ".nonfinite"


def set_aside_name(path: Path) -> Path:
    """Where `path` is set aside: `<name>.nonfinite`, or `<name>.2.nonfinite`, ... when that is taken (a second
    non-finite stop at the same step keeps the first one's files)."""
    candidate, n = path.with_name(path.name + NONFINITE_SUFFIX), 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}{NONFINITE_SUFFIX}")
    return candidate


def set_aside_from(folder, step: int) -> tuple[list[str], Path | None]:
    """After a non-finite loss or gradient at `step`: move every checkpoint in `folder` written at that step (its
    weights gave the value: a resume from it meets it again, whatever the lr; the fit wrote none later, and a later
    one is another run's) to `<name>.nonfinite`, out of the resume's way. Returns (the names moved, the checkpoint a
    resume now takes: newest_loadable's)."""
    folder = Path(folder)
    moved = []
    for path in sorted(folder.glob("*.ckpt")) if folder.is_dir() else []:
        try:
            written_at = read_checkpoint(path).get("global_step")
        except (CheckpointError, FileNotFoundError):
            continue
        if written_at == step:
            os.replace(path, set_aside_name(path))
            moved.append(path.name)
    return moved, newest_loadable(folder)[0]


def resume_step(path, trusted=()) -> int:
    """The global step a checkpoint was written at, once it holds what a resume needs (read as safely as any
    checkpoint: read_checkpoint): the step, the optimizer's state (a weights-only save has none), the loops'
    progress (without it Lightning would start again at step 0), and finite weights."""
    ckpt = read_checkpoint(path, trusted=trusted)
    step, cannot = ckpt.get("global_step"), f"{path}: not a checkpoint lsde-train can resume from"
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{cannot}: no global_step (got {step!r})")
    if not ckpt.get("optimizer_states") or not isinstance(ckpt.get("loops"), dict):
        raise CheckpointError(f"{cannot}: no optimizer state or loop progress (a weights-only save); sample from it "
                              "with the apps, or start a new run from its weights (another run_name, init_from=<path>)")
    if "data_moments" in ckpt:
        try:
            DataMoments.from_state(ckpt["data_moments"])
        except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as err:
            raise CheckpointError(f"{cannot}: its data_moments cannot be read ({type(err).__name__})") from None
    for part in ("state_dict", "current_model_state"):
        bad = nonfinite_keys(ckpt.get(part, {}))
        if bad:
            raise CheckpointError(f"{cannot}: its {part} holds NaN or infinite values ({bad[0]}"
                                  f"{' ...' if len(bad) > 1 else ''})")
    return step

