"""Class-conditional training: the networks' label embedding (with the null label), labelled batches from the data
modules, label dropout in the ScoreModule, and the checks that refuse a mismatch between model and data."""

import pytest
import torch

from lightning_sde.data import DigitsDataModule, Toy2DDataModule
from lightning_sde.models.mlp import MLP
from lightning_sde.models.unet import UNet
from lightning_sde.module import ScoreModule

SDE = {"_target_": "lightning_sde.sde.VPSDE"}


@pytest.mark.parametrize("make, x", [
    (lambda k: MLP(dim=2, width=32, depth=2, num_classes=k), torch.randn(4, 2)),
    (lambda k: UNet(in_channels=1, image_size=8, channels=16, channel_mult=(1, 2), num_res_blocks=1,
                    attn_resolutions=(), num_groups=8, num_classes=k), torch.randn(4, 1, 8, 8)),
], ids=["mlp", "unet"])
def test_networks_take_labels_and_the_null_label(make, x):
    torch.manual_seed(0)
    net = make(3).eval()  # no dropout
    t = torch.full((4,), 0.5)
    with torch.no_grad():
        for p in net.parameters():  # as after training: the classes differ (and the U-Net's zero output layer)
            p.normal_(0, 0.2)
        none, null = net(x, t), net(x, t, torch.full((4,), 3))
        a, b = net(x, t, torch.tensor([0, 0, 1, 2])), net(x, t, torch.tensor([1, 1, 1, 2]))
    torch.testing.assert_close(none, null)  # no labels = the null label
    assert not torch.allclose(a[:2], b[:2]) and torch.allclose(a[2:], b[2:])  # each row reads its own label
    plain = make(None)
    with pytest.raises(ValueError, match="takes no labels"):
        plain(x, t, torch.zeros(4, dtype=torch.long))


def test_label_embedding_starts_at_zero():
    net = MLP(dim=2, width=16, depth=1, num_classes=4)
    assert (net.label.table.weight == 0).all()


def test_labelled_toy_and_digits_batches():
    toy = Toy2DDataModule(n_train=600, n_val=100, batch_size=64, labels=True)
    assert toy.num_classes == 8 and toy.mixture.num_classes == 8
    x, y = next(iter(toy.train_dataloader()))
    assert x.shape == (64, 2) and y.shape == (64,) and y.dtype == torch.long
    # the labels are the components the points were drawn from: nearest mean, for these well separated ones
    nearest = ((x[:, None].double() - toy.mixture.means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == y).float().mean() > 0.97
    plain = Toy2DDataModule(n_train=600, n_val=100, batch_size=64)
    torch.testing.assert_close(plain.train_set.data, toy.train_set.data)  # labels change no sample
    digits = DigitsDataModule(batch_size=32, labels=True)
    x, y = digits.augment(next(iter(digits.train_dataloader())))
    assert x.shape == (32, 1, 8, 8) and x.min() >= -1 and set(y.tolist()) <= set(range(10))
    assert digits.num_classes == 10
    xv, yv = next(iter(digits.val_dataloader()))
    assert xv.shape[1:] == (1, 8, 8) and len(yv) == len(xv)
    with pytest.raises(ValueError, match="needs a mixture problem"):
        Toy2DDataModule(name="two_moons", n_train=100, n_val=10, labels=True)


def test_a_class_reference_and_floor_are_that_class_training_images_in_the_seeded_order():
    """A checkpoint's samples of class 3 are scored against class 3's training images (lsde-bench labels=3)."""
    from lightning_sde.data.base import STREAM_FLOOR, STREAM_REFERENCE
    from lightning_sde.data.digits import load_digits_levels

    digits = DigitsDataModule(labels=True)
    images, labels = load_digits_levels()
    threes = {tuple(image.flatten().tolist()) for image in images[labels == 3]}
    reference, floor = digits.reference(60, label=3), digits.floor_set(40, 60, label=3)
    assert reference.shape == (60, 1, 8, 8) and floor.shape == (40, 1, 8, 8)
    for x in (reference, floor):  # each one a training image of class 3 (levels k at 2k/16 - 1)
        levels = ((x + 1) * 8).round().long()
        assert all(tuple(row.flatten().tolist()) in threes for row in levels)
    positions = digits.class_positions(3)
    assert len(positions) == digits.class_count(3) == int((digits.train_labels == 3).sum())
    assert (positions[1:] > positions[:-1]).all()  # the first ones in the seeded order, as reference(n) takes
    torch.testing.assert_close(reference, digits.real_samples_at(positions[:60], STREAM_REFERENCE))
    torch.testing.assert_close(floor, digits.real_samples_at(positions[60:100], STREAM_FLOOR))  # after the reference
    with pytest.raises(ValueError, match=f"asks for more than the {len(positions)} training samples of that class"):
        digits.reference(len(positions) + 1, label=3)
    assert digits.floor_set(40, len(positions) - 39, label=3) is None
    with pytest.raises(ValueError, match=r"need the data's labels \(data.labels=true\)"):
        DigitsDataModule().reference(10, label=3)
    for label in (10, -1, True, "3"):
        with pytest.raises(ValueError, match="is not one of 0..9"):
            digits.reference(10, label=label)
    zeros = {tuple(image.flatten().tolist()) for image in images[labels == 0]}
    zero_levels = ((digits.reference(20, label=0) + 1) * 8).round().long()
    assert all(tuple(row.flatten().tolist()) in zeros for row in zero_levels)


def test_real_samples_read_by_position_are_the_seeded_slices():
    from lightning_sde.data.base import generator

    digits = DigitsDataModule(dequantize=True)
    expected = digits.train_transform(digits.train_levels[100:164], generator=generator(digits.seed, 7))
    assert torch.equal(digits.real_samples(100, 64, 7), expected)


def test_a_toy_class_reference_is_drawn_from_that_component():
    toy = Toy2DDataModule(n_train=600, n_val=100, labels=True)
    x = toy.reference(4000, label=2).double()
    component = toy.mixture.means[2]
    assert x.shape == (4000, 2) and (x.mean(0) - component).norm() < 0.05
    assert ((x[:, None] - toy.mixture.means[None]) ** 2).sum(-1).argmin(1).eq(2).float().mean() > 0.99
    assert not torch.equal(toy.floor_set(100, 4000, label=2), toy.reference(100, label=2))  # other draws
    with pytest.raises(ValueError, match="data.labels=true"):
        Toy2DDataModule(n_train=600, n_val=100).reference(10, label=2)


class FakeTrainer:
    global_step, global_rank, datamodule, accumulate_grad_batches = 0, 0, None, 1


def module(num_classes, p_uncond):
    m = ScoreModule(net={"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 1,
                         "num_classes": num_classes}, sde=SDE, shape=[2], p_uncond=p_uncond)
    return m


def test_label_dropout_feeds_the_null_label(monkeypatch):
    seen = []
    m = module(4, 0.5)
    m.p_uncond = 1.0  # refused as a setting (no class trained), set here to see every label dropped
    forward = m.denoiser.net.forward
    m.denoiser.net.forward = lambda x, t, y=None: seen.append(y.clone()) or forward(x, t, y)
    monkeypatch.setattr(ScoreModule, "trainer", FakeTrainer(), raising=False)
    monkeypatch.setattr(m, "log", lambda *a, **k: None)
    m.training_step((torch.randn(16, 2), torch.randint(0, 4, (16,))), 0)
    assert (seen[-1] == 4).all()  # p_uncond = 1: every label dropped
    m.p_uncond = 0.0
    y = torch.randint(0, 4, (16,))
    m.training_step((torch.randn(16, 2), y), 0)
    torch.testing.assert_close(seen[-1], y)
    with pytest.raises(ValueError, match="the batches have no labels"):
        m.training_step(torch.randn(16, 2), 0)


def test_p_uncond_is_checked():
    with pytest.raises(ValueError, match="p_uncond"):
        module(4, 1.5)


def write_fake_mnist(root, n_train=120, n_test=60):
    """MNIST's own file format (idx, big-endian headers), read by torchvision's MNIST class: real parsing, made-up
    pixels, labels k mod 10."""
    import struct

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        pixels = torch.randint(0, 256, (n, 28, 28), generator=gen, dtype=torch.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28)
                                                          + pixels.numpy().tobytes())
        labels = (torch.arange(n) % 10).to(torch.uint8)
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())


def test_torchvision_sets_pass_their_labels(tmp_path):
    from lightning_sde.data import TorchvisionDataModule

    write_fake_mnist(tmp_path)
    dm = TorchvisionDataModule("mnist", root=str(tmp_path), batch_size=16, n_val=20, download=False, labels=True)
    dm.setup()
    x, y = dm.augment(next(iter(dm.train_dataloader())))
    assert x.shape == (16, 1, 28, 28) and y.dtype == torch.long and dm.num_classes == 10
    # each training image keeps its own label through the seeded shuffle
    raw = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    pixels = torch.frombuffer(bytearray(raw.read_bytes()[16:]), dtype=torch.uint8).reshape(-1, 28, 28)
    first = dm.train_set.data[0, 0]
    index = int(((pixels == first).flatten(1).all(1)).nonzero()[0])
    assert int(dm.train_set.labels[0]) == index % 10
    xv, yv = next(iter(dm.val_dataloader()))
    assert len(xv) == len(yv) == 16
    plain = TorchvisionDataModule("mnist", root=str(tmp_path), batch_size=16, n_val=20, download=False)
    plain.setup()
    assert isinstance(next(iter(plain.train_dataloader())), torch.Tensor)


def test_image_folder_labels_are_class_subfolders(tmp_path):
    from PIL import Image

    from lightning_sde.data import ImageFolderDataModule

    for k, name in enumerate(["cat", "dog", "emu"]):
        (tmp_path / name).mkdir()
        for i in range(6):
            Image.new("L", (10, 12), color=40 * k + i).save(tmp_path / name / f"{i}.png")
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, channels=1, batch_size=4, n_val=3, labels=True)
    assert dm.num_classes == 3 and dm.class_names == ["cat", "dog", "emu"]
    x, y = dm.augment(next(iter(dm.train_dataloader())))
    assert x.shape == (4, 1, 8, 8)
    # the gray level tells the class: 40 k + i
    levels = ((x[:, 0, 0, 0] + 1) / 2 * 255).round()
    assert ((levels // 40) == y).all()
    xv, yv = next(iter(dm.val_dataloader()))
    assert len(xv) == len(yv) == 3
    assert dm.reference(5).shape == (5, 1, 8, 8)
    (tmp_path / "loose.png").write_bytes((tmp_path / "cat" / "0.png").read_bytes())
    with pytest.raises(ValueError, match="needs every image in a class sub-folder"):
        ImageFolderDataModule(str(tmp_path), image_size=8, channels=1, labels=True)
