"""ScoreModule: a LightningModule that trains a Denoiser by continuous-time denoising score matching.

Everything needed to rebuild the model is in its hyperparameters (plain dicts from the Hydra config: the network
and the SDE as `_target_` nodes), so a checkpoint loads by path alone: `lightning_sde.load_denoiser("last.ckpt")`.
With Lightning's EMAWeightAveraging the checkpoint's `state_dict` holds the EMA weights (the raw ones sit in
`current_model_state`), so a loaded model samples with EMA weights; during fit the callback swaps the EMA weights in
for validation, when samplers run.
The checkpoint also carries the training data's mean and covariance (`denoiser.data_moments`, measured on up to
MOMENT_SAMPLES training samples when a fit starts), which samplers' gaussian_start uses.
"""

from __future__ import annotations

import lightning as L
import torch

from lightning_sde.configuration import build
from lightning_sde.losses import DSMLoss
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.models.moments import DataMoments
from lightning_sde.sde import SDE, build_sde

MOMENT_SAMPLES = 10_000


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
    ):
        super().__init__()
        self.save_hyperparameters()
        self.sde = sde_from_config(sde)
        self.denoiser = Denoiser(build(net, "model.net"), self.sde, parameterization, tuple(shape),
                                 sigma_data=sigma_data)
        self.loss_fn = DSMLoss(self.sde, **(loss or {}))
        self.optim = {"lr": 2e-4, "weight_decay": 0.0, "betas": (0.9, 0.999), "warmup_steps": 0, **(optim or {})}

    def training_step(self, x0, batch_idx):
        loss = self.loss_fn(self.denoiser, x0).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, x0, batch_idx):
        # Fixed t and noise per batch: the validation loss is comparable across epochs and runs.
        gen = torch.Generator().manual_seed(batch_idx)
        self.log("val/loss", self.loss_fn(self.denoiser, x0, gen).mean(), sync_dist=True, prog_bar=True)

    def on_fit_start(self):
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.denoiser.data_moments is None and datamodule is not None:
            self.denoiser.data_moments = DataMoments.of_samples(training_samples(datamodule, MOMENT_SAMPLES))

    def on_save_checkpoint(self, checkpoint):
        if self.denoiser.data_moments is not None:
            checkpoint["data_moments"] = self.denoiser.data_moments.to_state()

    def on_load_checkpoint(self, checkpoint):
        if "data_moments" in checkpoint:
            self.denoiser.data_moments = DataMoments.from_state(checkpoint["data_moments"])

    def configure_optimizers(self):
        o = self.optim
        opt = torch.optim.AdamW(self.parameters(), lr=o["lr"], weight_decay=o["weight_decay"], betas=tuple(o["betas"]))
        warmup = max(int(o["warmup_steps"]), 0)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def sde_from_config(cfg: dict) -> SDE:
    """An SDE from its config node: `_target_` (configs/sde/), or a {name: ...} node of checkpoints before 0.2."""
    if "_target_" not in cfg and "name" in cfg:
        return build_sde(**cfg)
    sde = build(cfg, "sde")
    if not isinstance(sde, SDE):
        raise ValueError(f"config sde: {cfg.get('_target_')!r} is not an SDE (got {type(sde).__name__})")
    return sde


def training_samples(datamodule, n: int) -> torch.Tensor:
    """The datamodule's first min(n, training set size) training samples, via reference(): the same on every rank."""
    return datamodule.reference(min(n, len(datamodule.train_dataloader().dataset)))
