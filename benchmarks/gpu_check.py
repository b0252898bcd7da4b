"""The CUDA paths on one GPU, measured: training images/s of experiment=cifar10_vp_ddpmpp's ScoreModule (DDPM++ on
32x32x3) under Lightning with strategy=ddp (NCCL, one process) in fp32, bf16-mixed and bf16-mixed + torch.compile
of the network; sampling images/s of DPM-Solver++(2M) at NFE 10 and 50 (fp32, bf16 autocast); peak memory of each.
Random weights and random images (timing does not depend on them; no dataset is needed on the GPU machine).
Then the per-step cost of the training path on small models (toy2d, digits; fp32): lsde-train's trainer with every
configured callback, without Preemption (its per-step all-reduce), with EMA only, on one device, and a plain loop.

    python benchmarks/gpu_check.py --out gpu_check.json        # benchmarks/gpu_check.sh runs it with the rest
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training_throughput import make  # noqa: E402

from lightning_sde.samplers import build_sampler  # noqa: E402


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer(L.Callback):
    """Images/s over the steps after `skip` warm-up steps, and the process group's backend."""

    def __init__(self, skip: int):
        self.skip, self.start, self.backend = skip, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.skip:
            synchronize()
            self.start = time.perf_counter()
        if self.backend is None and torch.distributed.is_initialized():
            self.backend = torch.distributed.get_backend()

    def on_train_end(self, trainer, pl_module):
        synchronize()
        self.seconds = time.perf_counter() - self.start
        self.steps = trainer.global_step - self.skip


def train(precision: str, compiled: bool, batch: int, steps: int, skip: int) -> dict:
    cfg, datamodule, module = make("cifar10_vp_ddpmpp")
    if compiled:
        module.denoiser.net = torch.compile(module.denoiser.net)
    images = torch.rand(4096, *datamodule.shape) * 2 - 1
    loader = torch.utils.data.DataLoader(images, batch_size=batch, shuffle=True, drop_last=True, num_workers=2,
                                         pin_memory=True, persistent_workers=True)
    timer = Timer(skip)
    torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(accelerator="gpu", devices=1, strategy="ddp", precision=precision, max_steps=skip + steps,
                        max_epochs=-1, gradient_clip_val=cfg.trainer.gradient_clip_val, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[EMAWeightAveraging(decay=cfg.callbacks.ema.decay), timer])
    trainer.fit(module, train_dataloaders=loader)
    return {"precision": precision, "compiled": compiled, "batch": batch, "timed_steps": timer.steps,
            "images_per_s": round(timer.steps * batch / timer.seconds, 1),
            "step_ms": round(1e3 * timer.seconds / timer.steps, 2), "backend": timer.backend,
            "parameters": sum(p.numel() for p in module.denoiser.parameters()),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


# The training path a user runs, step by step: lsde-train's build() (every configured callback, the checkpoint IO,
# SetAside) with validation off, against the same with callbacks removed and against a plain PyTorch loop.
PATH_VARIANTS = {
    "plain loop": None,
    "lsde-train, EMA only (ddp)": ["++trainer.strategy=ddp", *(f"callbacks.{k}=null" for k in
                                   ("sampler", "best", "last", "lr_monitor", "preemption", "progress"))],
    "lsde-train without Preemption (ddp)": ["++trainer.strategy=ddp", "callbacks.preemption=null"],
    "lsde-train (ddp)": ["++trainer.strategy=ddp"],
    "lsde-train (one device)": ["++trainer.strategy=auto"],
}


def training_path(experiment: str, variant: str, steps: int, skip: int, accelerator: str = "gpu") -> dict:
    """Steps/s of one PATH_VARIANTS entry (fp32, the experiment's batch size, validation off)."""
    import tempfile

    from hydra import compose, initialize_config_module
    from training_throughput import plain_loop

    from lightning_sde.callbacks import Preemption
    from lightning_sde.cli.train import build
    from lightning_sde.configuration import CONFIG_PACKAGE

    device = "cuda" if accelerator == "gpu" else "cpu"
    with tempfile.TemporaryDirectory() as run_dir:
        extra = PATH_VARIANTS[variant] or []
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("train", overrides=[
                f"experiment={experiment}", "run_name=bench", f"run_dir={run_dir}", "logger=none",
                f"trainer.accelerator={accelerator}", "trainer.devices=1", "trainer.precision=32-true",
                f"trainer.max_steps={skip + steps}", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
                "trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", *extra])
        run = build(cfg)
        if PATH_VARIANTS[variant] is None:
            rate = plain_loop(cfg, run.datamodule, run.module, steps, device)
        else:
            timer = Timer(skip)
            run.trainer.callbacks.append(timer)
            run.trainer.fit(run.module, datamodule=run.datamodule)
            if any(isinstance(cb, Preemption) and cb.interrupted for cb in run.trainer.callbacks):
                raise SystemExit(143)  # SIGTERM (a timeout): Preemption stopped the fit at a step; stop here too
            rate = timer.steps / timer.seconds
    return {"experiment": experiment, "variant": variant, "batch": cfg.data.batch_size, "steps": steps,
            "steps_per_s": round(rate, 1)}


def training_paths(experiments, steps: int, skip: int, rounds: int, accelerator: str = "gpu") -> list[dict]:
    """Each variant `rounds` times, alternating; the median and spread of steps/s, and each variant's time per step
    over the plain loop's."""
    rows = []
    for experiment in experiments:
        rates = {variant: [] for variant in PATH_VARIANTS}
        for _ in range(rounds):
            for variant in PATH_VARIANTS:
                rates[variant].append(training_path(experiment, variant, steps, skip, accelerator)["steps_per_s"])
                print("training path", experiment, variant, rates[variant][-1], flush=True)
        plain = statistics.median(rates["plain loop"])
        for variant, values in rates.items():
            rows.append({"experiment": experiment, "variant": variant, "steps_per_s": statistics.median(values),
                         "all_steps_per_s": values, "time_per_step_over_plain": round(plain / statistics.median(
                             values), 3)})
    return rows


def sampling(batch: int, nfe: int, dtype: str, repeats: int = 2) -> dict:
    _, datamodule, module = make("cifar10_vp_ddpmpp")
    denoiser = module.denoiser.cuda().eval()
    sampler = build_sampler("dpmpp", order=2).at_nfe(nfe)
    x_T = torch.randn(batch, *datamodule.shape, device="cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    torch.cuda.reset_peak_memory_stats()
    with autocast:
        sampler(denoiser, x_T)  # warm-up
        seconds = []
        for _ in range(repeats):
            _, info = sampler(denoiser, x_T)
            seconds.append(info["wall_s"])
    best = sorted(seconds)[len(seconds) // 2]
    return {"sampler": "dpmpp_2m", "nfe": info["nfe"], "dtype": dtype, "batch": batch,
            "images_per_s": round(batch / best, 1), "seconds": round(best, 3),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=128, help="training batch (one GPU)")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per setting")
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--path-steps", type=int, nargs=2, default=(300, 100), metavar=("TOY2D", "DIGITS"),
                        help="timed steps of each training-path variant (about 4 s each on an H200)")
    parser.add_argument("--path-rounds", type=int, default=2)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "lightning": L.__version__,
              "python": platform.python_version(), "training": [], "sampling": [], "training_path": [],
              "errors": []}

    def attempt(kind, fn, *a):
        try:
            value = fn(*a)
            result[kind].extend(value if isinstance(value, list) else [value])
            print(kind, value, flush=True)
        except Exception as err:  # noqa: BLE001  (a failing setting is a finding: record it, measure the rest)
            result["errors"].append({"kind": kind, "args": [str(v) for v in a], "error": f"{type(err).__name__}: "
                                     f"{err}", "traceback": traceback.format_exc()[-2000:]})
            print("FAILED", kind, a, err, flush=True)
        args.out.write_text(json.dumps(result, indent=1))

    for precision, compiled in (("32-true", False), ("bf16-mixed", False), ("bf16-mixed", True)):
        attempt("training", train, precision, compiled, args.batch, args.steps, 10 if not compiled else 15)
    for dtype in ("fp32", "bf16"):
        for nfe in (10, 50):
            attempt("sampling", sampling, args.sample_batch, nfe, dtype)
    for experiment, steps in zip(("toy2d", "digits"), args.path_steps):
        attempt("training_path", training_paths, (experiment,), steps, 50, args.path_rounds)


if __name__ == "__main__":
    main()
