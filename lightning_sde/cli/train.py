"""lsde-train: fit a ScoreModule from the Hydra config (configs/train.yaml).

    lsde-train experiment=toy2d
    lsde-train experiment=digits trainer=ddp_cpu
    lsde-train experiment=cifar10_vp_ddpmpp trainer=ddp trainer.num_nodes=2   # under srun, see slurm/
    lsde-train -m experiment=toy2d sde=vp,ve                                  # two runs, each in its own directory

Everything is built and checked before any logger, run directory content or W&B run is created, so a bad key or
value fails in seconds, naming it. Exit status: 0 when the run finished (or was requeued by SLURM to continue), 1 on
an error (a bad config, a non-finite loss, ...), 143 when stopped by SIGTERM (preemption: the checkpoint at that step
is written first), 138 when stopped by the time-limit signal without a requeue.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_sde import logger as wandb_logger
from lightning_sde.callbacks import Preemption, SamplerCallback
from lightning_sde.callbacks.checkpoint_io import AtomicCheckpointIO, LastCheckpoint, LogsWithCheckpoints, SetAside
from lightning_sde.callbacks.sampler import SAMPLE_STATS
from lightning_sde.cli.errors import fail, fails_cleanly, from_worker, multirun_job
from lightning_sde.cli.help import print_help_if_asked
from lightning_sde.configuration import (
    CONFIG_PATH,
    DATA_FREE_KEYS,
    check_folder_name,
    check_same_data,
    checked,
    node_changes,
    plain,
    require_accelerator,
    shown,
)
from lightning_sde.configuration import build as build_node
from lightning_sde.data.base import DATA_SEED_LIMIT, check_accumulation
from lightning_sde.distributed import (
    check_multirun_world,
    cluster_environment,
    launched_first,
    slurm_job,
    slurm_restarts,
)
from lightning_sde.errors import CheckpointError, NonFiniteError, nonfinite_keys
from lightning_sde.files import LOCK_FILE, FolderLock, folder_in_use
from lightning_sde.loading import newest_loadable, read_checkpoint, resume_step
from lightning_sde.losses import DSMLoss
from lightning_sde.metrics.scorer import ALL_METRICS, HIGHER_IS_BETTER, direction, resolve_metrics
from lightning_sde.samplers.schedule import check_grid
from lightning_sde.sde import SDES, sde_from_config
from lightning_sde.tracking import (
    backfill_wandb,
    finish_wandb,
    recorded_group,
    source_revision,
    sync_command,
    trim_history,
    wandb_configured,
    wandb_disabled,
)

log = logging.getLogger(__name__)
TOP_LEVEL_KEYS = {"data", "model", "sde", "loss", "samplers", "trainer", "logger", "callbacks", "run_name", "run_dir",
                  "output_dir", "paths", "seed", "ckpt_path", "init_from", "optim"}
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_TIME_LIMIT = 128 + signal.SIGUSR1  # 138: stopped for the time limit, not requeued
EXIT_CTRL_C = 128 + signal.SIGINT  # 130


@dataclass
class Run:
    datamodule: L.LightningDataModule
    module: L.LightningModule
    trainer: L.Trainer
    resume: str | None  # the checkpoint fit starts from, None for a fresh start
    resumed_at: int | None = None  # its global step
    init_from: tuple[str, int] | None = None  # a fresh start's weights came from this checkpoint (init_from), step
    lock: FolderLock | None = None  # the run directory's, held by the first process


def name_the_run(cfg: DictConfig) -> None:
    """A job id on the command line (run_name=123) parses as an int; each job of a multirun gets its own name,
    <run_name>_<job number> (and so its own run directory, checkpoints and W&B run), stable across requeues. A
    submitit sweep's job (an array task) is <array id>_<job number> by default, as its log folder .submitit/<id>_<n>."""
    check_folder_name("train", cfg)  # null: not 'None'
    cfg.run_name = str(cfg.run_name)
    job = multirun_job()
    if job is not None:
        array = os.environ.get("SLURM_ARRAY_JOB_ID") if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" else None
        cfg.run_name = f"{array if array and not run_name_kept() else cfg.run_name}_{job[1]}"


def wandb_identity(cfg: DictConfig, job, callbacks) -> dict:
    """A training run's W&B name, group and tags, from the config's choices: name <experiment>-<sde>-<run_name>,
    group the experiment (a multirun: its run name, or its sweep id, so a sweep's runs sit together), tags sde:,
    model:, data: and one sampler:<name> per sampler the evaluations compare."""
    from lightning_sde.bench.dashboard import sampler_family

    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    data = str(choices.get("data") or str(cfg.data.get("_target_", "data")).rsplit(".", 1)[-1])
    experiment = str(choices.get("experiment") or data)
    sde = str(choices.get("sde") or str(cfg.sde.get("_target_", "sde")).rsplit(".", 1)[-1])
    model = str(cfg.model.get("net", {}).get("_target_", "net")).rsplit(".", 1)[-1]
    samplers = {s.name for cb in callbacks if isinstance(cb, SamplerCallback) for s in cb.samplers.values()}
    tags = [f"sde:{sde}", f"model:{model}", f"data:{data}", *sorted({f"sampler:{sampler_family(n)}" for n in samplers})]
    group = experiment
    if job is not None:  # a sweep's runs together: under its run name when a resubmission keeps it, else the sweep id
        group = cfg.run_name.removesuffix(f"_{job[1]}") if run_name_kept() else job[0]
    else:  # a run resumed on its own (a sweep's member too) keeps the group its records name
        group = recorded_group(Path(cfg.run_dir) / "wandb", cfg.run_name) or group
    return {"name": f"{experiment}-{sde}-{cfg.run_name}", "group": group, "tags": tags}


def run_name_kept() -> bool:
    """Whether run_name is the same when the sweep is submitted again (given on the command line, or LSDE_RUN_NAME),
    not the start time or a job id (each job of a submitit sweep has its own): its jobs then resume their runs, and
    keep their group."""
    overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return any(o.lstrip("+").split("=", 1)[0] == "run_name" for o in overrides) or bool(os.environ.get("LSDE_RUN_NAME"))


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_run_values(cfg: DictConfig) -> None:
    """The values that Lightning would take and fail on later (or silently ignore), named now."""
    if not (is_int(cfg.seed) and 0 <= cfg.seed < DATA_SEED_LIMIT):  # the data's streams of it stay distinct
        raise ValueError(f"config seed: must be an integer in [0, 2**28); got {cfg.seed!r}")
    check_folder_name("train", cfg)
    if cfg.ckpt_path is not None and not isinstance(cfg.ckpt_path, str):
        raise ValueError(f"config ckpt_path: must be a checkpoint's path, 'last' or null; got {cfg.ckpt_path!r} "
                         "(quote a path that parses as a number: ckpt_path=\"'123'\")")
    init_from = cfg.get("init_from")
    if init_from is not None and not isinstance(init_from, str):
        raise ValueError(f"config init_from: must be a checkpoint's path or null; got {init_from!r} (quote a path "
                         "that parses as a number: init_from=\"'123'\")")
    if init_from is not None and cfg.ckpt_path not in (None, "last"):
        raise ValueError(f"config init_from: starts a new run from a checkpoint's weights ({init_from}), and "
                         f"ckpt_path resumes another's whole state ({cfg.ckpt_path}): set one of them (ckpt_path=last "
                         "keeps this run's own resume)")
    trainer = cfg.trainer
    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    if not (is_int(max_steps) and (max_steps >= 1 or max_steps == -1 and is_int(max_epochs) and max_epochs >= 1)):
        raise ValueError(f"config trainer.max_steps: must be an integer >= 1 (or -1 with trainer.max_epochs >= 1); "
                         f"got {max_steps!r}")
    interval = trainer.get("val_check_interval")
    if not (interval is None or is_int(interval) and interval >= 1
            or isinstance(interval, float) and 0 < interval <= 1):
        raise ValueError("config trainer.val_check_interval: must be a number of training steps >= 1 (or a fraction "
                         f"of an epoch in (0, 1]); got {interval!r}")
    clip = trainer.get("gradient_clip_val")
    if not (clip is None or isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip >= 0
            and math.isfinite(clip)):
        raise ValueError("config trainer.gradient_clip_val: must be a number >= 0 (0 or null: no clipping); "
                         f"got {clip!r}")
    if isinstance(interval, float) and trainer.get("check_val_every_n_epoch", 1) is None:  # Lightning's default: 1
        raise ValueError("config trainer.val_check_interval: a fraction of an epoch needs epochs to count "
                         f"(trainer.check_val_every_n_epoch=1); got {interval!r} with check_val_every_n_epoch=null; or "
                         "give a number of training steps")
    for key in ("check_val_every_n_epoch", "log_every_n_steps"):  # Lightning divides by them (or takes -3 as 3)
        value = trainer.get(key)
        if not (value is None or is_int(value) and value >= 1):
            raise ValueError(f"config trainer.{key}: must be an integer >= 1 or null; got {value!r}")
    sanity = trainer.get("num_sanity_val_steps")
    if not (sanity is None or is_int(sanity) and sanity >= -1):
        raise ValueError(f"config trainer.num_sanity_val_steps: must be an integer >= 0 (-1: all); got {sanity!r}")
    bar = trainer.get("enable_progress_bar", True)
    if not (isinstance(bar, bool) or bar == "auto"):
        raise ValueError("config trainer.enable_progress_bar: must be true, false or auto (a bar when the output is a "
                         f"terminal; ProgressLog's lines when it goes to a file); got {bar!r}")
    if check_accumulation(trainer.get("accumulate_grad_batches", 1)) > 1 and isinstance(interval, float):
        raise ValueError("config trainer.val_check_interval: a fraction of an epoch can fall within an optimizer step "
                         "under gradient accumulation (trainer.accumulate_grad_batches > 1); give a number of training "
                         f"steps; got {interval!r}")


def resume_point(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from, checked now: an explicit ckpt_path must be a lightning-sde checkpoint;
    ckpt_path=last takes the checkpoint of the run at the highest global step that reads back (saying so when it
    skips a broken one). A run that went on from an explicit ckpt_path, rerun with it (a requeue's same command,
    or the command again after a stop), resumes its own checkpoint; so does a requeued job with ckpt_path=null.
    ckpt_path=null on a run that holds checkpoints (not this job's own) is refused: starting afresh would write over
    them and append to its logs."""
    if cfg.ckpt_path is None:
        job = slurm_job()
        own = own_checkpoint(cfg) if slurm_restarts() > 0 and job else None
        if own is None or read_checkpoint(own).get("slurm_job") != job:  # not this job's: afresh, if nothing is lost
            held = sorted((Path(cfg.run_dir) / "checkpoints").glob("*.ckpt"))
            if held:
                raise ValueError(f"config ckpt_path=null: the run {cfg.run_dir} holds checkpoints ({held[-1].name}, "
                                 "...): starting it afresh would write over them and append to its logs; resume it "
                                 "(ckpt_path=last), or start a new run under another run_name (init_from=<one of "
                                 "them> to start from its weights)")
            return None
        if launched_first():
            log.info("resuming %s: this job (%s) was requeued after it saved it; ckpt_path=null started the run "
                     "afresh", own, job)
        return own
    if cfg.ckpt_path != "last":
        own, source = own_checkpoint(cfg), str(Path(cfg.ckpt_path).resolve())
        if own is not None and Path(own).resolve() != Path(source) \
                and recorded_as(own, "resumed_from", source):  # whether or not the source is still there
            if launched_first():
                log.info("resuming %s, this run's own checkpoint; ckpt_path (%s) started the run", own, cfg.ckpt_path)
            return own
        if not Path(cfg.ckpt_path).is_file():
            raise ValueError(f"config ckpt_path: no checkpoint at {cfg.ckpt_path!r} (use a path, 'last' or null)")
        try:
            resume_step(cfg.ckpt_path)
        except ValueError as err:
            raise ValueError(f"config ckpt_path: {err}") from None
        return str(cfg.ckpt_path)
    check_not_named_as_before(cfg)
    folder = Path(cfg.run_dir) / "checkpoints"
    path, problems = newest_loadable(folder)
    if path is None and problems:
        raise ValueError(f"config ckpt_path=last: no checkpoint in {folder} can be read ({by_reason(problems, folder)})"
                         "; where the reason is theirs, point ckpt_path at a good one, or start a new run under "
                         "another run_name")
    if path is not None:
        check_not_trained_earlier_in_this_job(cfg, path)
    for problem in problems:
        log.warning("cannot resume from %s", problem)
    if problems:
        log.warning("resuming from %s, the newest checkpoint that reads back", path)
    return None if path is None else str(path)


def check_not_named_as_before(cfg: DictConfig) -> None:
    """Earlier versions read a run name such as 27_0 (a SLURM array task's) as the number 270 and wrote the run
    there; the name is kept as given now, so a requeue or resubmission would start that run afresh beside its
    checkpoints. Refused, naming the move."""
    from lightning_sde.cli.apps import number_spelling

    run_dir = Path(cfg.run_dir)
    old = number_spelling(str(cfg.get("run_name")))
    if old is None or run_dir.name != str(cfg.get("run_name")) or run_dir.exists():
        return
    before = run_dir.with_name(old)
    if sorted((before / "checkpoints").glob("*.ckpt")):
        raise ValueError(f"config run_name: the run {cfg.run_name} was written to {before} by an earlier version "
                         f"(which read the name as the number {old}); to go on with it, move it to its name's folder "
                         f"(mv {before} {run_dir}), or give run_name={old}")


def check_not_trained_earlier_in_this_job(cfg: DictConfig, path) -> None:
    """run_name defaults to the SLURM job's id, under which a requeued job resumes its run; a second lsde-train in the
    same job (a loop in its script, another in an salloc shell) found the first one's run there and trained on from
    it silently (another lr: 0 steps, its config logged over the first's). Refused where the checkpoint was saved by
    this job since its last requeue. The job's names: its id (an array task's too), each with a multirun's job number;
    by default, or as slurm/env.sh derived them (its templates, or a script calling lsde_env, pass it on)."""
    job, name = slurm_job(), str(cfg.get("run_name"))
    if job is None:
        return
    ids = {job, os.environ.get("SLURM_JOB_ID")} - {None}
    number = multirun_job()
    names = ids | ({f"{i}_{number[1]}" for i in ids} if number is not None else set())
    by_env_sh = os.environ.get("LSDE_RUN_NAME_IS_JOB_ID") == "1" and os.environ.get("LSDE_RUN_NAME") in ids
    if name not in names or run_name_kept() and not by_env_sh:
        return
    ckpt = read_checkpoint(path)
    if ckpt.get("slurm_job") == job and ckpt.get("slurm_restart") == slurm_restarts():
        raise ValueError(f"config run_name: by default this SLURM job's id ({cfg.run_name}), and this job already "
                         f"trained that run ({path}, step {ckpt.get('global_step')}): give each lsde-train of one job "
                         f"(a loop in its script, an salloc shell) its own run_name=<name>, or run_name={cfg.run_name} "
                         "to go on training this one")


def by_reason(problems: list[str], folder: Path) -> str:
    """Checkpoints' problems (`<path>: <why>`, newest_loadable's) with the files of one reason named together: the
    checkpoints of a run trained with an untrusted class all say the same."""
    files: dict[str, list[str]] = {}
    for problem in problems:
        where, _, why = problem.partition(": ")
        if Path(where).parent == folder and why:
            files.setdefault(why, []).append(Path(where).name)
        else:
            files.setdefault(problem, [])
    return "; ".join(f"{', '.join(names)}: {why}" if names else why for why, names in files.items())


def own_checkpoint(cfg: DictConfig) -> str | None:
    """The run's own newest checkpoint that reads back, or None."""
    path, _ = newest_loadable(Path(cfg.run_dir) / "checkpoints")
    return None if path is None else str(path)


def check_resume_world(path: str, world_size: int) -> None:
    """A resume keeps the number of processes: each one's share of an epoch and the data position (the global step
    times the batches a step) count them; on another number the run would train on some samples twice and skip
    others. Checkpoints from before the key: not checked."""
    theirs = read_checkpoint(path).get("world_size")
    if theirs is not None and theirs != world_size:
        raise ValueError(f"config trainer.devices / trainer.num_nodes: the checkpoint {path} was trained on {theirs} "
                         f"processes, this run has {world_size}; a resume keeps the number (each process's share of "
                         "the data and the data position count them): resume with the run's own devices x num_nodes "
                         "(under SLURM: its tasks), or start a new run under another run_name")


RESUME_ADVICE = ("resume with the run's own config, or start a new run under another run_name (init_from=<its "
                 "checkpoint> to start from its weights)")
INIT_ADVICE = ("init_from keeps the checkpoint's network, SDE and parameterization (the data, optim, loss, trainer, "
               "sde.eps, dropout and speed options may change); set them as its run had them")


def check_resume_fits(path: str, module: L.LightningModule, accumulation: int = 1,
                      batch_size: int | None = None) -> int:
    """The resume checkpoint's global step, once its weights are known to fit the model this config builds and to
    mean the same there (check_weights_fit), its data to be this config's, and its gradient accumulation to be
    `accumulation` and its batches of `batch_size` (the data position and the batches' seeds count its batches)."""
    ckpt = read_checkpoint(path)
    theirs_k = ckpt.get("accumulate_grad_batches", 1)  # checkpoints from before accumulation: 1
    if theirs_k != accumulation:
        raise ValueError(f"config trainer.accumulate_grad_batches: the checkpoint {path} was trained with {theirs_k} "
                         f"batches a step, this config has {accumulation}; a resume keeps it (the data order and "
                         "each batch's seed count its batches): resume with the run's own value, or start a new "
                         "run under another run_name")
    theirs_b = ckpt.get("batch_size", (ckpt.get("data_config") or {}).get("batch_size"))  # older: as configured
    if None not in (theirs_b, batch_size) and theirs_b != batch_size:
        raise ValueError(f"config data.batch_size: the checkpoint {path} was trained on batches of {theirs_b}, this "
                         f"config has {batch_size}; a resume keeps it (the data position counts batches: another size "
                         "would skip or repeat samples): resume with the run's own value, or start a new run from its "
                         "weights (another run_name, init_from=<checkpoint>)")
    check_weights_fit(path, ckpt, module, RESUME_ADVICE)
    # an unconditional network never read the labels: a run started with data.labels=true resumes without them
    free = DATA_FREE_KEYS + (("labels",) if module.denoiser.num_classes is None else ())
    check_same_data(path, ckpt.get("data_config"), module.data_config, RESUME_ADVICE.replace("config", "data config"),
                    free)
    return int(ckpt["global_step"])


def sampler_state(path: str) -> dict | None:
    """The sampler callback's state in the checkpoint at `path` (None where it holds none)."""
    states = read_checkpoint(path).get("callbacks")
    state = next((v for k, v in states.items() if str(k).startswith(SamplerCallback.__qualname__)), None) \
        if isinstance(states, dict) else None
    return state if isinstance(state, dict) else None


def check_same_evaluations(path: str, sampler_cb: SamplerCallback) -> None:
    """A resumed run's evaluations sample as its earlier ones did (the guidance, sample count, seeds, dtype, and each
    label's sampler and parameters): its val/ curves and the best checkpoint's choice would otherwise compare two
    protocols under one name (what checkpoints from before the callback kept it are not checked). A label added or
    dropped is no change. (And check_same_reference, once the data is there.)"""
    state = sampler_state(path)
    if state is None:
        return
    mixed = f"their val/ curves and the best checkpoint's choice would mix the two under one name; {RESUME_ADVICE}"
    now = sampler_cb.protocol()
    if "guidance" in state and state["guidance"] != now["guidance"]:
        shown_w = lambda w: "null (no guidance)" if w is None else f"{w:g}"  # noqa: E731
        raise ValueError(f"config callbacks.sampler.guidance: the run's evaluations so far sampled at guidance "
                         f"{shown_w(state['guidance'])}, this config at {shown_w(now['guidance'])}: {mixed}")
    for key in ("n_samples", "first_seed", "dtype"):
        if key in state and state[key] != now[key]:
            raise ValueError(f"config callbacks.sampler.{key}: the run's evaluations so far used {state[key]}, this "
                             f"config {now[key]}: {mixed}")
    before = state.get("samplers") if isinstance(state.get("samplers"), dict) else {}
    for label, ran in before.items():
        if label in now["samplers"] and isinstance(ran, (list, tuple)) and len(ran) == 2 \
                and list(ran) != now["samplers"][label]:
            (name, params), (new_name, new_params) = ran, now["samplers"][label]
            raise ValueError(f"config samplers.{label}: the run's evaluations so far ran it as {name} {params}, this "
                             f"config as {new_name} {new_params}: its val/{label}/ curves and the best checkpoint's "
                             f"choice would mix the two; give this one another label (+sampler@samplers.<label>=...), "
                             f"or {RESUME_ADVICE}")


def check_same_reference(path: str, sampler_cb: SamplerCallback, datamodule) -> None:
    """A resumed run's evaluations are scored against the reference set its earlier ones were (the datamodule's first
    n_samples training samples: files added to or removed from an image folder change them), checked once the data
    is there (prepare_data)."""
    recorded = (sampler_state(path) or {}).get("reference_sha256")
    if not isinstance(recorded, str):
        return
    from lightning_sde.metrics.image import tensor_sha256

    if tensor_sha256(datamodule.reference(sampler_cb.n_samples)) != recorded:
        where = f" under {datamodule.root}" if getattr(datamodule, "root", None) is not None else ""
        raise ValueError(f"config data: the run's evaluations so far were scored against another reference set (the "
                         f"first {sampler_cb.n_samples} training samples in the data's order; the files{where} "
                         f"changed?): their val/ curves and the best checkpoint's choice would mix the two under one "
                         f"name; {RESUME_ADVICE}")


def check_same_monitors(path: str, callbacks) -> None:
    """A resume keeps what chooses the run's best checkpoint: a best callback that would start afresh (another
    monitor, mode or schedule; a changed sampler set moves `auto`) in the folder of one the run had would write a
    second best-*.ckpt beside the first, each the best of another metric. Dropping one, or adding one, is no change.
    A checkpoint resumed from the best callback's folder is the run's own, wherever the run was when it was saved."""
    states = read_checkpoint(path).get("callbacks")
    if not isinstance(states, dict):
        return
    ours = {cb.state_key: cb for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor is not None}
    fresh = [cb for key, cb in ours.items() if key not in states]
    for key, state in states.items():
        if key in ours or not (isinstance(state, dict) and state.get("monitor") and state.get("best_model_path")):
            continue
        replacing = [cb for cb in fresh if cb.dirpath is not None and state.get("dirpath") is not None
                     and Path(cb.dirpath).resolve() in (Path(state["dirpath"]).resolve(), Path(path).resolve().parent)]
        if replacing:
            monitors = ", ".join(cb.monitor for cb in replacing)
            raise ValueError(f"config callbacks: the run's best checkpoint so far ({state['best_model_path']}) was "
                             f"chosen by {state['monitor']}, this config chooses by {monitors}"
                             f"{' with another mode or schedule' if monitors == state['monitor'] else ''}: a second "
                             f"best checkpoint would start beside it; {RESUME_ADVICE}")


def check_same_monitored_loss(path: str, module: L.LightningModule, callbacks) -> None:
    """A best checkpoint chosen by val/loss or train/loss keeps the loss it was chosen with: another weighting, its
    settings or t_min put the loss on another scale (EDM's is several times sigma2's), and the choice would compare
    the two objectives under one name. Unmonitored, the loss may change (RESUME_MEANING's note)."""
    monitors = sorted({cb.monitor for cb in callbacks if isinstance(cb, ModelCheckpoint)
                       and cb.monitor in ("val/loss", "train/loss")})
    if not monitors:
        return  # (not reading a checkpoint of hundreds of MB again for nothing)
    hparams = read_checkpoint(path).get("hyper_parameters")
    if not isinstance(hparams, dict) or not isinstance(hparams.get("sde"), dict):
        return
    recorded = hparams.get("loss") or {}
    settings = {k: v for k, v in recorded.items() if k != "importance_sampling"} if isinstance(recorded, dict) \
        else recorded  # (importance sampling: the same expectation; older versions recorded it with any weighting)
    try:
        theirs = DSMLoss(sde_from_config(hparams["sde"]), **settings)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its loss config {recorded!r} does not build here ({err}), so whether this "
                              f"config's loss is the one its best checkpoint ({', '.join(monitors)}) was chosen by "
                              f"cannot be told; choose by a sampler metric, or start a new run from its weights "
                              f"(another run_name, init_from=<checkpoint>)") from None
    identity = lambda loss: (loss.weighting, loss.settings, loss.t_min)  # noqa: E731  (importance: the same mean)
    if identity(theirs) == identity(module.loss_fn):
        return
    chosen = f"config loss: the run's best checkpoint is chosen by {', '.join(monitors)}"
    ways = ("choose by a sampler metric (callbacks.best.monitor=val/<sampler>/<metric>), or start a new run from its "
            "weights (another run_name, init_from=<checkpoint>)")
    if identity(theirs)[:2] == identity(module.loss_fn)[:2] and recorded.get("t_min") is None \
            and module.loss_fn.t_min == module.loss_fn.sde.eps:
        raise ValueError(f"{chosen}, and its loss's t_min is the SDE's eps (loss.t_min null): this config's sde.eps "
                         f"moves it from {theirs.t_min:g} to {module.loss_fn.t_min:g}, which puts the loss on another "
                         f"scale; keep it with loss.t_min={theirs.t_min:g}, or {ways}")
    shown_loss = lambda loss: f"{loss.weighting} {loss.settings | {'t_min': loss.t_min}}"  # noqa: E731
    raise ValueError(f"{chosen}, and the checkpoint {path} was trained with loss {shown_loss(theirs)}, this config "
                     f"has {shown_loss(module.loss_fn)}: the two losses are on different scales, and the choice would "
                     f"compare them under one name; resume with the run's loss, {ways}")


def check_weights_fit(path: str, ckpt: dict, module: L.LightningModule, advice: str) -> None:
    """Refuse a checkpoint whose weights do not fit the model this config builds (a changed model config fails now,
    not in fit after the logs were rewound), naming the model.net settings that differ, or that fit but mean
    something else here (check_same_meaning). `advice`: the way on, ending each message."""
    theirs, ours = ckpt["state_dict"], module.state_dict()
    for key, value in ours.items():
        if key not in theirs:
            problem = f"{key} is missing there"
        elif tuple(theirs[key].shape) != tuple(value.shape):
            problem = f"{key} has shape {tuple(theirs[key].shape)} there, {tuple(value.shape)} here"
        elif theirs[key].is_floating_point() != value.is_floating_point():
            problem = f"{key} is {theirs[key].dtype} there, {value.dtype} here"
        else:
            continue
        break
    else:
        extra = [key for key in theirs if key not in ours]
        if not extra:
            check_same_meaning(path, ckpt["hyper_parameters"], module, advice)
            return
        problem = f"it has {extra[0]}, which this model does not"
    settings = "; ".join(f"{key}: {shown(there)} there, {shown(here)} here"
                         for key, there, here in net_changes(ckpt["hyper_parameters"], dict(module.hparams)))
    if settings:  # the weight names the code's term; the setting names the config's, which the user changes back
        problem = f"{problem}; {settings}"
    raise ValueError(f"config model: the checkpoint {path} does not fit this model config ({problem}); {advice}")


def recorded_as(own: str, field: str, path: str) -> bool:
    """Whether the run's checkpoint `own` records `path` (absolute) as its `field` (resumed_from, init_from): the same
    path, or the same place relative to the run's checkpoints folder where the run was moved with it (a project
    moved or copied whole: the folder its checkpoint callbacks saved in is another)."""
    ckpt = read_checkpoint(own)
    recorded, here = ckpt.get(field), str(Path(own).resolve().parent)
    if not isinstance(recorded, str):
        return False
    states = ckpt.get("callbacks") if isinstance(ckpt.get("callbacks"), dict) else {}
    saved_in = {s["dirpath"] for s in states.values() if isinstance(s, dict) and isinstance(s.get("dirpath"), str)}
    return recorded == path or any(os.path.relpath(recorded, folder) == os.path.relpath(path, here)
                                   for folder in saved_in - {here})


def check_same_start(cfg: DictConfig, resume: str) -> None:
    """init_from beside a checkpoint of the run: the run resumes its own checkpoint, which must have started from
    that init_from (a requeue's same command); another would not be what the run's record says it started from."""
    started = read_checkpoint(resume).get("init_from")
    if not recorded_as(resume, "init_from", str(Path(cfg.init_from).resolve())):
        began = f"started from {started}" if started else "started afresh (no init_from)"
        raise ValueError(f"config init_from: the run {cfg.run_name} {began} and has checkpoints ({resume}): it "
                         f"resumes from them, not from {cfg.init_from}; give another run_name to start from that, or "
                         "drop init_from (or set the run's own) to resume the run")
    if launched_first():
        log.info("resuming from %s; init_from (%s) started this run", resume, cfg.init_from)


def start_from_weights(cfg: DictConfig, module: L.LightningModule) -> int:
    """init_from: load a checkpoint's weights (those it samples with: the EMA average when its run had EMA) into the
    fresh module, once they are known to be finite, to fit and to mean the same here (check_weights_fit); the
    optimizer, learning-rate warm-up, step count and data statistics start anew. Returns the checkpoint's step."""
    path = str(cfg.init_from)
    try:
        ckpt = read_checkpoint(path)
    except (CheckpointError, FileNotFoundError) as err:
        raise ValueError(f"config init_from: {err}") from None
    bad = nonfinite_keys(ckpt["state_dict"])
    if bad:
        raise ValueError(f"config init_from: {path}: its weights hold NaN or infinite values ({bad[0]}"
                         f"{' ...' if len(bad) > 1 else ''})")
    check_weights_fit(path, ckpt, module, INIT_ADVICE)
    module.load_state_dict(ckpt["state_dict"])
    step = ckpt.get("global_step")
    return step if is_int(step) else -1


# What a checkpoint's weights mean beyond their shapes: the forward process whose score they learned (sde), the
# network that computes with them (model.net) and how the network's input and output become the denoiser
# (model.parameterization, model.sigma_data's input scaling). Weights that fit but meant something else would train
# on silently as another model, so a resume refuses a change.
# Allowed to change: sde.eps, the smallest time trained on and sampled to (x_t's law at each t, and so what the
# network learns there, does not depend on it); the loss (every positive weighting of denoising score matching has
# the same minimiser, the true score at every t: like optim.lr it changes how training goes on, not what the weights
# mean; unless val/loss or train/loss chooses the best checkpoint: check_same_monitored_loss); optim, model.p_uncond
# and the speed options (compile, channels_last, autocast).
RESUME_MEANING = ("parameterization", "sigma_data")  # model.<key>, besides the whole sde and model.net nodes
SDE_FREE_KEYS = ("eps",)
# The network: its class and every constructor setting. One that changes a parameter's shape (width, channels,
# channel_mult, ...) already fails at load; the others change what the same weights compute: num_groups (which
# channels GroupNorm normalises together), image_size with attn_resolutions (the levels that attend), fourier_scale
# (the time embedding's frequencies; they are a buffer, so the checkpoint's would come back and the run's config
# would misstate its own network). Allowed to change: dropout, which acts in training only: at evaluation, where
# the samplers use the network, the same weights compute the same function, and like optim.weight_decay it is a
# regulariser, changing how training goes on, not what the weights mean. The networks have no memory- or speed-only
# setting of their own (activation checkpointing, ...): those are model.compile, channels_last and autocast, free.
NET_FREE_KEYS = ("dropout",)


def net_changes(theirs: dict, ours: dict) -> list[tuple[str, object, object]]:
    """The model.net settings in which a module's hyperparameters `ours` differ from a checkpoint's `theirs`."""
    return node_changes("model.net", theirs.get("net"), ours.get("net"), NET_FREE_KEYS)


def meaning_changes(theirs: dict, ours: dict, defaults: dict) -> list[tuple[str, object, object]]:
    """(config key, checkpoint's value, this config's value) for each setting in which `ours` (a module's
    hyperparameters) gives the weights of `theirs` (a checkpoint's) another meaning; `defaults`: the module's
    constructor defaults, for a key an older checkpoint does not hold."""
    changes = node_changes("sde", theirs["sde"], ours["sde"], SDE_FREE_KEYS, SDES)
    changes += net_changes(theirs, ours)
    for key in RESUME_MEANING:
        there, here = theirs.get(key, defaults.get(key)), ours.get(key, defaults.get(key))
        if there != here:
            changes.append((f"model.{key}", there, here))
    return changes


def check_same_meaning(path: str, hparams: dict, module: L.LightningModule, advice: str = RESUME_ADVICE) -> None:
    """Refuse weights (a resume's, init_from's) whose sde, network or network parameterization is not the
    checkpoint's (see RESUME_MEANING)."""
    signature = inspect.signature(type(module)).parameters
    defaults = {k: p.default for k, p in signature.items() if p.default is not inspect.Parameter.empty}
    changes = meaning_changes(hparams, dict(module.hparams), defaults)
    if not changes:
        return
    groups = ", ".join(dict.fromkeys(key.split(".")[0] for key, _, _ in changes))
    diffs = "; ".join(f"{key}: {shown(there)} there, {shown(here)} here" for key, there, here in changes)
    raise ValueError(f"config {groups}: the checkpoint {path} was trained with another forward process, network or "
                     f"network parameterization ({diffs}); its weights would train on as another model: {advice}")


MONITORABLE = ("val/loss", "train/loss", "step", "epoch")  # ScoreModule's logs, and ModelCheckpoint's own counters


def best_monitor(key: str, monitor, sampler_cb: SamplerCallback | None, kind: str) -> str:
    """A checkpoint callback's monitor, checked against what the evaluations log: val/<sampler>/<metric> must name
    a sampler of the set and a value it logs; `auto` is the set's first deterministic sampler (its first if all are
    stochastic) on fid where it is scored, else the first lower-is-better metric (sliced_w2 for points), else the
    first (whose mode check_monitor_mode then asks for)."""
    if monitor in MONITORABLE:
        return monitor
    if sampler_cb is None:
        if monitor == "auto" or str(monitor).count("/") == 2 and str(monitor).startswith("val/"):
            raise ValueError(f"config {key}: {monitor!r} needs the sampler callback, and callbacks.sampler is null "
                             f"(set {key.rsplit('.', 1)[0]}=null too, or {key}=val/loss)")
        raise ValueError(f"config {key}: {monitor!r} is not logged; monitor one of {list(MONITORABLE)}")
    metrics = resolve_metrics(sampler_cb.metrics, kind, has_mixture=False, key="callbacks.sampler.metrics")
    labels = list(sampler_cb.samplers)
    if sampler_cb.every_n_evals > 1 and (monitor == "auto" or str(monitor).count("/") == 2
                                         and str(monitor).split("/")[1] in labels):
        raise ValueError(f"config {key}: {monitor!r} is logged once every {sampler_cb.every_n_evals} validations "
                         "(callbacks.sampler.every_n_evals), and a checkpoint callback needs it at each; set "
                         f"callbacks.sampler.every_n_evals=1, or {key}=val/loss, or {key.rsplit('.', 1)[0]}=null")
    if monitor == "auto":
        label = next((k for k, s in sampler_cb.samplers.items() if not s.stochastic), labels[0])
        metric = "fid" if "fid" in metrics else next((m for m in metrics if m not in HIGHER_IS_BETTER), metrics[0])
        return f"val/{label}/{metric}"
    parts = str(monitor).split("/")
    if len(parts) != 3 or parts[0] != "val":
        raise ValueError(f"config {key}: {monitor!r} is not logged; monitor one of {list(MONITORABLE)}, "
                         "val/<sampler>/<metric> or auto")
    logged = [*metrics, *SAMPLE_STATS]
    if parts[1] not in labels:
        raise ValueError(f"config {key}: {monitor!r} names sampler {parts[1]!r}, which is not in the sampler set; "
                         f"the set has {labels} (or use {key}=auto)")
    if parts[2] not in logged:
        raise ValueError(f"config {key}: {monitor!r} names metric {parts[2]!r}, which the evaluations do not log "
                         f"for {kind} data; they log {logged}")
    return monitor


def check_monitor_mode(key: str, monitor: str, mode: str) -> None:
    """A metric's monitor keeps the checkpoint its direction ranks best: mode max for IS, min for FID and the rest
    (the other mode kept the worst evaluation as best-*.ckpt, silently)."""
    metric = monitor.split("/")[2] if monitor.count("/") == 2 and monitor.startswith("val/") else None
    if metric in ALL_METRICS:
        expected = "max" if metric in HIGHER_IS_BETTER else "min"
        if mode != expected:
            raise ValueError(f"config {key}: {mode!r} keeps the worst {monitor} ({metric}: {direction(metric)}); "
                             f"set {key}={expected}")


def check_data_fits(datamodule, module, sampler_cb: SamplerCallback | None, world_size: int,
                    accumulation: int = 1) -> None:
    """The data, fetched if missing and allowed (prepare_data), against what fit would find wrong with it: labels
    for a class-conditional network, an optimizer step's batches per process, what the sampler callback's
    evaluations need."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    module.check_labels(datamodule)
    checked("data.batch_size", datamodule.check_batch_fits, world_size, accumulation)
    if sampler_cb is not None:
        sampler_cb.check_data(datamodule)


def build(cfg: DictConfig, read_data: bool = True) -> Run:
    """Datamodule, module, callbacks, trainer, the data (read, fetched if missing and allowed) and loggers, each
    validated in that order (the loggers, which create files and W&B runs, come after everything that can fail on a
    bad value); nothing is trained yet. Before the loggers, the first process takes the run directory's lock (a
    second run of the same name is refused while this one lives). read_data=False leaves the data and the lock alone
    (a config inspected anywhere)."""
    unknown = set(cfg) - TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"config: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    name_the_run(cfg)
    job = multirun_job()
    check_multirun_world(cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1), "trainer")
    check_run_values(cfg)
    resume = resume_point(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_node(cfg.data, "data")
    module = build_node(cfg.model, "model", sde=plain(cfg.sde), shape=list(datamodule.shape), loss=plain(cfg.loss),
                        optim=plain(cfg.optim), _recursive_=False, _convert_="all")
    with torch.no_grad():  # a network that does not fit the data fails here, not after the first epoch
        probe = torch.zeros(2, *datamodule.shape)
        module.eval()  # as evaluations call it (model.autocast applies there)
        try:
            out = checked("model.net", module.denoiser, probe, torch.full((2,), 0.5))
        except ValueError as err:  # the data's settings may be the ones to change: say what they give
            raise ValueError(f"{err} (config data gives samples of shape {tuple(datamodule.shape)})") from None
        finally:
            module.train()
        if out.eps.shape != probe.shape:
            raise ValueError(f"config model.net: output shape {tuple(out.eps.shape[1:])} != "
                             f"data shape {tuple(datamodule.shape)}")
        if not torch.isfinite(out.eps).all():
            raise ValueError("config model.net: the untrained network's output is not finite")
    module.data_config = plain(cfg.data)
    if module.loss_fn.weighting == "edm" and module.denoiser.parameterization in ("eps", "score"):
        log.warning("loss=edm with model.parameterization=%s: EDM's weight, 1 + (sigma/alpha)^2 / sigma_data^2 on the "
                    "eps error, asks this network for x0's accuracy at high noise; on toy2d its DDIM and dopri5 "
                    "samples ended 2.7-6.8x further from the data than sigma2's (benchmarks/README.md). EDM pairs its "
                    "weighting with a v-like output: model.parameterization=v", module.denoiser.parameterization)
    accumulation = cfg.trainer.get("accumulate_grad_batches", 1)  # checked by check_run_values
    resumed_at = (check_resume_fits(resume, module, accumulation, getattr(datamodule, "batch_size", None))
                  if resume is not None else None)
    if resume is not None and resume == str(cfg.ckpt_path) \
            and Path(resume).resolve().parent != (Path(cfg.run_dir) / "checkpoints").resolve():
        module.resumed_from = str(Path(resume).resolve())  # another run's: a rerun resumes its own (resume_point)
    elif resume is not None and cfg.ckpt_path not in (None, "last") and resume != str(cfg.ckpt_path):
        module.resumed_from = str(Path(cfg.ckpt_path).resolve())  # the run's own, started there: recorded where it
        # is now (a project moved: later checkpoints record the new place)
    init_from = None
    if cfg.get("init_from") is not None and resume is not None:  # a requeued or rerun fine-tune resumes its own
        check_same_start(cfg, resume)
        module.init_from = str(Path(cfg.init_from).resolve())  # its start, where it is now (see resumed_from)
    elif cfg.get("init_from") is not None:
        init_from = (str(cfg.init_from), start_from_weights(cfg, module))
        module.init_from = str(Path(cfg.init_from).resolve())
    if resume is not None and callable(getattr(datamodule, "check_resume", None)):  # the files it holds, unchanged
        datamodule.check_resume(read_checkpoint(resume).get(type(datamodule).__qualname__), resume)
    max_steps = cfg.trainer.get("max_steps", -1)
    if resumed_at is not None and max_steps != -1 and resumed_at > max_steps:
        raise ValueError(f"config trainer.max_steps: {max_steps} is below the step of the checkpoint it resumes from "
                         f"({resumed_at}: {resume}); raise it to train on, or start a new run under another run_name")

    for group, nodes in (("callbacks", cfg.callbacks), ("logger", cfg.logger or {})):  # +callbacks.<typo>.x=...
        named = sorted(k for k, node in nodes.items() if isinstance(node, DictConfig) and "_target_" in node)
        for k, node in nodes.items():
            if node is not None and k not in named:
                raise ValueError(f"config {group}.{k}: names no class (_target_); a misspelling? {group}: {named}")
    keyed = {k: build_node(c, f"callbacks.{k}") for k, c in cfg.callbacks.items() if c is not None}
    if not cfg.logger:  # logger=none: Lightning's LearningRateMonitor refuses to start without a logger
        keyed = {k: cb for k, cb in keyed.items() if not isinstance(cb, LearningRateMonitor)}
    # last.ckpt after the other checkpoints' callbacks (Lightning keeps their order): written again after an
    # evaluation at its step, it then holds the best checkpoint's choice of that evaluation (LastCheckpoint)
    callbacks = sorted(keyed.values(), key=lambda cb: isinstance(cb, LastCheckpoint))
    sampler_cb = next((cb for cb in callbacks if isinstance(cb, SamplerCallback)), None)
    if sampler_cb is not None and sampler_cb.guidance is not None and module.denoiser.num_classes is None:
        raise ValueError("config callbacks.sampler.guidance: the model is not class-conditional "
                         "(model.net.num_classes); set it to null")
    if (sampler_cb is not None and sampler_cb.guidance != 0 and module.denoiser.num_classes is not None
            and not module.denoiser.unconditional_learned):  # null: the unconditional prediction's samples
        raise ValueError(f"config callbacks.sampler.guidance: model.p_uncond=0 trains no unconditional prediction, "
                         f"which {'guidance' if sampler_cb.guidance else 'unconditional samples (null)'} use; keep "
                         f"model.p_uncond > 0, or set it to 0 (each seed's class; a resumed run keeps its evaluations' "
                         f"guidance: a new run from its weights, init_from=<checkpoint>, may change it)")
    if sampler_cb is not None and resume is not None:
        check_same_evaluations(resume, sampler_cb)
    for k, cb in keyed.items():  # a monitor the evaluations never log would fail at the first one, after training
        if isinstance(cb, ModelCheckpoint) and cb.monitor is not None:
            cb.monitor = cfg.callbacks[k].monitor = best_monitor(f"callbacks.{k}.monitor", cb.monitor, sampler_cb,
                                                                 getattr(datamodule, "kind", "points"))
            check_monitor_mode(f"callbacks.{k}.mode", cb.monitor, cb.mode)
    if resume is not None:
        check_same_monitors(resume, callbacks)
        check_same_monitored_loss(resume, module, callbacks)
    for cb in callbacks:  # a grid the SDE cannot hold fails now, not at the first evaluation
        for label, sampler in (cb.samplers.items() if isinstance(cb, SamplerCallback) else ()):
            checked(f"samplers.{label}", check_grid, sampler, module.sde)
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":  # submitit owns requeue (USR2): one owner
        for cb in callbacks:
            if isinstance(cb, Preemption) and cb.requeue_signal is not None:
                log.info("under submitit: requeue is submitit's; Preemption keeps only its checkpoint on SIGTERM")
                cb.requeue_signal = None
    # after a non-finite value: the checkpoints that gave it set aside, the one the same command resumes from named
    again = f"run_name={cfg.run_name}" + (" ckpt_path=last" if cfg.ckpt_path != "last" else "") + (
        " (one run: no -m)" if job is not None else "")
    callbacks += [SetAside(Path(cfg.run_dir) / "checkpoints", again), LogsWithCheckpoints()]
    for cb in callbacks:
        if isinstance(cb, Preemption):
            cb.resume_with = again
    plugins = [AtomicCheckpointIO()]
    environment = cluster_environment(cfg.trainer.get("devices", "auto"), cfg.trainer.get("num_nodes", 1), "trainer")
    if environment is not None:  # requeue has one owner: the Preemption callback (or submitit), not Lightning
        plugins.append(environment)
    interval = cfg.trainer.get("val_check_interval")
    steps_to_batches = {"val_check_interval": interval * accumulation} if is_int(interval) and accumulation > 1 else {}
    bar = cfg.trainer.get("enable_progress_bar", True)
    require_accelerator(cfg.trainer.get("accelerator"))  # not inline: submitit pickles this module, not torch.backends
    trainer = build_node(cfg.trainer, "trainer", callbacks=callbacks, logger=False, plugins=plugins,
                         enable_progress_bar=sys.stdout.isatty() if bar == "auto" else bar,  # where Lightning draws it
                         **steps_to_batches)  # Lightning counts validation intervals in batches; the config, in steps
    if str(trainer.precision).startswith("64"):  # Lightning restores a checkpoint before it converts the model:
        module.double()  # loaded into fp32 parameters, a resumed 64-true run's weights were rounded
    if sampler_cb is not None:
        warn_if_nothing_is_evaluated(cfg.trainer, trainer.limit_val_batches, resumed_at or 0)
        if resumed_at is not None and resumed_at == max_steps and is_int(interval) and trainer.limit_val_batches \
                and cfg.trainer.get("check_val_every_n_epoch") is None \
                and sampler_cb.evaluation_missing(resumed_at, interval, Path(cfg.run_dir) / "samples"):
            log.warning(f"the evaluation at step {resumed_at} was stopped before it finished, and this fit has no step "
                        f"left to train (trainer.max_steps={max_steps}), so it is not redone: raise trainer.max_steps "
                        "to train on (the resumed fit redoes it first), or score the checkpoint with lsde-bench")
    if resume is not None:
        check_resume_world(resume, trainer.world_size)
    if read_data and trainer.local_rank == 0:  # as Lightning prepares data: a missing dataset fails now
        check_data_fits(datamodule, module, sampler_cb, trainer.world_size, accumulation)
        if sampler_cb is not None and resume is not None:
            check_same_reference(resume, sampler_cb, datamodule)
    lock = FolderLock(cfg.run_dir, "lsde-train run") if read_data and launched_first() else None
    loggers = []  # last: they create files and W&B runs
    try:
        for key, logger_cfg in (cfg.logger or {}).items():
            logger_cfg = OmegaConf.to_container(logger_cfg, resolve=True)
            if logger_cfg.get("offline") == "auto":
                logger_cfg["offline"] = not wandb_configured()
            if logger_cfg.get("_target_", "").endswith("WandbLogger"):
                if wandb_disabled():
                    log.info("WANDB_MODE=disabled: no W&B run (logger.%s left out)", key)
                    continue
                for k, v in wandb_identity(cfg, job, callbacks).items():
                    logger_cfg.setdefault(k, v)
            loggers.append(build_node(logger_cfg, f"logger.{key}"))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    trainer.loggers = loggers
    return Run(datamodule, module, trainer, resume, resumed_at, init_from, lock)


def warn_if_nothing_is_evaluated(config: DictConfig, limit_val_batches, start: int) -> None:
    """Say so at start-up when the sampler callback's evaluations cannot run in this fit (no validation batches, or
    no multiple of a step-counted val_check_interval in steps start+1..max_steps): no sampler metric, no best
    checkpoint. `config`: the trainer's."""
    interval, max_steps = config.get("val_check_interval"), config.get("max_steps", -1)
    by_steps = is_int(interval) and config.get("check_val_every_n_epoch", 1) is None
    if max_steps != -1 and start >= max_steps:  # a finished run started again: nothing to train or evaluate
        return
    if limit_val_batches == 0:
        why = "trainer.limit_val_batches=0"
    elif by_steps and max_steps != -1 and max_steps // interval == start // interval:
        why = f"trainer.val_check_interval={interval} steps, and this fit runs steps {start + 1}..{max_steps}"
    else:
        return
    log.warning("no evaluation runs in this fit (%s): no sampler metrics and no best checkpoint", why)


@contextlib.contextmanager
def run_name_for_workers(run_name: str):
    """DDP workers re-run this command: LSDE_RUN_NAME, set while fit runs, gives them this run's directory. It is
    restored afterwards, so the next job of an in-process multirun computes its own."""
    previous = os.environ.get("LSDE_RUN_NAME")
    os.environ["LSDE_RUN_NAME"] = run_name
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LSDE_RUN_NAME", None)
        else:
            os.environ["LSDE_RUN_NAME"] = previous


def train(cfg: DictConfig):
    """Fit; returns the trainer. A signal (preemption, time limit) ends it early after its checkpoint (Preemption)."""
    run = build(cfg)
    trainer = run.trainer
    resumed_at = run.resumed_at
    with run.lock or contextlib.nullcontext():
        batch = getattr(run.datamodule, "batch_size", None)
        if batch is not None and launched_first():  # data.batch_size is per process: a paper's is the step's
            k = trainer.accumulate_grad_batches
            log.info("batch: %d per process x %d process(es) x %d accumulated = %d samples a step", batch,
                     trainer.world_size, k, batch * trainer.world_size * k)
        if resumed_at is not None and trainer.is_global_zero:  # one continuous history, whatever the last run logged
            trim_history(cfg.run_dir, resumed_at)
        if run.init_from is not None and launched_first():
            path, step = run.init_from
            log.info("starting from the weights of %s (step %s of its run); a new optimizer, warm-up and step count",
                     path, step if step >= 0 else "?")
        # a W&B run that cannot start is left out now: nothing later (callbacks, the report) reaches for it again
        trainer.loggers = [lg for lg in trainer.loggers if not isinstance(lg, wandb_logger.WandbLogger) or lg.start()]
        if not trainer.loggers:  # logger=wandb alone, left out: Lightning's LearningRateMonitor refuses to start
            trainer.callbacks[:] = [cb for cb in trainer.callbacks if not isinstance(cb, LearningRateMonitor)]
        hparams = {**OmegaConf.to_container(cfg, resolve=True), "git_commit": source_revision()}  # what code ran
        for logger in trainer.loggers:
            logger.log_hyperparams(hparams)
            if resumed_at is not None and trainer.is_global_zero and isinstance(logger, WandbLogger):
                backfill_wandb(logger, cfg.run_dir, resumed_at)
        with run_name_for_workers(cfg.run_name):
            try:
                trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=run.resume, weights_only=True)
            except NonFiniteError as err:
                if err.advice is None:
                    raise
                raise NonFiniteError(f"{err}. {err.advice}", err.step) from None
            except SystemExit as err:
                if left_on_ctrl_c(err):
                    raise KeyboardInterrupt from None  # said and exited as every app does (fails_cleanly)
                raise
    preemption = _preemption(trainer)
    if preemption is not None and (preemption.requeue_requested or preemption.interrupted
                                   or preemption.stopped_by_ctrl_c):
        why = ("by SIGTERM" if preemption.interrupted else "by Ctrl-C" if preemption.stopped_by_ctrl_c
               else "for the time limit")
        log.warning("stopped at global step %d %s; checkpoint %s", trainer.global_step, why,
                    preemption.last_path(trainer))
    if trainer.global_rank == 0:
        report(cfg, trainer)
    if preemption is not None and (preemption.ctrl_c or preemption.stopped_by_ctrl_c):  # (this process's, another's;
        # one after the last step too: the run is done, and exits 130 as Ctrl-C does)
        if trainer.global_rank == 0 and preemption.stopped_by_ctrl_c:
            log.warning("lsde-train ... %s resumes the run from global step %d", preemption.resume_with,
                        trainer.global_step)
        raise KeyboardInterrupt  # said and exited as every app does (fails_cleanly)
    return trainer


def left_on_ctrl_c(err: SystemExit) -> bool:
    """Whether fit left with Lightning's exit(1) after a Ctrl-C (its checkpoint written by Preemption), not a SIGTERM
    (SIGTERMException is a SystemExit too) or another exit."""
    return isinstance(err.__context__, KeyboardInterrupt) and not isinstance(err, SIGTERMException)


def _preemption(trainer) -> Preemption | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, Preemption)), None) if trainer else None


def report(cfg: DictConfig, trainer) -> None:
    """Where the run is: its directory, how to resume it, and its W&B run (and the command that syncs it)."""
    run_dir = Path(cfg.run_dir).resolve()
    lines = [f"run directory: {run_dir}",
             f"  checkpoints: {run_dir / 'checkpoints'}  (resume: lsde-train ... run_name={cfg.run_name})",
             *([f"  samples and sampler metrics: {run_dir / 'samples'}"] if (run_dir / "samples").is_dir() else [])]
    if trainer is None and (run_dir / "wandb").is_dir():
        lines.append(f"  W&B: sync it with: {sync_command(run_dir / 'wandb')}")
    for logger in trainer.loggers if trainer is not None else ():
        if isinstance(logger, WandbLogger):
            wandb_dir = Path(logger.experiment.dir).resolve().parent
            if logger.experiment.offline:
                every = sync_command(wandb_dir.parent, logger.experiment.id)  # earlier starts' too
                lines.append(f"  W&B (offline): {wandb_dir}\n  sync it to W&B with: {every}")
            else:
                lines.append(f"  W&B: {logger.experiment.url}")
    log.info("\n".join(lines))


def tell_offline_sync(cfg: DictConfig, what: str = "failed") -> None:
    """After a failure (or a Ctrl-C: `what` "stopped") of a start that began a W&B run: the command that syncs the
    run's offline W&B folders (W&B's own closing lines are off); the failure itself is in their summary. A start
    refused before its W&B run began (beside a live run of its name) has no record to sync."""
    wandb_dir = Path(cfg.run_dir).resolve() / "wandb"
    began = getattr(sys.modules.get("wandb"), "run", None) is not None
    if launched_first() and began and any(wandb_dir.glob(f"offline-run-*-{cfg.run_name}")):
        log.info("W&B (offline): sync the %s run's record with: %s", what, sync_command(wandb_dir, cfg.run_name))


def forget_failed_start(cfg: DictConfig) -> None:
    """After a failure before training: a run directory that Hydra has just made for this start (nothing in it but
    Hydra's files, and of them only this start's record) is removed, so that nothing mistakes it for a run; an
    existing run's directory keeps the error in its log, and so does one that another start of the same name made
    and is building its run in now (it takes the folder's lock only once built)."""
    run_dir, own = Path(cfg.run_dir), HydraConfig.get().output_subdir if HydraConfig.initialized() else None
    records = run_dir / ".hydra"
    others = [p for p in records.iterdir() if own is None or p.name != Path(own).name] if records.is_dir() else []
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log", LOCK_FILE} \
            and not others and not folder_in_use(run_dir):  # not while a run of the same name starts there
        shutil.rmtree(run_dir, ignore_errors=True)


def goes_on_after_ctrl_c(cfg: DictConfig) -> str:
    """What the same run_name does after a Ctrl-C: go on from a checkpoint, or start again before the first one."""
    if any((Path(cfg.run_dir) / "checkpoints").glob("*.ckpt")):
        return f"lsde-train ... run_name={cfg.run_name} goes on from its last checkpoint"
    return f"no checkpoint was written yet: lsde-train ... run_name={cfg.run_name} starts the run again"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@fails_cleanly("lsde-train", cleanup=forget_failed_start, goes_on=goes_on_after_ctrl_c)
def run_app(cfg: DictConfig) -> None:
    trainer, code, error = None, 0, None
    try:
        trainer = train(cfg)
        if _preemption(trainer) is not None and _preemption(trainer).interrupted:
            code = EXIT_SIGTERM
    except SIGTERMException:  # a signal before training started
        log.warning("stopped by SIGTERM; the checkpoint at this step is in %s/checkpoints", cfg.run_dir)
        if launched_first():
            report(cfg, None)
        code = EXIT_SIGTERM
    except KeyboardInterrupt:  # Ctrl-C: a stop, as SIGTERM's (a checkpoint at the step's end), not a failure
        code = EXIT_CTRL_C
        tell_offline_sync(cfg, "stopped")
        raise
    except BaseException as err:  # a diverged loss, a bad file, a bug: W&B shows the run failed, and why
        code = exit_status(err)
        error = f"{type(err).__name__}: {from_worker(str(err))}" if code else None
        if code:
            tell_offline_sync(cfg)
        raise
    finally:
        # the time limit is a stop whether or not SLURM requeues the job (the requeue, below, is the last act)
        stopped = _preemption(trainer) if trainer is not None else None
        timed_out = not code and stopped is not None and stopped.requeue_requested
        if not finish_wandb(EXIT_TIME_LIMIT if timed_out else code, error) and code and error is None:
            # its service died with the job: W&B's exit handler would fail again (a failure's own error is still to
            # be reported: it leaves by raising)
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    preemption = _preemption(trainer)
    if preemption is not None and preemption.requeue_requested and trainer.is_global_zero:
        if not preemption.requeue_if_requested(trainer):  # the last act: SLURM ends this job and starts it again
            code = EXIT_TIME_LIMIT
    if code:
        sys.exit(code)


def exit_status(err: BaseException) -> int:
    """The status a process leaving with `err` ends with: SystemExit's own (0 for None), 1 for anything else."""
    if isinstance(err, SystemExit):
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    return 1


def check_main(overrides: list[str]) -> None:
    """`lsde-train check [--planned] OVERRIDES`: what a job checks of its command line before it reads data or looks
    for a GPU (the overrides compose, the run's values, the checkpoints it names are there and lsde-train's; with
    --planned, those not there yet are a job's to write), on a login node: slurm/submit.sh runs it before sbatch, so
    that a typo fails there, not after a wait in the queue. Exit 1 with the job's one-line error."""
    from hydra import compose, initialize_config_module

    from lightning_sde.cli.apps import added_key_error, one_line, override_error, subcommand_flags
    from lightning_sde.configuration import CONFIG_PACKAGE

    flags, overrides = subcommand_flags("lsde-train check", overrides, ("--planned",))
    planned = "--planned" in flags  # the checkpoints named may be written by a job still to run
    error = override_error("train", overrides) or added_key_error("train", overrides)
    if error:
        fail("lsde-train check", error)
    try:
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        check_run_values(cfg)
        if not (planned and cfg.ckpt_path not in (None, "last") and not Path(cfg.ckpt_path).exists()):
            resume_point(cfg)  # as the job: a run that went on from ckpt_path resumes its own, whatever is there now
        init_from = cfg.get("init_from")
        if init_from is not None and own_checkpoint(cfg) is None and not (planned and not Path(init_from).exists()):
            if not Path(init_from).is_file():  # (a run of its own resumes that instead, as the job does)
                raise ValueError(f"config init_from: no checkpoint at {init_from!r}")
            try:
                read_checkpoint(init_from)
            except ValueError as err:
                raise ValueError(f"config init_from: {err}") from None
    except (ValueError, HydraException, OmegaConfBaseException) as err:  # a bad override or value
        fail("lsde-train check", one_line(err))
    print("the training config is valid (data and devices are checked when the job starts)")


def main() -> None:
    if print_help_if_asked("train"):
        return
    if len(sys.argv) > 1 and sys.argv[1] == "check":
        check_main(sys.argv[2:])
    else:
        run_app()


if __name__ == "__main__":
    from lightning_sde.cli import apps  # not `run`: a name the app may have

    apps.run("train", main)
