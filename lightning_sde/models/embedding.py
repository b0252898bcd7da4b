"""Time embeddings shared by the networks."""

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
        angles = 2 * math.pi * t.float()[:, None] * self.freqs[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))
