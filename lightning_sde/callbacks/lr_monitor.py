"""Lightning's LearningRateMonitor, logging once per optimizer step."""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor as LightningLearningRateMonitor

from lightning_sde.data.base import batch_in_step


class LearningRateMonitor(LightningLearningRateMonitor):
    """Lightning's, on the first batch of each optimizer step only: under gradient accumulation Lightning's logs the
    step's rates at each of its k batches (k identical rows a step in the CSV history)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_in_step(trainer, batch_idx) == 0:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
