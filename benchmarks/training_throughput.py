"""Training throughput (steps/s) on this machine, and the overhead of the Lightning path over a plain PyTorch loop.

Both paths do the same work per step: the ScoreModule's DSM loss on one batch, backward, gradient clipping at 1.0,
AdamW with the warm-up schedule, and an EMA update (Lightning: EMAWeightAveraging; plain: the same
torch.optim.swa_utils.AveragedModel with get_ema_avg_fn). No validation, logging or checkpointing in either.
The two are timed side by side, alternating, in one process, and each figure is the median over rounds.

    .venv/bin/python benchmarks/training_throughput.py            # writes results/training_throughput.{csv,md,png}
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from lightning.fabric.utilities.apply_func import move_data_to_device  # noqa: E402
from lightning.pytorch.callbacks import EMAWeightAveraging  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn  # noqa: E402

from lightning_sde.configuration import CONFIG_PACKAGE  # noqa: E402
from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make(experiment: str, overrides=()):
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "run_name=bench", "logger=none", *overrides])
    datamodule = instantiate(cfg.data)
    plain = lambda node: OmegaConf.to_container(node, resolve=True)
    module = instantiate(cfg.model, sde=plain(cfg.sde), shape=list(datamodule.shape), loss=plain(cfg.loss),
                         optim=plain(cfg.optim), _recursive_=False, _convert_="all")
    return cfg, datamodule, module


def plain_loop(cfg, datamodule, module, steps: int, device: str = "cpu") -> float:
    torch.manual_seed(0)
    module.to(device)
    opt_cfg = module.configure_optimizers()
    opt, schedule = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    ema = AveragedModel(module, multi_avg_fn=None, avg_fn=get_ema_avg_fn(cfg.callbacks.ema.decay), use_buffers=True)
    batches = iter(datamodule.train_dataloader())
    augment = getattr(datamodule, "augment", None)  # as ScoreModule.training_step: uint8 images to floats
    module.train()
    start = None
    for step in range(steps + 10):
        if step == 10:  # warm-up steps are not timed
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
        try:
            x0 = next(batches)
        except StopIteration:
            batches = iter(datamodule.train_dataloader())
            x0 = next(batches)
        x0 = move_data_to_device(x0, device)
        x0, _ = module.labels_of(x0 if augment is None else augment(x0))
        loss = module.loss_fn(module.denoiser, x0).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.trainer.gradient_clip_val)
        opt.step()
        schedule.step()
        ema.update_parameters(module)
    if device != "cpu":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


class StepTimer(L.Callback):
    def __init__(self, skip: int = 10):
        self.skip, self.start, self.steps = skip, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.skip:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.rate = (trainer.global_step - self.skip) / (time.perf_counter() - self.start)


def lightning_loop(cfg, datamodule, module, steps: int, precision: str = "32-true", skip: int = 10) -> float:
    torch.manual_seed(0)
    timer = StepTimer(skip)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps + skip, max_epochs=-1, precision=precision,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[EMAWeightAveraging(decay=cfg.callbacks.ema.decay), timer],
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.rate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = []
    for experiment in ("toy2d", "digits"):
        rates = {"plain": [], "lightning": []}
        for _ in range(args.rounds):
            for path, loop in (("plain", plain_loop), ("lightning", lightning_loop)):
                cfg, datamodule, module = make(experiment)  # fresh model and optimizer each time
                rates[path].append(loop(cfg, datamodule, module, args.steps))
        plain, lightning = statistics.median(rates["plain"]), statistics.median(rates["lightning"])
        rows.append({
            "experiment": experiment, "batch_size": cfg.data.batch_size,
            "parameters": sum(p.numel() for p in module.denoiser.parameters()),
            "plain_steps_per_s": round(plain, 2), "lightning_steps_per_s": round(lightning, 2),
            "lightning_overhead": round(plain / lightning, 3), "rounds": args.rounds, "steps_per_round": args.steps,
            "threads": torch.get_num_threads(), "device": "cpu", "commit": commit,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        print(rows[-1], flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(args.out_dir / "training_throughput.csv", rows)
    table = ["| experiment | batch | parameters | plain PyTorch (steps/s) | Lightning (steps/s) | plain / Lightning |",
             "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['experiment']} | {r['batch_size']} | {r['parameters']:,} | {r['plain_steps_per_s']} | "
              f"{r['lightning_steps_per_s']} | {r['lightning_overhead']} |" for r in rows]
    (args.out_dir / "training_throughput.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = torch.arange(len(rows)).float()
    ax.bar(x - 0.2, [r["plain_steps_per_s"] for r in rows], 0.4, label="plain PyTorch loop")
    ax.bar(x + 0.2, [r["lightning_steps_per_s"] for r in rows], 0.4, label="Lightning Trainer")
    ax.set_xticks(x.tolist(), [f"{r['experiment']}\n(overhead x{r['lightning_overhead']})" for r in rows])
    ax.set(ylabel="training steps / s", title=f"Training throughput, CPU ({rows[0]['threads']} threads)")
    ax.legend()
    fig.tight_layout()
    save_atomically(fig, args.out_dir / "training_throughput.png", dpi=120)


if __name__ == "__main__":
    main()
