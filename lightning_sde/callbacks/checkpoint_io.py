"""Checkpoints written so that no kill loses the last good one.

Every checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed over its name
(a rename is atomic). A checkpoint that replaces an older one under the same name (last.ckpt) first moves the older
one to `<name>.prev.ckpt`, so that a file corrupted later still leaves the one before it to resume from
(`lightning_sde.loading.newest_loadable`). Only a file that looks like a checkpoint is kept so: a broken one (which a
resume skipped) is replaced without moving it over the good `<name>.prev.ckpt`.
"""

from __future__ import annotations

import logging
import os
import weakref
import zipfile
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.trainer.states import TrainerFn

from lightning_sde.data.base import ends_a_step
from lightning_sde.errors import NonFiniteError, writing
from lightning_sde.files import previous, remove_stale_temporaries
from lightning_sde.loading import NONFINITE_SUFFIX, resume_step, set_aside_from

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options; got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        remove_stale_temporaries(path, older_than_s=0)  # a whole checkpoint each; one process writes them
        try:
            with writing(path), open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:  # no partial checkpoint left behind
            tmp.unlink(missing_ok=True)
            raise
        if path.exists() and not path.is_symlink():
            if looks_like_a_checkpoint(path):
                os.replace(path, previous(path))
            else:
                log.warning("%s is not a readable checkpoint: replaced, %s kept", path, previous(path).name)
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the renames themselves reach the disk
        finally:
            os.close(directory)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose state follows its run's folder when the run was moved or copied (rsync to another
    machine, a renamed project): Lightning keeps the state (the best value, the files chosen) only where the folder
    is the one saved, an absolute path, so a moved run's resume saved a worse step as a second best. When the
    checkpoint resumed lies in this callback's folder, the state's paths are read as that folder's."""

    _trainer = None  # its ckpt_path (set after setup) is the checkpoint whose state is loaded

    def setup(self, trainer, pl_module, stage) -> None:
        super().setup(trainer, pl_module, stage)
        self._trainer = weakref.ref(trainer)

    def load_state_dict(self, state_dict) -> None:
        old, new = state_dict.get("dirpath"), self.dirpath
        trainer = self._trainer() if self._trainer else None
        resumed = trainer.ckpt_path if trainer is not None else None
        if old and new and old != new and resumed and Path(resumed).resolve().parent == Path(new).resolve():
            state_dict = moved_state(state_dict, old, new)
        super().load_state_dict(state_dict)


def moved_state(state: dict, old: str, new: str) -> dict:
    """A ModelCheckpoint state with the paths in folder `old` put in folder `new`."""
    def move(path):
        return os.path.join(new, Path(path).name) if isinstance(path, str) and path and Path(path).parent == Path(old) \
            else path

    state = {**state, "dirpath": new}
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in state:
            state[key] = move(state[key])
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {move(path): value for path, value in state["best_k_models"].items()}
    return state


class LastCheckpoint(RunCheckpoint):
    """ModelCheckpoint whose last.ckpt is the final state of every fit that ends normally: Lightning's writes it at
    the end only if this process has saved nothing before (a run of 25 steps saving every 10 ended with step 20).
    The fit's last step is saved at its end, as a periodic save (after the fit Lightning has counted the epoch and
    logged step on). A last.ckpt written at a step that is then evaluated is written again after the evaluation, when
    it is the last step or a monitored checkpoint (best-*.ckpt) takes part: saved before it, a resume from it forgot
    that evaluation in the best checkpoint's choice (which then kept a worse one, and left the better file beside it).
    The copy from before the evaluation becomes last.prev.ckpt (a stopped evaluation is redone from it). It must come
    after the other ModelCheckpoints among the callbacks."""

    def setup(self, trainer, pl_module, stage) -> None:
        super().setup(trainer, pl_module, stage)
        mine = trainer.callbacks.index(self)
        if any(isinstance(cb, ModelCheckpoint) for cb in trainer.callbacks[mine + 1:]):
            raise ValueError("LastCheckpoint must come after the other ModelCheckpoints among the callbacks: it writes "
                             "last.ckpt again after an evaluation at its step, with their choice of it")

    _saved_by_another_at = None  # the step of a save another callback made (saved_elsewhere): not written again

    def on_validation_end(self, trainer, pl_module) -> None:
        step = trainer.global_step
        last_step = 0 < trainer.max_steps <= step  # the fit's final state holds its final validation
        if self.save_last and self._last_global_step_saved == step and self.last_model_path \
                and self._saved_by_another_at != step and not trainer.sanity_checking \
                and trainer.state.fn == TrainerFn.FITTING and not trainer.fast_dev_run \
                and (last_step or any(isinstance(cb, ModelCheckpoint) and cb.monitor for cb in trainer.callbacks)):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_validation_end(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # never within an optimizer step (gradient accumulation): Lightning forgets the step it last saved at when a
        # fit starts, so after a resume it would save again one batch into the next step
        if ends_a_step(trainer, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            # the fit's last step saved here, as a periodic save: once the fit has ended, Lightning has counted the
            # epoch and the logged steps on, and an extended run logged each value a step late, in the next epoch
            if self.save_last and 0 < trainer.max_steps <= trainer.global_step and not trainer.fast_dev_run \
                    and self._last_global_step_saved != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def saved_elsewhere(self, trainer, path) -> None:
        """Another callback wrote this step's last.ckpt (a preemption save): not written again."""
        self._last_global_step_saved = self._saved_by_another_at = trainer.global_step
        self._last_checkpoint_saved = self.last_model_path = str(path)


class BestCheckpoint(RunCheckpoint):
    """ModelCheckpoint that never counts a non-finite value as a best one: Lightning's takes NaN for the worst value
    and still saves its first top-k, so a model whose samples all diverged had a best-*.ckpt. The value is the same
    on every rank (the sampler callback broadcasts it), so every rank decides alike. Its state is saved under
    Lightning's ModelCheckpoint key, so that a run checkpointed with that class resumes its choice of the best."""

    @property
    def state_key(self) -> str:
        return ModelCheckpoint.__qualname__ + super().state_key.removeprefix(type(self).__qualname__)

    def check_monitor_top_k(self, trainer, current=None) -> bool:
        if current is not None and not torch.isfinite(torch.as_tensor(current)).all():
            return False
        return super().check_monitor_top_k(trainer, current)


def looks_like_a_checkpoint(path: Path) -> bool:
    """A cheap structural check (the zip's central directory, no tensor read): a torch.save archive with its
    pickle. A truncated or overwritten file fails it."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


class SetAside(Callback):
    """After a non-finite value at a step (a NonFiniteError every process raises alike), global rank 0 moves the
    checkpoints written at that step (their weights give it again on resume, whatever the lr) out of the resume's way
    (loading.set_aside_from) and puts on the error which checkpoint `lsde-train ... <again>` now resumes from, while
    the other processes wait for it: under srun, a process that exits first has SLURM stop rank 0 midway."""

    def __init__(self, folder, again: str):
        self.folder, self.again = Path(folder), again

    def on_exception(self, trainer, pl_module, exception) -> None:
        if not isinstance(exception, NonFiniteError) or exception.step is None:
            return
        try:
            if trainer.is_global_zero:
                exception.advice = self.where_to_go_on(exception.step)
        finally:
            trainer.strategy.barrier("set_aside")

    def where_to_go_on(self, step: int) -> str:
        moved, resume = set_aside_from(self.folder, step)
        told = (f"{', '.join(moved)} (written at step {step}: their weights gave it) moved to "
                f"*{NONFINITE_SUFFIX}; " if moved else "")
        if resume is None:
            return f"{told}no checkpoint is left in the run: start a new run under another run_name"
        return f"{told}lsde-train ... {self.again} resumes from {resume.name} (step {resume_step(resume)})"


class LogsWithCheckpoints(Callback):
    """Writes the CSV loggers' rows to disk whenever a checkpoint is saved. Lightning's CSVLogger keeps rows logged
    outside Lightning's own logging (the sampler evaluations) in memory until Lightning next logs (trainer.
    log_every_n_steps), and a resume starts after the checkpoint's step: a job killed after an evaluation at step 200
    lost that evaluation's rows for good, and with them what the resumed run logs again to W&B (backfill_wandb)."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()  # rank 0's (the others have no experiment to write)
