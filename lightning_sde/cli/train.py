"""lsde-train: fit a ScoreModule from the Hydra config (configs/train.yaml).

    lsde-train experiment=toy2d
    lsde-train experiment=digits trainer=ddp_cpu
    lsde-train experiment=cifar10_vp_ddpmpp trainer=ddp trainer.num_nodes=2   # under srun, see slurm/

Everything is built and checked before training starts, so a bad key or value fails in seconds, naming it.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from lightning_sde import CONFIG_DIR
from lightning_sde.callbacks import Preemption
from lightning_sde.module import ScoreModule

log = logging.getLogger(__name__)
TOP_LEVEL_KEYS = {"data", "model", "sde", "loss", "trainer", "logger", "callbacks", "run_name", "run_dir", "seed",
                  "ckpt_path", "optim"}


def wandb_configured() -> bool:
    """True when this machine can reach W&B with credentials: otherwise log offline and sync later."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_MODE") == "online" or os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _build(key: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # report which config node failed, with the library's own message
        while isinstance(err, InstantiationException) and err.__cause__ is not None:
            err = err.__cause__  # Hydra's wrapper: show what the target itself said
        raise ValueError(f"config {key}: {type(err).__name__}: {err}") from None


def build(cfg: DictConfig):
    """Datamodule, module, callbacks, loggers and trainer, each validated; nothing is trained or loaded yet."""
    unknown = set(cfg) - TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(f"config: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL_KEYS)}")
    if cfg.ckpt_path not in (None, "last") and not Path(cfg.ckpt_path).is_file():
        raise ValueError(f"config ckpt_path: no checkpoint at {cfg.ckpt_path!r} (use a path, 'last' or null)")
    cfg.run_name = str(cfg.run_name)  # a job id on the command line (run_name=123) parses as an int
    os.environ["LSDE_RUN_NAME"] = cfg.run_name  # DDP workers re-run the command: same run directory
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = _build("data", instantiate, cfg.data)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    module = _build(
        "model",
        ScoreModule,
        net=model_cfg.pop("net"),
        sde=OmegaConf.to_container(cfg.sde, resolve=True),
        shape=list(datamodule.shape),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        **model_cfg,
    )
    with torch.no_grad():  # a network that does not fit the data fails here, not after the first epoch
        probe = torch.zeros(2, *datamodule.shape)
        out = _build("model.net", module.denoiser, probe, torch.full((2,), 0.5))
        if out.eps.shape != probe.shape:
            raise ValueError(f"config model.net: output shape {tuple(out.eps.shape[1:])} != data shape {tuple(datamodule.shape)}")

    callbacks = [_build(f"callbacks.{k}", instantiate, c) for k, c in cfg.callbacks.items() if c is not None]
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
        loggers.append(_build(f"logger.{key}", instantiate, logger_cfg))
    plugins = []
    if SLURMEnvironment.detect():  # requeue has one owner: the Preemption callback (or submitit), not Lightning
        plugins.append(SLURMEnvironment(auto_requeue=False))
    trainer = _build("trainer", instantiate, cfg.trainer, callbacks=callbacks, logger=loggers or False,
                     **({"plugins": plugins} if plugins else {}))
    return datamodule, module, trainer


def train(cfg: DictConfig):
    """Fit; returns the trainer."""
    datamodule, module, trainer = build(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    preemption = _preemption(trainer)
    if preemption is not None and preemption.requeue_requested:
        print(f"stopped at global step {trainer.global_step} for the time limit; checkpoint {preemption.last_path(trainer)}")
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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
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
