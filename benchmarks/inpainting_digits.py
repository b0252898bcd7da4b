"""Inpainting digits: the top half of held-out validation digits known, the bottom half sampled by replacement and by
reconstruction guidance with each covariance (lightning_sde.models.inpainting) with DPM-Solver++(2M), 50 NFE, on the
digits model run without labels (the conditional model's null label: p(x), not p(x | y)).

There is no exact conditional for real digits, so two proxies, on all validation digits x 4 seeds: how often the
shipped classifier reads the completion as the original's digit, and the mean squared error of the completed half
to the original's (a completion may be another valid digit, so neither is 100 % at best). The figure shows the
masked inputs, completions from 4 seeds per method, and the originals.

    .venv/bin/python benchmarks/inpainting_digits.py        # writes results/inpainting_digits.{csv,md,png}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_sde import load_denoiser  # noqa: E402
from lightning_sde.data import DigitsDataModule  # noqa: E402
from lightning_sde.files import write_csv  # noqa: E402
from lightning_sde.metrics.features import DigitsFeatures  # noqa: E402
from lightning_sde.models.inpainting import inpainting  # noqa: E402
from lightning_sde.plotting.style import save_atomically  # noqa: E402
from lightning_sde.samplers import build_sampler, sample  # noqa: E402

SEEDS = 4
VARIANTS = [("replacement", "flat"), ("reconstruction", "flat"), ("reconstruction", "isotropic"),
            ("reconstruction", "gaussian_fit")]
SHOWN = VARIANTS[:2]  # the figure: replacement and the default reconstruction

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "benchmarks/runs/digits_cond/checkpoints/last.ckpt")
    parser.add_argument("--nfe", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/inpainting_digits")
    args = parser.parse_args()
    torch.set_num_threads(2)
    denoiser = load_denoiser(args.checkpoint)
    data = DigitsDataModule(labels=True)
    originals, labels = data.val_set.data, data.val_set.labels
    known = torch.zeros(1, 8, 8, dtype=torch.bool)
    known[:, :4] = True  # the top half
    classifier = DigitsFeatures(input_range="symmetric").net.eval()
    sampler = build_sampler("dpmpp", order=2).at_nfe(args.nfe)
    n = len(originals)
    values = originals.repeat(SEEDS, 1, 1, 1)
    rows, completions = [], {}
    for method, covariance in VARIANTS:
        model = inpainting(denoiser, known, values, method, covariance=covariance)
        x, info = sample(sampler, model, range(len(values)))
        diverged = int((~torch.isfinite(x) | (x.abs() > 3)).flatten(1).any(1).sum())  # data lie in [-1, 1]
        x = model.finish(x).nan_to_num().clamp(-1, 1)
        name = method if method == "replacement" else f"{method} ({covariance})"
        completions[name] = x
        with torch.no_grad():
            agree = (classifier(x).argmax(1) == labels.repeat(SEEDS)).float().mean()
        mse = (x - values)[:, :, 4:].pow(2).mean()
        rows.append({"method": name, "digits": n, "seeds": SEEDS, "nfe": info["nfe"], "diverged": diverged,
                     "backward_per_nfe": model.backward_per_nfe, "classifier_agrees": round(float(agree), 4),
                     "mse_bottom_half": round(float(mse), 4), "wall_s": round(info["wall_s"], 1)})
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(args.out.with_suffix(".csv"), rows)
    table = ["| method | digits x seeds | NFE (+ backward) | classifier reads the original digit | MSE, sampled half "
             "(clamped to [-1, 1]) | samples outside [-3, 3] |", "|---|---:|---:|---:|---:|---:|"]
    table += [f"| {r['method']} | {r['digits']} x {r['seeds']} | {r['nfe']} (+{r['nfe'] * r['backward_per_nfe']}) | "
              f"{100 * r['classifier_agrees']:.1f} % | {r['mse_bottom_half']:.3f} | {r['diverged']} |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    show = torch.arange(10)  # the first 10 validation digits
    masked = torch.where(known, originals[show], torch.full_like(originals[show], -1.0))
    panels = [("known top half", masked)]
    for method, covariance in SHOWN:
        name = method if method == "replacement" else f"{method} ({covariance})"
        for s in range(SEEDS):
            panels.append((f"{name}, seed {s}", completions[name][s * n + show]))
    panels.append(("original", originals[show]))
    grid = torch.cat([p for _, p in panels])
    image = make_grid((grid + 1) / 2, nrow=len(show), padding=1, pad_value=1.0).permute(1, 2, 0)
    fig, ax = plt.subplots(figsize=(6, 0.62 * len(panels) + 0.6))
    ax.imshow(image, cmap="gray", interpolation="nearest")
    ax.set_yticks([9 * i + 4.5 for i in range(len(panels))], [name for name, _ in panels], fontsize=7)
    ax.set_xticks([])
    ax.set_title(f"Digits inpainting: top half known, DPM-Solver++(2M), {args.nfe} NFE", fontsize=9)
    fig.tight_layout()
    save_atomically(fig, args.out.with_suffix(".png"), dpi=130)


if __name__ == "__main__":
    main()
