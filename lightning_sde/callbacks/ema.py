"""EMA: Lightning's EMAWeightAveraging, with the raw weights kept as the model's own at the end of training.

Lightning copies the average into the model when fit ends, so the last checkpoint written then holds the EMA
weights in both places and a run continued from it (a larger trainer.max_steps, same run_name) would train on from
the EMA weights. Here the model keeps its raw weights: every checkpoint, the final one included, holds the EMA in
`state_dict` (what load_denoiser samples with) and the raw weights in `current_model_state` (what training resumes
from), so extending a finished run continues exactly as if it had never stopped.
"""

from __future__ import annotations

import itertools

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging


class EMA(EMAWeightAveraging):
    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, **kwargs):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be a number in [0, 1) (1 keeps the first step's weights for ever); got "
                             f"{decay!r}")
        every_least = 0 if update_starting_at_epoch is not None else 1  # 0 alone: the average never updates
        for key, value, least in (("update_every_n_steps", update_every_n_steps, every_least),  # 0: per epoch
                                  ("update_starting_at_step", update_starting_at_step, 0),
                                  ("update_starting_at_epoch", update_starting_at_epoch, 0)):
            if (value is not None or key == "update_every_n_steps") and (
                    isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"EMA {key} must be an integer >= {least}; got {value!r}")
        super().__init__(decay=decay, update_every_n_steps=update_every_n_steps,
                         update_starting_at_step=update_starting_at_step,
                         update_starting_at_epoch=update_starting_at_epoch, **kwargs)
        self.raw: list[torch.Tensor] | None = None  # the raw weights while the average is in their place (a validation)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """A per-epoch update (update_every_n_steps=0) made at the epoch's last batch, before the checkpoint callbacks
        save that step (Lightning runs them last): made at the epoch's end, a checkpoint of its last step missed it,
        and a run resumed from there went on without it. The epoch's end then finds it done."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_epoch_end(trainer, pl_module)

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._average_model is not None and str(trainer.precision).startswith("64"):
            self._average_model.double()  # made before Lightning converts the model: an fp32 average of fp64 weights

    def _pairs(self, pl_module):
        """(average, raw) tensors: parameters then buffers, in the same order in both models."""
        average = self._average_model.module
        return zip(itertools.chain(average.parameters(), average.buffers()),
                   itertools.chain(pl_module.parameters(), pl_module.buffers()))

    def _follow_until_first_update(self, pl_module) -> None:
        """Before its first update (update_starting_at_step) the average is the raw weights, not the copy set-up made
        of the untrained network (which validations scored and checkpoints held as the model)."""
        if self._average_model is not None and int(self._average_model.n_averaged) == 0:
            for average, raw in self._pairs(pl_module):
                average.data.copy_(raw.data)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        """The average in the raw weights' place, the raw weights kept aside (not swapped through the average's
        dtype: under bf16-true or 64-true precision a swap rounded one of them at every validation). The copy costs
        one set of weights on their device during a validation, when training's gradients are not held."""
        if self._average_model is None:
            return
        self._follow_until_first_update(pl_module)
        self.raw = [raw.data.clone() for _, raw in self._pairs(pl_module)]
        for average, raw in self._pairs(pl_module):
            raw.data.copy_(average.data)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self.raw is None:
            return
        for (_, current), raw in zip(self._pairs(pl_module), self.raw, strict=True):
            current.data.copy_(raw)
        self.raw = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        """state_dict the average, current_model_state the raw weights, also when written during a validation (a
        signal's, an error's), while the average is in the model's place."""
        self._follow_until_first_update(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self.raw is not None and "current_model_state" in checkpoint:
            raw = {id(current): kept for (_, current), kept in zip(self._pairs(pl_module), self.raw, strict=True)}
            held = pl_module.state_dict(keep_vars=True)  # every name of a tied tensor, by the tensor itself
            checkpoint["current_model_state"] = {k: raw.get(id(held.get(k)), v)
                                                 for k, v in checkpoint["current_model_state"].items()}

    def on_train_end(self, trainer, pl_module) -> None:
        """Keep the raw weights (module docstring); the average stays in the averaged model and the checkpoint."""
