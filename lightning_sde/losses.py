"""Continuous-time denoising score matching (Song et al. 2021, eq. 7).

  L(theta) = E_t E_{x0} E_{z} [ lambda(t) || s_theta(x_t, t) - grad log p_t(x_t | x0) ||^2 ],
  x_t = alpha_t x0 + sigma_t z.
With s = -eps / sigma the integrand is lambda(t) / sigma_t^2 || eps_theta - z ||^2, whatever the network predicts.
  sigma2      lambda = sigma_t^2: the plain eps-MSE, t ~ U[t_min, T]
  likelihood  lambda = g(t)^2 (Song et al. 2021b, "Maximum likelihood training"), which bounds the NLL; its weight
              g^2 / sigma^2 explodes as t -> 0, so by default t is importance-sampled from p(t) ~ g^2 / sigma^2 and
              every sample gets the constant weight Z / (T - t_min), Z = int g^2 / sigma^2 dt: the same
              expectation.
t_min, the smallest training time, is the SDE's eps unless set (score_sde trains VP from 1e-5 and samples from
eps = 1e-3). The squared error is averaged over data dimensions, so the loss scale does not grow with the image size
(score_sde sums it on VE: the same minimiser, gradients ~ the dimension larger, so gradient clipping acts otherwise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_sde.models.denoiser import Denoiser
from lightning_sde.sde import SDE

WEIGHTINGS = ("sigma2", "likelihood")


class ImportanceTimeSampler:
    """Draws t from p(t) ~ g(t)^2 / sigma_t^2 on [t_min, T] by inverting its CDF, tabulated once on a log grid.

    The density behaves like 1/t near 0 on VP, so a grid uniform in log t resolves it with a few thousand points.
    """

    def __init__(self, sde: SDE, t_min: float | None = None, n_grid: int = 20_000):
        t_min = sde.eps if t_min is None else t_min
        t = torch.logspace(math.log10(t_min), math.log10(sde.T), n_grid, dtype=torch.float64)
        t[0], t[-1] = t_min, sde.T  # exactly: never a t outside [t_min, T]
        density = sde.g2(t) / sde.sigma(t) ** 2
        cdf = torch.cat([torch.zeros(1, dtype=torch.float64),
                         torch.cumsum(0.5 * (density[1:] + density[:-1]) * t.diff(), 0)])
        self.normalizer = cdf[-1].item()  # Z = int_t_min^T g^2 / sigma^2 dt (trapezoid rule)
        self.t = t
        self.cdf = cdf / cdf[-1]

    def sample(self, u: Tensor) -> Tensor:
        """Map u ~ U(0, 1) to t ~ p(t) by linear interpolation of the inverse CDF."""
        u = u.to(torch.float64).cpu()
        i = torch.searchsorted(self.cdf, u).clamp(1, len(self.cdf) - 1)
        c0, c1 = self.cdf[i - 1], self.cdf[i]
        return self.t[i - 1] + (u - c0) / (c1 - c0) * (self.t[i] - self.t[i - 1])


class DSMLoss:
    def __init__(self, sde: SDE, weighting: str = "sigma2", importance_sampling: bool = True,
                 t_min: float | None = None):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"loss weighting {weighting!r} is not one of {WEIGHTINGS}")
        if not isinstance(importance_sampling, bool):
            raise ValueError(f"loss importance_sampling must be true or false; got {importance_sampling!r}")
        if t_min is not None and (isinstance(t_min, bool) or not isinstance(t_min, (int, float))
                                  or not 0 < t_min < sde.T):
            raise ValueError(f"loss t_min must be null (the SDE's eps) or a time in (0, {sde.T:g}); got {t_min!r}")
        first = 1.0 / sde.num_timesteps if hasattr(sde, "num_timesteps") else 0.0  # a discrete schedule's first step
        if t_min is not None and t_min < first:
            raise ValueError(f"loss t_min must be at least the discrete schedule's first timestep, 1/N = {first:g} "
                             f"(below it alpha > 1); got {t_min!r}")
        self.sde = sde
        self.weighting = weighting
        self.t_min = sde.eps if t_min is None else float(t_min)
        self.importance = ImportanceTimeSampler(sde, self.t_min) if weighting == "likelihood" and importance_sampling \
            else None

    def sample_time(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Times t (float64, CPU) and the weight w(t) that multiplies the eps-MSE at each."""
        sde = self.sde
        u = torch.rand(n, dtype=torch.float64, generator=generator)
        if self.importance is not None:
            return self.importance.sample(u), torch.full((n,), self.importance.normalizer / (sde.T - self.t_min),
                                                         dtype=torch.float64)
        t = self.t_min + (sde.T - self.t_min) * u
        weight = torch.ones_like(t) if self.weighting == "sigma2" else sde.g2(t) / sde.sigma(t) ** 2
        return t, weight

    def __call__(self, denoiser: Denoiser, x0: Tensor, generator: torch.Generator | None = None,
                 labels: Tensor | None = None) -> Tensor:
        """Per-sample loss, shape (B,). `generator` (CPU) fixes t and z, e.g. for a reproducible validation loss;
        `labels` condition a class-conditional network (the null label num_classes: unconditional)."""
        if not x0.is_floating_point():
            raise TypeError(f"x0 must be a floating-point tensor; got {x0.dtype}")
        if not len(x0):
            raise ValueError("x0 holds no samples (a batch of 0)")
        t, weight = self.sample_time(x0.shape[0], generator)
        t, weight = t.to(x0.device, x0.dtype), weight.to(x0.device, x0.dtype)
        if generator is None:
            z = torch.randn_like(x0)
        else:
            z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        x_t = self.sde.marginal(x0, t, z)
        eps = denoiser(x_t, t, labels).eps
        return weight * (eps - z).pow(2).reshape(x0.shape[0], -1).mean(dim=1)
