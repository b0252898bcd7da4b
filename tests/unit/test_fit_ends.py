"""How a fit ends: last.ckpt is its final state, whatever its length and however often it saves; under gradient
accumulation an epoch holds whole optimizer steps, so a fit bounded by max_steps ends there having skipped no data."""

import lightning as L
import pytest
import torch

from lightning_sde.callbacks import LastCheckpoint
from lightning_sde.callbacks.checkpoint_io import AtomicCheckpointIO
from lightning_sde.data import Toy2DDataModule
from lightning_sde.module import ScoreModule

MLP = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 1}
VP = {"_target_": "lightning_sde.sde.VPSDE"}


def step_of(path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


@pytest.mark.parametrize("max_steps, previous_step", [(25, 20), (20, 10)])
def test_last_checkpoint_holds_the_final_step_and_the_one_before(tmp_path, max_steps, previous_step):
    last = LastCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=10,
                          enable_version_counter=False)
    trainer = L.Trainer(max_steps=max_steps, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu", callbacks=[last],
                        plugins=[AtomicCheckpointIO()])
    trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=32, n_train=512))
    # a final step the interval does not hit is saved at the end; one it hits is not saved twice
    assert step_of(tmp_path / "last.ckpt") == max_steps and step_of(tmp_path / "last.prev.ckpt") == previous_step


class SeenRows(L.Callback):
    """The training rows of every batch, in order (toy batches are the rows themselves)."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch.clone())


@pytest.mark.timeout(60)  # a partial step at an epoch's end once made such a fit run forever
def test_gradient_accumulation_ends_at_max_steps_with_whole_steps_per_epoch(tmp_path):
    """256 rows in batches of 32 are 8 batches an epoch; with 3 batches a step an epoch is 2 whole steps (6 batches,
    the last 2 left out as a partial batch is), so 12 optimizer steps take exactly 36 batches over 6 epochs, no
    step spans two epochs, and within an epoch no row is seen twice."""
    seen = SeenRows()
    trainer = L.Trainer(max_steps=12, accumulate_grad_batches=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        accelerator="cpu", callbacks=[seen])
    data = Toy2DDataModule(batch_size=32, n_train=256)
    trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=data)
    assert trainer.global_step == 12 and trainer.current_epoch == 6 and len(seen.batches) == 36
    for epoch in range(6):
        rows = torch.cat(seen.batches[6 * epoch : 6 * (epoch + 1)])
        assert len(torch.unique(rows, dim=0)) == 192  # 6 batches of distinct rows
    assert not torch.equal(seen.batches[0], seen.batches[6])  # a new order every epoch


def test_accumulation_that_leaves_an_epoch_without_a_step_is_refused_before_the_first_batch(tmp_path):
    trainer = L.Trainer(max_steps=12, accumulate_grad_batches=9, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        accelerator="cpu")
    with pytest.raises(ValueError, match="batch_size 32 x trainer.accumulate_grad_batches 9 exceeds the 256 training"):
        trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=32, n_train=256))
    assert trainer.global_step == 0


def test_each_batch_of_an_accumulated_step_has_its_own_seed(tmp_path, monkeypatch):
    """The loss's random times and noise are drawn after seeding from (seed, batch, rank): under accumulation the
    batch counts optimizer steps x batches a step, so no two batches of a run share a seed."""
    import lightning_sde.module as module

    drawn = []
    seed_of = module.batch_seed
    monkeypatch.setattr(module, "batch_seed", lambda seed, batch, rank: (drawn.append(batch), seed_of(seed, batch,
                                                                                                       rank))[1])
    trainer = L.Trainer(max_steps=4, accumulate_grad_batches=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        accelerator="cpu")
    trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=32, n_train=256))
    assert drawn == list(range(12))


def test_no_two_runs_batches_or_ranks_share_a_seed():
    """An affine code of (seed, batch, rank) gave run seed 1 the streams of seed 0 a million batches on, and rank 4099
    those of the next batch."""
    from lightning_sde.module import batch_seed

    assert batch_seed(1, 0, 0) != batch_seed(0, 1_000_003, 0) and batch_seed(0, 1, 0) != batch_seed(0, 0, 4099)
    seeds = {batch_seed(seed, batch, rank) for seed in range(4) for batch in range(0, 3_000_000, 997)
             for rank in range(4)}
    assert len(seeds) == 4 * len(range(0, 3_000_000, 997)) * 4
    assert batch_seed(3, 5, 1) == batch_seed(3, 5, 1) and 0 <= batch_seed(3, 5, 1) < 2**63


def test_validation_noise_is_fixed_per_batch_and_differs_between_ranks():
    """Every rank drew the same times and noise for its batch i (one seed per batch index), so a run on two
    processes scored its two halves of the data at the same t's."""
    from types import SimpleNamespace

    module = ScoreModule(net=MLP, shape=[2], sde=VP)
    batch = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    logged = []
    module.log = lambda name, value, **kwargs: logged.append(float(value))
    for rank in (0, 1, 0):
        module._trainer = SimpleNamespace(global_rank=rank)
        module.validation_step(batch, 3)
    assert logged[0] == logged[2] != logged[1]


def test_a_signal_within_an_accumulated_step_checkpoints_after_its_last_batch(tmp_path, caplog):
    """The requeue signal arrives at the second of a step's 3 batches: the checkpoint waits for the third, after the
    optimizer step, so a resume starts at a step's first batch. The whole state is saved without Lightning's note
    that `weights_only` defaults to False (it read as an unsafe load beside the run's safe ones)."""
    import os
    import signal

    from lightning_sde.callbacks.preemption import Preemption

    class SignalAt(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 4:  # batches 3, 4, 5 make the second step
                os.kill(os.getpid(), signal.SIGUSR1)

    from lightning_sde.tracking import quiet_and_logged

    quiet_and_logged()  # as every app starts
    preemption = Preemption("SIGUSR1")
    trainer = L.Trainer(max_steps=12, accumulate_grad_batches=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        accelerator="cpu", callbacks=[SignalAt(), preemption], plugins=[AtomicCheckpointIO()])
    trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=32, n_train=256))
    assert preemption.saved_at == trainer.global_step == 2
    assert step_of(Preemption.last_path(trainer)) == 2
    assert "weights_only" not in caplog.text
    assert "optimizer_states" in torch.load(Preemption.last_path(trainer), weights_only=True)


class SavesAt(L.Callback):
    """Whether each checkpoint written during training follows a step's last batch."""

    def __init__(self):
        self.batch_idx, self.at_step_end = None, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batch_idx = batch_idx

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if self.batch_idx is not None:
            self.at_step_end.append((trainer.global_step, (self.batch_idx + 1) % trainer.accumulate_grad_batches == 0))


def test_after_a_resume_under_accumulation_no_checkpoint_falls_within_a_step(tmp_path):
    """Lightning forgets at the start of a fit the step it last saved at: resumed at step 2 (a multiple of the save
    interval), its last.ckpt would be written again one batch into step 3, a checkpoint that resumes mid-step."""
    def fit(max_steps, ckpt_path=None):
        last = LastCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=2,
                              enable_version_counter=False)
        saves = SavesAt()
        trainer = L.Trainer(max_steps=max_steps, accumulate_grad_batches=3, limit_val_batches=0, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                            accelerator="cpu", callbacks=[last, saves], plugins=[AtomicCheckpointIO()])
        trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=32, n_train=512),
                    ckpt_path=ckpt_path, weights_only=True)
        return saves.at_step_end

    first = fit(2)
    assert first and all(end for _, end in first), first
    resumed = fit(6, tmp_path / "last.ckpt")
    assert resumed and all(end for _, end in resumed), resumed
    assert step_of(tmp_path / "last.ckpt") == 6 and torch.load(tmp_path / "last.ckpt", weights_only=True)[
        "accumulate_grad_batches"] == 3


def test_the_loss_written_under_accumulation_is_the_mean_over_the_steps_batches(tmp_path):
    """At a logging step and at a stop (a preemption's, on a step that does not log), the loss written is the
    optimizer step's: the mean of its batches' losses, not its last batch's."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    losses = []

    class Recording(ScoreModule):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            losses.append(float(loss.detach()))
            return loss

    class StopAtStep3(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trainer.should_stop = trainer.should_stop or trainer.global_step == 3

    trainer = L.Trainer(max_steps=100, accumulate_grad_batches=3, log_every_n_steps=2, limit_val_batches=0,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        accelerator="cpu", callbacks=[StopAtStep3()], logger=CSVLogger(tmp_path, name="csv", version=0))
    trainer.fit(Recording(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=32, n_train=512))
    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")) if r.get("train/loss")]
    written = {int(r["step"]): float(r["train/loss"]) for r in rows}
    assert trainer.global_step == 3 and len(losses) == 9
    step_means = {step: sum(losses[3 * step:3 * step + 3]) / 3 for step in range(3)}
    assert written == pytest.approx({1: step_means[1], 2: step_means[2]}, rel=1e-6)


def test_a_sigterm_within_an_accumulated_step_writes_no_checkpoint():
    """Before Preemption owns SIGTERM, Lightning stops at any batch: within a step there is nothing to save that a
    resume could continue from, so the last checkpoint stands."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lightning_sde.callbacks.preemption import Preemption

    class OneBatchIntoAStep:
        global_step, accumulate_grad_batches = 0, 3

    preemption = Preemption("SIGUSR1")
    preemption._at_step_end = False
    preemption.on_exception(OneBatchIntoAStep(), None, SIGTERMException())
    assert preemption.saved_at is None


def test_the_learning_rate_is_written_once_per_optimizer_step_under_accumulation(tmp_path):
    """Lightning's LearningRateMonitor writes at every batch of a logging step: k identical rows a step."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from lightning_sde.callbacks import LearningRateMonitor

    trainer = L.Trainer(max_steps=6, accumulate_grad_batches=3, log_every_n_steps=1, limit_val_batches=0,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        accelerator="cpu", callbacks=[LearningRateMonitor(logging_interval="step")],
                        logger=CSVLogger(tmp_path, name="csv", version=0))
    trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP, optim={"lr": 1e-3, "warmup_steps": 10}),
                datamodule=Toy2DDataModule(batch_size=32, n_train=512))
    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")) if r.get("lr-AdamW")]
    assert [int(r["step"]) for r in rows] == list(range(6))
    assert [float(r["lr-AdamW"]) for r in rows] == pytest.approx([1e-3 * (k + 1) / 10 for k in range(6)])


class FailsAt(L.Callback):
    def __init__(self, batch_idx: int, error: BaseException):
        self.batch_idx, self.error = batch_idx, error

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.batch_idx:
            raise self.error


@pytest.mark.parametrize("batch_idx, accumulate, error, saved", [
    (5, 1, OSError("an unreadable image"), 5),  # the 5 steps since the last checkpoint are kept
    (6, 3, OSError("an unreadable image"), 2),  # the first batch of step 3: steps 1-2 are whole
    (4, 3, OSError("an unreadable image"), None),  # within step 2: nothing a resume could continue from
    (0, 1, OSError("an unreadable image"), None),  # nothing trained
    (5, 1, "nonfinite", None),  # its checkpoints are set aside (SetAside), not written
], ids=["between-steps", "accumulated", "within-a-step", "at-the-start", "non-finite"])
def test_an_error_while_training_saves_last_ckpt_at_the_last_step_boundary(tmp_path, batch_idx, accumulate, error,
                                                                          saved):
    from lightning_sde.callbacks.preemption import Preemption
    from lightning_sde.errors import NonFiniteError

    if error == "nonfinite":
        error = NonFiniteError("training stopped: at step 5 the loss is nan", 5)
    preemption = Preemption("SIGUSR1")
    trainer = L.Trainer(max_steps=12, accumulate_grad_batches=accumulate, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        accelerator="cpu", callbacks=[FailsAt(batch_idx, error), preemption],
                        plugins=[AtomicCheckpointIO()])
    with pytest.raises(type(error)):
        trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=32, n_train=512))
    assert preemption.saved_at == saved
    path = Preemption.last_path(trainer)
    assert (step_of(path) if path.exists() else None) == saved


def test_a_launchers_exit_saves_the_steps_and_is_not_called_an_error(tmp_path, caplog):
    """submitit's requeue at the time limit exits the job (SystemExit): its log said 'stopped by SystemExit' and
    'once its cause is fixed, ... resumes', an error with nothing to fix."""
    import logging

    from lightning_sde.callbacks.preemption import Preemption

    preemption = Preemption("SIGUSR1")
    trainer = L.Trainer(max_steps=12, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, accelerator="cpu",
                        callbacks=[FailsAt(5, SystemExit(-1)), preemption], plugins=[AtomicCheckpointIO()])
    with caplog.at_level(logging.INFO, logger="lightning_sde"), pytest.raises(SystemExit):
        trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=32, n_train=512))
    assert preemption.saved_at == 5 == step_of(Preemption.last_path(trainer))
    assert "exiting (SystemExit): saved" in caplog.text and "resumes the run from global step 5" in caplog.text
    assert "cause is fixed" not in caplog.text and "stopped by" not in caplog.text


def test_an_error_under_ddp_writes_no_checkpoint_from_one_process():
    """A save is collective: one process failing alone would wait for the others, which Lightning stops."""
    from lightning_sde.callbacks.preemption import Preemption

    class OneOfTwoProcesses:
        global_step, world_size, training = 5, 2, True

    preemption = Preemption("SIGUSR1")
    preemption._started_at = 0
    assert not preemption.keeps_steps_on(OneOfTwoProcesses(), OSError("an unreadable image"))
    OneOfTwoProcesses.world_size = 1
    assert preemption.keeps_steps_on(OneOfTwoProcesses(), OSError("an unreadable image"))


def test_a_checkpoint_is_saved_with_every_csv_row_up_to_its_step_on_disk(tmp_path):
    """Lightning's CSVLogger writes a row logged outside Lightning's logging when Lightning next logs (every
    log_every_n_steps): a job killed after an evaluation logged at step 20 (and its checkpoint) lost that evaluation's
    rows for good, since the resumed run starts after step 20."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    from lightning_sde.callbacks.checkpoint_io import LogsWithCheckpoints

    class Evaluation(L.Callback):  # logs as the sampler callback does, before the checkpoint callbacks run
        on_disk = {}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step = trainer.global_step
            if step % 10 == 0:
                trainer.loggers[0].log_metrics({"val/ddim/sliced_w2": float(step)}, step=step)
            if step in (15, 25):  # where a kill -9 could come: what is on disk then
                with open(tmp_path / "csv" / "version_0" / "metrics.csv", newline="") as fh:
                    self.on_disk[step] = [int(r["step"]) for r in csv.DictReader(fh) if r.get("val/ddim/sliced_w2")]

    last = LastCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=10)
    trainer = L.Trainer(max_steps=30, limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False,
                        logger=CSVLogger(tmp_path, name="csv"), accelerator="cpu", log_every_n_steps=50,
                        callbacks=[Evaluation(), last, LogsWithCheckpoints()], plugins=[AtomicCheckpointIO()])
    trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=32, n_train=2048))
    assert Evaluation.on_disk == {15: [10], 25: [10, 20]}


def test_a_checkpoint_overwritten_by_another_file_is_not_kept_as_the_previous_one(tmp_path):
    """last.prev.ckpt is the fallback for a broken last.ckpt: a zip that is no checkpoint (another program's file in
    its place) is not moved over the good one."""
    import zipfile

    io = AtomicCheckpointIO()
    for step in (1, 2):
        io.save_checkpoint({"step": step}, tmp_path / "last.ckpt")
    with zipfile.ZipFile(tmp_path / "last.ckpt", "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    io.save_checkpoint({"step": 3}, tmp_path / "last.ckpt")
    assert [torch.load(tmp_path / name, weights_only=True) for name in ("last.ckpt", "last.prev.ckpt")] == [
        {"step": 3}, {"step": 1}]
    with pytest.raises(TypeError, match="takes no storage_options"):  # Lightning's would be ignored, silently
        io.save_checkpoint({"step": 4}, tmp_path / "last.ckpt", storage_options={"compress": True})
