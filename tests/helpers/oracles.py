"""Truths the tests measure against: the standard SDEs, problems with known solutions, and a network wrapper that
counts and records every call (so NFE and the times the score is queried at are checked, not assumed)."""

from __future__ import annotations

import math

import torch
from torch import nn

from lightning_sde.exact import ExactScore, GaussianMixture
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.sde import VESDE, VPSDE, SubVPSDE

SDES = {
    "vp": VPSDE(beta_min=0.1, beta_max=20.0, eps=1e-3),
    "subvp": SubVPSDE(beta_min=0.1, beta_max=20.0, eps=1e-3),
    "ve": VESDE(sigma_min=0.01, sigma_max=50.0),  # eps = 1e-5
}


def rmse(a, b) -> float:
    """Root mean squared distance per point (summed over coordinates)."""
    return (a - b).pow(2).sum(-1).mean().sqrt().item()


def wide_circle() -> GaussianMixture:
    """8 Gaussians on a circle of radius 2 with unequal stds 0.4..0.8: neighbours 1.53 apart, 2-4 stds."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means, stds=0.4 + 0.4 * torch.arange(8, dtype=torch.float64) / 7)


class CountingNet(nn.Module):
    """Wraps a score net, counting its calls and recording every time it is queried at."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.calls = 0
        self.times = []

    def forward(self, x, t):
        self.calls += 1
        self.times.append(t.detach().clone())
        return self.net(x, t)


def counting_denoiser(mix: GaussianMixture, sde_name: str) -> tuple[Denoiser, CountingNet]:
    sde = SDES[sde_name]
    net = CountingNet(ExactScore(mix, sde))
    return Denoiser(net, sde, parameterization="score", shape=(mix.dim,)), net
