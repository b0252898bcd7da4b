"""Train the domain feature network for FID/KID on scikit-learn's 8x8 digits (Inception is meaningless at 8x8).

A small CNN classifier (lightning_sde.metrics.features.DigitsCNN) on a stratified, seeded 80/20 split, on the
CPU in seconds. Its 128-d penultimate layer is the feature map of DigitsFeatures. Writes
  lightning_sde/metrics/weights/digits_features.pt    the state_dict (torch.save; load with weights_only=True)
  lightning_sde/metrics/weights/digits_features.json  test accuracy, FID sanity numbers, the command, SHA-256

    python -m lightning_sde.metrics.train_digits_features [--epochs 40] [--seed 0] [--out DIR] [--min-accuracy 0.95]

A network below --min-accuracy on the held-out fifth writes nothing (the weights in place stay) and exits 1.

(The shipped weights were made by this procedure when it lived at benchmarks/train_digits_features.py: see the
"command" recorded in digits_features.json.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn

from lightning_sde.data.digits import digits_to_unit_range, load_digits_levels
from lightning_sde.loading import file_sha256
from lightning_sde.metrics.features import DIGITS_WEIGHTS, DigitsCNN, DigitsFeatures
from lightning_sde.tracking import source_revision


def stratified_split(labels: torch.Tensor, test_fraction: float, gen: torch.Generator):
    """Indices (train, test) with the same fraction of every class held out."""
    train, test = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = round(test_fraction * len(idx))
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, lr: float,
          gen: torch.Generator) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    half_level = 1.0 / 16  # levels are 2/16 apart in [-1, 1]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            # sub-level noise: features of generated (continuous) digits then match those of the quantised data
            xb = x[idx] + half_level * (2 * torch.rand(x[idx].shape, generator=gen) - 1)
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(1) == y).float().mean().item()


@torch.no_grad()
def fid_checks(weights: Path, images: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
    """FID between two random halves of the digits, and between the digits and uniform noise in [-1, 1]."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    def fid(a, b):
        metric = FrechetInceptionDistance(feature=DigitsFeatures(weights), normalize=True)
        metric.update((a + 1) / 2, real=True)
        metric.update((b + 1) / 2, real=False)
        return metric.compute().item()

    order = torch.randperm(len(images), generator=gen)
    half = len(images) // 2
    a, b = images[order[:half]], images[order[half : 2 * half]]
    noise = 2 * torch.rand(a.shape, generator=gen) - 1
    return {"fid_real_halves": fid(a, b), "fid_real_vs_uniform_noise": fid(a, noise)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DIGITS_WEIGHTS.parent)
    parser.add_argument("--min-accuracy", type=float, default=0.95, help="the least test accuracy to write (0..1)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # bit-for-bit reproducible on one machine
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    levels, labels = load_digits_levels()
    images = digits_to_unit_range(levels)
    train_idx, test_idx = stratified_split(labels, 0.2, gen)

    start = time.perf_counter()
    model = DigitsCNN()
    train(model, images[train_idx], labels[train_idx], args.epochs, args.batch_size, args.lr, gen)
    seconds = time.perf_counter() - start
    with torch.no_grad():  # features of unit mean square on the training digits (see DigitsCNN)
        model.feature_scale.fill_(model.body(images[train_idx]).pow(2).mean().rsqrt().item())
    acc_train = accuracy(model, images[train_idx], labels[train_idx])
    acc_test = accuracy(model, images[test_idx], labels[test_idx])
    if acc_test < args.min_accuracy:
        sys.exit(f"test accuracy {acc_test:.4f} is below {args.min_accuracy}: nothing written")

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "digits_features.pt"
    torch.save(model.state_dict(), weights)
    checks = fid_checks(weights, images, gen)
    commit = source_revision()
    record = {
        "file": weights.name,
        "sha256": file_sha256(weights),
        "bytes": weights.stat().st_size,
        "test_accuracy": acc_test,
        "train_accuracy": acc_train,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "split": f"stratified 80/20 of sklearn load_digits, seed {args.seed}",
        "architecture": "DigitsCNN(width=32, num_features=128): conv32-conv64-pool-conv64-pool-fc128 | fc10",
        "features": "128-d penultimate layer (after ReLU) x feature_scale, input images (N, 1, 8, 8)",
        "feature_scale": model.feature_scale.item(),
        **checks,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "train_seconds": round(seconds, 2),
        "torch": torch.__version__,
        "command": " ".join(shlex.quote(a)
                            for a in ["python", "-m", "lightning_sde.metrics.train_digits_features", *sys.argv[1:]]),
        "git_commit": commit,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (args.out / "digits_features.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
