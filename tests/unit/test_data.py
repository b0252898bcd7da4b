"""DataModules: the shared interface (shape, kind, tensor batches, deterministic reference), split sizes, toy
samples against the exact mixture moments, digits scaling and dequantisation, ImageFolder resize/crop, and the
offline failure of the torchvision sets."""

import math
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from lightning_sde.cli.prepare import main as prepare_main
from lightning_sde.data import (
    TOY_NAMES,
    CIFAR10DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    TorchvisionDataModule,
    Toy2DDataModule,
    build_datamodule,
)


def mixture_moments(mixture):
    w = mixture.log_weights.exp()
    mean = (w[:, None] * mixture.means).sum(0)
    second = (w[:, None, None] * (mixture.covs + mixture.means[:, :, None] * mixture.means[:, None, :])).sum(0)
    return mean, second - mean[:, None] * mean[None, :]


# --- toy --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOY_NAMES)
def test_toy_interface_and_split_sizes(name):
    dm = build_datamodule(name, batch_size=256, n_train=5000, n_val=300)
    dim = {"random_mixture": 16, "gaussians_1d": 1}.get(name, 2)
    assert dm.kind == "points" and dm.shape == (dim,)
    assert len(dm.train_set) == 5000 and len(dm.val_set) == 300
    batches = list(dm.train_dataloader())
    assert len(batches) == 5000 // 256  # drop_last
    assert all(isinstance(b, torch.Tensor) and b.shape == (256, dim) and b.dtype == torch.float32 for b in batches)
    val = torch.cat(list(dm.val_dataloader()))
    assert torch.equal(val, dm.val_set.data)
    ref = dm.reference(1000)
    assert ref.shape == (1000, dim) and ref.dtype == torch.float32
    assert torch.equal(ref, dm.reference(1000))  # the same on every call
    assert not torch.equal(ref[:300], dm.val_set.data[:300])  # a stream of its own, not the validation set
    assert (dm.mixture is not None) == (name in ("gaussians_1d", "eight_gaussians", "swiss_roll", "random_mixture"))
    again = build_datamodule(name, batch_size=256, n_train=5000, n_val=300)
    assert torch.equal(again.train_set.data, dm.train_set.data)  # generated once from the seed
    other = build_datamodule(name, batch_size=256, n_train=5000, n_val=300, seed=1)
    assert not torch.equal(other.train_set.data, dm.train_set.data)


@pytest.mark.parametrize("name", ["eight_gaussians", "swiss_roll", "random_mixture"])
def test_toy_mixture_samples_match_the_exact_moments(name):
    n = 100_000
    dm = Toy2DDataModule(name, batch_size=512, n_train=n)
    x = dm.train_set.data.double()
    mean, cov = mixture_moments(dm.mixture)
    # 5 standard errors, estimated from the sample itself
    xc = x - x.mean(0)
    assert ((x.mean(0) - mean).abs() <= 5 * x.std(0) / math.sqrt(n)).all()
    products = xc[:, :, None] * xc[:, None, :]
    se = products.std(0) / math.sqrt(n)
    assert ((products.mean(0) - cov).abs() <= 5 * se + 1e-6).all()


def test_toy_samplers_have_their_shapes():
    board = Toy2DDataModule("checkerboard", batch_size=64, n_train=20_000).train_set.data
    assert board.abs().max() <= 4.0
    cell = torch.floor((board + 4) / 2).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()  # only the dark squares
    assert (board.mean(0).abs() < 0.1).all()
    moons = Toy2DDataModule("two_moons", batch_size=64, n_train=20_000, noise=0.05).train_set.data
    assert (moons.mean(0).abs() < 0.1).all()
    assert moons[:, 0].abs().max() < 4.5 and moons[:, 1].abs().max() < 3.0


def test_toy_params_pass_through_and_bad_arguments_fail_clearly():
    dm = Toy2DDataModule("random_mixture", batch_size=32, n_train=1000, dim=3, n_components=4)
    assert dm.shape == (3,) and dm.mixture.means.shape == (4, 3)
    with pytest.raises(ValueError, match="unknown name 'spiral'.*checkerboard"):
        Toy2DDataModule("spiral", batch_size=32)
    with pytest.raises(ValueError, match=re.escape("eight_gaussians takes no parameter(s) ['dim']; allowed: the "
                                                   "data's ['name', 'batch_size', 'n_train', 'n_val', 'num_workers', "
                                                   "'seed', 'labels'] and eight_gaussians's ['radius']")):
        Toy2DDataModule("eight_gaussians", batch_size=32, dim=3)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1; got 0"):
        Toy2DDataModule("eight_gaussians", batch_size=0)
    with pytest.raises(ValueError, match="n_train"):
        Toy2DDataModule("eight_gaussians", batch_size=32, n_train=-5)
    with pytest.raises(ValueError, match="unknown datamodule 'celeba'.*cifar10.*digits.*image_folder"):
        build_datamodule("celeba", batch_size=8)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['hflip'\]"):
        build_datamodule("digits", batch_size=8, hflip=True)
    with pytest.raises(ValueError, match="exceeds the 100 training samples"):
        Toy2DDataModule("eight_gaussians", batch_size=128, n_train=100).train_dataloader()


def test_training_batches_follow_the_global_step_and_split_exactly_across_processes(monkeypatch):
    """A resumed run sees the batches an uninterrupted one would: the order is a function of (seed, epoch), the
    first batch is the one at the trainer's position, and process r of W takes rows r, r + W, ... of each epoch's
    permutation. Lightning leaves the loader alone (it is not a DataLoader, so no DistributedSampler goes in)."""
    import lightning_sde.data.base as base
    from lightning_sde.data.base import EpochBatches

    dm = Toy2DDataModule("eight_gaussians", batch_size=100, n_train=1000)
    loader = dm.train_dataloader()
    assert not isinstance(loader, DataLoader) and len(loader) == 10
    assert torch.equal(next(iter(loader)), dm.train_set.data[next(iter(EpochBatches(1000, 100, dm.seed)))])
    step = {"now": 0}
    batches = EpochBatches(1000, 100, dm.seed, position=lambda: step["now"])
    straight = []
    for _ in range(3):  # three epochs as a trainer runs them: the position advances one batch a step
        for indices in batches:
            straight.append(indices)
            step["now"] += 1
    assert len(straight) == 30 and sorted(i for b in straight[:10] for i in b) == list(range(1000))  # each row once
    assert straight[:10] != straight[10:20]  # a new order every epoch
    for position in (0, 7, 10, 23):  # resume at step 7 (mid-epoch), 10 (an epoch boundary), 23
        resumed = list(EpochBatches(1000, 100, dm.seed, position=lambda p=position: p))
        assert resumed == straight[position : (position // 10 + 1) * 10]  # the rest of that epoch, exactly
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(base, "rank_world", lambda r=rank: (r, 2))
        shards.append([i for batch in EpochBatches(1000, 100, dm.seed) for i in batch])
    assert len(shards[0]) == len(shards[1]) == 500 and not set(shards[0]) & set(shards[1])  # disjoint, equal
    assert len(EpochBatches(1000, 100, dm.seed)) == 5  # under 2 processes: 500 rows each


# --- digits -----------------------------------------------------------------------------------------------------


def test_digits_split_range_and_reference():
    dm = DigitsDataModule(batch_size=128, n_val=180)
    assert dm.kind == "images" and dm.shape == (1, 8, 8)
    assert len(dm.train_set) + len(dm.val_set) == 1797 and len(dm.val_set) == 180
    assert set(dm.train_index.tolist()).isdisjoint(dm.val_index.tolist())
    batch = dm.augment(next(iter(dm.train_dataloader())))  # levels (uint8) until augment, which runs on the device
    assert batch.shape == (128, 1, 8, 8) and batch.dtype == torch.float32
    everything = torch.cat([dm.augment(torch.cat(list(dm.train_dataloader()))), dm.val_set.data])
    assert everything.min() == -1.0 and everything.max() == 1.0
    levels = torch.unique(dm.reference(1617))
    assert torch.allclose(levels, torch.linspace(-1, 1, 17))  # exactly the 17 levels
    assert torch.equal(dm.reference(500), dm.reference(500))
    assert torch.equal(dm.reference(500), DigitsDataModule(batch_size=8).reference(500))
    with pytest.raises(ValueError, match="more than the 1617 training samples"):
        dm.reference(1700)


def test_digits_dequantisation_moves_each_pixel_by_less_than_one_level():
    plain = DigitsDataModule(batch_size=64, dequantize=False)
    deq = DigitsDataModule(batch_size=64, dequantize=True)
    a, b = plain.reference(1000), deq.reference(1000)
    assert torch.equal(b, deq.reference(1000))
    level = 2 / 17  # width of one level after dequantised scaling (2 / 16 without)
    diff = (a - b).abs()
    assert diff.max() < level and diff.mean() > 0.1 * level
    assert b.min() >= -1 and b.max() < 1 and torch.unique(b).numel() > 10_000  # continuous values
    # the integer level is recovered by flooring: dequantisation never crosses into a neighbouring level
    assert torch.equal(torch.floor((b + 1) * 17 / 2), torch.round((a + 1) * 16 / 2))
    levels = next(iter(deq.train_dataloader()))
    assert levels.dtype == torch.uint8 and torch.equal(levels, next(iter(deq.train_dataloader())))
    e1, e2 = deq.augment(levels), deq.augment(levels)
    assert not torch.equal(e1, e2)  # fresh noise for every batch (the trainer seeds each step's generator)
    assert deq.bits_per_dim_offset == pytest.approx(math.log2(8.5)) and plain.bits_per_dim_offset is None


# --- ImageFolder ------------------------------------------------------------------------------------------------


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_resizes_crops_and_scales(tmp_path):
    rng = np.random.default_rng(0)
    # class sub-folders (ImageFolder layout) and a loose file, different sizes and modes
    for i in range(6):
        write_png(tmp_path / f"class{i % 2}" / f"img{i}.png", rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8))
    write_png(tmp_path / "gray.png", rng.integers(0, 256, (40, 40), dtype=np.uint8))
    # 16 high, 48 wide: red | green | blue thirds. Resizing keeps 16x48; the centre crop keeps only green.
    stripes = np.zeros((16, 48, 3), dtype=np.uint8)
    stripes[:, :16, 0] = stripes[:, 16:32, 1] = stripes[:, 32:, 2] = 255
    write_png(tmp_path / "stripes.png", stripes)
    (tmp_path / "notes.txt").write_text("not an image")

    dm = ImageFolderDataModule(tmp_path, image_size=16, batch_size=4, n_val=2)
    assert dm.kind == "images" and dm.shape == (3, 16, 16)
    assert len(dm.train_set) == 6 and len(dm.val_set) == 2
    batch = dm.augment(next(iter(dm.train_dataloader())))
    assert batch.shape == (4, 3, 16, 16) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    ref = dm.reference(6)
    assert ref.shape == (6, 3, 16, 16) and torch.equal(ref, dm.reference(6))
    everything = torch.cat([ref, torch.cat(list(dm.val_dataloader()))])
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 16, 16)
    assert sum(torch.equal(x, green) for x in everything) == 1

    gray = ImageFolderDataModule(tmp_path, image_size=16, channels=1, batch_size=2)
    assert gray.shape == (1, 16, 16) and gray.reference(3).shape == (3, 1, 16, 16)


def test_image_folder_missing_or_empty_folder_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataModule(tmp_path / "nowhere", image_size=16, batch_size=2)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no images under .*empty.*\.png"):
        ImageFolderDataModule(tmp_path / "empty", image_size=16, batch_size=2)
    with pytest.raises(ValueError, match="channels must be 1"):
        ImageFolderDataModule(tmp_path, image_size=16, channels=4, batch_size=2)


# --- torchvision sets without data and without internet ---------------------------------------------------------


def test_torchvision_download_failure_names_dataset_root_and_command(tmp_path):
    (tmp_path / "kept").mkdir()
    dm = MNISTDataModule(root=str(tmp_path / "new" / "data"), batch_size=8, download_timeout=2)
    assert dm.shape == (1, 28, 28) and dm.kind == "images"
    start = time.perf_counter()
    try:
        dm.prepare_data()
    except FileNotFoundError as err:  # a user error: one line from the apps
        message = str(err)
    else:
        pytest.skip("MNIST downloaded: this machine has internet; the offline failure cannot be observed")
    assert time.perf_counter() - start < 10
    root = (tmp_path / "new" / "data").resolve()
    assert "MNIST" in message and str(root) in message
    assert f"lsde-prepare mnist --root {root}" in message
    assert "downloading it failed" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # the empty folders it made (data/MNIST/raw) removed
    (tmp_path / "kept" / "MNIST" / "mine").mkdir(parents=True)  # empty folders that were there before are kept
    with pytest.raises(FileNotFoundError, match="downloading it failed"):
        MNISTDataModule(root=str(tmp_path / "kept"), batch_size=8, download_timeout=2).prepare_data()
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == \
        ["kept", "kept/MNIST", "kept/MNIST/mine"]


def test_torchvision_without_download_or_setup_fails_at_once(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path / "data"), batch_size=8, download=False)
    assert dm.shape == (3, 32, 32) and dm.hflip
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=r"(?s)CIFAR-10 is not under .*download=False.*prepare cifar10 --root"):
        dm.prepare_data()
    with pytest.raises(FileNotFoundError, match=r"(?s)CIFAR-10 is not under root .*prepare cifar10 --root"):
        dm.setup("fit")
    with pytest.raises(FileNotFoundError, match="CIFAR-10"):
        dm.reference(10)
    assert time.perf_counter() - start < 2
    with pytest.raises(ValueError, match="hflip=True mirrors digits"):
        TorchvisionDataModule("mnist", root=str(tmp_path), batch_size=8, hflip=True)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['hflip'\]"):
        build_datamodule("mnist", batch_size=8, hflip=True)


def test_corrupt_torchvision_files_are_said_so_with_what_to_do(tmp_path):
    """MNIST's files present but cut short: torchvision's bare AssertionError, from lsde-prepare and from training."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(bytes(range(100)))
    message = r"MNIST under '.*MNIST' could not be read \(AssertionError.*corrupt; delete that folder and run " \
        r"lsde-prepare mnist --root"
    with pytest.raises(ValueError, match=message):
        MNISTDataModule(root=str(tmp_path), batch_size=8).prepare_data()
    with pytest.raises(ValueError, match=message):
        MNISTDataModule(root=str(tmp_path), batch_size=8, download=False).setup("fit")


def test_unreadable_torchvision_files_are_a_permission_problem_not_corruption(tmp_path, monkeypatch):
    from lightning_sde.data import torchvision_sets

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "MNIST" / "raw" / "x"))

    monkeypatch.setattr(torchvision_sets, "_dataset", denied)
    with pytest.raises(ValueError, match=r"could not be read \(\[Errno 13\] Permission denied.*give this user read"):
        MNISTDataModule(root=str(tmp_path), batch_size=8).prepare_data()


def test_prepare_cli_reports_the_failure(tmp_path, capsys, monkeypatch):
    """A download that fails (no network: here always, so that the test does not depend on the machine's) is exit 1
    with one line naming the data and where to put it; an unknown name is argparse's usage error."""
    import urllib.error

    from lightning_sde.data import torchvision_sets

    def offline(name, root, train, download=False):
        if download:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        raise RuntimeError("Dataset not found. You can use download=True to download it")

    monkeypatch.setattr(torchvision_sets, "_dataset", offline)
    assert prepare_main(["mnist", "--root", str(tmp_path), "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lsde-prepare: error: ") and err.count("\n") == 1 and "MNIST" in err and "--root" in err \
        and "Temporary failure in name resolution" in err, err
    with pytest.raises(SystemExit):
        prepare_main(["imagenet", "--root", str(tmp_path)])


def test_image_folder_batches_do_not_depend_on_the_number_of_loader_workers(tmp_path):
    """Decoding in worker processes (data.num_workers, the configs' knob for image files) gives the same batches,
    labels and dequantised validation images as decoding in the main process."""
    rng = np.random.default_rng(1)
    for i in range(12):
        write_png(tmp_path / f"class{i % 3}" / f"img{i}.png", rng.integers(0, 256, (18 + i, 20, 3), dtype=np.uint8))

    def batches(workers):
        dm = ImageFolderDataModule(tmp_path, image_size=8, batch_size=3, n_val=3, dequantize=True, labels=True,
                                   num_workers=workers)
        assert dm.val_dataloader().num_workers == workers  # decoded where asked
        return list(dm.train_dataloader()), list(dm.val_dataloader())

    (train0, val0), (train2, val2) = batches(0), batches(2)
    assert len(train0) == 3 and len(val0) == 1
    for a, b in zip(train0 + val0, train2 + val2, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


class _SigintState(torch.utils.data.Dataset):
    """Each item: whether the process that loads it ignores Ctrl-C."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        import signal

        return torch.tensor(float(signal.getsignal(signal.SIGINT) == signal.SIG_IGN))


def test_loader_processes_leave_ctrl_c_to_the_main_process():
    """A terminal's Ctrl-C reaches the loader processes too: they stopped, and lsde-train, finishing its step before
    stopping, failed on "DataLoader worker exited unexpectedly" (exit 1, and during an evaluation no checkpoint)."""
    from lightning_sde.data import DigitsDataModule

    dm = DigitsDataModule(batch_size=4, num_workers=1)
    dm.val_set, dm.val_collate = _SigintState(), torch.stack
    assert next(iter(dm.val_dataloader())).tolist() == [1.0] * 4


@pytest.mark.parametrize("make", [lambda: DigitsDataModule(batch_size=8), lambda: Toy2DDataModule(batch_size=8)],
                         ids=["digits", "toy2d"])
def test_the_noise_floor_set_shares_no_sample_with_the_reference(make):
    """What a perfect model scores is real samples other than the reference: the training images after it (digits),
    other draws (toy data). Any shared one moves the floor towards 0."""
    data = make()
    reference, floor = data.reference(100), data.floor_set(100)
    assert floor.shape == reference.shape
    rows = lambda x: {tuple(r.tolist()) for r in x.flatten(1)}  # noqa: E731
    assert not rows(reference) & rows(floor)


def test_each_seed_and_stream_draws_its_own_numbers():
    """seed 1's training draws are not seed 0's validation draws (a seed * k + stream with k too small would share
    them); the toy validation set is not the training set at equal sizes."""
    from lightning_sde.data.base import generator

    draws = {tuple(torch.randn(4, generator=generator(seed, stream)).tolist())
             for seed in range(6) for stream in range(5)}
    assert len(draws) == 30
    toy = Toy2DDataModule(batch_size=8, n_train=64, n_val=64)
    assert not torch.equal(toy.train_set.data, toy.val_set.data)
    assert not torch.equal(Toy2DDataModule(batch_size=8, n_train=64, n_val=64, seed=1).train_set.data,
                           toy.val_set.data)


def test_training_flips_mirror_about_half_the_images_left_to_right():
    from lightning_sde.data.base import ImageBatch

    levels = torch.zeros(400, 1, 4, 6, dtype=torch.uint8)
    levels[..., 0] = 255  # a white left column: an upright image's
    x = ImageBatch(256, hflip=True)(levels, generator=torch.Generator().manual_seed(0))
    mirrored = x[..., -1].eq(1).all(dim=(1, 2))
    assert torch.equal(x[~mirrored], ImageBatch(256)(levels[~mirrored]))
    assert torch.equal(x[mirrored], ImageBatch(256)(levels[mirrored]).flip(-1))
    assert 150 < int(mirrored.sum()) < 250


def test_digits_levels_are_the_17_values_from_minus_one_to_one_and_n_val_leaves_a_training_set():
    from lightning_sde.data.digits import digits_to_unit_range

    assert digits_to_unit_range(torch.tensor([0, 8, 16], dtype=torch.uint8)).tolist() == [-1.0, 0.0, 1.0]
    assert len(DigitsDataModule(batch_size=1, n_val=1796).train_set) == 1
    with pytest.raises(ValueError, match="n_val must be below the 1797 images; got 1797"):
        DigitsDataModule(batch_size=1, n_val=1797)
    with pytest.raises(ValueError, match="dequantize must be true or false; got 'false'"):
        DigitsDataModule(dequantize="false")


def test_the_noise_floor_set_is_there_while_the_training_set_holds_it():
    digits = DigitsDataModule(batch_size=8)  # 1617 training images
    assert digits.floor_set(817, after=800).shape == (817, 1, 8, 8)
    assert digits.floor_set(818, after=800) is None


def test_training_moments_are_those_of_the_first_n_training_samples():
    from lightning_sde.data.base import training_moments

    toy = Toy2DDataModule(batch_size=8, n_train=500, n_val=64)
    first = toy.reference(300).double()
    moments = training_moments(toy, n=300)
    assert torch.allclose(moments.mean.double(), first.mean(0), atol=1e-6)
    assert torch.allclose(training_moments(toy).mean.double(), toy.reference(500).double().mean(0), atol=1e-6)


def test_two_moons_refuses_negative_noise_and_a_toy_config_without_a_name_is_the_eight_gaussians():
    from lightning_sde.data.toy import data_mixture, two_moons

    with pytest.raises(ValueError, match="noise must be >= 0; got -0.5"):
        two_moons(10, noise=-0.5)
    assert data_mixture({})[0] == "eight_gaussians"


def fake_cifar(monkeypatch, n_train=40, n_test=20):
    """torchvision's CIFAR-10 objects stood in by arrays of their layout (N, H, W, C): one red pixel in the first
    row's last column, so that a transposed or flipped image shows."""
    from types import SimpleNamespace

    from lightning_sde.data import torchvision_sets

    def dataset(name, root, train, download=False):
        n = n_train if train else n_test
        data = np.zeros((n, 32, 32, 3), np.uint8)
        data[:, 0, 31, 0] = 255
        return SimpleNamespace(data=data, targets=[i % 10 for i in range(n)])

    monkeypatch.setattr(torchvision_sets, "_dataset", dataset)


def test_cifar_images_are_channels_first_and_only_training_batches_are_flipped(monkeypatch, tmp_path):
    fake_cifar(monkeypatch)
    torch.manual_seed(0)  # the flips of a training batch
    dm = CIFAR10DataModule(root=str(tmp_path), batch_size=20, n_val=20)  # n_val: all 20 test images
    dm.setup("fit")
    upright = lambda x: bool((x[:, 0, 0, 31] == 1).all() and (x[:, 0, 31, 0] == -1).all()  # noqa: E731
                             and (x[:, 1:] == -1).all())
    assert dm.hflip and upright(dm.reference(40)) and upright(next(iter(dm.val_dataloader())))
    flipped = dm.augment(next(iter(dm.train_dataloader())))[:, 0, 0, 0] == 1
    assert 0 < int(flipped.sum()) < 20
    with pytest.raises(ValueError, match="n_val 21 exceeds the 20 test images"):
        CIFAR10DataModule(root=str(tmp_path), batch_size=20, n_val=21).setup("fit")
