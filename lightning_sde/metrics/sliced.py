"""Sliced Wasserstein-2 distance between two sample sets (Rabin et al. 2011; Bonneel et al. 2015)."""

from __future__ import annotations

import torch
from torch import Tensor


def directions(dim: int, n_projections: int = 256, seed: int = 0) -> Tensor:
    """(dim, n_projections) random unit directions theta, fixed by the seed (so values are comparable)."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(dim, n_projections, generator=gen, dtype=torch.float64)
    return theta / theta.norm(dim=0, keepdim=True)


def flat_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = x.reshape(x.shape[0], -1).double().cpu(), y.reshape(y.shape[0], -1).double().cpu()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sample sets differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    return x, y


def sliced_w2_of_projections(px: Tensor, py: Tensor) -> float:
    """sqrt(mean over columns of W2^2) between the columns of px (n, P) and py (m, P)."""
    qx, qy = px.sort(dim=0).values, py.sort(dim=0).values
    n, m = len(qx), len(qy)
    if n == m:
        return (qx - qy).pow(2).mean().sqrt().item()
    # the empirical quantile functions are steps at i/n and k/m: W2^2 = sum over the merged steps of their length
    # times the squared difference of the two values on it (read at each step's midpoint)
    ends = torch.cat([torch.arange(1, n + 1, dtype=torch.float64) / n, torch.arange(1, m, dtype=torch.float64) / m])
    ends = ends.sort().values
    lengths = torch.diff(ends, prepend=ends.new_zeros(1))
    mid = ends - lengths / 2
    ix, iy = (mid * n).long().clamp_max(n - 1), (mid * m).long().clamp_max(m - 1)
    w2 = (lengths.to(qx.dtype)[:, None] * (qx[ix] - qy[iy]).pow(2)).sum(0)
    return w2.mean().sqrt().item()


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """sqrt(E_theta W2^2(theta.x, theta.y)) over random unit directions theta (a fixed seed: comparable values).

    Sets of equal size compare sorted projections; otherwise the two empirical quantile functions (steps) exactly.
    """
    x, y = flat_pair(x, y)
    theta = directions(x.shape[1], n_projections, seed)
    return sliced_w2_of_projections(x @ theta, y @ theta)
