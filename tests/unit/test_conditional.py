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


class FakeTrainer:
    global_step, global_rank, datamodule = 0, 0, None


def module(num_classes, p_uncond):
    m = ScoreModule(net={"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 1,
                         "num_classes": num_classes}, sde=SDE, shape=[2], p_uncond=p_uncond)
    return m


def test_label_dropout_feeds_the_null_label(monkeypatch):
    seen = []
    m = module(4, 1.0)
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
    with pytest.raises(ValueError, match="data has no labels"):
        m.training_step(torch.randn(16, 2), 0)


def test_p_uncond_is_checked():
    with pytest.raises(ValueError, match="p_uncond"):
        module(4, 1.5)
