"""Maximum mean discrepancy with a sum of Gaussian kernels (Gretton et al. 2012)."""

from __future__ import annotations

import torch
from torch import Tensor


def mmd(x: Tensor, y: Tensor, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> float:
    """Biased (V-statistic) MMD between two sample sets; bandwidths in data units, so pick them per problem."""
    x, y = x.reshape(x.shape[0], -1).double().cpu(), y.reshape(y.shape[0], -1).double().cpu()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sample sets differ in dimension: {x.shape[1]} vs {y.shape[1]}")

    def kernel_mean(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h**2)).mean() for h in bandwidths)

    return (kernel_mean(x, x) + kernel_mean(y, y) - 2 * kernel_mean(x, y)).clamp_min(0).sqrt().item()
