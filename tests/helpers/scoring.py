"""Sample sets for the metrics' tests: noisy scikit-learn digits, a set resampled by bootstrap counts, and how wide
a bootstrap interval is against the spread of the metric over independent sets."""

from __future__ import annotations

import functools

import torch


@functools.cache
def _digits_pool() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1  # [-1, 1]


def noisy_digits(n: int, seed: int, noise: float = 0.3) -> torch.Tensor:
    """n of scikit-learn's digits drawn with replacement, plus Gaussian pixel noise of sd `noise`, in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    pool = _digits_pool()
    x = pool[torch.randint(len(pool), (n,), generator=gen)]
    return (x + noise * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


def resampled(x: torch.Tensor, counts_row: torch.Tensor) -> torch.Tensor:
    """The set a row of bootstrap counts draws: each row of x repeated its count's times."""
    return x[torch.arange(len(x)).repeat_interleave(counts_row.long())]


def width_over_spread(scorer, metric: str, sets: list, n_widths: int = 6, n_boot: int = 100):
    """(median width of the 90% intervals of the first n_widths sets / the 5-95% range of the metric over all
    sets, the values, those intervals)."""
    values = torch.tensor([scorer(x)[metric] for x in sets], dtype=torch.float64)
    spread = float(values.quantile(0.95) - values.quantile(0.05))
    intervals = [scorer.intervals(x, level=0.9, n_boot=n_boot)[metric] for x in sets[:n_widths]]
    widths = torch.tensor([high - low for low, high in intervals])
    return float(widths.median()) / spread, values, intervals
