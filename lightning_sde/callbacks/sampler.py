"""SamplerCallback: during fit, generate with each configured sampler, score the samples, log them.

It runs at the end of a validation epoch (skipping the sanity check). List it BEFORE EMAWeightAveraging: that
callback swaps the EMA weights in for validation and back at its own validation-epoch end, so this one samples
with the EMA weights. Sampling and scoring go through the shared path (lightning_sde.generation, metrics.scorer):
seeds split exactly across DDP ranks, gathered on rank 0, scored there, and the values broadcast so that every rank
logs the same numbers (ModelCheckpoint's monitor sees them everywhere). Metrics live here, never in the
LightningModule, so they stay out of checkpoints and EMA copies.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_sde.configuration import build
from lightning_sde.configuration import dtype as parse_dtype
from lightning_sde.data.base import floor_or_reason
from lightning_sde.distributed import broadcast_from_zero
from lightning_sde.files import write_csv
from lightning_sde.generation import GenerationStopped, generate
from lightning_sde.metrics.features import check_feature_extractor, check_features_take, known_feature_extractor
from lightning_sde.metrics.image import (
    IMAGE_METRICS,
    check_image_sample_count,
    check_kid_reference,
    check_stats_cache,
    tensor_sha256,
)
from lightning_sde.metrics.scorer import ALL_METRICS, Scorer, ranks_above, resolve_metrics
from lightning_sde.models.guidance import check_guidance
from lightning_sde.plotting import drawable, image_grid, scatter_grid, text_table
from lightning_sde.samplers import Sampler
from lightning_sde.samplers.schedule import MEMORY_ONLY
from lightning_sde.tracking import picture_path, trim_history

log = logging.getLogger(__name__)
SAMPLE_STATS = ("nfe", "wall_s", "n_samples", "n_distinct", "n_nonfinite")  # logged per sampler beside its metrics
NOISE_FLOOR = "noise_floor"  # the row of a second real set (DataModule.floor_set), scored like a sampler's samples


class SamplerCallback(L.Callback):
    def __init__(
        self,
        samplers: Mapping[str, Sampler | dict],
        n_samples: int = 1024,
        every_n_evals: int = 1,
        batch_size: int = 1024,
        metrics: list[str] | None = None,
        feature_extractor: str = "digits",
        dtype: str = "float32",
        first_seed: int = 0,
        n_plot: int = 64,
        stats_cache: str | None = None,
        guidance: float | None = None,
        noise_floor: bool = True,
    ):
        if not samplers:
            raise ValueError("SamplerCallback needs at least one sampler: pick a set (samplers=default) or add one")
        if NOISE_FLOOR in samplers:
            raise ValueError(f"samplers.{NOISE_FLOOR}: the label is the noise floor's row; name the sampler otherwise")
        if not isinstance(noise_floor, bool):
            raise ValueError(f"SamplerCallback noise_floor must be true or false; got {noise_floor!r}")
        # Built now: a bad sampler config fails at start-up, naming it.
        self.samplers = {label: s if isinstance(s, Sampler) else build(s, f"samplers.{label}")
                         for label, s in samplers.items()}
        for key, value in {"n_samples": n_samples, "every_n_evals": every_n_evals, "batch_size": batch_size,
                           "n_plot": n_plot}.items():
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise ValueError(f"SamplerCallback {key} must be an integer >= 1; got {value!r}")
        if isinstance(first_seed, bool) or not (isinstance(first_seed, int) and first_seed >= 0):
            raise ValueError(f"SamplerCallback first_seed must be an integer >= 0; got {first_seed!r}")
        if metrics is not None and (isinstance(metrics, str) or set(metrics) - set(ALL_METRICS)):
            raise ValueError(f"SamplerCallback metrics: unknown {metrics!r}; choose from {list(ALL_METRICS)}")
        self.guidance = None if guidance is None else check_guidance(  # a class-conditional model only
            guidance, "config callbacks.sampler.guidance", " or null")
        self.n_samples = n_samples
        self.every_n_evals = every_n_evals
        self.batch_size = batch_size
        self.metrics = metrics
        self.feature_extractor = feature_extractor
        self.dtype = parse_dtype(dtype, "callbacks.sampler.dtype")
        self.seeds = range(first_seed, first_seed + n_samples)
        self.n_plot = n_plot
        self.stats_cache = stats_cache
        self.noise_floor = noise_floor
        self._floor: dict | None = None  # the noise floor's values, scored at the first evaluation of this process
        self._evals = 0
        self._evaluated = {}  # label -> the sampler and parameters its evaluations in this run sampled with
        self._scorer: Scorer | None = None
        self.reference_sha256: str | None = None  # of the set scored against (setup)
        self.last_rows: dict[str, dict] = {}
        self._pending, self._images = False, []  # an evaluation not yet given to the loggers, and its pictures
        self.evaluation_stopped_at: int | None = None  # the step of an evaluation a signal stopped

    def setup(self, trainer, pl_module, stage):
        datamodule = trainer.datamodule
        if not callable(getattr(datamodule, "reference", None)):
            raise ValueError("SamplerCallback scores samples against the datamodule's reference(n): fit with "
                             "trainer.fit(module, datamodule=...) and a datamodule of lightning_sde.data (got "
                             f"{type(datamodule).__name__ if datamodule is not None else 'no datamodule'})")
        if self.guidance is not None and pl_module.denoiser.num_classes is None:
            raise ValueError("callbacks.sampler.guidance is set but the model is not class-conditional "
                             "(model.net.num_classes)")
        self.kind = getattr(datamodule, "kind", "points")
        self.metrics = resolve_metrics(self.metrics, self.kind, has_mixture=False, key="callbacks.sampler.metrics")
        self.reference = datamodule.reference(self.n_samples)
        self.reference_sha256 = tensor_sha256(self.reference)
        self.out_dir = Path(trainer.default_root_dir) / "samples"

    def check_data(self, datamodule) -> None:
        """What the first evaluation would fail on, checked before training: the reference (n_samples training
        samples) and the feature network of FID/KID (Inception's weights on disk)."""
        metrics = resolve_metrics(self.metrics, getattr(datamodule, "kind", "points"), has_mixture=False,
                                  key="callbacks.sampler.metrics")
        try:
            datamodule.check_reference_size(self.n_samples)
            check_image_sample_count(metrics, self.n_samples)
            if "kid" in metrics:
                check_kid_reference(self.n_samples)
        except ValueError as err:
            raise ValueError(f"config callbacks.sampler.n_samples: {err}") from None
        try:  # a misspelt name, whatever the metrics
            known_feature_extractor(self.feature_extractor)
        except ValueError as err:
            raise ValueError(f"config callbacks.sampler.feature_extractor: {err}") from None
        if set(metrics) & set(IMAGE_METRICS):
            try:
                check_feature_extractor(self.feature_extractor)
                check_features_take(self.feature_extractor, datamodule.shape)
            except (ValueError, FileNotFoundError) as err:
                raise type(err)(f"config callbacks.sampler.feature_extractor: {err}") from None
            check_stats_cache("callbacks.sampler.stats_cache", self.stats_cache)

    def state_dict(self) -> dict:
        # the every_n_evals phase of epoch-based validation (see on_train_start); what the evaluations so far sampled
        # under, once there are any (a resume under another is refused: lsde-train's check_same_evaluations)
        return {"evals": self._evals, **self.protocol(self._evaluated)} if self._evaluated else {"evals": self._evals}

    def protocol(self, samplers: dict | None = None) -> dict:
        """What makes one evaluation's values comparable with another's: the guidance, sample count, seeds, dtype,
        the reference set scored against (its SHA-256, once set up) and each label's sampler with its parameters
        (those that change only the memory aside); `samplers`: those recorded instead of the current set's."""
        return {"guidance": self.guidance, "n_samples": self.n_samples, "first_seed": self.seeds.start,
                "dtype": str(self.dtype).removeprefix("torch."), "reference_sha256": self.reference_sha256,
                "samplers": dict(samplers) if samplers is not None else {
                    label: self.sampled_as(label) for label in self.samplers}}

    def sampled_as(self, label: str) -> list:
        """[sampler name, parameters] of a label, as protocol() records it."""
        from lightning_sde.bench.spec import jsonable

        sampler = self.samplers[label]
        return [sampler.name, {k: v for k, v in jsonable(sampler.params()).items() if k not in MEMORY_ONLY}]

    def on_train_start(self, trainer, pl_module):
        """A resumed fit first runs the evaluation that its checkpoint's step was due and that left no rows: a step's
        checkpoint is written before that step's validation (LastCheckpoint writes it again after a finished one),
        and Lightning resumes past the validation. (Resumed at
        max_steps, Lightning starts no training: lsde-train says so at start-up.)"""
        interval, step = validation_interval(trainer), trainer.global_step
        if interval is None or step == 0 or trainer.limit_val_batches == 0:
            return
        self._evals = step // interval  # validations due so far (a checkpoint written before one counts one less)
        if not broadcast_from_zero(trainer.is_global_zero and self.evaluation_missing(step, interval, self.out_dir)):
            return
        rank_zero_info(f"the evaluation at step {step} did not finish before the run stopped: running it now")
        if trainer.is_global_zero:  # the stopped validation's own rows (val/loss) are logged again now
            trim_history(trainer.default_root_dir, step, redo_evaluation=True)
        self._evals -= 1
        val_loop = trainer.fit_loop.epoch_loop.val_loop
        val_loop.restarting = False  # restored as finished, it would skip all but one of its batches
        val_loop.batch_progress.reset_on_run()
        trainer.validating = True  # as Lightning's training loop runs a validation
        val_loop.run()
        trainer.training = True

    def evaluation_missing(self, step: int, interval: int, samples_dir) -> bool:
        """Whether `step` was due an evaluation (a validation every `interval` steps, every_n_evals-th) that left no
        rows in samples_dir/sampler_metrics.csv: a signal or a kill stopped it."""
        if step == 0 or step % interval or (step // interval) % self.every_n_evals:
            return False
        path = Path(samples_dir) / "sampler_metrics.csv"
        if not path.exists():
            return True
        with open(path, newline="") as fh:
            return not any(row.get("step") == str(step) for row in csv.DictReader(fh))

    def load_state_dict(self, state_dict) -> None:
        self._evals = int(state_dict.get("evals", 0))
        evaluated = state_dict.get("samplers")  # kept: a label dropped now and added back later is checked too
        self._evaluated = dict(evaluated) if isinstance(evaluated, dict) else {}

    def scorer(self, device) -> Scorer:
        """Built on first use, on rank 0 only (FID/KID reference statistics are computed or read from the cache)."""
        if self._scorer is None:
            self._scorer = Scorer(self.reference, self.metrics, feature_extractor=self.feature_extractor,
                                  cache_dir=self.stats_cache, device=device)
        return self._scorer

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self._evals += 1
        if self._evals % self.every_n_evals:
            return
        denoiser = pl_module.denoiser
        was_training = denoiser.training
        denoiser.eval()
        panels = {"data": self.reference} if self.kind == "points" else {}
        # SLURM's requeue signal or a SIGTERM stops the evaluation at once (Preemption then checkpoints and stops at
        # this validation's end, within the signal's lead); the resumed run does it again (on_train_start)
        stops = [cb.stop_requested for cb in trainer.callbacks if callable(getattr(cb, "stop_requested", None))]
        if self.noise_floor and self.floor_values(trainer, pl_module):
            self.last_rows[NOISE_FLOOR] = {"step": trainer.global_step, "sampler": NOISE_FLOOR, **self._floor}
        for label, sampler in self.samplers.items():
            try:
                samples = generate(sampler, denoiser, self.seeds, self.batch_size, pl_module.device, self.dtype,
                                   progress=True, desc=f"sampling {label} (step {trainer.global_step})",
                                   guidance=self.guidance, stop=(lambda: any(s() for s in stops)) if stops else None)
            except GenerationStopped:
                step, max_steps = trainer.global_step, trainer.max_steps
                redone = ("the resumed run does it again" if not 0 < max_steps <= step else
                          f"this fit has no step left to train (trainer.max_steps={max_steps}), so a resume does not "
                          "redo it: resume with a higher trainer.max_steps, or score the checkpoint with lsde-bench")
                rank_zero_warn(f"the evaluation at step {step} was stopped by a signal: no rows; {redone}")
                for cb in trainer.checkpoint_callbacks:  # none rests on it (a best one would look for its values)
                    if isinstance(cb, ModelCheckpoint):
                        cb._last_global_step_saved = trainer.global_step
                self.evaluation_stopped_at = trainer.global_step  # Preemption checkpoints at this validation's end
                denoiser.train(was_training)
                return
            self._evaluated[label] = self.sampled_as(label)
            values = None
            if samples is not None:  # rank 0
                values = sample_stats(samples.x, samples.nfe, samples.wall_s, samples.n_nonfinite)
                if samples.n_nonfinite:  # reported, never scored as if they were samples (never best)
                    log.warning("%s at step %d: %d of %d samples are not finite; not scored",  # pragma: no mutate
                                label, trainer.global_step, samples.n_nonfinite, len(samples.x))  # pragma: no mutate
                    values.update({m: float("nan") for m in self.metrics})
                else:
                    values.update(self.scorer(pl_module.device)(samples.x))
                    self._plot(trainer, label, samples, panels)
            values = broadcast_from_zero(values)
            for key, value in values.items():  # for ModelCheckpoint's monitor, the same value on every rank: synced
                # by max, which keeps it (a mean could move it by rounding), so that Lightning does not advise a sync
                pl_module.log(f"val/{label}/{key}", value, sync_dist=True, reduce_fx="max", logger=False)
            tuned = {} if samples is None or not samples.setup_nfe else {  # grid=select: its choice and its cost
                "setup_nfe": samples.setup_nfe, "selected": samples.selected}
            self.last_rows[label] = {"step": trainer.global_step, "sampler": label, **values, **tuned}
        if trainer.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.kind == "points" and drawable(tuple(denoiser.shape)):  # 1-D points have no scatter
                path = scatter_grid(panels, picture_path(self.out_dir, "scatter", trainer.global_step))
                self._images.append(("samples/scatter", path))
            self._append_rows()
            rank_zero_info(f"sampler evaluation at step {trainer.global_step}:\n{self.table()}")
            self._pending = True
        denoiser.train(was_training)

    def floor_values(self, trainer, pl_module) -> dict:
        """The noise floor: the datamodule's floor_set(n_samples), a second real set disjoint from the reference,
        scored as samples are (once per process: it does not change during fit). Empty when the data has none."""
        if self._floor is None:
            values = None
            if trainer.is_global_zero:
                x, why = floor_or_reason(trainer.datamodule, self.n_samples)
                if x is None:
                    rank_zero_info(f"no noise-floor row in the sampler table: {why} "
                                   f"(callbacks.sampler.n_samples={self.n_samples})")
                    values = {}
                else:
                    values = {**sample_stats(x, 0.0, 0.0, 0), **self.scorer(pl_module.device)(x.to(self.dtype))}
            self._floor = broadcast_from_zero(values)
        return self._floor

    def on_validation_end(self, trainer, pl_module):
        """The loggers get this evaluation now, after Lightning has logged its own validation values (at its step,
        one lower), and before the checkpoint callbacks run: W&B's step only ever grows."""
        if self._pending:
            self._pending = False
            self._log_metrics(trainer)
            for key, path in self._images:
                self._log_image(trainer, key, path)
            self._images.clear()

    def table(self) -> str:
        rows = list(self.last_rows.values())
        columns = ["sampler", "nfe", "wall_s", *self.metrics, "n_nonfinite", "setup_nfe", "selected"]
        return text_table(rows, [c for c in columns if any(c in r for r in rows)])

    def _log_metrics(self, trainer) -> None:
        """Every logger gets this evaluation's values at the step its images carry; W&B also gets one chart per
        metric of value against NFE (a point per sampler) and the best value of each sampler as a summary."""
        step = trainer.global_step
        flat = {f"val/{label}/{k}": v for label, row in self.last_rows.items() for k, v in row.items()
                if k not in ("step", "sampler", *UNCHARTED) and not (label == NOISE_FLOOR and k in ("nfe", "wall_s"))}
        for logger in trainer.loggers:
            logger.log_metrics(flat, step=step)
            if isinstance(logger, WandbLogger):
                self._wandb_charts(logger, step)
            elif isinstance(logger, CSVLogger):  # on disk now: a last.ckpt written at this step before the evaluation
                logger.save()  # is resumed from without redoing it, so rows kept in memory would be lost to a kill

    def _wandb_charts(self, logger, step: int) -> None:
        try:
            import wandb

            rows = [r for r in self.last_rows.values() if r["sampler"] != NOISE_FLOOR]  # val/noise_floor/<metric>
            columns = ["sampler", "nfe", "wall_s", *self.metrics]
            table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
            charts = {f"val_vs_nfe/{m}": wandb.plot.scatter(table, "nfe", m, title=f"{m} against NFE at step {step}")
                      for m in self.metrics}
            logger.experiment.log({"val_vs_nfe/table": table, **charts, "trainer/global_step": step}, step=step)
            summary = logger.experiment.summary
            for key, (value, at) in best_values(self.out_dir / "sampler_metrics.csv", self.metrics).items():
                summary[key], summary[f"{key}/step"] = value, at
        except Exception as err:  # noqa: BLE001  (W&B is a view: the CSV rows are the record)
            log.warning("W&B: evaluation charts not logged (%s: %s)", type(err).__name__, err)

    def _plot(self, trainer, label, samples, panels):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        nfe = f"{samples.nfe:g}"
        if self.kind == "points":
            panels[f"{label} (NFE {nfe})"] = samples.x
        else:
            path = image_grid(samples.x[: self.n_plot], picture_path(self.out_dir, label, trainer.global_step),
                              title=f"{label}, NFE {nfe}")
            self._images.append((f"samples/{label}", path))

    @staticmethod
    def _log_image(trainer, key, path):
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(path)], step=trainer.global_step)

    def _append_rows(self):
        """Append this evaluation's rows to samples/sampler_metrics.csv (the file stays the record across resumes).
        Rows with other columns than the file's (a resume with other metrics) rewrite it, atomically, under the union
        of both: appended under the old header, their values would sit in other columns."""
        path = self.out_dir / "sampler_metrics.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = list(self.last_rows.values())
        fields = ["step", "sampler", *sorted({k for row in rows for k in row} - {"step", "sampler"})]
        new = not path.exists()
        if not new:
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                header, earlier = reader.fieldnames or [], list(reader)
            if set(fields) - set(header):
                write_csv(path, earlier + rows, [*header, *(f for f in fields if f not in header)])
                return
            fields = header
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerows(rows)
            fh.flush()


# In sampler_metrics.csv, not charted: the configured sample count (a flat line per sampler; the noise floor's
# NFE and time are 0 too), and what a grid=select sampler chose on its pilot and that pilot's NFE (rank 0's)
UNCHARTED = ("n_samples", "setup_nfe", "selected")


def best_values(path, metrics) -> dict[str, tuple[float, int]]:
    """best/<sampler>/<metric> -> (value, step): each sampler's best over every evaluation in sampler_metrics.csv,
    the record that outlives a resume (an offline W&B start's summary knows only its own start). A metric ranked by
    its closeness to exact samples' value (loglik) ranks against that evaluation's noise floor; none without one."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    floors = {row["step"]: row for row in rows if row["sampler"] == NOISE_FLOOR}

    def number(row, metric):
        try:
            value = float(row.get(metric) or "nan")
        except ValueError:
            return None
        return value if value == value else None

    best = {}
    for row in rows:
        for m in metrics:
            key, value = f"best/{row['sampler']}/{m}", number(row, m)
            exact = number(floors[row["step"]], m) if row["step"] in floors else None
            if row["sampler"] != NOISE_FLOOR and value is not None and ranks_above(m, value, best.get(key, (None,))[0],
                                                                                  exact):
                best[key] = (value, int(row["step"]))
    return best


def sample_stats(x: torch.Tensor, nfe, wall_s, n_nonfinite) -> dict:
    """SAMPLE_STATS of a sample set: what it cost, its size, how many are distinct and how many not finite."""
    distinct = len(torch.unique(x.reshape(len(x), -1), dim=0))
    return dict(zip(SAMPLE_STATS, (nfe, wall_s, float(len(x)), float(distinct), float(n_nonfinite))))


def validation_interval(trainer) -> int | None:
    """The training steps between validations when they follow the step count (check_val_every_n_epoch=None, an
    integer val_check_interval: lsde-train's configs, which it converts to Lightning's batches under gradient
    accumulation); None when they follow epochs, or fall within an optimizer step."""
    batches, accumulation = trainer.val_check_batch, trainer.accumulate_grad_batches
    if trainer.check_val_every_n_epoch is None and isinstance(batches, int) and not isinstance(batches, bool) \
            and batches % accumulation == 0:
        return batches // accumulation
    return None
