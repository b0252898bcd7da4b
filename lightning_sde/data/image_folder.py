"""Any folder of images: class sub-folders as torchvision's ImageFolder expects, a flat folder, or a mixture; read
lazily, resized (shorter side) and centre-cropped to a square, scaled to [-1, 1]. With labels=true the class of an
image is its first-level sub-folder (sorted names -> 0, 1, ...), as in torchvision's ImageFolder.

Symlinked folders are followed (as torchvision does), except links back into a folder that contains them; a file
reached twice (a link to an image listed already) is used once. An empty class folder is refused with labels=true
(it would shift every later class's index), as torchvision's ImageFolder refuses it.
Pixels: EXIF orientation applied (a phone's portrait JPEG stands upright); transparency composited onto white
(PIL's plain conversion would drop the alpha channel and show whatever colour transparent pixels happen to hold);
16-bit grayscale (PIL modes "I;16*", or "I" holding 0..65535) scaled to 8 bits (value / 257, rounded); 32-bit
integer values beyond 0..65535 and floating-point images ("F") refused: their range is unknown.

The split is decided per file: the n_val files first in a seeded hash of their paths under root validate. A file
added later trains, unless it hashes among those n_val (chance n_val / N), where it moves the last one into training;
no other file moves. A resume checks the files against the checkpoint's (`check_resume`) and keeps the run's n_val."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_sde.data.base import (
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
log = logging.getLogger(__name__)


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
    paths = {}  # an image reached twice (through a link): once, at the path with the fewest links (its own folder)
    for f in sorted(files, key=lambda f: (links_on_path(root, f), f)):
        paths.setdefault(os.path.realpath(f), f)
    unique = sorted(paths.values())
    if len(unique) < len(files):
        log.warning("ImageFolderDataModule: %d file(s) under %s are links to images listed already; each image is "
                    "used once", len(files) - len(unique), root)
    files = unique
    if not files:
        raise ValueError(
            f"ImageFolderDataModule: no images under {str(root.resolve())!r} "
            f"(looked recursively for {', '.join(extensions)})"
        )
    return files


def links_on_path(root: Path, f: Path) -> int:
    """How many of the entries from root down to f (f included) are symbolic links."""
    path, links = root, 0
    for part in f.relative_to(root).parts:
        path = path / part
        links += path.is_symlink()
    return links


def as_bytes(name: str) -> bytes:
    """A file name's bytes: UTF-8, and the bytes of a name that is not UTF-8 as they are on disk (os.listdir keeps
    them as surrogates), whatever the locale."""
    return name.encode("utf-8", "surrogateescape")


def split_key(f: Path, root: Path, seed: int) -> str:
    """A file's place in the seeded split order: a hash of its path under root and the seed."""
    return hashlib.blake2b(as_bytes(f"{seed}/{f.relative_to(root).as_posix()}"), digest_size=16).hexdigest()


def split_order(files: list[Path], root: Path, seed: int) -> list[Path]:
    """The files in a seeded order that each file's own path decides (split_key): adding or removing files leaves
    the order of the others as it was."""
    return sorted(files, key=lambda f: split_key(f, root, seed))


def listing_digest(files: list[Path], root: Path) -> str:
    """A digest of the file names under root (their order aside)."""
    names = sorted(f.relative_to(root).as_posix() for f in files)
    return hashlib.sha256(as_bytes("\n".join(names))).hexdigest()


def content_digest(files: list[Path], root: Path) -> str:
    """A digest of the files' names and bytes (their order aside): an image rewritten under its name changes it."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        digest.update(as_bytes(f.relative_to(root).as_posix()) + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


def opaque(img):
    """img with EXIF orientation applied and transparency composited onto white; other modes as they are."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("P", "RGB", "L") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img


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
                img = to_8bit(opaque(img), path).convert(self.mode)
        except (OSError, Image.DecompressionBombError) as err:  # not an image, truncated, unreadable, or more
            # pixels than PIL decodes by default (Image.MAX_IMAGE_PIXELS): a user error, reported in one line
            raise ValueError(f"ImageFolderDataModule: {str(path)!r}: not a readable image (PIL: {err})") from err
        img = F.resize(img, [self.image_size], antialias=True)
        img = F.center_crop(img, [self.image_size, self.image_size])
        x = F.pil_to_tensor(img)
        return x if self.labels is None else (x, torch.tensor(self.labels[index]))


def unreadable_images(root, progress: bool = True) -> list[str]:
    """Every image under root decoded as training decodes it: the one-line reason of each that fails (truncated, not
    an image, an unsupported pixel format). For a login node before a long run: training meets a bad file only when
    its batch comes, maybe hours in."""
    from tqdm.auto import tqdm

    files = list_images(root)
    reasons = []
    for path in tqdm(files, desc="decoding every image", unit="image", disable=None if progress else True):  # a tty
        try:
            ImageFiles([path], 1, 3)[0]
        except ValueError as err:
            reasons.append(str(err))
    return reasons


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
    validation_from_training = True
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
        self.n_val_by_default = n_val is None  # 5 % of the files: a resume keeps the run's own count (check_resume)
        if n_val is None:
            n_val = min(1000, max(1, len(files) // 20))
        check_int(owner, "n_val", n_val, 1)
        if n_val >= len(files):
            raise ValueError(f"{owner}: n_val must be below the {len(files)} images found; got {n_val}")
        self.files = files
        self.shape = (channels, image_size, image_size)
        self.train_transform = ImageBatch(LEVELS, dequantize=self.dequantize, hflip=self.hflip)
        classes = None
        if self.labelled:
            tops = [f.relative_to(self.root).parts for f in files]
            if any(len(parts) < 2 for parts in tops):
                raise ValueError(f"{owner}: labels=true needs every image in a class sub-folder of "
                                 f"{str(self.root)!r} (root/<class>/image); some lie directly in it")
            names = sorted({parts[0] for parts in tops})
            empty = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")
                           and d.name not in names)
            if empty:
                raise ValueError(f"{owner}: labels=true: the class folder(s) {empty} under {str(self.root)!r} hold no "
                                 "image; a class without images would shift the index of every class after it: "
                                 "remove the folder, or add its images")
            classes = {name: i for i, name in enumerate(names)}
            self.num_classes, self.class_names = len(names), names
        self.classes = classes
        self.split(n_val)

    def split(self, n_val: int) -> None:
        """The first n_val files in the seeded per-file order validate, the rest train (in that order: reference(n)
        takes the first n)."""
        order = split_order(self.files, self.root, self.seed)
        self.n_val, self.val_files, self.train_files = n_val, sorted(order[:n_val]), order[n_val:]
        self._val_content = None  # content_digest of val_files, read once (state_dict runs at every checkpoint)
        classes = self.classes
        label = (lambda fs: [classes[f.relative_to(self.root).parts[0]] for f in fs]) if classes else (lambda fs: None)
        self.train_set = ImageFiles(self.train_files, self.image_size, self.channels, label(self.train_files))
        val_images = ImageFiles(self.val_files, self.image_size, self.channels, label(self.val_files))
        if self.dequantize:  # noise fixed per image (the collate's would change on every pass)
            self.val_set, self.val_collate = SeededDequantization(val_images, self.seed), stack
        else:
            self.val_set, self.val_collate = val_images, ImageBatch(LEVELS)

    @property
    def bits_per_dim_offset(self) -> float | None:
        return bits_per_dim_offset(LEVELS) if self.dequantize else None

    def setup(self, stage: str | None = None) -> None:
        if stage == "fit":
            self.val_content  # noqa: B018  (read as the run starts: its checkpoints record these images, not later ones)

    @property
    def val_content(self) -> str:
        if self._val_content is None:
            self._val_content = content_digest(self.val_files, self.root)
        return self._val_content

    def state_dict(self) -> dict:
        """What a resume checks (`check_resume`): the files of each split (digests of their names) and their count,
        and the validation images' bytes; and the split key of the last validation image (`check_scored_held_out`)."""
        return {**self.listing(), "val_content": self.val_content, "val_last": self.val_last}

    @property
    def val_last(self) -> str | None:
        return max((split_key(f, self.root, self.seed) for f in self.val_files), default=None)

    def listing(self) -> dict:
        return {"train_files": listing_digest(self.train_files, self.root), "n_train": len(self.train_files),
                "val_files": listing_digest(self.val_files, self.root), "n_val": len(self.val_files)}

    def check_scored_held_out(self, theirs: dict, state, path, seed_key: str = "data.seed") -> None:
        """The base's check, with the run's own default n_val; then what the folder's changes since do to the scored
        images, said. Those that rank after the run's last validation image (val_last, where recorded) were training
        images then unless added since: validation images removed since let them in. Any other change of the listing
        puts images the checkpoint does not know among them: added since (never trained on), or training images
        renamed since (trained on)."""
        self.take_run_n_val(state)
        super().check_scored_held_out(theirs, state, path, seed_key)
        if not isinstance(state, dict):
            return
        last = state.get("val_last")  # the split seed is the run's (checked above)
        later = sum(split_key(f, self.root, self.seed) > last for f in self.val_files) if isinstance(last, str) else 0
        if later:
            log.warning("%d of the %d validation images under %s rank after the checkpoint's last one: validation "
                        "images were removed since, and these may be images the model trained on", later, self.n_val,
                        self.root)
        elif state.get("n_val") == self.n_val and state.get("val_files") not in (None, self.listing()["val_files"]):
            log.warning("the validation images under %s are not the checkpoint's (the folder changed since): images "
                        "added since are scored beside its own (never trained on), but a training image renamed, or "
                        "left in place of a removed one, may be scored as held out", self.root)

    def take_run_n_val(self, state) -> None:
        """The run's own count of validation images where n_val is the default (5 % of a changed folder differs)."""
        n_val = state.get("n_val") if isinstance(state, dict) else None
        if self.n_val_by_default and isinstance(n_val, int) and n_val != self.n_val and 1 <= n_val < len(self.files):
            self.split(n_val)

    def load_state_dict(self, state: dict) -> None:
        pass  # checked at start-up, before anything is touched (check_resume)

    def check_resume(self, state: dict | None, path) -> None:
        """A resume on a folder whose validation images are not the checkpoint's is refused (the run's validation
        values would compare other images, and images it validated on could now train); other training images are
        said (the run trains on the folder as it is now). The validation images are compared by name and, where the
        checkpoint records them, by content. Checkpoints from before the check hold none."""
        kinds = {"train_files": str, "n_train": int, "val_files": str, "n_val": int}
        if not (isinstance(state, dict) and all(isinstance(state.get(k), t) for k, t in kinds.items())):
            log.warning("the checkpoint %s holds no record of the files under %s (written before the split was "
                        "decided per file): its validation images may not be the run's earlier ones", path, self.root)
            return
        self.take_run_n_val(state)
        now = self.listing()
        if now["val_files"] != state["val_files"]:
            raise ValueError(
                f"config data.root: the images under {str(self.root)!r} changed since the checkpoint {path} "
                f"({state['n_train']} + {state['n_val']} images for training + validation then, {now['n_train']} + "
                f"{now['n_val']} now) and its validation images are not the run's; resume with the folder as it "
                f"was, or start a new run from its weights (another run_name, init_from={path})")
        if isinstance(state.get("val_content"), str) and self.val_content != state["val_content"]:
            raise ValueError(
                f"config data.root: the validation images under {str(self.root)!r} have the checkpoint {path}'s names "
                f"but other bytes (an image rewritten in place, or saved again): the run's validation values would "
                f"compare other images; resume with the files as they were, or start a new run from its weights "
                f"(another run_name, init_from={path})")
        if now["train_files"] != state["train_files"]:
            log.warning("the training images under %s changed since the checkpoint %s (%d then, %d now): the resumed "
                        "run trains on them as they are now; the validation images are the run's. The sampler "
                        "metrics' reference is drawn from the training images (a resume that would change it is "
                        "refused where the checkpoint records it, as runs checkpointed since that check do), and so is "
                        "the noise floor, which may move (for the same floor, resume with the folder as it was)",
                        self.root, path, state["n_train"], now["n_train"])

    def real_samples_at(self, index: Tensor, stream: int) -> Tensor:
        images = torch.stack([self.train_set.image(int(i)) for i in index])
        return ImageBatch(LEVELS, dequantize=self.dequantize)(images, generator=generator(self.seed, stream))
