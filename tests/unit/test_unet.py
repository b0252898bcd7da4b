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


def test_attention_sits_at_the_resolutions_named():
    from lightning_sde.models.unet import Attention

    def attentions(resolutions):
        net = UNet(**{**CONFIGS["digits8"], "attn_resolutions": resolutions})
        return sum(isinstance(m, Attention) for m in net.modules())

    assert (attentions((4,)), attentions((8,)), attentions(())) == (6, 6, 1)  # 2 down + 3 up blocks, and the middle's


def test_a_fresh_residual_block_is_its_input_scaled_by_sqrt_half():
    """DDPM++'s skip_rescale with the branch's last conv at zero: (x + 0) / sqrt(2)."""
    from lightning_sde.models.unet import ResBlock

    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(ResBlock(8, 8, 16, 0.0, 4)(x, torch.randn(2, 16)), x * 0.5**0.5)


def test_attention_is_softmax_of_query_key_products_times_values():
    from lightning_sde.models.unet import Attention

    torch.manual_seed(0)
    attn = perturb(Attention(8, 4))
    x = torch.randn(2, 8, 3, 3)
    q, k, v = attn.qkv(attn.norm(x)).reshape(2, 3, 8, 9).unbind(1)  # each (B, C, HW)
    weights = torch.softmax(q.transpose(1, 2) @ k / 8**0.5, dim=-1)  # (B, HW query, HW key)
    mixed = (v @ weights.transpose(1, 2)).reshape(2, 8, 3, 3)
    torch.testing.assert_close(attn(x), (x + attn.out(mixed)) * 0.5**0.5)


def test_the_time_features_are_sin_and_cos_of_2_pi_f_t_and_blocks_read_them_through_silu():
    from lightning_sde.models.embedding import FourierTimeEmbedding

    embed = FourierTimeEmbedding(8, scale=3.0)
    seen = {}
    embed.mlp[0].register_forward_hook(lambda m, args, out: seen.update(features=args[0]))
    t = torch.tensor([0.25, 0.7])
    embed(t)
    angles = 2 * torch.pi * t[:, None] * embed.freqs[None]
    torch.testing.assert_close(seen["features"], torch.cat([angles.sin(), angles.cos()], dim=1))

    net = perturb(make("digits8"))
    net.down[0].res.emb.register_forward_hook(lambda m, args, out: seen.update(block=args[0]))
    net(batch("digits8"), t)
    torch.testing.assert_close(seen["block"], torch.nn.functional.silu(net.embed(t)))


@pytest.mark.parametrize("config", ["unet_digits", "unet_mnist", "ddpmpp", "ncsnpp"])
def test_every_residual_block_of_the_shipped_configs_sees_the_time(config):
    """The embedding is added per channel before a GroupNorm: a group of one channel subtracts it again (its mean
    over the pixels is the embedding's own), and the block ignores t; in groups of two it cancels about half of it.
    Every width of the shipped networks has 4 channels a group or more, and a block at the narrowest (on a small
    image) changes when its embedding does."""
    from omegaconf import OmegaConf

    from lightning_sde.configuration import config_root
    from lightning_sde.models.unet import ResBlock, _groups

    net = OmegaConf.to_container(OmegaConf.load(config_root() / "model" / f"{config}.yaml"))["net"]
    net.pop("_target_")
    widths = {net["channels"] * m for m in net["channel_mult"]}
    for width in sorted(widths):
        assert width // _groups(width, net["num_groups"]) >= 4, (config, width)  # score_sde's 4 or more a group
    torch.manual_seed(0)
    block = perturb(ResBlock(min(widths), min(widths), 16, 0.0, net["num_groups"]))
    x = torch.randn(1, min(widths), 4, 4, generator=torch.Generator().manual_seed(3))
    emb = torch.randn(2, 16, generator=torch.Generator().manual_seed(4))
    out = block(x.expand(2, -1, -1, -1), emb)
    assert (out[0] - out[1]).abs().max() > 1e-2 * out.abs().max()


def test_a_network_whose_groups_hold_one_channel_says_that_its_blocks_ignore_t(caplog):
    from lightning_sde.models.unet import ResBlock

    torch.manual_seed(0)
    block = perturb(ResBlock(8, 8, 16, 0.0, 8))
    x, emb = torch.randn(1, 8, 4, 4).expand(2, -1, -1, -1), torch.randn(2, 16)
    out = block(x, emb)
    torch.testing.assert_close(out[0], out[1])  # why: the time cannot reach past norm2
    with caplog.at_level("WARNING"):
        UNet(in_channels=1, image_size=8, channels=32, channel_mult=(1, 2), attn_resolutions=(), num_groups=32)
    assert "GroupNorm groups of one channel at 32 channels (num_groups=32)" in caplog.text
    assert "ignore t" in caplog.text and "num_groups=16" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        UNet(in_channels=1, image_size=8, channels=32, channel_mult=(1, 2), attn_resolutions=(), num_groups=8)
    assert not caplog.text
    with caplog.at_level("WARNING"):
        UNet(in_channels=1, image_size=8, channels=1, channel_mult=(1, 2), attn_resolutions=(), num_groups=32)
    assert "at 1, 2 channels" in caplog.text and "give every level two channels or more" in caplog.text
    for channels, mult, fix in [(16, (1, 2), "use num_groups=8 or fewer (two channels or more a group)"),  # narrowest
                                (2, (1,), "use num_groups=1 (two channels or more a group)")]:
        caplog.clear()
        with caplog.at_level("WARNING"):
            UNet(in_channels=1, image_size=8, channels=channels, channel_mult=mult, attn_resolutions=(), num_groups=32)
        assert caplog.text.rstrip().endswith(fix), caplog.text
