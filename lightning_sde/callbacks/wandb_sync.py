"""WandbOfflineSync: live W&B dashboards from compute nodes without internet, through wandb-osh.

After each sampler evaluation has been logged (and at the end of training), rank 0 asks `wandb-osh` (a loop on the
login node, which has internet) to run `wandb sync` on this run's offline directory, by writing a command file into
a directory both machines see. The login node runs: `wandb-osh --command-dir <the same directory>`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


class WandbOfflineSync(L.Callback):
    def __init__(self, communication_dir: str | None = None):
        try:
            from wandb_osh.hooks import TriggerWandbSyncHook
        except ImportError:
            raise ValueError("callbacks.wandb_osh needs the wandb-osh package: pip install wandb-osh") from None
        self.communication_dir = Path(os.path.expanduser(communication_dir or "~/.wandb_osh_command_dir"))
        self._hook_class = TriggerWandbSyncHook
        self._hook = None
        self.triggered = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._trigger(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._trigger(trainer)

    def _trigger(self, trainer) -> None:
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.experiment.offline:
                if self._hook is None:
                    self._hook = self._hook_class(communication_dir=self.communication_dir)
                self._hook(Path(logger.experiment.dir).resolve().parent)  # the offline-run-* folder
                self.triggered += 1
