"""Improved precision and recall (Kynkaanniemi et al. 2019) of generated images against the reference set, on the
feature network's features (those of FID/KID).

A set's manifold is the union of balls around its points, each of radius the distance to the point's k-th nearest
neighbour in its own set (k = NEIGHBOURHOOD = 3). Precision is the share of generated samples inside the reference's
manifold (are the samples realistic?), recall the share of reference images inside the generated manifold (is the
data covered? a sampler that drops modes loses recall). Both are higher-is-better, in [0, 1].

The values are torch-fidelity's (`metric_prc.calculate_precision_recall_full`, features_1 generated, features_2 the
reference), computed here because torch-fidelity recomputes the reference's radii (n_reference^2 distances) at every
call: here once per reference, and every distance matrix is taken a block of rows at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEIGHBOURHOOD = 3
BLOCK_ENTRIES = 2**24  # distances held at once (64 MiB of float32)


def _rows(other: Tensor) -> int:
    return max(1, BLOCK_ENTRIES // max(1, len(other)))


def knn_radii(x: Tensor, k: int = NEIGHBOURHOOD) -> Tensor:
    """(n,): each row's distance to its k-th nearest row of x, itself counted as the first at 0 (torch-fidelity's
    kthvalue(k + 1))."""
    if len(x) < k + 1:
        raise ValueError(f"precision/recall need at least {k + 1} points in each set ({k} neighbours); got {len(x)}")
    step = _rows(x)
    return torch.cat([torch.cdist(x[i : i + step], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), step)])


def inside(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """(len(points),) bool: whether each point lies in some ball (centre, radius), the boundary included."""
    step = _rows(centres)
    return torch.cat([(torch.cdist(points[i : i + step], centres) <= radii).any(1)
                      for i in range(0, len(points), step)])


def precision_recall(fake: Tensor, real: Tensor, real_radii: Tensor | None = None,
                     k: int = NEIGHBOURHOOD) -> tuple[float, float, Tensor]:
    """(precision, recall, which generated samples lie in the reference's manifold) of features `fake` (n, d)
    against `real` (m, d); `real_radii`: knn_radii(real, k) when already known."""
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    realistic = inside(fake, real, real_radii)
    covered = inside(real, fake, knn_radii(fake, k))
    return float(realistic.float().mean()), float(covered.float().mean()), realistic


def recall_replicates(fake: Tensor, real: Tensor, counts: Tensor, k: int = NEIGHBOURHOOD,
                      neighbours: int = 64) -> Tensor:
    """The recall of every resampled set (rows of counts: multiplicities) against the fixed reference, as
    precision_recall computes it on the resampled set: a drawn sample's radius is its k-th nearest neighbour among
    the drawn ones with their multiplicities (its own copies at 0). Each sample's `neighbours` nearest are sorted
    once; a row whose drawn ones among them are too few is sorted in full."""
    n = len(fake)
    m = min(n, neighbours)
    step = _rows(fake)
    near, order = [], []
    for i in range(0, n, step):
        d, idx = torch.cdist(fake[i : i + step], fake).topk(m, dim=1, largest=False)  # ascending
        near.append(d)
        order.append(idx)
    near, order = torch.cat(near), torch.cat(order)
    radii = []
    for c in counts.long().to(fake.device):
        running = c[order].cumsum(1)  # drawn points at each rank of each row's nearest
        enough = running[:, -1] >= k + 1
        r = near.gather(1, (running >= k + 1).int().argmax(1, keepdim=True)).squeeze(1)
        for i in torch.nonzero(~enough & (c > 0)).flatten().tolist():  # beyond the m nearest: the whole row
            d = torch.cdist(fake[i : i + 1], fake)[0]
            ranked = d.argsort()
            r[i] = d[ranked[(c[ranked].cumsum(0) >= k + 1).int().argmax()]]
        radii.append(torch.where(c > 0, r, torch.full_like(r, -1.0)))  # undrawn: no ball (distances are >= 0)
    radii = torch.stack(radii)  # (B, n)
    covered = torch.zeros(len(counts), dtype=torch.float64, device=fake.device)
    for j in range(0, len(real), step):
        d = torch.cdist(real[j : j + step], fake)  # (b, n)
        for b in range(len(counts)):
            covered[b] += (d <= radii[b]).any(1).sum()
    return (covered / len(real)).cpu()


__all__ = ["NEIGHBOURHOOD", "inside", "knn_radii", "precision_recall", "recall_replicates"]
