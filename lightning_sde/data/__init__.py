"""LightningDataModules with one interface: `.shape`, `.kind` ("points" | "images"), batches that are plain
tensors (B, *shape) (images in [-1, 1]), `reference(n)` (n real samples, the same on every call),
`train_dataloader()`, `val_dataloader()`. See `lightning_sde.data.base`."""

from __future__ import annotations

import inspect

from lightning_sde.data.base import BaseDataModule, bits_per_dim_offset
from lightning_sde.data.digits import DigitsDataModule
from lightning_sde.data.image_folder import ImageFolderDataModule
from lightning_sde.data.torchvision_sets import CIFAR10DataModule, MNISTDataModule, TorchvisionDataModule
from lightning_sde.data.toy import NAMES as TOY_NAMES
from lightning_sde.data.toy import Toy2DDataModule, checkerboard, two_moons

DATAMODULES = {
    "toy2d": Toy2DDataModule,
    "digits": DigitsDataModule,
    "mnist": MNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "image_folder": ImageFolderDataModule,
}


def build_datamodule(name: str, **params) -> BaseDataModule:
    """A DataModule by registry name (toy2d, digits, mnist, cifar10, image_folder); a toy problem's own name
    (eight_gaussians, swiss_roll, random_mixture, checkerboard, two_moons) means toy2d with that problem."""
    if name in TOY_NAMES:
        return Toy2DDataModule(name=name, **params)
    if name not in DATAMODULES:
        raise ValueError(f"unknown datamodule {name!r}; choose one of {sorted(DATAMODULES) + TOY_NAMES}")
    cls = DATAMODULES[name]
    signature = inspect.signature(cls.__init__)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    if not takes_any:
        allowed = [p for p in signature.parameters if p != "self"]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"datamodule {name!r}: unknown parameter(s) {unknown}; allowed: {allowed}")
    return cls(**params)


__all__ = [
    "BaseDataModule",
    "CIFAR10DataModule",
    "DATAMODULES",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "TOY_NAMES",
    "Toy2DDataModule",
    "TorchvisionDataModule",
    "bits_per_dim_offset",
    "build_datamodule",
    "checkerboard",
    "two_moons",
]
