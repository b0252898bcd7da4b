"""A U-Net score network for images, in the DDPM++ family (Ho et al. 2020; Song et al. 2021, score_sde).

Per level: `num_res_blocks` residual blocks (+ self-attention at `attn_resolutions`), then a strided-conv downsample;
a middle of res-attn-res; the mirrored up path concatenates the saved skips and upsamples by nearest + conv.
DDPM++ choices kept here: residual branches scaled by 1/sqrt(2), the last conv of every residual branch and of the
network zero-initialised (each block starts as a rescaled identity and the network outputs exactly 0 at init),
and an additive time embedding. Not kept: FIR resampling, BigGAN-style resampling blocks, progressive in/out paths.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sde.models.embedding import FourierTimeEmbedding, LabelEmbedding, check_labels

SQRT_HALF = math.sqrt(0.5)
log = logging.getLogger(__name__)


def _groups(channels: int, num_groups: int) -> int:
    """The largest group count <= num_groups that divides channels (so narrow test-size networks still normalise)."""
    return max(g for g in range(1, min(num_groups, channels) + 1) if channels % g == 0)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, num_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch, num_groups), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch, num_groups), out_ch)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        # 1/sqrt(2) keeps the variance of the skip path from doubling at every block (DDPM++ skip_rescale).
        return (self.skip(x) + h) * SQRT_HALF


class Attention(nn.Module):
    """Single-head self-attention over the H*W positions, as in DDPM++."""

    def __init__(self, ch: int, num_groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch, num_groups), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)  # each (B, HW, C)
        h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(B, C, H, W)
        return (x + self.out(h)) * SQRT_HALF


class Block(nn.Module):
    """A residual block, optionally followed by attention: the unit after which the down path saves a skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, num_groups: int, attn: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout, num_groups)
        self.attn = Attention(out_ch, num_groups) if attn else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.res(x, emb)
        return h if self.attn is None else self.attn(h)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """net(x, t) for x of shape (B, in_channels, image_size, image_size), t of shape (B,) in [0, 1].

    Returns a tensor of x's shape and dtype (in the Denoiser's parameterisation); computes in float32.
    Level i works at resolution image_size / 2**i with channels * channel_mult[i] channels.
    With `num_classes`, net(x, t, y): a class embedding is added to the time embedding (y = None: no label).
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, channels: int = 128,
                 channel_mult: tuple = (1, 2, 2, 2), num_res_blocks: int = 2, attn_resolutions: tuple = (16,),
                 dropout: float = 0.1, fourier_scale: float = 16.0, num_groups: int = 32,
                 num_classes: int | None = None):
        super().__init__()
        channel_mult, attn_resolutions = tuple(channel_mult), tuple(attn_resolutions)
        _validate(in_channels, image_size, channels, channel_mult, num_res_blocks, attn_resolutions, dropout,
                  fourier_scale, num_groups)
        self.in_channels, self.image_size = in_channels, image_size
        emb_dim = 4 * channels  # DDPM's choice: the embedding is wider than the first level
        self.embed = FourierTimeEmbedding(emb_dim, fourier_scale)
        self.num_classes = num_classes
        self.label = LabelEmbedding(num_classes, emb_dim) if num_classes is not None else None
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        def block(cin: int, cout: int, res: int) -> Block:
            return Block(cin, cout, emb_dim, dropout, num_groups, attn=res in attn_resolutions)

        self.down = nn.ModuleList()
        skips, ch = [channels], channels  # channel counts of the saved skips, consumed in reverse by the up path
        for level, mult in enumerate(channel_mult):
            res = image_size // 2**level
            for _ in range(num_res_blocks):
                self.down.append(block(ch, channels * mult, res))
                ch = channels * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)

        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout, num_groups), Attention(ch, num_groups),
                                  ResBlock(ch, ch, emb_dim, dropout, num_groups)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = image_size // 2**level
            for _ in range(num_res_blocks + 1):  # one more than down: also takes the skip saved after downsampling
                self.up.append(block(ch + skips.pop(), channels * mult, res))
                ch = channels * mult
            if level > 0:
                self.up.append(Upsample(ch))
        assert not skips

        self.out = nn.Sequential(nn.GroupNorm(_groups(ch, num_groups), ch), nn.SiLU(),
                                 _zero(nn.Conv2d(ch, in_channels, 3, padding=1)))
        _warn_if_blind_to_time(channels, channel_mult, num_groups)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        check_labels(y, self.num_classes, "UNet")
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.image_size, self.image_size):
            raise ValueError(f"UNet expects x of shape (B, {self.in_channels}, {self.image_size}, {self.image_size});"
                             f" got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        # SiLU once here rather than in every block: all blocks read the embedding through act + Linear.
        emb = self.embed(t)
        if self.label is not None:
            emb = emb + self.label(y, x.shape[0], x.device)
        emb = F.silu(emb)
        h = self.conv_in(x.to(self.conv_in.weight.dtype))
        hs = [h]
        for m in self.down:
            h = m(h, emb)
            hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for m in self.up:
            h = m(h, emb) if isinstance(m, Upsample) else m(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h).to(x.dtype)


def _warn_if_blind_to_time(channels: int, channel_mult: tuple, num_groups: int) -> None:
    """A residual block adds the time embedding per channel just before a GroupNorm: in groups of one channel that
    norm subtracts it again (its mean over the pixels), and the block ignores t."""
    alone = sorted({w for w in (channels * m for m in channel_mult) if _groups(w, num_groups) == w})
    if not alone:
        return
    if alone[0] == 1:
        fix = "give every level two channels or more (channels)"
    else:
        most = max(g for g in range(1, alone[0] // 2 + 1) if alone[0] % g == 0)
        fix = f"use num_groups={most}{' or fewer' if most > 1 else ''} (two channels or more a group)"
    log.warning("UNet: GroupNorm groups of one channel at %s channels (num_groups=%d): they remove the time embedding "
                "added before them, so those blocks ignore t; %s", ", ".join(map(str, alone)), num_groups, fix)


def _validate(in_channels, image_size, channels, channel_mult, num_res_blocks, attn_resolutions, dropout,
              fourier_scale, num_groups) -> None:
    for name, value in [("in_channels", in_channels), ("image_size", image_size), ("channels", channels),
                        ("num_res_blocks", num_res_blocks), ("num_groups", num_groups)]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if not channel_mult or not all(isinstance(m, int) and m >= 1 for m in channel_mult):
        raise ValueError(f"channel_mult must be a non-empty tuple of positive ints; got {channel_mult!r}")
    factor = 2 ** (len(channel_mult) - 1)
    if image_size % factor:
        fits = max(n for n in range(len(channel_mult)) if image_size % 2**n == 0) + 1
        raise ValueError(f"image_size={image_size} must be divisible by 2**(len(channel_mult)-1)={factor} for "
                         f"channel_mult={channel_mult}; use at most {fits} levels, or an image_size divisible by "
                         f"{factor}")
    levels = [image_size // 2**i for i in range(len(channel_mult))]
    bad = [r for r in attn_resolutions if r not in levels]
    if bad:
        raise ValueError(f"attn_resolutions={attn_resolutions} has {bad}, not among the levels' resolutions {levels} "
                         f"(image_size={image_size}, channel_mult={channel_mult}); pick from {levels} or ()")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout}")
    if not fourier_scale > 0:
        raise ValueError(f"fourier_scale must be > 0; got {fourier_scale}")
