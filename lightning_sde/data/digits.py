"""scikit-learn's 8x8 handwritten digits (1797 images, shipped with scikit-learn: works offline)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_sde.data.base import (
    STREAM_SPLIT,
    STREAM_VAL,
    BaseDataModule,
    ImageBatch,
    RowsDataset,
    bits_per_dim_offset,
    check_bool,
    check_int,
    generator,
)

LEVELS = 17  # pixel values are the integers 0..16


def load_digits_levels() -> tuple[Tensor, Tensor]:
    """All 1797 images as uint8 levels 0..16 of shape (N, 1, 8, 8), and their labels (N,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images).round().to(torch.uint8).reshape(-1, 1, 8, 8)
    return images, torch.as_tensor(bunch.target, dtype=torch.long)


def digits_to_unit_range(levels: Tensor) -> Tensor:
    """Levels 0..16 to [-1, 1] (no dequantisation): 0 -> -1, 16 -> 1."""
    return 2.0 * levels.to(torch.float32) / (LEVELS - 1) - 1.0


class DigitsDataModule(BaseDataModule):
    """Digits as (1, 8, 8) images in [-1, 1]; a seeded split into n_val validation and the rest training images.

    dequantize=False: level x -> 2 x / 16 - 1, exactly the 17 values {-1, -7/8, ..., 1}.
    dequantize=True: uniform dequantisation, level x -> 2 (x + u) / 17 - 1 with u ~ U(0, 1) drawn afresh for every
    training batch; the data become continuous in [-1, 1) and each pixel moves by less than one level (2/17).
    A density p on these dequantised values bounds the discrete likelihood:
        bits/dim(x) <= E_u[-log p(z)] / (D ln 2) + log2(17 / 2),  D = 64,
    i.e. add `bits_per_dim_offset` = log2(8.5) = 3.087 to the model's nats/dim converted to bits (for 8-bit
    images the same argument gives the familiar +7). Without dequantisation there is no such bound: densities on
    17 points are unbounded and the reported bits/dim is not comparable.

    The validation set and `reference(n)` are fixed tensors (their dequantisation noise is drawn once, seeded);
    `reference(n)` takes n training images in a seeded order, so n may be at most the training-set size.
    """

    kind = "images"
    validation_from_training = True
    shape = (1, 8, 8)
    levels = LEVELS

    def __init__(
        self,
        batch_size: int = 128,
        n_val: int = 180,
        dequantize: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        labels: bool = False,
    ):
        super().__init__(batch_size, num_workers, seed, labels)
        self.dequantize = check_bool("DigitsDataModule", "dequantize", dequantize)
        images, labels = load_digits_levels()
        self.n_val = check_int("DigitsDataModule", "n_val", n_val, 1)
        if n_val >= len(images):
            raise ValueError(f"DigitsDataModule: n_val must be below the {len(images)} images; got {n_val}")
        order = torch.randperm(len(images), generator=generator(seed, STREAM_SPLIT))
        self.val_index, self.train_index = order[:n_val].sort().values, order[n_val:]
        self.train_levels = images[self.train_index]  # in a seeded order: reference(n) takes the first n
        self.train_labels = labels[self.train_index]
        self.train_transform = ImageBatch(LEVELS, dequantize=self.dequantize)
        val = self.train_transform(images[self.val_index], generator=generator(seed, STREAM_VAL))
        if self.labelled:
            self.num_classes = 10
            self.train_set = RowsDataset(self.train_levels, self.train_labels)
            self.val_set = RowsDataset(val, labels[self.val_index])
        else:
            self.train_set = RowsDataset(self.train_levels)
            self.val_set = RowsDataset(val)

    @property
    def bits_per_dim_offset(self) -> float | None:
        """log2(17/2) when dequantised (see the class docstring); None otherwise."""
        return bits_per_dim_offset(LEVELS) if self.dequantize else None

    def real_samples_at(self, index: Tensor, stream: int) -> Tensor:
        return self.train_transform(self.train_levels[index], generator=generator(self.seed, stream))
