"""The datasets that torchvision downloads (lsde-prepare fetches them; lightning_sde.data.torchvision_sets reads
them). Nothing is imported here, so that `lsde-prepare --help` answers before torch is loaded."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    title: str
    cls: str  # torchvision.datasets class name
    shape: tuple[int, int, int]
    folder: str  # what torchvision creates under root
    train_size: int  # images in the official training split (reference(n) draws from it)


SPECS = {
    "mnist": Spec("MNIST", "MNIST", (1, 28, 28), "MNIST", 60000),
    "cifar10": Spec("CIFAR-10", "CIFAR10", (3, 32, 32), "cifar-10-batches-py", 50000),
}
