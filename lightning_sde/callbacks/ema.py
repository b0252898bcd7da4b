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
    def __init__(self, decay: float = 0.999, **kwargs):
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be a number in [0, 1]; got {decay!r}")
        super().__init__(decay=decay, **kwargs)

    def on_train_end(self, trainer, pl_module) -> None:
        """Keep the raw weights (module docstring); the average stays in the averaged model and the checkpoint."""
