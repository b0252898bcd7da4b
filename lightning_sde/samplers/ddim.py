"""DDIM (Song, Meng & Ermon 2021) on any linear SDE, written through alpha_t and sigma_t.

One step t -> s from the prediction (x0, eps) at t:
  x_s = alpha_s x0 + sqrt(sigma_s^2 - v) eps + sqrt(v) z,
  v = eta^2 sigma_s^2 (1 - (alpha_t sigma_s / (alpha_s sigma_t))^2)
where v at eta = 1 is the variance of the exact posterior q(x_s | x_t, x0): that is ancestral sampling.
At eta = 0 it is the first-order exponential integrator (Euler in sigma_t / alpha_t) of the probability-flow ODE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_sde.samplers.base import FixedStepSampler, register


@register("ddim")
@dataclass
class DDIM(FixedStepSampler):
    steps: int = 50
    eta: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"{self.name}: eta must lie in [0, 1]; got {self.eta!r}")

    @property
    def stochastic(self) -> bool:
        number = isinstance(self.eta, (int, float)) and not isinstance(self.eta, bool)
        return number and self.eta > 0  # (asked before eta is checked: a bad eta is named by its own check)

    def step(self, denoiser, x, t, s, noise, last, state):
        sde = denoiser.sde
        pred = denoiser(x, t)
        alpha_s, sigma_s = sde.alpha(s), sde.sigma(s)
        ratio = sde.alpha(t) * sigma_s / (alpha_s * sde.sigma(t))
        var = self.eta**2 * sigma_s**2 * (1 - ratio**2)
        x = alpha_s * pred.x0 + (sigma_s**2 - var).sqrt() * pred.eps
        if self.eta > 0 and not last:
            x = x + var.sqrt() * noise().to(x)
        return x


@register("ancestral")
@dataclass
class Ancestral(DDIM):
    """Ancestral sampling: draw x_s from the posterior q(x_s | x_t, x0_hat) (DDPM on VP); DDIM with eta = 1."""

    steps: int = 1000
    eta: float = field(default=1.0, init=False)
