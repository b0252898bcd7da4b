"""Low-dimensional point clouds: the exact Gaussian mixtures of `lightning_sde.exact` and two samplers without a
closed-form score (checkerboard, two moons), all roughly within [-4, 4]^2. Generated once, from `seed`."""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

from lightning_sde.data.base import (
    STREAM_TRAIN,
    STREAM_VAL,
    BaseDataModule,
    RowsDataset,
    check_int,
    generator,
)
from lightning_sde.exact import PROBLEMS, GaussianMixture, build_mixture


def checkerboard(n: int, generator: torch.Generator | None = None, size: float = 8.0, cells: int = 4) -> Tensor:
    """Uniform on the dark squares of a cells x cells board of side `size` centred at 0 (cell (i, j) is filled
    when i + j is even): a density with sharp edges and no closed-form diffused score."""
    if isinstance(cells, bool) or not isinstance(cells, int) or cells < 2 or cells % 2:
        raise ValueError(f"checkerboard: cells must be an even integer >= 2; got {cells!r}")
    width = size / cells
    i = torch.randint(0, cells, (n,), generator=generator)
    j = 2 * torch.randint(0, cells // 2, (n,), generator=generator) + i % 2
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    cell = torch.stack([i, j], dim=1).to(torch.float64)
    return -size / 2 + width * (cell + u)


def two_moons(n: int, generator: torch.Generator | None = None, noise: float = 0.1, scale: float = 2.5) -> Tensor:
    """scikit-learn's make_moons (two interleaved half circles, Gaussian noise of std `noise` in its units),
    centred and scaled by `scale`: about [-4, 4] x [-2, 2]. Drawn with torch so that a generator fixes it."""
    if noise < 0:
        raise ValueError(f"two_moons: noise must be >= 0; got {noise!r}")
    upper = torch.rand(n, generator=generator) < 0.5
    angle = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    outer = torch.stack([angle.cos(), angle.sin()], dim=1)
    inner = torch.stack([1 - angle.cos(), 0.5 - angle.sin()], dim=1)
    x = torch.where(upper[:, None], outer, inner)
    x = x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return scale * (x - torch.tensor([0.5, 0.25], dtype=torch.float64))


SAMPLERS = {"checkerboard": checkerboard, "two_moons": two_moons}
NAMES = sorted(PROBLEMS) + sorted(SAMPLERS)


def toy_params(name: str) -> list[str]:
    """What a data config may pass on to problem `name` (the data's own parameters, `labels` among them, never
    reach it)."""
    fn = PROBLEMS.get(name) or SAMPLERS[name]
    skip = {"n", "generator", *data_params()}
    return [p for p in inspect.signature(fn).parameters if p not in skip]


def data_params() -> list[str]:
    """Toy2DDataModule's own parameters."""
    return [p for p in inspect.signature(Toy2DDataModule.__init__).parameters if p not in ("self", "params")]


def data_mixture(data: dict) -> tuple[str, GaussianMixture | None]:
    """A toy data config's problem and, for an exact one, the mixture it draws from (its parameters passed on as the
    data module passes them)."""
    name = data.get("name", "eight_gaussians")  # Toy2DDataModule's default
    if name not in PROBLEMS:
        return name, None
    return name, build_mixture(name, **{k: v for k, v in data.items() if k in toy_params(name)})


class Toy2DDataModule(BaseDataModule):
    """Point-cloud data. `name` is one of eight_gaussians, swiss_roll, random_mixture (exact mixtures from
    `lightning_sde.exact`, `.mixture` set: exact scores available) or checkerboard, two_moons (`.mixture` None).
    Extra keyword params go to the problem (e.g. dim=16, n_components=10 for random_mixture; noise for two_moons).

    Train and validation sets are drawn once from independent streams of `seed`; `reference(n)` draws from a
    third stream, so the metric reference is fresh data, identical on every call.
    """

    kind = "points"
    reference_from_training_set = False

    def __init__(
        self,
        name: str = "eight_gaussians",
        batch_size: int = 512,
        n_train: int = 100_000,
        n_val: int = 4096,
        num_workers: int = 0,
        seed: int = 0,
        labels: bool = False,
        **params,
    ):
        super().__init__(batch_size, num_workers, seed, labels)
        if name not in NAMES:
            raise ValueError(f"Toy2DDataModule: unknown name {name!r}; choose one of {NAMES}")
        allowed = toy_params(name)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"Toy2DDataModule: {name} takes no parameter(s) {unknown}; allowed: the data's "
                             f"{data_params()} and {name}'s {allowed}")
        for key, value in params.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"Toy2DDataModule: {name}'s {key} must be finite; got {value}")
        self.name = name
        self.params = dict(params)
        self.n_train = check_int("Toy2DDataModule", "n_train", n_train, 1)
        self.n_val = check_int("Toy2DDataModule", "n_val", n_val, 1)
        self.mixture: GaussianMixture | None = build_mixture(name, **params) if name in PROBLEMS else None
        if self.labelled:
            if self.mixture is None:
                raise ValueError(f"Toy2DDataModule: labels=true needs a mixture problem ({sorted(PROBLEMS)}); "
                                 f"{name!r} has no classes")
            if self.mixture.labels is None:  # every component its own class: exact p(x | y) for the oracles
                self.mixture.labels = torch.arange(len(self.mixture.means))
            self.num_classes = self.mixture.num_classes
        self.train_set = RowsDataset(*self.sample(self.n_train, generator(seed, STREAM_TRAIN), with_labels=True))
        self.val_set = RowsDataset(*self.sample(self.n_val, generator(seed, STREAM_VAL), with_labels=True))
        self.shape = tuple(self.train_set.data.shape[1:])

    def sample(self, n: int, generator: torch.Generator | None = None, with_labels: bool = False):
        """n fresh float32 samples of the problem; with_labels: (samples, their classes or None)."""
        labels = None
        if self.mixture is not None and self.labelled:
            x, labels = self.mixture.sample_labelled(n, generator=generator)
        elif self.mixture is not None:
            x = self.mixture.sample(n, generator=generator)
        else:
            x = SAMPLERS[self.name](n, generator, **self.params)
        return (x.to(torch.float32), labels) if with_labels else x.to(torch.float32)

    def real_samples(self, start: int, n: int, stream: int) -> Tensor:
        return self.sample(n, generator(self.seed, stream))

    def class_samples(self, label: int, start: int, n: int, stream: int) -> Tensor:
        """n draws of p(x | y = label) (a toy set's reference is drawn, not read: `start` changes nothing)."""
        self.check_class(label)
        return self.mixture.conditional(label).sample(n, generator(self.seed, stream)).float()

    def __repr__(self) -> str:
        return f"Toy2DDataModule(name={self.name!r}, shape={self.shape}, n_train={self.n_train}, n_val={self.n_val})"
