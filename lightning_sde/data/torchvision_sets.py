"""MNIST and CIFAR-10 through torchvision, held in memory as uint8 and scaled per batch to [-1, 1].

Compute nodes often have no internet: fetch once on a machine that has it (a login node),
    lsde-prepare cifar10 --root /shared/data
and point `root` at the same directory. Without the files, `prepare_data()` tries to download (download=True)
and, failing, raises a FileNotFoundError (a user error: one line from the apps) naming the dataset, the root and
that command.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

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
    check_choice,
    check_int,
    generator,
)
from lightning_sde.downloads import SPECS

LEVELS = 256


def prepare_command(name: str, root) -> str:
    return f"lsde-prepare {name} --root {Path(root).expanduser().resolve()}"


def missing_error(name: str, root, why: str) -> FileNotFoundError:
    spec = SPECS[name]
    root = Path(root).expanduser().resolve()
    return FileNotFoundError(
        f"{spec.title} is not under root {str(root)!r} (torchvision looks in {str(root / spec.folder)!r}) and {why}. "
        f"On a machine with internet access (e.g. a login node) run\n    {prepare_command(name, root)}\n"
        f"and set the data module's root (config key data.root) to that directory on a shared filesystem."
    )


def corrupt_error(name: str, root, err: Exception) -> ValueError:
    """Files torchvision found but could not read (a download cut short, a disk error)."""
    folder = Path(root).expanduser().resolve() / SPECS[name].folder
    detail = " ".join(str(err).split())[:200] or "no message"
    if isinstance(err, PermissionError):
        return ValueError(f"{SPECS[name].title} under {str(folder)!r} could not be read ({detail}): give this user "
                          "read access to it")
    return ValueError(f"{SPECS[name].title} under {str(folder)!r} could not be read ({type(err).__name__}: {detail}): "
                      f"its files are incomplete or corrupt; delete that folder and run "
                      f"{prepare_command(name, Path(folder).parent)} again")


@contextlib.contextmanager
def socket_timeout(seconds: float | None):
    """urllib (which torchvision uses) has no timeout by default: a firewalled node could hang forever."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _dataset(name: str, root, train: bool, download: bool = False):
    import torchvision

    return getattr(torchvision.datasets, SPECS[name].cls)(str(root), train=train, download=download)


def is_available(name: str, root) -> bool:
    check_choice("torchvision data", "name", name, SPECS)
    try:
        _dataset(name, root, train=True)
        _dataset(name, root, train=False)
    except RuntimeError:  # torchvision's "not found or corrupted" (by its checksums)
        return False
    except Exception as err:  # noqa: BLE001  (found, but unreadable: torchvision's asserts on a file's header)
        raise corrupt_error(name, root, err) from err
    return True


def fetch(name: str, root, timeout: float | None = 60.0) -> Path:
    """Download `name` (train and test) into `root` unless present; a FileNotFoundError naming what to do on
    failure."""
    check_choice("torchvision data", "name", name, SPECS)
    root = Path(root).expanduser()
    if is_available(name, root):
        return root
    existed = None
    try:
        existed = _existing_folders(root, SPECS[name].folder)
        root.mkdir(parents=True, exist_ok=True)
        with socket_timeout(timeout):
            _dataset(name, root, train=True, download=True)
            _dataset(name, root, train=False, download=True)
    except Exception as err:  # URLError, socket errors, torchvision's own RuntimeError after trying its mirrors
        if existed is not None:
            _remove_empty_new_folders(root, SPECS[name].folder, existed)
        detail = " ".join(str(err).split())[:300]
        raise missing_error(name, root, f"downloading it failed ({type(err).__name__}: {detail})") from err
    return root


def _existing_folders(root: Path, folder: str) -> set[Path]:
    """The folders a download may make that are there before it: root, its ancestors, and those under root/<folder>
    (the dataset's own: a shared root holding other data sets is not walked)."""
    found = {p for p in (root, *root.parents) if p.is_dir()}
    found.update(Path(top) for top, _, _ in os.walk(root / folder))
    return found


def _remove_empty_new_folders(root: Path, folder: str, existed: set[Path]) -> None:
    """A failed download leaves no empty folders it made (root/MNIST/raw with nothing in it): what a user sees after
    it is what was there before, or the part of a download it got."""
    made = [Path(top) for top, _, _ in os.walk(root / folder, topdown=False)] + [root, *root.parents]
    for path in made:
        if path not in existed:
            with contextlib.suppress(OSError):  # not empty (a partial download stays), or not ours to remove
                path.rmdir()


def load_levels(name: str, root, train: bool, with_labels: bool = False):
    """The split as a uint8 tensor (N, C, H, W); with_labels: (images, class labels (N,))."""
    try:
        ds = _dataset(name, root, train=train)
    except RuntimeError as err:
        raise missing_error(name, root, "download was not attempted (call prepare_data(), or fetch it first)") from err
    except Exception as err:  # noqa: BLE001  (found, but unreadable)
        raise corrupt_error(name, root, err) from err
    data = torch.as_tensor(ds.data)
    images = data.unsqueeze(1).contiguous() if data.ndim == 3 else data.permute(0, 3, 1, 2).contiguous()
    return (images, torch.as_tensor(ds.targets, dtype=torch.long)) if with_labels else images


class TorchvisionDataModule(BaseDataModule):
    """MNIST (1, 28, 28) or CIFAR-10 (3, 32, 32) images in [-1, 1].

    Training set: the official training split (60k / 50k); `reference(n)` is its first n images in a seeded
    order (the usual FID reference is the training set). Validation: a seeded subset of n_val images of the
    official test split, transformed once. Options: `hflip` (random horizontal flips of training batches, for
    CIFAR-10 only), `dequantize` (uniform dequantisation of the 256 levels: 2 (x + u) / 256 - 1, so add
    `bits_per_dim_offset` = log2(128) = 7 to bits/dim of a density on [-1, 1]). `download=False` makes
    prepare_data() fail at once when the files are missing instead of trying the network; `download_timeout` is
    the socket timeout (seconds) while downloading.
    """

    kind = "images"
    levels = LEVELS

    def __init__(
        self,
        name: str,
        root: str = "data",
        batch_size: int = 128,
        n_val: int = 1000,
        hflip: bool = False,
        dequantize: bool = False,
        download: bool = True,
        download_timeout: float = 60.0,
        num_workers: int = 0,
        seed: int = 0,
        labels: bool = False,
    ):
        super().__init__(batch_size, num_workers, seed, labels)
        owner = type(self).__name__
        self.name = check_choice(owner, "name", name, SPECS)
        self.num_classes = 10 if self.labelled else None
        if not isinstance(root, (str, Path)) or not str(root):
            raise ValueError(f"{owner}: root must be a directory path; got {root!r}")
        self.root = Path(root).expanduser()
        self.n_val = check_int(owner, "n_val", n_val, 1)
        self.hflip = check_bool(owner, "hflip", hflip)
        if self.hflip and name == "mnist":
            raise ValueError(f"{owner}: hflip=True mirrors digits into non-digits; use it for cifar10 only")
        self.dequantize = check_bool(owner, "dequantize", dequantize)
        self.download = check_bool(owner, "download", download)
        if not (isinstance(download_timeout, (int, float)) and download_timeout > 0):
            raise ValueError(f"{owner}: download_timeout must be a positive number of seconds; "
                             f"got {download_timeout!r}")
        self.download_timeout = float(download_timeout)
        self.shape = SPECS[name].shape
        self.train_transform = ImageBatch(LEVELS, dequantize=self.dequantize, hflip=self.hflip)
        self.train_levels: Tensor | None = None

    @property
    def bits_per_dim_offset(self) -> float | None:
        return bits_per_dim_offset(LEVELS) if self.dequantize else None

    def prepare_data(self) -> None:
        if is_available(self.name, self.root):
            return
        if not self.download:
            raise missing_error(self.name, self.root, "download=False")
        fetch(self.name, self.root, timeout=self.download_timeout)

    def setup(self, stage: str | None = None) -> None:
        self._ensure_setup()

    def _ensure_setup(self) -> None:
        if self.train_levels is not None:
            return
        train, train_labels = load_levels(self.name, self.root, train=True, with_labels=True)
        test, test_labels = load_levels(self.name, self.root, train=False, with_labels=True)
        if self.n_val > len(test):
            raise ValueError(f"{type(self).__name__}: n_val {self.n_val} exceeds the {len(test)} test images")
        order = torch.randperm(len(train), generator=generator(self.seed, STREAM_SPLIT))
        self.train_levels = train[order]  # a seeded order: reference(n) takes the first n
        val_index = torch.randperm(len(test), generator=generator(self.seed, STREAM_SPLIT))[: self.n_val]
        unflipped = ImageBatch(LEVELS, dequantize=self.dequantize)
        val = unflipped(test[val_index], generator=generator(self.seed, STREAM_VAL))
        if self.labelled:
            self.train_set = RowsDataset(self.train_levels, train_labels[order])
            self.val_set = RowsDataset(val, test_labels[val_index])
        else:
            self.train_set = RowsDataset(self.train_levels)
            self.val_set = RowsDataset(val)

    def real_samples_at(self, index: Tensor, stream: int) -> Tensor:
        unflipped = ImageBatch(LEVELS, dequantize=self.dequantize)  # the reference is not augmented
        return unflipped(self.train_levels[index], generator=generator(self.seed, stream))


class MNISTDataModule(TorchvisionDataModule):
    """MNIST, shape (1, 28, 28); see TorchvisionDataModule."""

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 128,
        n_val: int = 1000,
        dequantize: bool = False,
        download: bool = True,
        download_timeout: float = 60.0,
        num_workers: int = 0,
        seed: int = 0,
        labels: bool = False,
    ):
        super().__init__("mnist", root, batch_size, n_val, False, dequantize, download, download_timeout, num_workers,
                         seed, labels)


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10, shape (3, 32, 32), random horizontal flips of training batches on by default; see
    TorchvisionDataModule."""

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 128,
        n_val: int = 1000,
        hflip: bool = True,
        dequantize: bool = False,
        download: bool = True,
        download_timeout: float = 60.0,
        num_workers: int = 0,
        seed: int = 0,
        labels: bool = False,
    ):
        super().__init__("cifar10", root, batch_size, n_val, hflip, dequantize, download, download_timeout,
                         num_workers, seed, labels)
