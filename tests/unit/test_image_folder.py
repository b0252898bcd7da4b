"""ImageFolderDataModule edge cases: 16-bit grayscale, symlinked folders and files, unreadable files (also in a loader
worker), fixed validation noise with dequantisation, type checks of channels / image_size, the per-file split and
the resume's check of the files, EXIF orientation, transparency, empty class folders."""

import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from lightning_sde.data import ImageFolderDataModule


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_images(folder, n, size=8, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        write_png(folder / f"img{i}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def image_of(dm, path):
    """The uint8 image the module reads from `path`, in whichever split holds it."""
    images = dm.train_set if path in dm.train_files else dm.val_set
    return images.image(list(images.files).index(path))


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


def test_the_split_is_per_file_so_added_files_move_no_other_and_a_resume_checks_the_files(tmp_path, caplog):
    """The split was a permutation of the sorted list: one file added to 44 moved 6 of 8 validation images into
    training, and a resume went on without a word."""
    write_images(tmp_path, 44)
    before = ImageFolderDataModule(tmp_path, image_size=8, n_val=8)
    state = before.state_dict()
    write_png(tmp_path / "zz_new.png", np.zeros((8, 8, 3), np.uint8))
    after = ImageFolderDataModule(tmp_path, image_size=8, n_val=8)
    assert len(set(before.val_files) - set(after.val_files)) <= 1  # the new file takes at most one place
    old_train = [f for f in after.train_files if f in before.train_files]
    assert old_train == [f for f in before.train_files if f in after.train_files]  # their order (reference) kept
    assert after.val_files == before.val_files  # (this name hashes into training)
    with caplog.at_level("WARNING"):
        after.check_resume(state, "last.ckpt")  # training images added: said, and the run goes on
    assert "training images under" in caplog.text and "(36 then, 37 now)" in caplog.text
    assert "The sampler metrics' reference is drawn from the training images" in caplog.text
    (tmp_path / "zz_new.png").unlink()
    before.val_files[0].unlink()  # a validation image gone: the run's validation is not the checkpoint's
    with pytest.raises(ValueError, match=r"since the checkpoint last.ckpt \(36 \+ 8 images .* then, 35 \+ 8 now"):
        ImageFolderDataModule(tmp_path, image_size=8, n_val=8).check_resume(state, "last.ckpt")
    ImageFolderDataModule(tmp_path, image_size=8, n_val=8).check_resume(None, "old.ckpt")  # from before the check


def test_a_resume_refuses_a_validation_image_rewritten_under_its_name(tmp_path):
    """Validation files were compared by name only: an image rewritten in place (another resize, another crop) left
    the names as they were, and the resumed run validated on other images without a word."""
    write_images(tmp_path, 12)
    before = ImageFolderDataModule(tmp_path, image_size=8, n_val=3)
    state = before.state_dict()
    before.train_files[0].write_bytes(before.val_files[1].read_bytes())  # a training image changed: not refused
    ImageFolderDataModule(tmp_path, image_size=8, n_val=3).check_resume(state, "last.ckpt")
    write_png(before.val_files[1], np.full((8, 8, 3), 7, np.uint8))
    after = ImageFolderDataModule(tmp_path, image_size=8, n_val=3)
    assert after.state_dict()["val_files"] == state["val_files"] and after.val_files == before.val_files
    with pytest.raises(ValueError, match=r"have the checkpoint last.ckpt's names but other bytes .*init_from="):
        after.check_resume(state, "last.ckpt")
    after.check_resume({k: v for k, v in state.items() if k != "val_content"}, "old.ckpt")  # recorded before: names


def test_the_split_is_seeded_and_the_same_for_the_same_files(tmp_path):
    write_images(tmp_path, 30)
    a, b, c = (ImageFolderDataModule(tmp_path, image_size=8, n_val=5, seed=s) for s in (0, 0, 1))
    assert a.val_files == b.val_files and a.train_files == b.train_files and a.val_files != c.val_files


def test_exif_orientation_is_applied(tmp_path):
    """A phone's portrait JPEG (stored 16 wide x 8 tall, EXIF orientation 6: turn 90 degrees clockwise) stands up."""
    pixels = np.zeros((8, 16, 3), np.uint8)
    pixels[:, :8] = 255  # the stored image's left half white: its top once turned
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    (tmp_path / "a").mkdir()
    image.save(tmp_path / "a" / "portrait.jpg", exif=exif, quality=100)
    write_images(tmp_path / "b", 1)
    dm = ImageFolderDataModule(tmp_path, image_size=8, n_val=1)
    x = image_of(dm, tmp_path / "a" / "portrait.jpg").float()  # 8x16 upright, shorter side 8: its centre 8x8
    top, bottom = x[:, :4].mean(), x[:, 4:].mean()
    assert top > 200 and bottom < 50, (top, bottom)


@pytest.mark.parametrize("under", [0, 255])
def test_transparent_pixels_are_white_whatever_colour_they_hold(tmp_path, under):
    """Two fully transparent images that look the same became black and white training data."""
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = under
    write_png(tmp_path / "clear.png", rgba)
    write_images(tmp_path / "other", 1)
    dm = ImageFolderDataModule(tmp_path, image_size=8, n_val=1)
    assert image_of(dm, tmp_path / "clear.png").unique().tolist() == [255]


def test_an_empty_class_folder_is_refused_with_labels(tmp_path):
    write_images(tmp_path / "cat", 2)
    (tmp_path / "empty").mkdir()
    write_images(tmp_path / "zebra", 2)
    ImageFolderDataModule(tmp_path, image_size=8, n_val=1)  # no labels: nothing shifts
    with pytest.raises(ValueError, match=r"class folder\(s\) \['empty'\] .* hold no image"):
        ImageFolderDataModule(tmp_path, image_size=8, n_val=1, labels=True)


def test_a_link_to_an_image_listed_already_is_used_once(tmp_path, caplog):
    """A link in another class folder put one image in both splits, under two labels."""
    write_images(tmp_path / "cat", 2)
    write_images(tmp_path / "zebra", 2, seed=1)
    os.symlink(tmp_path / "cat" / "img0.png", tmp_path / "zebra" / "link.png")
    with caplog.at_level("WARNING"):
        dm = ImageFolderDataModule(tmp_path, image_size=8, n_val=1, labels=True)
    assert sorted(dm.train_files + dm.val_files) == sorted(
        [tmp_path / "cat" / f"img{i}.png" for i in range(2)] + [tmp_path / "zebra" / f"img{i}.png" for i in range(2)])
    assert "1 file(s)" in caplog.text and "links to images listed already" in caplog.text


def test_an_unreadable_image_in_a_loader_worker_is_still_one_line(tmp_path, capsys):
    """With num_workers > 0 torch re-raises the worker's error with its traceback: 25 lines, the file named last."""
    from lightning_sde.cli.errors import print_error

    write_images(tmp_path, 3)
    (tmp_path / "notes.png").write_text("not an image")
    dm = ImageFolderDataModule(tmp_path, image_size=8, batch_size=1, n_val=1, num_workers=1)
    with pytest.raises(ValueError) as caught:
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            list(loader)
    print_error("lsde-train", caught.value)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("lsde-train: error: ImageFolderDataModule: '") and "notes.png': not a readable image" in line
    assert line.endswith("(in DataLoader worker process 0)")


def test_a_resume_keeps_the_runs_default_n_val_and_warns_for_a_checkpoint_without_a_record(tmp_path, caplog):
    """n_val=null is 5 % of the files: one more file made it 2 where the run had 1, and the resume was refused with
    advice (set data.n_val) that the data-config check then refused too."""
    write_images(tmp_path, 39)
    state = ImageFolderDataModule(tmp_path, image_size=8).state_dict()
    assert state["n_val"] == 1
    write_png(tmp_path / "zz_new.png", np.zeros((8, 8, 3), np.uint8))
    resumed = ImageFolderDataModule(tmp_path, image_size=8)
    assert resumed.n_val == 2 and resumed.state_dict()["n_val"] == 2  # (its digests read for the 2)
    resumed.check_resume(state, "last.ckpt")  # the run's own 1, and its validation image
    assert resumed.n_val == 1 and len(resumed.val_set) == 1 and resumed.state_dict()["val_files"] == state["val_files"]
    assert len(resumed.train_set) == 39
    for crafted in (None, {}, [1, 2], {**state, "n_val": "1"}):  # before the record, or not one: said, not a crash
        caplog.clear()
        with caplog.at_level("WARNING"):
            ImageFolderDataModule(tmp_path, image_size=8).check_resume(crafted, "old.ckpt")
        assert "old.ckpt holds no record of the files" in caplog.text


def test_a_linked_copy_yields_to_the_real_file_whatever_sorts_first(tmp_path):
    """A folder `all/` of links to every image sorted before the class folders: the images took its label."""
    write_images(tmp_path / "cat", 2)
    write_images(tmp_path / "dog", 2, seed=1)
    (tmp_path / "all").mkdir()
    for cls in ("cat", "dog"):
        for i in range(2):
            os.symlink(tmp_path / cls / f"img{i}.png", tmp_path / "all" / f"{cls}{i}.png")
    (tmp_path / "all" / "cat0.png").unlink()
    dm = ImageFolderDataModule(tmp_path, image_size=8, n_val=1)
    assert not any(f.parent.name == "all" for f in dm.train_files + dm.val_files)


def test_a_key_colour_transparency_is_white_too(tmp_path):
    """An RGB PNG with a transparent colour (tRNS) kept that colour (black) where it is transparent."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "key.png", transparency=(0, 0, 0))
    write_images(tmp_path / "other", 1)
    dm = ImageFolderDataModule(tmp_path, image_size=8, n_val=1)
    assert image_of(dm, tmp_path / "key.png").unique().tolist() == [255]


def test_an_image_with_more_pixels_than_pil_decodes_is_a_one_line_error(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    write_images(tmp_path, 3, size=64)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is then beyond twice the limit: a "bomb"
    dm = ImageFolderDataModule(tmp_path, image_size=8, n_val=1)
    with pytest.raises(ValueError, match=r"img\d\.png'?: not a readable image \(PIL: Image size"):
        dm.train_set.image(0)


def test_a_worker_error_of_several_lines_keeps_them_all_on_one():
    from torch.utils.data import DataLoader, Dataset

    from lightning_sde.cli.errors import from_worker

    class Failing(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise ValueError("the file x.png: not a readable image\nsee lsde-prepare image_folder")

    with pytest.raises(ValueError) as caught:
        list(DataLoader(Failing(), num_workers=1))
    assert from_worker(str(caught.value)) == ("the file x.png: not a readable image see lsde-prepare image_folder "
                                              "(in DataLoader worker process 0)")
    assert from_worker("a plain message\nOriginal Traceback: not torch's") == "a plain message\nOriginal Traceback: " \
        "not torch's"


def test_images_reached_through_a_linked_folder_keep_their_own_folders_class(tmp_path):
    """cat/also -> ../dog/puppies sorted before dog/puppies: the puppies were kept as cat/also/*.png, labelled cat;
    a link to a whole class folder left that class empty, and the run was refused."""
    write_images(tmp_path / "cat", 2)
    write_images(tmp_path / "dog" / "puppies", 2, seed=1)
    os.symlink(tmp_path / "dog" / "puppies", tmp_path / "cat" / "also", target_is_directory=True)
    os.symlink(tmp_path / "dog", tmp_path / "cat" / "other", target_is_directory=True)
    dm = ImageFolderDataModule(tmp_path, image_size=8, n_val=1, labels=True)
    files = dm.train_files + dm.val_files
    assert sorted(files) == sorted([tmp_path / "cat" / f"img{i}.png" for i in range(2)]
                                   + [tmp_path / "dog" / "puppies" / f"img{i}.png" for i in range(2)])


def test_likelihood_scores_only_the_image_folders_held_out_images(tmp_path, caplog):
    """An image folder's run records its n_val in its datamodule state (the config's null is 5 % of the files):
    lsde-likelihood with a larger data.n_val would score images the run trained on; a validation image removed since
    is said."""
    from omegaconf import OmegaConf

    from lightning_sde.cli.likelihood import check_held_out

    write_images(tmp_path / "images", 40)
    trained = ImageFolderDataModule(tmp_path / "images", image_size=8)
    assert trained.n_val == 2
    path = tmp_path / "run.ckpt"
    data = {"_target_": "lightning_sde.data.ImageFolderDataModule", "root": str(tmp_path / "images"), "n_val": None,
            "seed": 0}
    torch.save({"state_dict": {}, "hyper_parameters": {"net": {}, "sde": {}, "shape": [3, 8, 8]}, "data_config": data,
                "ImageFolderDataModule": trained.state_dict()}, path)
    cfg = OmegaConf.create({"checkpoint": str(path), "data": data})
    check_held_out(cfg, ImageFolderDataModule(tmp_path / "images", image_size=8, n_val=2))
    with pytest.raises(ValueError, match=r"held out 2 validation images; data.n_val=3 adds 1 it trained on"):
        check_held_out(cfg, ImageFolderDataModule(tmp_path / "images", image_size=8, n_val=3))
    for i in range(20):  # new images: 5 % of 60 is 3, but the run held out its 2 (was refused as adding one)
        write_png(tmp_path / "images" / f"new{i}.png", np.full((8, 8, 3), i, np.uint8))
    grown = ImageFolderDataModule(tmp_path / "images", image_size=8)
    assert grown.n_val == 3
    check_held_out(cfg, grown)
    assert grown.n_val == 2
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "rank after" not in said and "images added since are scored beside its own (never trained on)" in said


def test_likelihood_says_when_removed_validation_images_let_training_images_in(tmp_path, caplog):
    """Validation images removed after the run: the first n_val files are now partly training images, which is said
    (with the count where the checkpoint records its last validation image; any changed listing before that)."""
    from lightning_sde.cli.likelihood import check_held_out

    write_images(tmp_path / "images", 40)
    trained = ImageFolderDataModule(tmp_path / "images", image_size=8, n_val=3)
    state = trained.state_dict()
    data = {"_target_": "lightning_sde.data.ImageFolderDataModule", "root": str(tmp_path / "images"), "n_val": 3}

    def scored(state, n_val=3):
        torch.save({"state_dict": {}, "hyper_parameters": {"net": {}, "sde": {}, "shape": [3, 8, 8]},
                    "data_config": data, "ImageFolderDataModule": state}, tmp_path / "run.ckpt")
        caplog.clear()
        cfg = OmegaConf.create({"checkpoint": str(tmp_path / "run.ckpt"), "data": data})
        check_held_out(cfg, ImageFolderDataModule(tmp_path / "images", image_size=8, n_val=n_val))
        return " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")

    assert scored(state) == ""
    for f in trained.val_files[:2]:
        f.unlink()
    assert "2 of the 3 validation images" in scored(state) and "may be images the model trained on" in scored(state)
    assert scored(state, n_val=1) == ""  # the run's third validation image, first now: held out
    legacy = {k: v for k, v in state.items() if k != "val_last"}
    assert "a training image renamed, or left in place of a removed one, may be scored" in scored(legacy)


def test_likelihood_says_when_a_renamed_training_image_may_be_scored_as_held_out(tmp_path, caplog):
    """A training image renamed after the run gets another place in the split order: one that lands among the
    validation images looks like an added image, and was scored as held out unsaid."""
    from lightning_sde.cli.likelihood import check_held_out
    from lightning_sde.data.image_folder import split_key

    write_images(tmp_path / "images", 40)
    trained = ImageFolderDataModule(tmp_path / "images", image_size=8, n_val=3)
    state = trained.state_dict()
    data = {"_target_": "lightning_sde.data.ImageFolderDataModule", "root": str(tmp_path / "images"), "n_val": 3}
    torch.save({"state_dict": {}, "hyper_parameters": {"net": {}, "sde": {}, "shape": [3, 8, 8]},
                "data_config": data, "ImageFolderDataModule": state}, tmp_path / "run.ckpt")
    name = next(n for n in (tmp_path / "images" / f"renamed{i}.png" for i in range(1000))
                if split_key(n, tmp_path / "images", 0) < state["val_last"])
    trained.train_files[0].rename(name)
    now = ImageFolderDataModule(tmp_path / "images", image_size=8, n_val=3)
    assert name in now.val_files  # scored as held out
    check_held_out(OmegaConf.create({"checkpoint": str(tmp_path / "run.ckpt"), "data": data}), now)
    assert "a training image renamed, or left in place of a removed one, may be scored as held out" in caplog.text


def test_upper_case_extensions_are_images_and_hidden_files_are_not(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.PNG", "c.Jpg", "d.png"):
        write_png(tmp_path / name, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    (tmp_path / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata beside a copied image
    write_png(tmp_path / ".thumb.png", np.zeros((8, 8, 3), np.uint8))
    dm = ImageFolderDataModule(tmp_path, image_size=8, n_val=1)
    assert sorted(p.name for p in dm.train_files + dm.val_files) == ["a.png", "b.PNG", "c.Jpg", "d.png"]
    assert dm.reference(3).shape == (3, 3, 8, 8)


def test_16bit_values_round_to_the_nearest_8bit_level():
    from lightning_sde.data.image_folder import to_8bit

    values = np.array([[0, 128, 129, 200, 385, 386, 65535]], np.uint16)  # v / 257: 0, .498, .502, .78, 1.498, 1.502
    assert np.asarray(to_8bit(Image.fromarray(values), "x.png")).tolist() == [[0, 0, 1, 1, 1, 2, 255]]


def test_flips_change_training_batches_only_never_validation_or_the_reference(tmp_path):
    left_white = np.zeros((8, 8, 3), np.uint8)
    left_white[:, 0] = 255
    for i in range(24):
        write_png(tmp_path / f"img{i}.png", left_white)
    dm = ImageFolderDataModule(tmp_path, image_size=8, n_val=8, batch_size=16, hflip=True)
    torch.manual_seed(0)  # the flips of a training batch
    upright = lambda x: bool((x[..., 0] == 1).all() and (x[..., -1] == -1).all())  # noqa: E731
    assert upright(next(iter(dm.val_dataloader()))) and upright(dm.reference(16))
    train = dm.augment(next(iter(dm.train_dataloader())))
    assert 0 < int((train[:, 0, 0, -1] == 1).sum()) < 16


def test_the_run_records_the_validation_images_it_started_with(tmp_path):
    write_images(tmp_path, 12)
    dm = ImageFolderDataModule(tmp_path, image_size=8, n_val=3)
    started = ImageFolderDataModule(tmp_path, image_size=8, n_val=3).state_dict()["val_content"]
    dm.setup("fit")
    write_png(dm.val_files[0], np.full((8, 8, 3), 7, np.uint8))  # rewritten while the run trains
    assert dm.state_dict()["val_content"] == started


def test_a_file_name_that_is_not_utf8_is_split_and_read_like_any_other(tmp_path):
    """Such a name (a Latin-1 folder copied over) passed lsde-prepare's check, then training failed with 'surrogates
    not allowed', naming neither the file nor the cause. The other files' places are as before (their UTF-8 bytes)."""
    import hashlib

    from lightning_sde.data.image_folder import split_key

    write_images(tmp_path, 12)
    odd = tmp_path / os.fsdecode(b"bad_\xff_name.png")
    write_png(odd, np.full((8, 8, 3), 200, np.uint8))
    for seed in range(20):  # it trains under one seed, validates under another (its bytes are digested then)
        dm = ImageFolderDataModule(tmp_path, image_size=8, n_val=4, seed=seed)
        assert odd in dm.train_files + dm.val_files and len(dm.train_files + dm.val_files) == 13
        assert image_of(dm, odd).float().mean() == 200
        dm.check_resume(dm.state_dict(), "last.ckpt")
    assert {odd in ImageFolderDataModule(tmp_path, image_size=8, n_val=4, seed=s).val_files for s in range(20)} \
        == {True, False}
    plain = tmp_path / "img3.png"
    assert split_key(plain, tmp_path, 5) == hashlib.blake2b(b"5/img3.png", digest_size=16).hexdigest()
    accented = tmp_path / "\u00e4.png"  # a valid non-ASCII name: its UTF-8 bytes, whatever the locale's encoding
    assert split_key(accented, tmp_path, 5) == hashlib.blake2b("5/\u00e4.png".encode(), digest_size=16).hexdigest()
