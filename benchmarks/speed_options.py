"""The model's opt-in speed options on this machine's CPU: training steps/s and sampling images/s of the digits U-Net.

Training (the Lightning path of training_throughput.py, experiment=digits, batch 128): fp32 eager, channels_last,
bf16-mixed (trainer.precision) and model.compile=true; sampling (DPM-Solver++(2M) at NFE 10, batch 500): fp32 eager,
channels_last, autocast=bf16 and compiled. Compilation is excluded from the timings (warm-up steps / one warm-up
batch), its one-off time is reported apart. Each figure is the median of `--rounds` rounds, the options alternating.
The equality of each option with fp32 eager is tested in tests/unit/test_speed_options.py, not here.

    .venv/bin/python benchmarks/speed_options.py       # writes results/speed_options.{csv,md,png}
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from training_throughput import lightning_loop, make  # noqa: E402

from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402
from lightning_sde.samplers import SeededNoise, build_sampler  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {"fp32 eager": ([], "32-true", None), "channels_last": (["model.channels_last=true"], "32-true", None),
           "bf16": ([], "bf16-mixed", "bf16"), "compiled": (["model.compile=true"], "32-true", None)}


def sampling_rate(module, autocast, batch: int, repeats: int) -> tuple[float, float]:
    """(images/s of DPM-Solver++(2M) at NFE 10, seconds of the first, warm-up batch)."""
    den = module.denoiser.eval()
    den.autocast = autocast
    sampler = build_sampler("dpmpp", steps=10, order=2)
    x_T = den.sde.prior_sample(SeededNoise(range(batch), den.shape).prior())
    start = time.perf_counter()
    sampler(den, x_T)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        sampler(den, x_T)
    return repeats * batch / (time.perf_counter() - start), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500, help="sampling batch")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rates = {name: {"train": [], "sample": [], "sample_warmup_s": []} for name in OPTIONS}
    for _ in range(args.rounds):
        for name, (overrides, precision, autocast) in OPTIONS.items():
            cfg, datamodule, module = make("digits", overrides)
            skip = 15 if "compile" in name else 10  # compilation happens in the first steps
            rates[name]["train"].append(lightning_loop(cfg, datamodule, module, args.steps, precision, skip))
            rate, first = sampling_rate(module, autocast, args.batch, 2)
            rates[name]["sample"].append(rate)
            rates[name]["sample_warmup_s"].append(first)
            print(name, rates[name]["train"][-1], rate, first, flush=True)
    rows = []
    base = {k: statistics.median(rates["fp32 eager"][k]) for k in ("train", "sample")}
    for name, r in rates.items():
        train, sample = statistics.median(r["train"]), statistics.median(r["sample"])
        rows.append({"option": name, "train_steps_per_s": round(train, 3),
                     "train_speedup": round(train / base["train"], 3),
                     "sample_images_per_s": round(sample, 1), "sample_speedup": round(sample / base["sample"], 3),
                     "first_batch_s": round(statistics.median(r["sample_warmup_s"]), 2), "rounds": args.rounds,
                     "threads": torch.get_num_threads(), "commit": commit})
    out = ROOT / "benchmarks/results/speed_options"
    write_csv(out.with_suffix(".csv"), rows)
    lines = ["| option (digits U-Net, CPU) | training steps/s | vs fp32 | sampling images/s (NFE 10) | vs fp32 | "
             "first sampling batch (s) |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['option']} | {r['train_steps_per_s']} | {r['train_speedup']} | {r['sample_images_per_s']} | "
              f"{r['sample_speedup']} | {r['first_batch_s']} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key, label in ((axes[0], "train_speedup", "training steps/s"),
                           (axes[1], "sample_speedup", "sampling images/s")):
        ax.bar([r["option"] for r in rows], [r[key] for r in rows], color="tab:blue")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set(title=f"{label} vs fp32 eager (CPU, {rows[0]['threads']} threads)", ylabel="ratio")
        ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    save_atomically(fig, out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
