"""A network converted to float64 (lsde-likelihood dtype=float64) takes float64 inputs and computes in float64."""

import copy

import pytest
import torch

from lightning_sde.models.mlp import MLP
from lightning_sde.models.unet import UNet


def _perturbed(net):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():  # the zero-initialised output layers would hide the rest
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net.eval()


NETWORKS = {
    "mlp": (lambda: MLP(dim=2, width=32, depth=2), (3, 2)),
    "unet": (lambda: UNet(in_channels=1, image_size=8, channels=32, channel_mult=(1, 2), attn_resolutions=(4,)),
             (3, 1, 8, 8)),
}


@pytest.mark.parametrize("name", list(NETWORKS))
def test_float64_network_computes_in_float64(name):
    make, shape = NETWORKS[name]
    torch.manual_seed(0)
    net = _perturbed(make())
    x, t = torch.randn(shape, generator=torch.Generator().manual_seed(2)), torch.tensor([0.1, 0.5, 0.9])
    single = net(x, t)
    double = copy.deepcopy(net).double()(x.double(), t.double())
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-5)
    assert not torch.equal(double.float(), single)  # not rounded through float32 on the way


@pytest.mark.parametrize("name", list(NETWORKS))
def test_a_float32_network_answers_float64_inputs_in_float64(name):
    make, shape = NETWORKS[name]
    torch.manual_seed(0)
    net = _perturbed(make())
    x, t = torch.randn(shape, dtype=torch.float64), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    assert net(x, t).dtype == torch.float64


def test_mlp_dropout_must_leave_something():
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\); got 1.0"):
        MLP(dim=2, dropout=1.0)
