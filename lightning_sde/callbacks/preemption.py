"""Checkpoint at a step boundary when SLURM is about to stop the job, and requeue it for the time limit.

Two ways a job is stopped, one owner of each:
  - the time limit: sbatch's `--signal=USR1@<seconds>` sends `requeue_signal` to every task. All ranks agree at the
    end of the current step (one all-reduce of a flag), save `last.ckpt`, stop, and after `fit` returns rank 0 runs
    `scontrol requeue` (`Preemption.requeue_if_requested`, called by lsde-train). The requeued job resumes from that
    checkpoint (`ckpt_path=last`, run directory keyed on the job id). Under Hydra's submitit launcher submitit owns
    the requeue (USR2) instead: lsde-train sets `requeue_signal` to None there.
  - preemption, `scontrol requeue` or `scancel`: SLURM sends SIGTERM. Lightning stops all ranks at the end of the
    current step (SIGTERMException); this callback saves `last.ckpt` then. The scheduler decides about requeueing.

Checkpoints are written to a temporary file and renamed, so a SIGKILL after SLURM's KillWait leaves the previous
`last.ckpt` intact. Lightning's own SLURM auto-requeue (hpc_ckpt) is switched off by lsde-train: one owner.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class Preemption(L.Callback):
    def __init__(self, requeue_signal: str | None = "SIGUSR1"):
        if requeue_signal is not None and not isinstance(getattr(signal, str(requeue_signal), None), signal.Signals):
            raise ValueError("Preemption: requeue_signal must be a signal name such as 'SIGUSR1', or null; "
                             f"got {requeue_signal!r}")
        self.requeue_signal = requeue_signal
        self.signalled = False
        self.requeue_requested = False
        self._previous_handler = None

    # --- signals ----------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.signalled = True  # acted on at the end of the step: a handler must not touch the model mid-step

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.requeue_signal is not None and stage == "fit":
            signum = getattr(signal, self.requeue_signal)
            self._previous_handler = signal.signal(signum, self._on_signal)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._previous_handler is not None:
            signal.signal(getattr(signal, self.requeue_signal), self._previous_handler)
            self._previous_handler = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.requeue_signal is None:
            return
        if trainer.strategy.reduce_boolean_decision(self.signalled, all=False):  # any rank signalled: all stop
            self.save(trainer, "requeue signal")
            self.requeue_requested = True
            trainer.should_stop = True
            trainer.limit_val_batches = 0  # should_stop would run a validation (and the samplers) before stopping

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.save(trainer, "SIGTERM")

    # --- checkpoint and requeue ---------------------------------------------------------------------------------
    @staticmethod
    def last_path(trainer) -> Path:
        """Where `ckpt_path=last` looks: the save_last ModelCheckpoint's last.ckpt (else <root>/checkpoints)."""
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath:
                return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"

    def save(self, trainer, reason: str) -> None:
        path = self.last_path(trainer)
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(tmp)  # every rank (collective); rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, path)
        log.warning("%s: saved %s at global step %d", reason, path, trainer.global_step)

    def requeue_if_requested(self, trainer) -> bool:
        """After fit: rank 0 requeues this SLURM job (array task) if the requeue signal came. True if requeued."""
        if not (self.requeue_requested and trainer.is_global_zero):
            return False
        job = os.environ.get("SLURM_JOB_ID")
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if not job:
            log.warning("requeue signal received outside SLURM: checkpoint saved, nothing to requeue")
            return False
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            log.error("scontrol requeue %s failed (%d): %s", job, out.returncode, out.stderr.strip())
            return False
        log.warning("requeued SLURM job %s; it resumes from %s", job, self.last_path(trainer))
        return True
