"""Wall time per sample of our DDIM / DPM-Solver++(2M) / UniPC(2) on an imported diffusers UNet2DModel, against the
bare network and diffusers' own scheduler loops (DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler)
at equal NFE on the same network and the same x_T.

  overhead = ours / network alone - 1    what our sampler adds to the network's own time: "network alone" is a loop
                                         of the same NFE network calls at the same timesteps, each on the last
                                         output (no sampler arithmetic)
  ratio    = ours / diffusers' loop                        < 1: faster than the reference pipeline's loop

The model is saved with save_pretrained and read back through `load_denoiser("diffusers:...")` (the user's path);
weights are random (timing does not depend on them). Each figure is the median of --repeats timed runs after a
warm-up, our sampler and diffusers' loop alternating. Under bf16 both sides run the network under autocast
(weights and the sampler state in float32), as a user would.

    .venv/bin/python benchmarks/diffusers_speed.py                      # CPU: a reduced CIFAR-10 layout, batch 64
    python benchmarks/diffusers_speed.py --device cuda --model cifar10 --batch 256 --dtypes fp32 bf16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusers import (  # noqa: E402
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)

from lightning_sde import load_denoiser  # noqa: E402
from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402
from lightning_sde.samplers import build_sampler  # noqa: E402

# google/ddpm-cifar10-32's layout (35.7 M parameters); "small" keeps its structure at a CPU-friendly width
MODELS = {
    "cifar10": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2),
    "small": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1),
}
SAMPLERS = {  # ours (name, params) -> diffusers' scheduler at the same order
    "ddim": (("ddim", {}), lambda cfg: DDIMScheduler.from_config(cfg, timestep_spacing="trailing")),
    "dpmpp_2m": (("dpmpp", {"order": 2}), lambda cfg: DPMSolverMultistepScheduler.from_config(
        cfg, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing")),
    "unipc_2": (("unipc", {"order": 2}), lambda cfg: UniPCMultistepScheduler.from_config(
        cfg, solver_order=2, timestep_spacing="trailing")),
}


def build_model(name: str, folder: Path) -> Path:
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, norm_num_groups=32 if name == "cifar10" else 16,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), **MODELS[name])
    unet.save_pretrained(folder / "unet")
    DDIMScheduler(clip_sample=False, set_alpha_to_one=False).save_pretrained(folder / "scheduler")
    return folder


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "diffusers_speed")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(args.model, Path(tmp))
        denoiser = load_denoiser(f"diffusers:{folder}", map_location=device)
        scheduler_config = DDIMScheduler.from_pretrained(folder / "scheduler").config
    unet = denoiser.net.unet
    params = sum(p.numel() for p in unet.parameters())
    x_T = torch.randn(args.batch, *denoiser.shape, generator=torch.Generator().manual_seed(0)).to(device)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    rows = []
    for dtype in args.dtypes:
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16"
                    else contextlib.nullcontext())
        with torch.no_grad(), autocast:
            for nfe in args.nfe:
                for label, ((name, params_), make_scheduler) in SAMPLERS.items():
                    ours = build_sampler(name, **params_).at_nfe(nfe)
                    scheduler = make_scheduler(scheduler_config)

                    def reference():
                        scheduler.set_timesteps(nfe, device=device)
                        x = x_T
                        for t in scheduler.timesteps:
                            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
                        return x

                    def network_alone():
                        x = x_T
                        for t in scheduler.timesteps:
                            x = unet(x, t).sample
                        return x

                    def mine():
                        return ours(denoiser, x_T)

                    mine(), reference(), network_alone()  # warm-up
                    times = {"ours": [], "diffusers": [], "network": []}
                    for _ in range(args.repeats):
                        times["ours"].append(timed(mine, device))
                        times["diffusers"].append(timed(reference, device))
                        times["network"].append(timed(network_alone, device))
                    ours_s, theirs_s, net_s = (statistics.median(times[k]) for k in ("ours", "diffusers", "network"))
                    rows.append({
                        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                        "model": args.model, "parameters": params, "dtype": dtype, "batch": args.batch,
                        "sampler": label, "nfe": nfe, "network_alone_s": round(net_s, 5),
                        "ours_s": round(ours_s, 5), "diffusers_s": round(theirs_s, 5),
                        "ours_ms_per_sample": round(1e3 * ours_s / args.batch, 4),
                        "diffusers_ms_per_sample": round(1e3 * theirs_s / args.batch, 4),
                        "overhead_pct": round(100 * (ours_s / net_s - 1), 2),
                        "ratio_to_diffusers": round(ours_s / theirs_s, 3), "repeats": args.repeats,
                        "threads": torch.get_num_threads(), "torch": torch.__version__, "commit": commit,
                    })
                    print(rows[-1], flush=True)
                    write(rows, args.out)  # after every row: a run cut short keeps what it measured
    print(args.out.with_suffix(".md").read_text())


def write(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_suffix(".csv"), rows)
    table = ["| device | dtype | batch | sampler | NFE | network alone (s) | ours (s) | diffusers (s) | "
             "our overhead | ours / diffusers |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    table += [f"| {r['device']} | {r['dtype']} | {r['batch']} | {r['sampler']} | {r['nfe']} | "
              f"{r['network_alone_s']:.3f} | {r['ours_s']:.3f} | {r['diffusers_s']:.3f} | "
              f"{r['overhead_pct']:+.1f} % | {r['ratio_to_diffusers']:.3f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(table) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    labels = [f"{r['sampler']}\n{r['dtype']} NFE {r['nfe']}" for r in rows]
    x = range(len(rows))
    axes[0].bar(x, [r["overhead_pct"] for r in rows], color="tab:blue")
    axes[0].axhline(5, color="tab:red", ls="--", lw=1, label="target: 5 %")
    axes[0].set(ylabel="time over the network alone (%)", title="What our sampler adds to the network")
    axes[1].bar(x, [r["ratio_to_diffusers"] for r in rows], color="tab:green")
    axes[1].axhline(1, color="tab:red", ls="--", lw=1, label="diffusers' loop")
    axes[1].set(ylabel="ours / diffusers (wall time)", title="Against diffusers' scheduler loop, same network")
    for ax in axes:
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.legend(fontsize=8)
    r = rows[0]
    fig.suptitle(f"{r['device']}, UNet2DModel {r['parameters'] / 1e6:.1f} M parameters, batch {r['batch']}",
                 fontsize=10)
    fig.tight_layout()
    save_atomically(fig, out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
