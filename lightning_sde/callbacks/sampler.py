"""SamplerCallback: during fit, generate with each configured sampler, score the samples, log them.

It runs at the end of a validation epoch (skipping the sanity check). List it BEFORE EMAWeightAveraging: that
callback swaps the EMA weights in for validation and back at its own validation-epoch end, so this one samples
with the EMA weights. Seeds are split exactly across DDP ranks (rank r takes seeds r, r + W, ...: no padding,
no duplicates); samples are gathered for plots and point metrics, while FID/KID are torchmetrics metrics fed
each rank's shard and computed (a collective) on every rank. Metrics live here, never in the LightningModule,
so they stay out of checkpoints and EMA copies.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from lightning_sde.metrics import mmd, sliced_wasserstein
from lightning_sde.metrics.image import IMAGE_METRICS, new_image_metric, unit
from lightning_sde.plotting import image_grid, scatter_grid, text_table
from lightning_sde.samplers import build_sampler, sample

POINT_METRICS = {"sliced_w2": sliced_wasserstein, "mmd": mmd}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def sample_in_batches(sampler, denoiser, seeds, batch_size, device, dtype):
    """Samples for `seeds` in batches; the NFE reported is that of one full batch (max over batches)."""
    xs, nfe, wall = [], 0, 0.0
    for i in range(0, len(seeds), batch_size):
        x, info = sample(sampler, denoiser, seeds[i : i + batch_size], device=device, dtype=dtype)
        xs.append(x)
        nfe, wall = max(nfe, info["nfe"]), wall + info["wall_s"]
    return torch.cat(xs) if xs else torch.empty(0, *denoiser.shape, device=device, dtype=dtype), nfe, wall


class SamplerCallback(L.Callback):
    def __init__(
        self,
        samplers: dict[str, dict],
        n_samples: int = 1024,
        every_n_evals: int = 1,
        batch_size: int = 1024,
        metrics: list[str] | None = None,
        feature_extractor: str = "digits",
        dtype: str = "float32",
        first_seed: int = 0,
        n_plot: int = 64,
    ):
        if not samplers:
            raise ValueError("SamplerCallback needs at least one sampler: {label: {name: ..., params...}}")
        # Built now: a bad sampler config fails at start-up, naming it.
        self.samplers = {}
        for label, cfg in samplers.items():
            try:
                self.samplers[label] = build_sampler(**dict(cfg))
            except (TypeError, ValueError) as err:
                raise ValueError(f"callbacks.sampler.samplers.{label}: {err}") from None
        for key, value in {"n_samples": n_samples, "every_n_evals": every_n_evals, "batch_size": batch_size}.items():
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"SamplerCallback {key} must be an integer >= 1; got {value!r}")
        if dtype not in DTYPES:
            raise ValueError(f"SamplerCallback dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
        unknown = set(metrics or ()) - set(POINT_METRICS) - set(IMAGE_METRICS)
        if unknown:
            raise ValueError(f"SamplerCallback: unknown metrics {sorted(unknown)}; choose from {sorted(POINT_METRICS) + list(IMAGE_METRICS)}")
        self.n_samples = n_samples
        self.every_n_evals = every_n_evals
        self.batch_size = batch_size
        self.metrics = metrics
        self.feature_extractor = feature_extractor
        self.dtype = DTYPES[dtype]
        self.seeds = range(first_seed, first_seed + n_samples)
        self.n_plot = n_plot
        self._evals = 0
        self._image_metrics: dict[str, torch.nn.Module] = {}
        self.last_rows: dict[str, dict] = {}

    # --- set-up ----------------------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage):
        datamodule = trainer.datamodule
        self.kind = getattr(datamodule, "kind", "points")
        if self.metrics is None:
            self.metrics = ["sliced_w2", "mmd"] if self.kind == "points" else ["fid", "kid"]
        self.reference = datamodule.reference(self.n_samples)
        self.out_dir = Path(trainer.default_root_dir) / "samples"

    def _image_metric_objects(self, device):
        if not self._image_metrics:
            from lightning_sde.metrics.features import build_feature_extractor

            features = build_feature_extractor(self.feature_extractor)
            for name in self.metrics:
                if name in IMAGE_METRICS:
                    metric = new_image_metric(name, features, self.n_samples).to(device)
                    metric.update(unit(self._local(self.reference).to(device)), real=True)
                    self._image_metrics[name] = metric
        return self._image_metrics

    # --- helpers ---------------------------------------------------------------------------------------------
    def _rank_world(self, trainer):
        return trainer.global_rank, trainer.world_size

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        rank, world = self._rank_world(self._trainer)
        return x[rank::world]

    def _gather(self, pl_module, x_local: torch.Tensor) -> torch.Tensor:
        """All samples in seed order, on every rank. Shards differ in size by at most one: pad, gather, unpad."""
        rank, world = self._rank_world(self._trainer)
        if world == 1:
            return x_local
        width = math.ceil(self.n_samples / world)
        padded = torch.zeros(width, *x_local.shape[1:], dtype=x_local.dtype, device=x_local.device)
        padded[: len(x_local)] = x_local
        gathered = pl_module.all_gather(padded)  # (world, width, ...)
        full = torch.empty(self.n_samples, *x_local.shape[1:], dtype=x_local.dtype, device=x_local.device)
        for r in range(world):
            full[r::world] = gathered[r, : len(range(r, self.n_samples, world))]
        return full

    # --- the work ----------------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self._evals += 1
        if self._evals % self.every_n_evals:
            return
        self._trainer = trainer
        rank, world = self._rank_world(trainer)
        seeds = self.seeds[rank::world]  # exact split: no padding, no duplicates
        denoiser = pl_module.denoiser
        was_training = denoiser.training
        denoiser.eval()
        panels = {"data": self.reference} if self.kind == "points" else {}
        for label, sampler in self.samplers.items():
            x_local, nfe, wall = sample_in_batches(sampler, denoiser, seeds, self.batch_size, pl_module.device, self.dtype)
            x_all = self._gather(pl_module, x_local)
            values = {"nfe": float(nfe), "wall_s": wall, "n_samples": float(len(x_all)),
                      "n_distinct": float(torch.unique(x_all.reshape(len(x_all), -1), dim=0).shape[0])}
            values.update(self._score(x_local, x_all))
            for key, value in values.items():
                pl_module.log(f"val/{label}/{key}", value, sync_dist=False)  # same value on every rank
            self.last_rows[label] = {"step": trainer.global_step, "sampler": label, **values}
            if rank == 0:
                self._plot(trainer, label, x_all, nfe, panels)
        if rank == 0 and self.kind == "points":
            path = scatter_grid(panels, self.out_dir / f"scatter_step{trainer.global_step:07d}.png")
            self._log_image(trainer, "samples/scatter", path)
        if rank == 0:
            self._append_rows()
        denoiser.train(was_training)

    def _score(self, x_local, x_all) -> dict[str, float]:
        scores = {}
        for name in self.metrics:
            if name in POINT_METRICS:
                scores[name] = POINT_METRICS[name](x_all.cpu(), self.reference.cpu())
        if self.kind == "images" and set(self.metrics) & set(IMAGE_METRICS):
            for name, metric in self._image_metric_objects(x_local.device).items():
                metric.reset()  # keeps the real features (reset_real_features=False)
                metric.update(unit(x_local), real=False)
                value = metric.compute()  # a collective: every rank calls it
                scores[name] = float(value[0] if isinstance(value, tuple) else value)
        return scores

    def _plot(self, trainer, label, x_all, nfe, panels):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.kind == "points":
            panels[f"{label} (NFE {nfe})"] = x_all.cpu()
        else:
            path = image_grid(x_all[: self.n_plot], self.out_dir / f"{label}_step{trainer.global_step:07d}.png",
                              title=f"{label}, NFE {nfe}")
            self._log_image(trainer, f"samples/{label}", path)

    @staticmethod
    def _log_image(trainer, key, path):
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=key, images=[str(path)], step=trainer.global_step)

    def _append_rows(self):
        """Append this evaluation's rows to samples/sampler_metrics.csv (the file stays the record across resumes)."""
        path = self.out_dir / "sampler_metrics.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = list(self.last_rows.values())
        fields = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("step", "sampler"), k))
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            if new:
                writer.writeheader()
            writer.writerows(rows)
            fh.flush()

    def on_fit_end(self, trainer, pl_module):
        if trainer.global_rank == 0 and self.last_rows:
            rows = list(self.last_rows.values())
            rank_zero_info("\n" + text_table(rows, ["sampler"] + [k for k in rows[0] if k not in ("sampler", "n_distinct")]))

