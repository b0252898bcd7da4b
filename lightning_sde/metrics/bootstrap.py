"""Bootstrap intervals of the metrics: how far a value moves with the generated samples, the reference held fixed.

Each replicate resamples the n generated samples with replacement (multinomial counts c, summing to n; one draw per
seed, shared by every metric) and recomputes the metric against the same reference set. What the sample set enters
through is computed once, so a replicate is a weighted sum, not a new pass over the samples:

  sliced_w2  each projection's sorted values s_i with multiplicities c_i against the reference's sorted projections
             y_k: n W2^2 = sum_i c_i s_i^2 - 2 s_i (Y[C_i] - Y[C_(i-1)]) + sum_k y_k^2, Y the prefix sums of the y's,
             C the running counts (equal set sizes; otherwise the projections are resampled and sorted)
  mmd        MMD^2 = c'Kxx c / n^2 + mean(Kyy) - 2 c'kxy / n  (exactly `mmd` on the resampled set)
  loglik     c'l / n, l the per-sample log-likelihoods
  fid        the resampled features' weighted mean and covariance Sf; tr sqrt(Sr Sf) from the eigenvalues of the
             Gram matrix of the resampled rows whitened by Sr^(1/2) (computed once)
  kid        the unbiased polynomial-kernel MMD^2 over all samples, less its reference-reference term (a constant,
             so it cancels in the interval); torchmetrics' KID averages the same estimator over random subsets
  is         the Inception Score of the resampled set as torch-fidelity splits it (its fixed shuffle, then its
             splits): per split exp(mean_i sum_y p_iy log p_iy - sum_y q_y log q_y), q the split's mean p

Interval: the percentile interval shifted by the bootstrap's own estimate of bias (median of the replicates minus
the value), value + (q_lo - median, q_hi - median). Resampling with replacement duplicates points, which biases the
distances upward (a set with duplicates is farther from any smooth distribution); the shift removes that to first
order, and the interval always contains the value. Metrics that cannot be negative are clipped at 0 (KID, an
unbiased estimate, can be). KID's value averages random subsets, a noise of its own that the whole-set replicates
lack (most of the value's noise when the reference is small): each side is widened by it, the two independent
noises' widths added in quadrature.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import Tensor

from lightning_sde.metrics.mmd import BANDWIDTHS, block_rows, kernel_row_means, kernel_sum
from lightning_sde.metrics.sliced import directions, flat_pair, sliced_w2_of_projections

NONNEGATIVE = ("fid", "sliced_w2", "mmd")


def resample_counts(n: int, n_boot: int, seed: int = 0) -> Tensor:
    """(n_boot, n) float64 multiplicities: row b counts how often each sample is drawn in replicate b (sums to n)."""
    if n < 2 or n_boot < 2:
        raise ValueError(f"a bootstrap needs n >= 2 samples and n_boot >= 2 replicates; got n={n}, n_boot={n_boot}")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (n_boot, n), generator=gen)
    return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(n_boot, n, dtype=torch.float64))


def interval(value: float, replicates: Tensor, level: float, nonnegative: bool = False,
             value_sd: float = 0.0) -> tuple[float, float]:
    """value + (q_lo - median, q_hi - median) of the replicates at the central `level` (clipped at 0 if asked);
    `value_sd`: a normal noise of the value that the replicates do not hold, added to each side in quadrature."""
    if not 0 < level < 1:
        raise ValueError(f"interval level must be in (0, 1); got {level}")
    reps = replicates.double()
    q = torch.quantile(reps, torch.tensor([(1 - level) / 2, 0.5, (1 + level) / 2], dtype=torch.float64))
    spread = NormalDist().inv_cdf((1 + level) / 2) * value_sd
    low, high = value - math.hypot(float(q[1] - q[0]), spread), value + math.hypot(float(q[2] - q[1]), spread)
    return (max(low, 0.0) if nonnegative else low), high


def sliced_w2_replicates(x: Tensor, y: Tensor, counts: Tensor, n_projections: int = 256, seed: int = 0,
                         block_elements: int = 1 << 22) -> Tensor:
    """`sliced_wasserstein(x_resampled, y)` for every row of counts, with the same directions."""
    x, y = flat_pair(x, y)
    theta = directions(x.shape[1], n_projections, seed)
    px, py = x @ theta, y @ theta
    n = px.shape[0]
    if py.shape[0] != n:  # quantile functions at common levels: resample and sort
        rows = torch.arange(n)
        return torch.tensor([sliced_w2_of_projections(px[rows.repeat_interleave(c.long())], py) for c in counts],
                            dtype=torch.float64)
    # Layout (replicate, projection, rank): the running sums run along contiguous memory.
    order = px.argsort(dim=0).T.contiguous()  # (P, n)
    s = px.T.gather(1, order)  # each projection sorted
    step = s - torch.cat([s[:, 1:], s.new_zeros(s.shape[0], 1)], dim=1)  # s_i - s_(i+1), s_(n+1) = 0
    qy = py.T.sort(dim=1).values
    prefix = torch.cat([qy.new_zeros(qy.shape[0], 1), qy.cumsum(1)], dim=1)  # (P, n + 1)
    y2 = qy.pow(2).sum(1)
    square = px.pow(2)
    out = []
    for block in counts.split(max(1, block_elements // (n * n_projections))):  # ~32 MB per (b, P, n) tensor
        b = len(block)
        ranked = block.int().unsqueeze(1).expand(b, *order.shape).gather(2, order.expand(b, -1, -1))
        ends = ranked.cumsum(2)  # (b, P, n): running count up to each sorted value, int64
        # sum_i s_i (Y[E_i] - Y[E_(i-1)]) = sum_i Y[E_i] (s_i - s_(i+1))  (summation by parts)
        matched = (prefix.expand(b, -1, -1).gather(2, ends) * step).sum(2)
        w2 = (block @ square - 2 * matched + y2) / n  # (b, P)
        out.append(w2.clamp_min(0).mean(1).sqrt())
    return torch.cat(out)


def mmd_replicates(x: Tensor, y: Tensor, counts: Tensor, bandwidths=BANDWIDTHS, rows: int | None = None,
                   kyy: float | None = None) -> Tensor:
    """`mmd(x_resampled, y)` for every row of counts (the kernel matrices are computed once, a block of rows at a
    time; `kyy`: y's mean kernel value against itself, when already known)."""
    x, y = flat_pair(x, y)
    n = x.shape[0]
    if kyy is None:
        kyy = float(kernel_row_means(y, y, bandwidths, rows).mean())
    kxy = kernel_row_means(x, y, bandwidths, rows)
    quad = torch.zeros(len(counts), dtype=torch.float64)
    step = block_rows(x, rows)
    for i in range(0, n, step):
        quad += ((counts[:, i : i + step] @ kernel_sum(x[i : i + step], x, bandwidths)) * counts).sum(1)
    return (quad / n**2 + kyy - 2 * counts @ kxy / n).clamp_min(0).sqrt()


def mean_replicates(values: Tensor, counts: Tensor) -> Tensor:
    """The mean of per-sample values (e.g. log-likelihoods) over every resampled set."""
    return counts @ values.double().cpu() / values.shape[0]


def fid_replicates(features: Tensor, mean_real: Tensor, cov_real: Tensor, counts: Tensor) -> Tensor:
    """torchmetrics' FID of the resampled features (n, d) against the reference's mean and covariance."""
    f = features.double()
    counts = counts.to(f.device)
    n, d = f.shape
    evals, evecs = torch.linalg.eigh(cov_real.double().to(f.device))
    root = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T  # Sr^(1/2)
    mean_real, trace_real = mean_real.double().to(f.device), torch.trace(cov_real.double())
    whitened = f @ root
    out = []
    for c in counts:
        keep = c > 0
        w, fk = c[keep], f[keep]
        mean = w @ fk / n
        centred = fk - mean
        trace_fake = (w * centred.pow(2).sum(1)).sum() / (n - 1)
        y = w.sqrt()[:, None] * (whitened[keep] - mean @ root) / (n - 1) ** 0.5  # Sr^(1/2) Sf Sr^(1/2) = y'y
        gram = y @ y.T if len(y) < d else y.T @ y
        cross = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().sum()  # tr sqrt(Sr Sf)
        out.append((mean_real - mean).pow(2).sum() + trace_real.to(f.device) + trace_fake - 2 * cross)
    return torch.stack(out).cpu()


def inception_score_replicates(logits: Tensor, counts: Tensor, splits: int, seed: int = 2020,
                               block_elements: int = 1 << 22) -> Tensor:
    """torch-fidelity's Inception Score (isc_features_to_metric(splits=splits), shuffled with its seed) of every
    resampled set: the rows drawn, in index order, permuted as it permutes a set of n, then cut into its splits.
    The softmax is computed once; a replicate sums the drawn rows' probabilities into their splits."""
    import numpy as np

    logits = logits.double().cpu()
    n, classes = logits.shape
    p = logits.softmax(1)
    negentropy = (p * logits.log_softmax(1)).sum(1)
    order = torch.from_numpy(np.random.RandomState(seed).permutation(n))
    split_of = torch.bucketize(torch.arange(n), torch.tensor([i * n // splits for i in range(1, splits)]), right=True)
    sizes = torch.bincount(split_of, minlength=splits).double()
    rows, step = torch.arange(n), max(1, block_elements // classes)
    out = []
    for c in counts:
        drawn = rows.repeat_interleave(c.long())[order]
        mean_p = torch.zeros(splits, classes, dtype=torch.float64)
        for i in range(0, n, step):
            mean_p.index_add_(0, split_of[i : i + step], p[drawn[i : i + step]])
        mean_p /= sizes[:, None]
        within = torch.zeros(splits, dtype=torch.float64).index_add_(0, split_of, negentropy[drawn]) / sizes
        out.append((within - torch.special.xlogy(mean_p, mean_p).sum(1)).exp().mean())
    return torch.stack(out)


def kid_replicates(features: Tensor, real_features: Tensor, counts: Tensor, degree: int = 3, gamma=None,
                   coef: float = 1.0, rows: int = 2048) -> Tensor:
    """The unbiased MMD^2 with KID's kernel (gamma x.y + coef)^degree of the resampled features against all the
    reference features, without the reference-reference term (constant over replicates)."""
    f, r = features.double(), real_features.double().to(features.device)
    counts = counts.to(f.device)
    n = f.shape[0]
    gamma = 1.0 / f.shape[1] if gamma is None else gamma
    kernel = lambda a, b: (a @ b.T * gamma + coef) ** degree  # noqa: E731  (torchmetrics' poly_kernel)
    quad = torch.zeros(len(counts), dtype=torch.float64, device=f.device)
    cross = torch.zeros(n, dtype=torch.float64, device=f.device)
    for i in range(0, n, rows):
        quad += ((counts[:, i : i + rows] @ kernel(f[i : i + rows], f)) * counts).sum(1)
        cross[i : i + rows] = kernel(f[i : i + rows], r).mean(1)
    diag = (f.pow(2).sum(1) * gamma + coef) ** degree  # k(f_i, f_i)
    quad -= counts @ diag  # the U-statistic leaves out each position paired with itself: c_i k(x_i, x_i)
    return (quad / (n * (n - 1)) - 2 * counts @ cross / n).cpu()


__all__ = ["NONNEGATIVE", "fid_replicates", "inception_score_replicates", "interval", "kid_replicates",
           "mean_replicates", "mmd_replicates", "resample_counts", "sliced_w2_replicates"]
