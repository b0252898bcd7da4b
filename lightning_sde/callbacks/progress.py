"""ProgressLog: what a batch job's log shows while it trains, where a progress bar cannot be.

With the bar off (output to a file: trainer.enable_progress_bar=auto; under SLURM: false), a line at most every
`every_n_steps` steps or `every_s` seconds, whichever comes later: the step, the loss, steps per second over the
last interval, and the time left to max_steps. With the bar on it stays quiet (the bar shows the same).
"""

from __future__ import annotations

import logging
import time

import lightning as L

from lightning_sde.tracking import duration

log = logging.getLogger(__name__)


class ProgressLog(L.Callback):
    def __init__(self, every_n_steps: int = 50, every_s: float = 30.0):
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"ProgressLog every_n_steps must be an integer >= 1; got {every_n_steps!r}")
        if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not 0 <= every_s < float("inf"):
            raise ValueError(f"ProgressLog every_s must be a finite number >= 0; got {every_s!r}")
        self.every_n_steps, self.every_s = every_n_steps, float(every_s)
        self._mark: tuple[int, float] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._mark = (trainer.global_step, time.monotonic())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.progress_bar_callback is not None or not trainer.is_global_zero or self._mark is None:
            return
        step, now = trainer.global_step, time.monotonic()
        last_step, last_time = self._mark
        if step - last_step < self.every_n_steps or now - last_time < self.every_s:
            return
        log.info(self.line(trainer, step, (step - last_step) / max(now - last_time, 1e-9)))
        self._mark = (step, now)

    @staticmethod
    def line(trainer, step: int, rate: float) -> str:
        loss = trainer.callback_metrics.get("train/loss")
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        parts = [f"step {step}" + (f"/{total} ({100 * step / total:.0f}%)" if total else "")]
        if loss is not None:
            parts.append(f"loss {float(loss):.4g}")
        parts.append(f"{rate:.3g} steps/s")
        if total:
            parts.append(f"ETA {duration((total - step) / rate)}")
        return " | ".join(parts)
