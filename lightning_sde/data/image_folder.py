"""Any folder of images: class sub-folders as torchvision's ImageFolder expects, a flat folder, or a mixture; read
lazily, resized (shorter side) and centre-cropped to a square, scaled to [-1, 1]. With labels=true the class of an
image is its first-level sub-folder (sorted names -> 0, 1, ...), as in torchvision's ImageFolder.

Symlinked folders are followed (as torchvision does), except links back into a folder that contains them.
16-bit grayscale images (PIL modes "I;16*", or "I" holding 0..65535) are scaled to 8 bits (value / 257, rounded);
32-bit integer values beyond 0..65535 and floating-point images ("F") are refused: their range is unknown."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_sde.data.base import (
    STREAM_SPLIT,
    STREAM_VAL,
    BaseDataModule,
    ImageBatch,
    bits_per_dim_offset,
    check_bool,
    check_int,
    generator,
    stack,
)

LEVELS = 256


def image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(e.lower() for e in IMG_EXTENSIONS)


def list_images(root) -> list[Path]:
    """Image files under root (recursively, following symlinked folders, sorted, hidden entries skipped); clear
    errors when there are none."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolderDataModule: image folder {str(root.resolve())!r} does not exist or "
                                "is not a directory")
    extensions = image_extensions()
    files = []
    ancestors = {str(root): {os.path.realpath(root)}}  # real paths of each folder and the folders above it
    for folder, subfolders, names in os.walk(root, followlinks=True):
        above = ancestors.pop(folder)
        kept = []
        for name in sorted(subfolders):
            real = os.path.realpath(os.path.join(folder, name))
            if not name.startswith(".") and real not in above:  # a link to a folder above would loop forever
                kept.append(name)
                ancestors[os.path.join(folder, name)] = above | {real}
        subfolders[:] = kept
        files.extend(
            Path(folder, name) for name in names
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions
            and os.path.isfile(os.path.join(folder, name))
        )
    files.sort()
    if not files:
        raise ValueError(
            f"ImageFolderDataModule: no images under {str(root.resolve())!r} "
            f"(looked recursively for {', '.join(extensions)})"
        )
    return files


def to_8bit(img, path):
    """img, with 16-bit grayscale scaled to 8 bits ("L"): PIL's convert would clip those values at 255 (white)."""
    import numpy as np
    from PIL import Image

    if img.mode == "F":
        raise ValueError(f"ImageFolderDataModule: {str(path)!r} has floating-point pixels (PIL mode 'F'), whose "
                         "range is unknown; save it with 8- or 16-bit integer pixels")
    if img.mode != "I" and not img.mode.startswith("I;16"):
        return img
    values = np.asarray(img)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 65535:
        raise ValueError(f"ImageFolderDataModule: {str(path)!r} has integer pixels in {low}..{high} (PIL mode "
                         f"{img.mode!r}); only 16-bit values 0..65535 are supported")
    return Image.fromarray(((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))  # round(v / 257)


class ImageFiles(Dataset):
    """uint8 (C, S, S) images: shorter side resized to S (antialiased bilinear), then centre-cropped; with `labels`
    (one class per file) (image, label) pairs."""

    def __init__(self, files: list[Path], image_size: int, channels: int, labels: list[int] | None = None):
        self.files = files
        self.image_size = image_size
        self.mode = "L" if channels == 1 else "RGB"
        self.labels = labels

    def image(self, index: int) -> Tensor:
        return self[index] if self.labels is None else self[index][0]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        from PIL import Image
        from torchvision.transforms.v2 import functional as F

        path = self.files[index]
        try:
            with Image.open(path) as img:
                img = to_8bit(img, path).convert(self.mode)
        except OSError as err:  # not an image, truncated, unreadable: a user error, reported in one line
            raise ValueError(f"ImageFolderDataModule: {str(path)!r}: not a readable image (PIL: {err})") from err
        img = F.resize(img, [self.image_size], antialias=True)
        img = F.center_crop(img, [self.image_size, self.image_size])
        x = F.pil_to_tensor(img)
        return x if self.labels is None else (x, torch.tensor(self.labels[index]))


class SeededDequantization(Dataset):
    """Validation images dequantised with noise seeded per index: the same batches on every pass."""

    def __init__(self, images: ImageFiles, seed: int):
        self.images = images
        self.seeds = torch.randint(2**62, (len(images),), generator=generator(seed, STREAM_VAL)).tolist()
        self.scale = ImageBatch(LEVELS, dequantize=True)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        item = self.images[index]
        x, y = (item, None) if self.images.labels is None else item
        x = self.scale(x[None], generator=torch.Generator().manual_seed(self.seeds[index]))[0]
        return x if y is None else (x, y)


class ImageFolderDataModule(BaseDataModule):
    """Images of shape (channels, image_size, image_size) in [-1, 1] from the files under `root`.

    A seeded split holds out n_val images (default: 5% of them, at least 1, at most 1000) for validation.
    `reference(n)` loads the first n training images in a seeded order. Options `hflip` (random horizontal flips
    of training batches) and `dequantize` (uniform dequantisation of the 256 levels; bits/dim offset 7).
    """

    kind = "images"
    levels = LEVELS

    def __init__(
        self,
        root: str,
        image_size: int,
        channels: int = 3,
        batch_size: int = 64,
        n_val: int | None = None,
        hflip: bool = False,
        dequantize: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        labels: bool = False,
    ):
        super().__init__(batch_size, num_workers, seed, labels)
        owner = "ImageFolderDataModule"
        self.image_size = check_int(owner, "image_size", image_size, 1)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels not in (1, 3):
            raise ValueError(f"{owner}: channels must be 1 (grayscale) or 3 (RGB); got {channels!r}")
        self.channels = channels
        self.hflip = check_bool(owner, "hflip", hflip)
        self.dequantize = check_bool(owner, "dequantize", dequantize)
        self.root = Path(root).expanduser()
        files = list_images(self.root)
        if len(files) < 2:
            raise ValueError(f"{owner}: need at least 2 images under {str(self.root)!r} (train and validation); "
                             f"found {len(files)}")
        if n_val is None:
            n_val = min(1000, max(1, len(files) // 20))
        self.n_val = check_int(owner, "n_val", n_val, 1)
        if self.n_val >= len(files):
            raise ValueError(f"{owner}: n_val must be below the {len(files)} images found; got {n_val}")
        order = torch.randperm(len(files), generator=generator(seed, STREAM_SPLIT)).tolist()
        self.val_files = sorted(files[i] for i in order[: self.n_val])
        self.train_files = [files[i] for i in order[self.n_val :]]  # a seeded order: reference(n) takes the first n
        self.shape = (channels, image_size, image_size)
        self.train_transform = ImageBatch(LEVELS, dequantize=self.dequantize, hflip=self.hflip)
        classes = None
        if self.labelled:
            tops = [f.relative_to(self.root).parts for f in files]
            if any(len(parts) < 2 for parts in tops):
                raise ValueError(f"{owner}: labels=true needs every image in a class sub-folder of "
                                 f"{str(self.root)!r} (root/<class>/image); some lie directly in it")
            names = sorted({parts[0] for parts in tops})
            classes = {name: i for i, name in enumerate(names)}
            self.num_classes, self.class_names = len(names), names
        label = (lambda fs: [classes[f.relative_to(self.root).parts[0]] for f in fs]) if classes else (lambda fs: None)
        self.train_set = ImageFiles(self.train_files, image_size, channels, label(self.train_files))
        val_images = ImageFiles(self.val_files, image_size, channels, label(self.val_files))
        if self.dequantize:  # noise fixed per image (the collate's would change on every pass)
            self.val_set, self.val_collate = SeededDequantization(val_images, seed), stack
        else:
            self.val_set, self.val_collate = val_images, ImageBatch(LEVELS)

    @property
    def bits_per_dim_offset(self) -> float | None:
        return bits_per_dim_offset(LEVELS) if self.dequantize else None

    def real_samples(self, start: int, n: int, stream: int) -> Tensor:
        images = torch.stack([self.train_set.image(i) for i in range(start, start + n)])
        return ImageBatch(LEVELS, dequantize=self.dequantize)(images, generator=generator(self.seed, stream))
