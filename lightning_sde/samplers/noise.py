"""Seed-addressed noise: sample i's prior draw and every later noise draw come from a generator seeded by seed i.

So sample i is the same whatever the batch size, the order of the seeds, or how many processes share the list.
Draws are made on the CPU (identical on every device), a few steps at a time, so that the per-sample Python loop runs
once per draw rather than once per step. torch's CPU normal draws turn a generator's uniforms into normals 16 values
at a time: draws that each hold a whole number of 16 values continue one stream, however they are cut, so the
number of steps a draw holds is a speed setting, and a short run draws little beyond what it uses.
"""

from __future__ import annotations

import math
import operator
from typing import Sequence

import torch
from torch import Tensor

CHUNK = 16  # values torch's CPU normal draw transforms together: a draw of a multiple of it continues the stream
MIN_STEPS_PER_DRAW = 8  # fewer Python loops over the seeds, against steps drawn beyond a short run's last


def steps_per_draw(values_per_step: int) -> int:
    """The fewest steps (at least MIN_STEPS_PER_DRAW) whose values fill whole chunks."""
    aligned = CHUNK // math.gcd(values_per_step, CHUNK)
    return aligned * -(-MIN_STEPS_PER_DRAW // aligned)


SEED_LIMIT = 2**32  # torch keeps a generator seed's low 32 bits: seeds 2**32 apart would draw one sample


def _seed(s) -> int:
    """s as a seed: an integer in [0, 2**32) (int(0.4) == int(0.6) would give two samples one seed)."""
    try:
        if isinstance(s, bool):
            raise TypeError
        seed = operator.index(s)
    except TypeError:
        seed = -1
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seeds must be integers in [0, 2**32) (torch keeps a seed's low 32 bits); got {s!r}")
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
        self._steps_per_draw = steps_per_draw(math.prod(self.shape))
        self._block: Tensor | None = None
        self._next = self._steps_per_draw

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
        """The next standard-normal draw of each seed, (B, *shape). A draw's steps stay on the CPU: the device
        holds one step's draw at a time."""
        self.prior()  # the prior is always each stream's first draw
        if self._next == self._steps_per_draw:
            self._block = None  # one draw in memory at a time
            self._block = self._draw((self._steps_per_draw,))
            self._next = 0
        self._next += 1
        return self._block[:, self._next - 1].to(self.device)
