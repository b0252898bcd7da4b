"""Checkpoint at a step boundary when SLURM is about to stop the job (or an error stops it), and requeue it for the
time limit.

Two ways a job is stopped, one owner of each:
  - the time limit: sbatch's `--signal=USR1@<seconds>` sends `requeue_signal` to every task. All ranks agree at the
    end of the current step (one all-reduce of a flag), save `last.ckpt`, stop, and after `fit` returns rank 0 runs
    `scontrol requeue` (`Preemption.requeue_if_requested`, called by lsde-train). The requeued job resumes from that
    checkpoint (`ckpt_path=last`, run directory keyed on the job id). Under Hydra's submitit launcher submitit owns
    the requeue (USR2) instead: lsde-train sets `requeue_signal` to None there.
  - preemption, `scontrol requeue` or `scancel --signal=TERM`: SLURM sends SIGTERM to every process of the job, the
    W&B service included. From the start of training this callback owns SIGTERM: its handler only notes the signal
    (Lightning's own handler broadcasts from inside the handler, which collides with whatever collective the ranks
    are in). At the end of the current step, before anything is logged (a logger whose service just died must not
    take the save down with it), all ranks agree, this callback saves `last.ckpt` at that step and stops training
    once the step is logged; lsde-train exits 143 (interrupted: `afterok` dependencies do not fire) and the scheduler
    decides about requeueing. A signal during a sampler evaluation stops it at once (no rows; the resumed run does it
    again) and is acted on at that validation's end; during another validation, at the end of the next step.

Ctrl-C (SIGINT) while training is taken like SIGTERM: noted, and at the end of the current step `last.ckpt` is saved
there and training stops (lsde-train then exits 130); a second Ctrl-C stops at once, and the last checkpoint stands
(a step cut short holds a half-applied optimizer step and a batch counted as begun: a resume from it would neither
equal an uninterrupted run nor keep its schedule).

An error that stops a one-process run between steps (an unreadable image met hours in) also saves `last.ckpt` at
that step boundary, so the command with the run's name resumes there once the cause is fixed; not one within a step
(the last checkpoint stands), not a non-finite value (its checkpoints are set aside instead), and not under DDP,
where a save is collective and the other processes are stopped by Lightning mid-step.

Checkpoints are written to a temporary file and renamed (lsde-train's AtomicCheckpointIO), so a SIGKILL after
SLURM's KillWait leaves the previous `last.ckpt` intact. Lightning's own SLURM auto-requeue (hpc_ckpt) is switched
off by lsde-train: one owner.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_sde.callbacks.checkpoint_io import LastCheckpoint
from lightning_sde.data.base import ends_a_step
from lightning_sde.distributed import slurm_job
from lightning_sde.errors import NonFiniteError

log = logging.getLogger(__name__)


class Preemption(L.Callback):
    _launcher = None

    def __init__(self, requeue_signal: str | None = "SIGUSR1"):
        if requeue_signal is not None and (
                not isinstance(getattr(signal, str(requeue_signal), None), signal.Signals)
                or requeue_signal in ("SIGKILL", "SIGSTOP")):  # no process can catch these
            raise ValueError("Preemption: requeue_signal must be the name of a signal a process can catch, such as "
                             f"'SIGUSR1', or null; got {requeue_signal!r}")
        self.requeue_signal = requeue_signal
        self.resume_with = "run_name=<this run's>"  # what a rerun needs to resume this run (lsde-train sets it)
        self.signalled = False
        self.terminated = False
        self.interrupted = False  # stopped by SIGTERM, after the checkpoint: lsde-train exits 143
        self.ctrl_c = False  # Ctrl-C noted (the first: the second is Python's KeyboardInterrupt)
        self.stopped_by_ctrl_c = False  # stopped by Ctrl-C, after the checkpoint: lsde-train exits 130
        self.requeue_requested = False
        self.saved_at: int | None = None  # the step of the checkpoint written on a signal
        self._at_step_end = True  # the last training batch ended an optimizer step (always, without accumulation)
        self._in_batch = False  # a training batch has begun and not ended: the state is part-way through a step
        self._started_at: int | None = None  # the global step training started (or resumed) at
        self._previous_handlers: dict[int, tuple] = {}  # signal -> (ours, the one before)
        self._after_fit: dict[int, object] = {}  # signal -> the handler before a fit that ended on an exception
        self._rank = 0  # the process's global rank (one says Ctrl-C was taken)

    # --- signals: handlers only take note; the end of the step acts ------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if signum in self._after_fit:  # a fit that ended on an exception: Lightning put this handler back after it
            signal.signal(signum, self._after_fit.pop(signum))
            signal.raise_signal(signum)  # to the handler before the fit, as if this one had never been there
            return
        self.signalled = True

    def _on_sigterm(self, signum, frame) -> None:
        if not self.terminated and self._launcher is not None:
            self._launcher.kill(signum)  # local DDP: pass it on to the processes this one started
        self.terminated = True

    def _on_sigint(self, signum, frame) -> None:
        self.ctrl_c = True
        signal.signal(signum, self._previous_handlers[signum][1])  # a second Ctrl-C: KeyboardInterrupt, at once
        if self._rank == 0:
            try:  # stderr may be a pipe whose reader Ctrl-C stopped too (`| tee`): the stop goes on regardless
                os.write(2, b"\nCtrl-C: stopping at the end of this step, with a checkpoint there (Ctrl-C again: "
                            b"stop now; the last checkpoint stands)\n")
            except OSError:
                pass

    def _own(self, signum: int, handler) -> None:
        """Handle `signum` from now on (only the main thread can set a handler: elsewhere, nothing)."""
        if threading.current_thread() is threading.main_thread() and signum not in self._previous_handlers:
            before_last_fit = self._after_fit.pop(signum, None)
            previous = signal.signal(signum, handler)
            if previous == handler and before_last_fit is not None:  # put back by Lightning after a failed fit
                previous = before_last_fit
            self._previous_handlers[signum] = (handler, previous)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        # a callback used again (a notebook's second fit): nothing of the last fit's signals carries over
        self.signalled = self.terminated = self.interrupted = self.ctrl_c = self.stopped_by_ctrl_c = False
        self.requeue_requested, self.saved_at = False, None
        if self.requeue_signal is not None:
            self._own(getattr(signal, self.requeue_signal), self._on_signal)
        self._after_fit.clear()

    def on_train_start(self, trainer, pl_module) -> None:
        self._launcher = trainer.strategy.launcher
        self._started_at = trainer.global_step
        self._rank = trainer.global_rank
        self._own(signal.SIGTERM, self._on_sigterm)  # after Lightning registered its own at the start of fit
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a job started in the background ignores it
            self._own(signal.SIGINT, self._on_sigint)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for signum, (ours, previous) in self._previous_handlers.items():
            if signal.getsignal(signum) == ours:  # else Lightning has restored what was there before fit
                signal.signal(signum, previous)
        self._previous_handlers.clear()

    def stop_requested(self) -> bool:
        """Whether a signal came (this process's note of it): long work in a step or an evaluation may stop early."""
        return self.signalled or self.terminated or self.ctrl_c

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._in_batch = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._in_batch = False
        self._at_step_end = ends_a_step(trainer, batch_idx)
        if not self._at_step_end:
            return  # within an optimizer step (gradient accumulation): act at its last batch, after the step
        self._act(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        """An evaluation the signal stopped (the sampler callback's `evaluation_stopped_at` is this step; no checkpoint
        callback saves at it): checkpoint at this step now rather than after the next one, whose end may come after
        the signal's lead is spent. Any other validation goes on to the next step's end, after the checkpoint
        callbacks (which run last) have recorded this validation: last.ckpt then holds their state."""
        stopped = any(getattr(cb, "evaluation_stopped_at", None) == trainer.global_step for cb in trainer.callbacks)
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and self._at_step_end and stopped:
            self._act(trainer)

    def _act(self, trainer) -> None:
        # one all-reduce decides for every rank (any rank signalled: all stop at this same step)
        requeue, term = self.signalled, self.terminated or bool(getattr(trainer, "received_sigterm", False))
        if not trainer.strategy.reduce_boolean_decision(requeue or term or self.ctrl_c, all=False):
            return
        self.interrupted = trainer.strategy.reduce_boolean_decision(term, all=False)
        self.stopped_by_ctrl_c = not self.interrupted and trainer.strategy.reduce_boolean_decision(self.ctrl_c,
                                                                                                   all=False)
        self.save(trainer, "SIGTERM" if self.interrupted else "Ctrl-C" if self.stopped_by_ctrl_c else "requeue signal")
        # stop after this step is logged (the checkpoint holds it): one history across the resume
        trainer.should_stop = True
        trainer.limit_val_batches = 0  # should_stop would run a validation (and the samplers) before stopping
        self.requeue_requested = not (self.interrupted or self.stopped_by_ctrl_c)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        try:
            self._act_on_exception(trainer, exception)
        finally:  # no teardown hook follows an exception; Lightning then restores what it found at the start of
            # fit, the requeue signal's handler this callback had set up before: that one passes a signal on
            self._after_fit = {s: previous for s, (_, previous) in self._previous_handlers.items()}
            self.teardown(trainer, pl_module, "fit")

    def _act_on_exception(self, trainer, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and self.ctrl_c:  # the second: at once, whatever the step's state
            log.warning("stopped by a second Ctrl-C: no checkpoint written; lsde-train ... %s resumes the run from the "
                        "last one", self.resume_with)
        elif isinstance(exception, SIGTERMException) and self.saved_at != trainer.global_step:
            if not self._at_step_end:  # Lightning stopped within an optimizer step (before this callback owned SIGTERM)
                log.warning("SIGTERM within an optimizer step (gradient accumulation): no checkpoint written; the "
                            "last one stands")
                return
            self.save(trainer, "SIGTERM")  # a signal that arrived outside a training step (e.g. in validation)
        elif self.keeps_steps_on(trainer, exception):
            exiting = isinstance(exception, SystemExit)  # e.g. submitit's requeue at the time limit: no error
            try:
                self.save(trainer, "exiting (SystemExit)" if exiting else f"stopped by {type(exception).__name__}")
            except Exception as err:  # noqa: BLE001  (the run's own error is the one to report)
                log.warning("no checkpoint written on the error (%s: %s); the last one stands", type(err).__name__, err)
                return
            if exiting:
                log.info("a requeued or resubmitted job resumes the run from global step %d", trainer.global_step)
            else:
                log.warning("once its cause is fixed, lsde-train ... %s resumes the run from global step %d",
                            self.resume_with, trainer.global_step)
        elif self._in_batch and trainer.training and not isinstance(exception, NonFiniteError):
            log.warning("stopped by %s within a training step: no checkpoint written (the step is part-applied); "
                        "lsde-train ... %s resumes the run from the last one (starts it again if none)",
                        type(exception).__name__, self.resume_with)

    def keeps_steps_on(self, trainer, exception: BaseException) -> bool:
        """Whether an error that stops training (a data loader's unreadable file) gets a checkpoint of the steps since
        the last one: only between optimizer steps while training (not within a batch: its step is
        part-applied), never for a non-finite value (SetAside's), and in one process only (a save is collective:
        under DDP the other processes are waiting in the step and are stopped)."""
        return (trainer.world_size == 1 and trainer.training and self._at_step_end and not self._in_batch
                and not isinstance(exception, NonFiniteError)
                and self._started_at is not None and trainer.global_step > self._started_at
                and self.saved_at != trainer.global_step)

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
        # every rank (collective); rank 0 writes, atomically (AtomicCheckpointIO); the full state (optimizer, loops)
        trainer.save_checkpoint(path)  # the whole state, to resume from
        self.saved_at = trainer.global_step
        for cb in trainer.checkpoint_callbacks:  # the same file is not written again when fit ends
            if isinstance(cb, LastCheckpoint) and cb.save_last and cb.dirpath \
                    and Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}" == path:
                cb.saved_elsewhere(trainer, path)
        log.warning("%s: saved %s at global step %d", reason, path, trainer.global_step)

    def requeue_if_requested(self, trainer) -> bool:
        """After fit: rank 0 requeues this SLURM job (array task) if the requeue signal came. True if requeued."""
        if not (self.requeue_requested and trainer.is_global_zero):
            return False
        job = slurm_job()
        if not job:
            log.warning("requeue signal received outside SLURM: checkpoint saved, nothing to requeue")
            return False
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            log.error("scontrol requeue %s failed (%d): %s", job, out.returncode, out.stderr.strip())
            return False
        log.warning("requeued SLURM job %s; it resumes from %s", job, self.last_path(trainer))
        return True
