"""The image U-Net: shapes on the target datasets' sizes, time conditioning, gradient flow, validation, size."""

import pytest
import torch

from lightning_sde.models.unet import UNet

# Narrow versions of the configurations the U-Net is meant for (full widths would be too slow here).
CONFIGS = {
    "digits8": dict(in_channels=1, image_size=8, channels=32, channel_mult=(1, 2), attn_resolutions=(4,)),
    "mnist28_attn7": dict(in_channels=1, image_size=28, channels=16, channel_mult=(1, 2, 2), attn_resolutions=(7,),
                          num_res_blocks=1),
    "mnist28_attn14": dict(in_channels=1, image_size=28, channels=16, channel_mult=(1, 2, 2), attn_resolutions=(14,),
                           num_res_blocks=1),
    "cifar32": dict(in_channels=3, image_size=32, channels=16, channel_mult=(1, 2, 2, 2), attn_resolutions=(16,),
                    num_res_blocks=1),
}


def make(name: str, seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(**CONFIGS[name])


def perturb(net: UNet, scale: float = 0.05, seed: int = 1) -> UNet:
    """Add noise to every weight, so the zero-initialised convs no longer hide the rest of the network."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return net


def batch(name: str, n: int = 2) -> torch.Tensor:
    c = CONFIGS[name]
    return torch.randn(n, c["in_channels"], c["image_size"], c["image_size"],
                       generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_output_has_the_input_shape_and_starts_at_zero(name):
    net = make(name)
    x = batch(name)
    out = net(x, torch.rand(2))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.all(out == 0)  # zero-initialised final conv (DDPM++): the untrained net predicts 0
    assert perturb(net)(x, torch.rand(2)).abs().max() > 0


def test_output_depends_on_t_per_sample_and_samples_are_independent():
    net = perturb(make("digits8")).eval()
    x = batch("digits8")[:1].repeat(3, 1, 1, 1)
    t = torch.tensor([0.1, 0.9, 0.1])
    out = net(x, t)
    assert (out[0] - out[1]).abs().max() > 1e-3  # same x, different t
    torch.testing.assert_close(out[0], out[2])  # same x, same t
    # GroupNorm and attention are per sample: a sample's output must not depend on the rest of the batch.
    torch.testing.assert_close(net(x[1:2], t[1:2]), out[1:2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net(x, torch.tensor(0.1)), net(x, torch.full((3,), 0.1)))  # scalar t broadcasts


def test_gradient_reaches_every_parameter():
    net = perturb(make("mnist28_attn7")).train()
    x = batch("mnist28_attn7")
    loss = (net(x, torch.rand(2)) - x).square().mean()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.all(p.grad.isfinite())
               or p.grad.abs().max() == 0]
    assert not missing, f"no gradient for {missing}"


def test_float64_input_gives_float64_output():
    net = perturb(make("digits8")).eval()
    x, t = batch("digits8"), torch.tensor([0.3, 0.7])
    out = net(x.double(), t.double())
    assert out.dtype == torch.float64 and out.shape == x.shape
    torch.testing.assert_close(out.float(), net(x, t))  # computed in float32 either way


def test_narrow_widths_pick_a_dividing_group_count():
    net = UNet(in_channels=1, image_size=8, channels=12, channel_mult=(1, 3), attn_resolutions=(), num_groups=32)
    groups = {m.num_channels: m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups[12] == 12 and groups[36] == 18  # the largest divisor <= 32
    assert net(torch.randn(1, 1, 8, 8), torch.rand(1)).shape == (1, 1, 8, 8)


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=28, channel_mult=(1, 2, 2, 2)), r"image_size=28 must be divisible by .*=8.*at most 3 levels"),
    (dict(image_size=28, channel_mult=(1, 2, 2), attn_resolutions=(16,)), r"attn_resolutions.*\[16\].*\[28, 14, 7\]"),
    (dict(channel_mult=()), "channel_mult"),
    (dict(channel_mult=(1, 0)), "channel_mult"),
    (dict(channels=0), "channels must be a positive int; got 0"),
    (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(in_channels=0), "in_channels"),
    (dict(num_groups=0), "num_groups"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\); got 1.0"),
    (dict(fourier_scale=0.0), "fourier_scale"),
])
def test_bad_arguments_raise_helpful_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**{"channels": 8, **kwargs})


def test_wrong_input_shape_is_rejected():
    net = make("digits8")
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\); got \(2, 1, 16, 16\)"):
        net(torch.randn(2, 1, 16, 16), torch.rand(2))


def test_default_cifar10_config_size():
    # 35,942,915 parameters: the DDPM cifar10 layout (35.7M; channels=128, mult (1,2,2,2), 2 res blocks, attention
    # at 16) plus the Fourier time-embedding MLP. DDPM++ cifar10 (4 res blocks per level) is ~62M.
    n = sum(p.numel() for p in UNet().parameters())
    assert 30e6 < n < 45e6, n
