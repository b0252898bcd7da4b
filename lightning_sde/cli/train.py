"""lsde-train: fit a ScoreModule from the Hydra config (configs/train.yaml).

    lsde-train experiment=toy2d
    lsde-train experiment=digits trainer=ddp_cpu
    lsde-train experiment=cifar10_vp_ddpmpp trainer=ddp trainer.num_nodes=2   # under srun, see slurm/

Everything is built and checked before training starts, so a bad key or value fails in seconds, naming it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from lightning_sde.callbacks import Preemption
from lightning_sde.configuration import CONFIG_PATH, config_error, plain
from lightning_sde.configuration import build as build_node
from lightning_sde.tracking import wandb_configured

log = logging.getLogger(__name__)
TOP_LEVEL_KEYS = {"data", "model", "sde", "loss", "samplers", "trainer", "logger", "callbacks", "run_name", "run_dir",
                  "output_dir", "paths", "seed", "ckpt_path", "optim"}


def _build(key: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # report which config node failed, with the library's own message
        raise config_error(key, err) from None


def build(cfg: DictConfig):
    """Datamodule, module, callbacks, loggers and trainer, each validated; nothing is trained or loaded yet."""
    unknown = set(cfg) - TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"config: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    if cfg.ckpt_path not in (None, "last") and not Path(cfg.ckpt_path).is_file():
        raise ValueError(f"config ckpt_path: no checkpoint at {cfg.ckpt_path!r} (use a path, 'last' or null)")
    cfg.run_name = str(cfg.run_name)  # a job id on the command line (run_name=123) parses as an int
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = build_node(cfg.data, "data")
    module = build_node(cfg.model, "model", sde=plain(cfg.sde), shape=list(datamodule.shape), loss=plain(cfg.loss),
                        optim=plain(cfg.optim), _recursive_=False, _convert_="all")
    with torch.no_grad():  # a network that does not fit the data fails here, not after the first epoch
        probe = torch.zeros(2, *datamodule.shape)
        out = _build("model.net", module.denoiser, probe, torch.full((2,), 0.5))
        if out.eps.shape != probe.shape:
            raise ValueError(f"config model.net: output shape {tuple(out.eps.shape[1:])} != "
                             f"data shape {tuple(datamodule.shape)}")

    callbacks = [build_node(c, f"callbacks.{k}") for k, c in cfg.callbacks.items() if c is not None]
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":  # submitit owns requeue (USR2): one owner
        for cb in callbacks:
            if isinstance(cb, Preemption) and cb.requeue_signal is not None:
                log.info("under submitit: requeue is submitit's; Preemption keeps only its checkpoint on SIGTERM")
                cb.requeue_signal = None
    loggers = []
    for key, logger_cfg in (cfg.logger or {}).items():
        logger_cfg = OmegaConf.to_container(logger_cfg, resolve=True)
        if logger_cfg.get("offline") == "auto":
            logger_cfg["offline"] = not wandb_configured()
        loggers.append(build_node(logger_cfg, f"logger.{key}"))
    plugins = []
    if SLURMEnvironment.detect():  # requeue has one owner: the Preemption callback (or submitit), not Lightning
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = build_node(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False,
                         **({"plugins": plugins} if plugins else {}))
    return datamodule, module, trainer


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
    """Fit; returns the trainer."""
    datamodule, module, trainer = build(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    with run_name_for_workers(cfg.run_name):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    preemption = _preemption(trainer)
    if preemption is not None and preemption.requeue_requested:
        print(f"stopped at global step {trainer.global_step} for the time limit; "
              f"checkpoint {preemption.last_path(trainer)}")
    elif trainer.global_rank == 0:
        report(cfg, trainer)
    return trainer


def _preemption(trainer) -> Preemption | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, Preemption)), None)


def report(cfg: DictConfig, trainer) -> None:
    run_dir = Path(cfg.run_dir).resolve()
    print(f"\nrun directory: {run_dir}")
    print(f"  checkpoints: {run_dir / 'checkpoints'}  (resume: lsde-train ... run_name={cfg.run_name})")
    print(f"  samples and sampler metrics: {run_dir / 'samples'}")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            wandb_dir = Path(logger.experiment.dir).parent
            if logger.experiment.offline:
                print(f"  W&B (offline): {wandb_dir}\n  sync it to W&B with: wandb sync {wandb_dir}")
            else:
                print(f"  W&B: {logger.experiment.url}")


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> None:
    trainer = None
    try:
        trainer = train(cfg)
    finally:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    preemption = _preemption(trainer)
    if preemption is not None:
        preemption.requeue_if_requested(trainer)  # the last act: SLURM ends this job and starts it again


if __name__ == "__main__":
    main()
