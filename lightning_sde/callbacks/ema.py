"""EMA: Lightning's EMAWeightAveraging, with the raw weights kept as the model's own at the end of training.

Lightning copies the average into the model when fit ends, so the last checkpoint written then holds the EMA
weights in both places and a run continued from it (a larger trainer.max_steps, same run_name) would train on from
the EMA weights. Here the model keeps its raw weights: every checkpoint, the final one included, holds the EMA in
`state_dict` (what load_denoiser samples with) and the raw weights in `current_model_state` (what training resumes
from), so extending a finished run continues exactly as if it had never stopped.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import EMAWeightAveraging


class EMA(EMAWeightAveraging):
    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
                 update_starting_at_epoch: int | None = None, **kwargs):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be a number in [0, 1]; got {decay!r}")
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
        self.swapped = False  # the average in the model's place (during a validation)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self.swapped = self._average_model is not None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self.swapped = False

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        """A checkpoint written during a validation (a signal's, an error's) while the average is in the model's place:
        the two are put back where they belong (state_dict the average, current_model_state the raw weights)."""
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self.swapped and "current_model_state" in checkpoint:
            checkpoint["state_dict"], checkpoint["current_model_state"] = (checkpoint["current_model_state"],
                                                                           checkpoint["state_dict"])

    def on_train_end(self, trainer, pl_module) -> None:
        """Keep the raw weights (module docstring); the average stays in the averaged model and the checkpoint."""
