"""ImageFolderDataModule edge cases: 16-bit grayscale, symlinked folders, unreadable files, fixed validation noise
with dequantisation, type checks of channels / image_size."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_sde.data import ImageFolderDataModule


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_images(folder, n, size=8, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_png(folder / f"img{i}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


RAMP = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)  # 0..65535 over the image


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
@pytest.mark.parametrize("channels", [1, 3])
def test_16bit_grayscale_is_scaled_not_clipped(tmp_path, mode, channels):
    for i in range(3):
        if mode == "I;16B":
            img = Image.frombytes(mode, (16, 16), RAMP.astype(">u2").tobytes())
        else:
            img = Image.fromarray(RAMP if mode == "I;16" else RAMP.astype(np.int32))
        assert img.mode == mode
        img.save(tmp_path / f"ramp{i}.tif")
    dm = ImageFolderDataModule(tmp_path, image_size=16, channels=channels, batch_size=1, n_val=1)
    x = dm.reference(2)
    assert x.shape == (2, channels, 16, 16)
    # value / 257 rounded: the ramp spans the 256 levels (PIL's convert clipped nearly all of it to white)
    assert x.min() == -1 and x.max() == 1 and abs(x.mean()) < 0.01
    assert torch.unique(x).numel() > 200 and (x == 1).float().mean() < 0.01


@pytest.mark.parametrize("mode", ["F", "I"])
def test_float_or_wide_integer_images_are_refused(tmp_path, mode):
    values = RAMP.astype(np.float32) / 65535 if mode == "F" else RAMP.astype(np.int32) * 2
    for i in range(2):
        Image.fromarray(values).save(tmp_path / f"wide{i}.tif")
    dm = ImageFolderDataModule(tmp_path, image_size=16, channels=1, batch_size=1, n_val=1)
    expected = "floating-point pixels" if mode == "F" else r"integer pixels in 0\.\.131070.*0\.\.65535"
    with pytest.raises(ValueError, match=rf"wide\d\.tif'? has {expected}"):
        dm.reference(1)


def test_symlinked_class_folders_are_followed_without_looping(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    write_images(root / "birds", 2)
    write_images(elsewhere / "cats", 3, seed=1)
    os.symlink(elsewhere / "cats", root / "cats", target_is_directory=True)
    os.symlink(root, root / "birds" / "loop", target_is_directory=True)  # a link back up: walked once only
    dm = ImageFolderDataModule(root, image_size=8, batch_size=1, n_val=1, labels=True)
    assert dm.class_names == ["birds", "cats"]
    files = sorted(dm.train_files + dm.val_files)
    assert files == [root / "birds" / "img0.png", root / "birds" / "img1.png"] + [
        root / "cats" / f"img{i}.png" for i in range(3)
    ]


def test_unreadable_image_is_a_one_line_value_error(tmp_path):
    write_images(tmp_path, 3)
    (tmp_path / "notes.png").write_text("not an image")
    dm = ImageFolderDataModule(tmp_path, image_size=8, batch_size=1, n_val=1)
    with pytest.raises(ValueError, match=r"notes\.png'?: not a readable image \(PIL: cannot identify"):
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            list(loader)


@pytest.mark.parametrize("labels", [False, True])
def test_dequantized_validation_batches_are_the_same_on_every_pass(tmp_path, labels):
    for c in range(2):
        write_images(tmp_path / f"class{c}", 4, seed=c)
    dm = ImageFolderDataModule(tmp_path, image_size=8, batch_size=2, n_val=4, dequantize=True, labels=labels)
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    take = (lambda b: b[0]) if labels else (lambda b: b)
    assert all(torch.equal(take(a), take(b)) for a, b in zip(first, second))
    val = torch.cat([take(b) for b in first])
    assert val.dtype == torch.float32 and val.min() >= -1 and val.max() < 1
    # dequantised: continuous values, each within the level of its pixel
    plain = ImageFolderDataModule(tmp_path, image_size=8, batch_size=2, n_val=4, labels=labels)  # same split
    levels = torch.round((torch.cat([take(b) for b in plain.val_dataloader()]) + 1) * 255 / 2)
    assert torch.equal(torch.floor((val + 1) * 256 / 2), levels)
    assert torch.unique(val).numel() > 0.9 * val.numel()
    if labels:
        assert torch.cat([b[1] for b in first]).tolist() == [int(f.parent.name[-1]) for f in dm.val_files]
    # training batches: uint8 levels, fresh noise in every augmentation
    batch = take(next(iter(dm.train_dataloader())))
    assert batch.dtype == torch.uint8 and not torch.equal(dm.augment(batch), dm.augment(batch))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("channels", 3.0, "channels must be 1 .grayscale. or 3 .RGB.; got 3.0"),
    ("channels", True, "channels must be 1 .grayscale. or 3 .RGB.; got True"),
    ("channels", "3", "channels must be 1 .grayscale. or 3 .RGB.; got '3'"),
    ("image_size", 8.0, "image_size must be an integer >= 1; got 8.0"),
])
def test_channels_and_image_size_must_be_integers(tmp_path, key, value, message):
    write_images(tmp_path, 3)
    with pytest.raises(ValueError, match=message):
        ImageFolderDataModule(tmp_path, batch_size=1, n_val=1, **{"image_size": 8, key: value})
