"""What every DataModule here shares: argument checks, tensor-backed datasets, batched image scaling, loaders.

The interface the training module and the SamplerCallback rely on:
  .shape          shape of one sample, e.g. (2,) or (1, 8, 8)
  .kind           "points" or "images"
  batches         plain tensors x of shape (B, *shape), float32; images in [-1, 1]
  reference(n)    n real samples, float32, the same tensor on every call (FID / sliced-W2 reference)
  train_dataloader(), val_dataloader()
"""

from __future__ import annotations

import inspect
import math
import os
import signal
from typing import Callable

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from lightning_sde.distributed import rank_world
from lightning_sde.errors import check_int
from lightning_sde.models.moments import DataMoments

# Independent random streams drawn from one user seed.
STREAM_TRAIN, STREAM_VAL, STREAM_SPLIT, STREAM_REFERENCE, STREAM_FLOOR = 0, 1, 2, 3, 4


DATA_SEED_LIMIT = 2**28  # seed * 16 + stream below 2**32, the seed bits torch keeps: no two seeds share a stream


def generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for one of the named streams of `seed` (distinct for every seed below DATA_SEED_LIMIT)."""
    return torch.Generator().manual_seed(seed * 16 + stream)


def check_bool(owner: str, key: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {key} must be true or false; got {value!r}")
    return value


def check_choice(owner: str, key: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{owner}: unknown {key} {value!r}; choose one of {sorted(allowed)}")
    return value


class RowsDataset(Dataset):
    """Rows of one tensor, and with `labels` (one class index per row) (x, y) pairs. `__getitems__` lets the
    DataLoader fetch a whole batch with one indexing op."""

    def __init__(self, data: Tensor, labels: Tensor | None = None):
        if labels is not None and labels.shape != (len(data),):
            raise ValueError(f"RowsDataset: labels must have shape ({len(data)},); got {tuple(labels.shape)}")
        self.data = data
        self.labels = None if labels is None else labels.long()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index] if self.labels is None else (self.data[index], self.labels[index])

    def __getitems__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.data[index] if self.labels is None else (self.data[index], self.labels[index])


def stack(batch):
    """Collate: a batch fetched by `__getitems__` is already one tensor, or one (x, y) pair of tensors; a list of
    samples (or of (x, y) pairs) is stacked field by field."""
    if isinstance(batch, (Tensor, tuple)):  # RowsDataset.__getitems__: a tensor, or an (x, y) tuple
        return batch
    if isinstance(batch[0], (tuple, list)):
        return torch.stack([b[0] for b in batch]), torch.stack([torch.as_tensor(b[1]) for b in batch])
    return torch.stack(batch)


def split_labels(batch) -> tuple[Tensor, Tensor | None]:
    """(x, y) of a batch from a labelled dataset, (x, None) of one from an unlabelled one (a tensor, or the one-item
    list of a TensorDataset(x))."""
    if not isinstance(batch, (tuple, list)):
        return batch, None
    if len(batch) not in (1, 2):
        raise ValueError(f"a batch must be x, [x] or (x, labels); got a {type(batch).__name__} of {len(batch)} items")
    return batch[0], (batch[1] if len(batch) == 2 else None)


class ImageBatch:
    """Collate for integer images: stack, scale levels 0..levels-1 to [-1, 1], optionally dequantise and flip.

    Without dequantisation x -> 2 x / (levels - 1) - 1 (the extreme levels map to -1 and 1).
    With uniform dequantisation x -> 2 (x + u) / levels - 1, u ~ U(0, 1) per pixel: values fill [-1, 1), and a
    pixel moves by less than one level width (2 / levels). Picklable, so it works with num_workers > 0.
    """

    def __init__(self, levels: int, dequantize: bool = False, hflip: bool = False):
        self.levels = levels
        self.dequantize = dequantize
        self.hflip = hflip

    def __call__(self, batch, generator: torch.Generator | None = None):
        x, y = split_labels(stack(batch))
        if y is not None:
            return self(x, generator), y
        x = x.to(torch.float32)
        if self.dequantize:
            x = 2.0 * (x + torch.rand(x.shape, generator=generator, device=x.device)) / self.levels - 1.0
        else:
            x = 2.0 * x / (self.levels - 1) - 1.0
        if self.hflip:
            flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
            x[flip] = x[flip].flip(-1)
        return x


def bits_per_dim_offset(levels: int) -> float:
    """Add to -log p(x) / (D ln 2) (density of dequantised data in [-1, 1]) to get bits/dim of the discrete data.

    y = x + u (x integer in 0..K-1, u ~ U(0, 1)) has density p_y(y) = p_z(z) |dz/dy|^D with z = 2 y / K - 1, so
    -log2 P(x) <= E_u[-log2 p_y(x + u)] = E_u[-log2 p_z(z)] + D log2(K / 2): the offset is log2(K / 2)
    per dimension (7 for 8-bit images, log2(8.5) = 3.09 for the 17-level digits).
    """
    return math.log2(levels / 2)


def check_accumulation(accumulate_grad_batches) -> int:
    """The batches of one optimizer step (trainer.accumulate_grad_batches), checked: an integer >= 1."""
    if isinstance(accumulate_grad_batches, bool) or not isinstance(accumulate_grad_batches, int) \
            or accumulate_grad_batches < 1:
        raise ValueError("config trainer.accumulate_grad_batches: must be an integer >= 1 (the batches whose "
                         f"mean gradient makes one optimizer step); got {accumulate_grad_batches!r}")
    return accumulate_grad_batches


def batch_in_step(trainer, batch_idx: int) -> int:
    """Which batch of its optimizer step training batch `batch_idx` is (0 without gradient accumulation): EpochBatches
    gives epochs of whole steps, so batch_idx counts from a step's first batch."""
    return batch_idx % trainer.accumulate_grad_batches


def ends_a_step(trainer, batch_idx: int) -> bool:
    """Whether training batch `batch_idx` is the last of its optimizer step (every batch without gradient
    accumulation): the optimizer has stepped, and a checkpoint or a stop here resumes at a step's first batch."""
    return batch_in_step(trainer, batch_idx) == trainer.accumulate_grad_batches - 1


class EpochBatches(Sampler):
    """Training batches that a resumed run sees exactly as an uninterrupted one would.

    Epoch e is a permutation of the training set seeded by (seed, e); process r of W takes its rows r, r + W, ...;
    drop_last batches of those, and of the batches a whole number of `group`s (the batches of one optimizer step
    under gradient accumulation: no step spans two epochs). Iteration starts at batch `position()` (the batches the
    trainer has consumed: a resumed run continues mid-epoch where it stopped), so the order depends on the global
    step alone.
    """

    def __init__(self, n: int, batch_size: int, seed: int, position: Callable[[], int] = lambda: 0, group: int = 1):
        self.n, self.batch_size, self.seed, self.position, self.group = n, batch_size, seed, position, group

    def __len__(self) -> int:
        _, world = rank_world()
        return (self.n // world) // self.batch_size // self.group * self.group

    def __iter__(self):
        rank, world = rank_world()
        per_epoch = len(self)
        epoch, offset = divmod(self.position(), per_epoch)
        order = torch.randperm(self.n, generator=generator(self.seed * 1_000_003 + epoch, STREAM_TRAIN))[rank::world]
        for b in range(offset, per_epoch):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()


class TrainLoader:
    """The training loader: a DataLoader over EpochBatches. Deliberately not a DataLoader itself, so that Lightning
    leaves its order alone (it would put a DistributedSampler of its own in): EpochBatches splits across processes."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader.batch_sampler)

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    def state_dict(self) -> dict:
        """Nothing to keep: the position is the trainer's global step, restored with the checkpoint. (Having the
        interface tells Lightning that a mid-epoch resume continues the epoch exactly.)"""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def floor_or_reason(datamodule, n: int, after: int | None = None,
                    label: int | None = None) -> tuple[Tensor | None, str]:
    """The noise floor's real samples (`floor_set(n, after)`; with `label`, of that class), or None and why there are
    none."""
    if not hasattr(datamodule, "floor_set"):
        return None, "the datamodule has no floor_set(n)"
    if after is not None and len(inspect.signature(datamodule.floor_set).parameters) < 2:
        return None, "the datamodule's floor_set(n) takes no `after` (the reference's size) to start after"
    try:
        if label is not None:
            x = datamodule.floor_set(n, after, label=label)
        else:
            x = datamodule.floor_set(n) if after is None else datamodule.floor_set(n, after)
    except NotImplementedError:  # a BaseDataModule with its own reference(n) but no real_samples
        return None, "the datamodule does not implement real_samples(start, n, stream)"
    of = "" if label is None else f" of class {label}"
    return x, (f"the training set holds fewer than {n if after is None else after} reference + {n} floor "
               f"samples{of}")


def loader_process_start(worker_id: int) -> None:
    """A loader process ignores Ctrl-C: a terminal sends it to the whole process group, and the main process decides
    what it means (lsde-train: stop at the end of the step, which needs the loaders' next batches). Then Lightning's
    seeding of the process, which `seed_everything(workers=True)` would have added (PL_SEED_WORKERS)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.environ.get("PL_SEED_WORKERS") == "1":
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


class BaseDataModule(L.LightningDataModule):
    """Loaders over `self.train_set` / `self.val_set` (filled in by the subclass) with `self.collate`.

    Training batches come from EpochBatches (order fixed by the seed and the global step) and `self.collate`, which
    is deterministic; random augmentation (`self.train_transform`, e.g. dequantisation or flips) runs in `augment`,
    which the ScoreModule calls on the device after seeding that step's randomness."""

    kind: str = "points"
    shape: tuple[int, ...] = ()

    num_classes: int | None = None  # set by datamodules built with labels=True
    validation_from_training = False  # True where there is no test split: validation is held out of the training data
    reference_from_training_set = True  # reference(n) takes training samples (toy data draws from its distribution)

    def __init__(self, batch_size: int, num_workers: int = 0, seed: int = 0, labels: bool = False):
        super().__init__()
        owner = type(self).__name__
        self.labelled = check_bool(owner, "labels", labels)  # batches are (x, y) pairs: class-conditional training
        self.batch_size = check_int(owner, "batch_size", batch_size, 1)
        self.num_workers = check_int(owner, "num_workers", num_workers, 0)
        self.seed = check_int(owner, "seed", seed, 0)
        if self.seed >= DATA_SEED_LIMIT:
            raise ValueError(f"{owner}: seed must be below 2**28 (its data streams, seed * 16 + stream, must differ "
                             f"in the 32 bits of a seed torch keeps); got {seed}")
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.collate = stack
        self.val_collate = stack
        self.train_transform: Callable[[Tensor], Tensor] | None = None

    def _ensure_setup(self) -> None:
        """Subclasses that load lazily (files on disk) fill train_set / val_set here."""

    def accumulation(self) -> int:
        """The batches of one optimizer step (the attached trainer's accumulate_grad_batches; 1 before fit)."""
        return 1 if self.trainer is None else check_accumulation(self.trainer.accumulate_grad_batches)

    def consumed_batches(self) -> int:
        """Training batches consumed so far by the attached trainer (0 before fit): `accumulation()` per optimizer
        step."""
        return 0 if self.trainer is None else self.trainer.global_step * self.accumulation()

    def check_scored_held_out(self, theirs: dict, state, path, seed_key: str = "data.seed") -> None:
        """Before scoring a checkpoint on these validation samples (lsde-likelihood): where they are held out of the
        training data, they must be the run's own or the first of them, as another split seed or a larger n_val
        would score samples the model trained on. `theirs`: the run's data config; `state`: this class's record in
        the checkpoint (or None); `seed_key`: how to set the seed on the command line."""
        if not self.validation_from_training:
            return
        seed = theirs.get("seed", 0)
        if seed != self.seed:
            raise ValueError(f"config data.seed: the checkpoint {path} split its data with seed {seed!r} (its run's "
                             f"seed); the validation images of seed {self.seed} are mostly images it trained on: set "
                             f"{seed_key}={seed}")
        recorded = state.get("n_val") if isinstance(state, dict) else None  # the run's count (config: may be null)
        n_val = recorded if isinstance(recorded, int) else theirs.get("n_val")
        if isinstance(n_val, int) and not isinstance(n_val, bool) and self.n_val > n_val:
            raise ValueError(f"config data.n_val: the checkpoint {path} held out {n_val} validation images; "
                             f"data.n_val={self.n_val} adds {self.n_val - n_val} it trained on: set data.n_val={n_val} "
                             f"or fewer (and n <= {n_val})")

    def check_batch_fits(self, world: int, accumulation: int = 1) -> None:
        """Every one of `world` processes gets a full batch (batches are drop_last), and an epoch holds at least one
        optimizer step (`accumulation` batches)."""
        self._ensure_setup()
        per_process = len(self.train_set) // world
        if per_process < self.batch_size * accumulation:
            what = (f"batch_size {self.batch_size}" if accumulation == 1 else
                    f"batch_size {self.batch_size} x trainer.accumulate_grad_batches {accumulation}")
            raise ValueError(f"{type(self).__name__}: {what} exceeds the {per_process} training samples of each of "
                             f"{world} process(es)")

    def training_set_size(self) -> int:
        """The training samples of one epoch over every process (a toy set's n_train)."""
        self._ensure_setup()
        return len(self.train_set)

    def check_reference_size(self, n: int) -> None:
        """reference(n) can be drawn (from the training set, unless the data is sampled from a distribution)."""
        self._check_reference(n, self._available())

    def _available(self) -> int | None:
        self._ensure_setup()
        return len(self.train_set) if self.reference_from_training_set else None

    def train_dataloader(self) -> TrainLoader:
        _, world = rank_world()
        accumulation = self.accumulation()
        self.check_batch_fits(world, accumulation)
        batches = EpochBatches(len(self.train_set), self.batch_size, self.seed, self.consumed_batches, accumulation)
        return TrainLoader(DataLoader(self.train_set, batch_sampler=batches, num_workers=self.num_workers,
                                      persistent_workers=self.num_workers > 0, collate_fn=self.collate,
                                      worker_init_fn=loader_process_start))

    def augment(self, batch):
        """The random part of training-data preparation, applied on the device (identity without a transform);
        labels, if the batch has them, pass through."""
        x, y = split_labels(batch)
        x = x if self.train_transform is None else self.train_transform(x)
        return x if y is None else (x, y)

    def val_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, collate_fn=self.val_collate,
                          worker_init_fn=loader_process_start)

    def reference(self, n: int, label: int | None = None) -> Tensor:
        """The n real samples that generated ones are scored against: the first n training samples in the data's
        seeded order (their dequantisation noise from the reference stream), or n draws of a toy distribution; with
        `label`, those of that class (class_samples)."""
        if label is not None:
            x = self.class_samples(label, 0, self._check_reference(n), STREAM_REFERENCE)
            if x is None:
                raise ValueError(f"{type(self).__name__}: reference({n}) of class {label} asks for more than the "
                                 f"{self.class_count(label)} training samples of that class")
            return x
        return self.real_samples(0, self._check_reference(n, self._available()), STREAM_REFERENCE)

    def floor_set(self, n: int, after: int | None = None, label: int | None = None) -> Tensor | None:
        """n more real samples, disjoint from reference(after) (after = n by default): the training samples that
        follow the reference's, or n other draws (with `label`: of that class). Scored like a sampler's, their value
        is what a perfect model reaches at this n (the noise floor). None when the training set holds fewer than
        after + n."""
        n, available = self._check_reference(n), self._available()
        after = n if after is None else self._check_reference(after)
        if label is not None:
            return self.class_samples(label, after, n, STREAM_FLOOR)
        if available is not None and after + n > available:
            return None
        return self.real_samples(after, n, STREAM_FLOOR)

    def real_samples(self, start: int, n: int, stream: int) -> Tensor:
        """Training samples start .. start + n - 1 as the model sees them (the toy sets: n draws from `stream`)."""
        return self.real_samples_at(torch.arange(start, start + n), stream)

    def real_samples_at(self, index: Tensor, stream: int) -> Tensor:
        """The training samples at these positions of the data's seeded order, as the model sees them (their
        dequantisation noise drawn from `stream`); a datamodule gives this or real_samples."""
        raise NotImplementedError

    def class_samples(self, label: int, start: int, n: int, stream: int) -> Tensor | None:
        """The training samples of class `label` start .. start + n - 1 (in the data's seeded order): the reference and
        noise floor of samples drawn for that class. None when the class holds fewer than start + n."""
        positions = self.class_positions(label)
        return None if start + n > len(positions) else self.real_samples_at(positions[start:start + n], stream)

    def class_count(self, label: int) -> int:
        return len(self.class_positions(label))

    def class_positions(self, label: int) -> Tensor:
        """Where class `label`'s training samples are in the data's seeded order (labelled data only)."""
        self._ensure_setup()
        self.check_class(label)
        return torch.nonzero(torch.as_tensor(self.train_set.labels) == label)[:, 0]

    def check_class(self, label: int) -> None:
        """ValueError unless the data is labelled and `label` one of its classes."""
        if not self.labelled or getattr(self.train_set, "labels", None) is None:
            raise ValueError(f"{type(self).__name__}: samples of class {label} need the data's labels "
                             "(data.labels=true)")
        if isinstance(label, bool) or not (isinstance(label, int) and 0 <= label < (self.num_classes or 0)):
            raise ValueError(f"{type(self).__name__}: class {label!r} is not one of 0..{(self.num_classes or 1) - 1}")

    def _check_reference(self, n: int, available: int | None = None) -> int:
        n = check_int(type(self).__name__, "reference n", n, 1)
        if available is not None and n > available:
            raise ValueError(
                f"{type(self).__name__}: reference({n}) asks for more than the {available} training samples available"
            )
        return n


MOMENT_SAMPLES = 10_000  # training samples a model's data_moments are computed from


def training_moments(datamodule, n: int = MOMENT_SAMPLES) -> DataMoments:
    """The mean and covariance of the datamodule's first min(n, training set size) training samples, via reference()
    (the same on every rank): a model's data_moments, which samplers' Gaussian starts use."""
    size = (datamodule.training_set_size() if hasattr(datamodule, "training_set_size")
            else len(datamodule.train_dataloader().dataset))  # a datamodule of the reference() interface only
    return DataMoments.of_samples(datamodule.reference(min(n, size)))
