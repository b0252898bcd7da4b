"""How a fit ends: last.ckpt is its final state, whatever its length and however often it saves; and a setting that
would make it skip data and never end (gradient accumulation) is refused before the first batch."""

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


def test_gradient_accumulation_is_refused_before_the_first_batch(tmp_path):
    """An epoch's last partial group also steps the optimizer: batches counted from optimizer steps would skip data
    and hang a run bounded by max_steps."""
    trainer = L.Trainer(max_steps=12, accumulate_grad_batches=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        accelerator="cpu")
    module = ScoreModule(net=MLP, shape=[2], sde=VP)
    with pytest.raises(ValueError, match="accumulate_grad_batches: only 1 is supported"):
        trainer.fit(module, datamodule=Toy2DDataModule(batch_size=32, n_train=256))
    assert trainer.global_step == 0
