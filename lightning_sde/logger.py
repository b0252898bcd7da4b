"""Lightning's W&B logger, made to keep one curve across resumes and never to take a run down (see `tracking` for
the W&B helpers that need no Lightning)."""

from __future__ import annotations

import logging

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lightning_sde.errors import first_line

log = logging.getLogger(__name__)


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger with two changes.

    - Every row carries the global step as W&B's own step, so one run's history is one curve: after a resume under the
      same id, W&B keeps each step once (it drops rows below its last step) instead of appending a second copy.
    - W&B is a view, the CSV and results files are the record: when W&B fails (its service killed by SLURM's SIGTERM
      to every process of a preempted job, a lost connection), W&B logging stops with one warning instead of taking
      training, and the checkpoint it is about to write, down with it.
    - W&B's closing lines are left out (`quiet`): lsde-train's own report names the run, and the sync command of every
      launch of it, where W&B's last line synced only the last launch's folder of a resumed run.
    """

    _broken = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:  # Lightning passes None, which W&B warns is a no-op
            self._wandb_init.pop("anonymous", None)
        if self._wandb_init.get("settings") is None:
            import wandb

            self._wandb_init["settings"] = wandb.Settings(quiet=True)

    def start(self) -> bool:
        """Open the W&B run now (rank 0), before training; False, with one warning, when W&B cannot start (no
        connection, an unusable folder): the caller drops this logger and the fit goes on without W&B."""
        if rank_zero_only.rank != 0:
            return True
        try:
            self.experiment  # noqa: B018  (the property calls wandb.init)
            return True
        except Exception as err:  # noqa: BLE001  (whatever W&B raises, the run goes on without it)
            self._broken = True
            log.warning("W&B could not start (%s: %s); training goes on without it: the CSV logs and checkpoints "
                        "are the record", type(err).__name__, first_line(err))
            return False

    def _guarded(self, fn, *args, **kwargs):
        if self._broken:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001  (whatever W&B raises, the run goes on without it)
            self._broken = True
            log.warning("W&B logging stopped (%s: %s); the CSV logs and checkpoints go on", type(err).__name__, err)
            return None

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self._guarded(self._log_metrics, metrics, step)

    def _log_metrics(self, metrics, step) -> None:
        if self._prefix:
            metrics = {f"{self._prefix}{self.LOGGER_JOIN_CHAR}{k}": v for k, v in metrics.items()}
        if step is None:
            self.experiment.log(metrics)
        else:
            self.experiment.log({**metrics, "trainer/global_step": step}, step=int(step))

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        self._guarded(super().log_hyperparams, params)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self._guarded(super().after_save_checkpoint, checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._guarded(super().finalize, status)
