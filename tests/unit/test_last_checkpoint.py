"""last.ckpt is the final state of a fit, whatever its length and however often it saves."""

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
