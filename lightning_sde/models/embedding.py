"""Time and class-label embeddings shared by the networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class FourierTimeEmbedding(nn.Module):
    """Random Fourier features of t (Tancik et al. 2020; score_sde's GaussianFourierProjection), then an MLP.

    The frequencies are a fixed buffer (not trained), drawn once from N(0, scale^2).
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even; got {dim}")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(dim // 2, generator=gen) * scale)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        angles = 2 * math.pi * t.to(self.freqs.dtype)[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class LabelEmbedding(nn.Module):
    """A learned vector per class, plus one for "no label" (index num_classes): what label dropout trains and
    classifier-free guidance asks for. `forward(None, n)` is the no-label vector for n samples. Initialised at zero,
    so a conditional network starts as its unconditional twin."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1; got {num_classes!r}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.zeros_(self.table.weight)

    def forward(self, y: Tensor | None, n: int, device) -> Tensor:
        if y is None:
            y = torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        return self.table(y.to(device=device, dtype=torch.long))


def check_labels(y, num_classes: int | None, owner: str):
    """A network without classes takes no labels: a clear error instead of silently ignoring them."""
    if y is not None and num_classes is None:
        raise ValueError(f"{owner} was built without num_classes: it takes no labels (set model.net.num_classes)")
