"""ScoreModule: a LightningModule that trains a Denoiser by continuous-time denoising score matching.

Everything needed to rebuild the model is in its hyperparameters (plain dicts from the Hydra config: the network
and the SDE as `_target_` nodes), so a checkpoint loads by path alone: `lightning_sde.load_denoiser("last.ckpt")`.
With the EMA callback (callbacks.EMA, Lightning's EMAWeightAveraging) the checkpoint's `state_dict` holds the EMA
weights (the raw ones sit in `current_model_state`, the final checkpoint included), so a loaded model samples with
EMA weights and a resumed run trains on from the raw ones; during fit the callback swaps the EMA weights in for
validation, when samplers run.
The checkpoint also carries the training data's mean and covariance (`denoiser.data_moments`, measured on up to
10,000 training samples when a fit starts: data.base.training_moments), which samplers' gaussian_start uses.

Training never goes on silently wrong: a non-finite loss or gradient norm stops the fit with an error naming the
step and the last finite loss, and no checkpoint is ever written with non-finite weights. Its randomness is a
function of (seed, global step, rank; and the batch within the step under gradient accumulation): the random times
and noise of the loss, dropout and the datamodule's augmentation are drawn after seeding the generators from them at
every batch, so a resumed run continues exactly as an uninterrupted one would.

Speed options (model config, all off by default): `compile` compiles the network in place with torch.compile for
training and sampling (the state dict keeps its keys); `channels_last` keeps an image network's weights and inputs
NHWC; `autocast: bf16` runs the network under bf16 autocast when sampling (for training, trainer.precision=bf16-mixed).
benchmarks/speed_options.py measures them; tests/unit/test_speed_options.py checks each against fp32 eager.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import struct

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

from lightning_sde.configuration import build
from lightning_sde.data.base import batch_in_step, ends_a_step, split_labels, training_moments
from lightning_sde.distributed import slurm_job, slurm_restarts
from lightning_sde.errors import NonFiniteError, nonfinite_keys
from lightning_sde.losses import DSMLoss
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.models.moments import DataMoments
from lightning_sde.sde import sde_from_config

log = logging.getLogger(__name__)


def check_optim(optim: dict) -> dict:
    """The optimizer settings, each checked (ValueError naming `optim.<key>`)."""
    optim = {"lr": 2e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), "warmup_steps": 0, **optim}
    unknown = sorted(set(optim) - {"lr", "weight_decay", "betas", "warmup_steps"})
    if unknown:
        raise ValueError(f"config optim: unknown key(s) {unknown}; allowed: lr, weight_decay, betas, warmup_steps")
    number = lambda v: not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    if not (number(optim["lr"]) and optim["lr"] > 0):
        raise ValueError(f"config optim.lr: must be a finite number > 0; got {optim['lr']!r}")
    if not (number(optim["weight_decay"]) and optim["weight_decay"] >= 0):
        raise ValueError(f"config optim.weight_decay: must be a number >= 0; got {optim['weight_decay']!r}")
    betas = optim["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(number(b) and 0 <= b < 1 for b in betas)):
        raise ValueError(f"config optim.betas: must be two numbers in [0, 1); got {betas!r}")
    steps = optim["warmup_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"config optim.warmup_steps: must be an integer >= 0; got {steps!r}")
    return {**optim, "betas": tuple(betas)}


def warmup_factor(warmup_steps: int, step: int) -> float:
    """The lr's factor at scheduler step `step` (0 at the first optimizer step): linear warm-up to 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def batch_seed(seed: int, batch: int, rank: int) -> int:
    """The seed of one training batch's randomness: a 63-bit hash of (run seed, batch, rank), so that no run shares
    its streams with another (an affine code of the three gave run seed 1 the streams of seed 0 a million batches
    on); `batch` counts the batches trained on (optimizer steps x accumulated batches: the global step without
    accumulation). torch's CPU generator keeps the seed's low 32 bits: of 10**6 batches about 116 pairs share their
    CPU draws (n**2 / 2**33), scattered, where the affine code aliased every batch."""
    digest = hashlib.blake2b(struct.pack("<qqq", seed, batch, rank), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


VALIDATION_RUN_SEED = -1  # validation's fixed noise: batch_seed of a run seed no run has (seeds are >= 0)


class ScoreModule(L.LightningModule):
    def __init__(
        self,
        net: dict,
        sde: dict,
        shape: list[int],
        parameterization: str = "eps",
        sigma_data: float | None = None,
        loss: dict | None = None,
        optim: dict | None = None,
        p_uncond: float = 0.1,
        compile: bool = False,
        channels_last: bool = False,
        autocast: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # lsde-train logs the whole config once
        if isinstance(p_uncond, bool) or not isinstance(p_uncond, (int, float)) or not 0 <= p_uncond <= 1:
            raise ValueError(f"config model.p_uncond: must be a number in [0, 1]; got {p_uncond!r}")
        self.p_uncond = float(p_uncond)  # label dropout of a class-conditional network
        self.optim = check_optim(dict(optim or {}))
        self.sde = sde_from_config(sde)
        try:
            self.loss_fn = DSMLoss(self.sde, **(loss or {}))
        except (TypeError, ValueError) as err:
            raise ValueError(f"config loss: {err}") from None
        for key, value in (("compile", compile), ("channels_last", channels_last)):
            if not isinstance(value, bool):
                raise ValueError(f"config model.{key}: must be true or false; got {value!r}")
        network = build(net, "model.net")
        try:
            self.denoiser = Denoiser(network, self.sde, parameterization, tuple(shape), sigma_data=sigma_data,
                                     num_classes=getattr(network, "num_classes", None), channels_last=channels_last,
                                     autocast=autocast)
        except ValueError as err:
            raise ValueError(f"config model: {err}") from None
        if self.denoiser.num_classes is not None and self.p_uncond == 1:
            raise ValueError("config model.p_uncond: 1 drops every label, so the network learns no class; leave "
                             "model.net.num_classes out for an unconditional model")
        self.denoiser.unconditional_learned = self.p_uncond > 0
        if channels_last:
            network.to(memory_format=torch.channels_last)
        if compile:  # in place: the state dict keeps its keys, so checkpoints load with or without it
            network.compile()
        self.data_config: dict | None = None  # the data's config (lsde-train sets it): a resume compares it
        self.init_from: str | None = None  # the checkpoint whose weights the run started from (lsde-train's init_from)
        self.resumed_from: str | None = None  # another run's checkpoint this run went on from (an explicit ckpt_path)
        self._watched: list = []  # (step, what, device scalar) since the last check_finite()
        self._last_finite_loss: tuple[int, float] | None = None
        self._loss_logged_at = -1  # the global step (before its optimizer step) whose loss was last handed to self.log
        self._step_loss = None  # this optimizer step's loss so far: the sum of its batches' losses / their number
        self._labels_checked = False  # the range of a batch's labels, once a fit (labels_of)

    # --- training --------------------------------------------------------------------------------------------
    def labels_of(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x0, labels for the network): labels only for a class-conditional network, which must get them."""
        x0, y = split_labels(batch)
        if self.denoiser.num_classes is None:
            return x0, None
        if y is None:
            raise ValueError("model.net.num_classes is set but the batches have no labels: they must be (x, labels) "
                             "(lsde-train: data.labels=true)")
        if not self._labels_checked:  # a fit's first batch (one read back): label K is the null label's, trained
            self._labels_checked = True  # silently under 1-based labels 1..K
            classes, low, high = self.denoiser.num_classes, int(y.min()), int(y.max())
            if low < 0 or high >= classes:
                raise ValueError(f"labels must be class indices 0..{classes - 1} (model.net.num_classes = {classes}); "
                                 f"a batch holds {low}..{high}" + ("; labels 1..K? subtract 1" if high == classes
                                                                   else ""))
        return x0, y

    def training_step(self, batch, batch_idx):
        # This batch's randomness is seeded from (seed, step, batch of the step, rank) first: the datamodule's
        # augmentation (on the device), the label dropout, the loss's random times and noise, dropout. A resumed run
        # continues exactly. Under gradient accumulation an optimizer step takes several batches.
        accumulate, position = self.trainer.accumulate_grad_batches, batch_in_step(self.trainer, batch_idx)
        counted = self.trainer.global_step * accumulate + position
        seed = batch_seed(int(os.environ.get("PL_GLOBAL_SEED", 0)), counted, self.trainer.global_rank)
        # Only the generators this run draws from: torch.manual_seed would also queue a lazy CUDA seeding (with a
        # formatted stack trace) at every step of a CPU run on a CUDA build.
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        augment = getattr(self.trainer.datamodule, "augment", None)
        if augment is not None:
            batch = augment(batch)
        x0, y = self.labels_of(batch)
        if y is not None:  # label dropout: the same network learns p(x | y) and, with the null label, p(x)
            drop = torch.rand(y.shape, device=y.device) < self.p_uncond
            y = torch.where(drop, torch.full_like(y, self.denoiser.num_classes), y)
        loss = self.loss_fn(self.denoiser, x0, labels=y).mean()
        self._watch(loss, "the loss")
        # the step's loss is the mean over its batches (one device add a batch under gradient accumulation)
        part = loss.detach() if accumulate == 1 else loss.detach() / accumulate
        self._step_loss = part if position == 0 else self._step_loss + part
        if position == accumulate - 1 and self._logging_step():
            self.log("train/loss", self._step_loss, prog_bar=True)
            self._loss_logged_at = self.trainer.global_step
        return loss

    def _logging_step(self) -> bool:
        """Whether the loggers write this step's metrics (every trainer.log_every_n_steps): self.log costs ~0.3 ms
        (5 % of a toy2d step), so the loss is handed to Lightning only when it will be written."""
        connector = getattr(self.trainer, "_logger_connector", None)
        return connector is None or bool(connector.should_update_logs)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip by norm as Lightning would, and watch that same norm: one pass over the gradients, not two."""
        if gradient_clip_algorithm not in (None, "norm"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if gradient_clip_val:
            torch.nn.utils.clip_grads_with_norm_(params, gradient_clip_val, norm)
        if self.trainer.precision not in ("16-mixed", "16"):  # fp16's GradScaler skips such steps itself
            self._watch(norm, "the gradient norm")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # a stop (a preemption callback's, before this hook, at a step's end) makes Lightning write this step's
        # metrics: with its loss
        if self.trainer.should_stop and self._loss_logged_at != self.trainer.global_step - 1 \
                and ends_a_step(self.trainer, batch_idx):
            self.log("train/loss", self._step_loss, prog_bar=True)
        if ends_a_step(self.trainer, batch_idx) and self.trainer.global_step % max(self.trainer.log_every_n_steps,
                                                                                   1) == 0:
            self.check_finite()  # one host sync every log interval, where logging syncs anyway

    def _fitting(self) -> bool:
        """Within fit (its validations included: trainer.training is False during them)."""
        return self._trainer is not None and self._trainer.state.fn == TrainerFn.FITTING

    def on_validation_epoch_start(self):
        if self._fitting():
            self.check_finite()  # before the samplers run on the weights

    def on_train_end(self):
        self.check_finite()

    def _watch(self, value, what: str) -> None:
        """Keep `value` (a device scalar, no host sync) for the next check_finite(), which finds the first step whose
        value is not finite; one list append a step instead of a dozen small device ops."""
        self._watched.append((self.trainer.global_step, what, value.detach()))

    def check_finite(self) -> None:
        """Raise NonFiniteError if any rank has seen a non-finite loss or gradient norm (a collective under DDP)."""
        watched, self._watched = self._watched, []
        bad = None
        if watched:
            values = torch.stack([v.float() for _, _, v in watched]).cpu()  # one host sync for the whole interval
            finite = torch.isfinite(values)
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0])
            losses = [i for i, (_, what, _) in enumerate(watched[:bad]) if what == "the loss" and finite[i]]
            if losses:
                self._last_finite_loss = (watched[losses[-1]][0], float(values[losses[-1]]))
        seen = bad is not None
        if not self.trainer.strategy.reduce_boolean_decision(seen, all=False):
            return
        # every process raises with the first bad step of any (what the checkpoints are set aside by: SetAside)
        first = int(self.trainer.strategy.reduce(torch.tensor(watched[bad][0] if seen else 2**62,
                                                              device=self.device), reduce_op="min"))
        if not seen:
            raise NonFiniteError(f"training stopped: at step {first} another process saw a non-finite loss or "
                                 "gradient norm (its error says which)", first)
        step, what, _ = watched[bad]
        last = (f"the last finite loss was {self._last_finite_loss[1]:.6g} at step {self._last_finite_loss[0]}"
                if self._last_finite_loss is not None else "no finite loss before it")
        raise NonFiniteError(f"training stopped: at step {step} {what} was {float(values[bad])}; {last}. No "
                             "checkpoint was written after it; resume from one written before it with a lower "
                             "optim.lr (a new lr applies on resume), a longer optim.warmup_steps or a smaller "
                             "trainer.gradient_clip_val", first)

    def validation_step(self, batch, batch_idx):
        # Fixed t and noise per batch and rank: the validation loss is comparable across epochs and runs (of one
        # number of processes; conditional models: with the true labels).
        gen = torch.Generator().manual_seed(batch_seed(VALIDATION_RUN_SEED, batch_idx, self.trainer.global_rank))
        x0, y = self.labels_of(batch)
        self.log("val/loss", self.loss_fn(self.denoiser, x0, gen, labels=y).mean(), sync_dist=True, prog_bar=True)

    def check_labels(self, datamodule) -> None:
        """A class-conditional network needs labelled data with as many classes; labelled data, a class-conditional
        network (an unconditional one would drop the labels: a whole run without the classes asked for). Without one of
        lightning_sde.data's datamodules (a plain DataLoader, a user's own) each batch is checked as it comes
        (labels_of)."""
        if not hasattr(datamodule, "labelled"):
            return
        classes = getattr(datamodule, "num_classes", None) if getattr(datamodule, "labelled", False) else None
        if self.denoiser.num_classes is None and getattr(datamodule, "labelled", False):
            raise ValueError(f"config data.labels: the data gives labels{f' ({classes} classes)' if classes else ''} "
                             f"but the network is unconditional: set +model.net.num_classes="
                             f"{classes or '<classes>'} (a class-conditional network), or data.labels=false")
        if self.denoiser.num_classes is not None and classes != self.denoiser.num_classes:
            raise ValueError(f"config model.net.num_classes = {self.denoiser.num_classes} but the data "
                             + (f"has {classes} classes" if classes else "has no labels (set data.labels=true)"))

    def on_fit_start(self):
        self._labels_checked = False
        datamodule = getattr(self.trainer, "datamodule", None)
        self.check_labels(datamodule)
        if self.denoiser.data_moments is None and callable(getattr(datamodule, "reference", None)):
            self.denoiser.data_moments = training_moments(datamodule)  # a user's datamodule: none (docs/training.md)

    def on_save_checkpoint(self, checkpoint):
        if self._fitting():  # a best checkpoint written at a validation's end included
            self.check_finite()
        # what is written: the weights every app loads (the average, under EMA) and the raw ones a resume trains on
        parts = {"state_dict": "state_dict (the averaged weights under EMA)", "current_model_state": "raw weights"}
        bad = [f"{parts[part]}: {name}" for part in parts for name in nonfinite_keys(checkpoint.get(part, {}))]
        if bad:
            raise NonFiniteError(f"refusing to write a checkpoint at step {self.trainer.global_step}: "
                                 f"{bad[:3]}{' ...' if len(bad) > 3 else ''} hold NaN or infinite values")
        if self.denoiser.data_moments is not None:
            checkpoint["data_moments"] = self.denoiser.data_moments.to_state()
        if self.data_config is not None:
            checkpoint["data_config"] = self.data_config
        if self.init_from is not None:
            checkpoint["init_from"] = self.init_from
        if self.resumed_from is not None:
            checkpoint["resumed_from"] = self.resumed_from
        if self._fitting():  # a resume keeps them: the data position, each rank's share and the batch seeds count them
            checkpoint["accumulate_grad_batches"] = self.trainer.accumulate_grad_batches
            checkpoint["world_size"] = self.trainer.world_size
            batch_size = getattr(self.trainer.datamodule, "batch_size", None)
            if batch_size is not None:
                checkpoint["batch_size"] = batch_size
            if slurm_job() is not None:  # a requeued job knows its own checkpoints (lsde-train's resume_point)
                checkpoint["slurm_job"] = slurm_job()
                checkpoint["slurm_restart"] = slurm_restarts()

    def on_load_checkpoint(self, checkpoint):
        if "current_model_state" in checkpoint and self._fitting() \
                and not any(isinstance(cb, WeightAveraging) for cb in self._trainer.callbacks):
            # an EMA run resumed without its EMA callback trains on from the raw weights, not from the average
            log.info("resuming without weight averaging: training goes on from the raw weights (current_model_state)")
            checkpoint["state_dict"] = checkpoint["current_model_state"]
        if "data_moments" in checkpoint:
            self.denoiser.data_moments = DataMoments.from_state(checkpoint["data_moments"])
        if self.init_from is None:  # kept by every later checkpoint of the run (lsde-train sets where it lies now)
            self.init_from = checkpoint.get("init_from")
        if self.resumed_from is None:  # the run's own checkpoint: its record; another run's: this run's start
            self.resumed_from = checkpoint.get("resumed_from")
        self._apply_configured_hyperparameters(checkpoint)
        self._apply_configured_lr(checkpoint)

    def _apply_configured_hyperparameters(self, checkpoint) -> None:
        """optim.weight_decay and optim.betas of this config replace the restored ones (unchanged: untouched)."""
        optimizers = checkpoint.get("optimizer_states") or []
        for group in optimizers[0].get("param_groups", []) if len(optimizers) == 1 else []:
            for key, value in (("weight_decay", float(self.optim["weight_decay"])),
                               ("betas", tuple(float(b) for b in self.optim["betas"]))):
                restored = group.get(key)
                if restored is not None and (tuple(restored) if key == "betas" else restored) != value:
                    log.info("optim.%s: %s from this config, in place of %s from the checkpoint", key, value,
                             group[key])
                    group[key] = value

    def _apply_configured_lr(self, checkpoint) -> None:
        """A resume restores the optimizer and scheduler states, and with them the lr of the schedule they were built
        with, which the restored step would keep until the scheduler's next step: the lr of this config's optim.lr
        and optim.warmup_steps at the restored step is set instead (a changed lr or warm-up, the advice after a
        non-finite loss, takes effect from the first step). An unchanged schedule leaves the checkpoint untouched
        (exact resume: the same product)."""
        optimizers, schedulers = checkpoint.get("optimizer_states") or [], checkpoint.get("lr_schedulers") or []
        groups = optimizers[0].get("param_groups", []) if len(optimizers) == 1 else []
        if len(schedulers) != 1 or "last_epoch" not in schedulers[0] or not all("lr" in g for g in groups):
            return
        new, step = float(self.optim["lr"]), schedulers[0]["last_epoch"]
        lr = new * warmup_factor(self.optim["warmup_steps"], step)
        if all(g["lr"] == lr and g.get("initial_lr", new) == new for g in groups):
            return
        log.info("optim.lr %g and optim.warmup_steps %d from this config: lr %g at the restored step %d, in place of "
                 "%s from the checkpoint", new, self.optim["warmup_steps"], lr, step,
                 ", ".join(f"{g['lr']:g}" for g in groups))
        for group in groups:
            group["lr"], group["initial_lr"] = lr, new
        state = schedulers[0]
        if "base_lrs" in state:
            state["base_lrs"] = [new] * len(state["base_lrs"])
        if "_last_lr" in state:
            state["_last_lr"] = [lr] * len(groups)

    def configure_optimizers(self):
        o = self.optim
        opt = torch.optim.AdamW(self.parameters(), lr=o["lr"], weight_decay=o["weight_decay"], betas=o["betas"])
        warmup = o["warmup_steps"]  # a plain function: LambdaLR keeps no state of it in checkpoints
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_factor(warmup, step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
