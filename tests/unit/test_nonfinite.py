"""What a fit reports step by step: the non-finite watch (the first bad step, what was bad, the last finite loss
before it), and the loss written when a callback stops it early."""

import lightning as L
import pytest
import torch

from lightning_sde.data import Toy2DDataModule
from lightning_sde.module import NonFiniteError, ScoreModule

MLP = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 1}
VP = {"_target_": "lightning_sde.sde.VPSDE"}


class PoisonGradients(L.Callback):
    """Makes the gradients NaN (the loss stays finite) from step `at` on."""

    def __init__(self, at: int):
        self.at, self.losses = at, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step - 1] = float(outputs["loss"])

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step >= self.at:
            next(pl_module.parameters()).grad.fill_(float("nan"))


@pytest.mark.parametrize("log_every", [1, 4])
def test_a_nan_gradient_norm_names_its_step_and_the_last_finite_loss(tmp_path, log_every):
    poison = PoisonGradients(at=5)
    trainer = L.Trainer(max_steps=12, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, accelerator="cpu",
                        gradient_clip_val=1.0, log_every_n_steps=log_every, callbacks=[poison])
    with pytest.raises(NonFiniteError) as err:
        trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP),
                    datamodule=Toy2DDataModule(batch_size=32, n_train=512, n_val=32))
    # step 5's loss was finite (computed before its gradients): the last finite loss is step 5's
    assert f"at step 5 the gradient norm was nan; the last finite loss was {poison.losses[5]:.6g} at step 5" \
        in str(err.value) and err.value.step == 5


class RecordValidations(L.Callback):
    def __init__(self):
        self.steps = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


def test_the_watch_is_read_before_an_evaluation_runs_on_non_finite_weights(tmp_path):
    """NaN gradients at step 5, the next evaluation at step 8, the log interval (50) longer than the run: the
    evaluation never runs, the error names step 5."""
    validations = RecordValidations()
    trainer = L.Trainer(max_steps=12, val_check_interval=8, check_val_every_n_epoch=None, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, accelerator="cpu", gradient_clip_val=1.0, log_every_n_steps=50,
                        callbacks=[PoisonGradients(at=5), validations])
    with pytest.raises(NonFiniteError, match="at step 5 the gradient norm was nan"):
        trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP),
                    datamodule=Toy2DDataModule(batch_size=32, n_train=512, n_val=32))
    assert trainer.global_step == 8 and validations.steps == []


class StopAt(L.Callback):
    """Stops as the Preemption callback does (should_stop in on_train_batch_end), recording each step's loss."""

    def __init__(self, at: int):
        self.at, self.losses = at, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[trainer.global_step - 1] = float(outputs["loss"])
        if trainer.global_step == self.at:
            trainer.should_stop = True


def test_the_loss_written_at_a_stop_is_that_steps_loss(tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    stop = StopAt(8)
    trainer = L.Trainer(max_steps=100, log_every_n_steps=5, limit_val_batches=0, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, accelerator="cpu", callbacks=[stop],
                        logger=CSVLogger(tmp_path, name="csv", version=0))
    trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=32, n_train=512))
    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")) if r.get("train/loss")]
    written = {int(r["step"]): float(r["train/loss"]) for r in rows}
    assert 7 in written and written == pytest.approx({s: stop.losses[s] for s in written}, rel=1e-6)


class PoisonAverage(L.Callback):
    """Makes one EMA weight NaN at step `at` (the raw weights and the loss stay finite)."""

    def __init__(self, ema, at: int):
        self.ema, self.at = ema, at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            next(self.ema._average_model.module.parameters()).data.view(-1)[0] = float("nan")


def test_no_checkpoint_is_written_whose_averaged_weights_are_not_finite(tmp_path):
    """Under EMA the checkpoint's state_dict (what every app loads) is the average: it is checked, not only the raw
    weights the module trains."""
    from lightning_sde.callbacks.checkpoint_io import LastCheckpoint
    from lightning_sde.callbacks.ema import EMA

    ema = EMA(decay=0.9)
    saver = LastCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=2,
                           enable_version_counter=False)
    trainer = L.Trainer(max_steps=8, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, accelerator="cpu", callbacks=[ema, PoisonAverage(ema, 3), saver])
    with pytest.raises(NonFiniteError, match=r"refusing to write a checkpoint at step 4: \['state_dict \(the "
                                             r"averaged weights under EMA\): "):
        trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP),
                    datamodule=Toy2DDataModule(batch_size=32, n_train=512, n_val=32))
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 2


def test_after_a_non_finite_value_its_checkpoints_are_set_aside_and_the_resume_named(tmp_path):
    """NaN gradients at step 5 with a checkpoint every step: last.ckpt (step 5) holds the weights that gave them; the
    error carries where the same command resumes from (last.prev.ckpt, step 4), the bad file moved aside."""
    from lightning_sde.callbacks.checkpoint_io import AtomicCheckpointIO, LastCheckpoint, SetAside

    saver = LastCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=1,
                           enable_version_counter=False)
    trainer = L.Trainer(max_steps=12, limit_val_batches=0, logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, accelerator="cpu", gradient_clip_val=1.0,
                        callbacks=[PoisonGradients(at=5), saver, SetAside(tmp_path, "run_name=x")],
                        plugins=[AtomicCheckpointIO()])
    with pytest.raises(NonFiniteError) as err:
        trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP),
                    datamodule=Toy2DDataModule(batch_size=32, n_train=512, n_val=32))
    assert err.value.step == 5 and err.value.advice == ("last.ckpt (written at step 5: their weights gave it) moved "
                                                        "to *.nonfinite; lsde-train ... run_name=x resumes from "
                                                        "last.prev.ckpt (step 4)")
    assert sorted(p.name for p in tmp_path.glob("last*")) == ["last.ckpt.nonfinite", "last.prev.ckpt"]
