"""Seed-addressed noise: sample i's prior draw and every later noise draw come from a generator seeded by seed i.

So sample i is the same whatever the batch size, the order of the seeds, or how many processes share the list.
Draws are made on the CPU (identical on every device) in blocks of a fixed number of steps, so that the
per-sample Python loop runs once per block rather than once per step.
"""

from __future__ import annotations

import operator
from typing import Sequence

import torch
from torch import Tensor

BLOCK_STEPS = 64  # fixed: changing it changes the noise stream, never set it from the batch size


def _seed(s) -> int:
    """s as a seed: an integer >= 0 (int(0.4) == int(0.6) would give two samples one seed)."""
    try:
        if isinstance(s, bool):
            raise TypeError
        seed = operator.index(s)
    except TypeError:
        seed = -1
    if seed < 0:
        raise ValueError(f"seeds must be non-negative integers; got {s!r}")
    return seed


class SeededNoise:
    def __init__(self, seeds: Sequence[int], shape: Sequence[int], dtype=torch.float32, device="cpu"):
        seeds = list(seeds)
        if not seeds:
            raise ValueError("seeds must name at least one sample")
        seeds = [_seed(s) for s in seeds]
        self.seeds = seeds
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self._generators = [torch.Generator().manual_seed(s) for s in seeds]
        self._prior: Tensor | None = None
        self._block: Tensor | None = None
        self._next = BLOCK_STEPS

    def _draw(self, lead: tuple[int, ...]) -> Tensor:
        """(B, *lead, *shape) on the CPU, each seed's draws written in place (no second copy of the block)."""
        out = torch.empty((len(self._generators), *lead, *self.shape), dtype=self.dtype)
        for row, g in zip(out, self._generators):
            torch.randn(lead + self.shape, generator=g, dtype=self.dtype, out=row)
        return out

    def prior(self) -> Tensor:
        """The first standard-normal draw of each seed, (B, *shape); the same on every call."""
        if self._prior is None:
            self._prior = self._draw(()).to(self.device)
        return self._prior

    def __call__(self) -> Tensor:
        """The next standard-normal draw of each seed, (B, *shape). The block of BLOCK_STEPS steps stays on the
        CPU: the device holds one step's draw at a time."""
        self.prior()  # the prior is always each stream's first draw
        if self._next == BLOCK_STEPS:
            self._block = None  # one block in memory at a time
            self._block = self._draw((BLOCK_STEPS,))
            self._next = 0
        self._next += 1
        return self._block[:, self._next - 1].to(self.device)
