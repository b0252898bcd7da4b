"""Reverse-SDE samplers of Song et al. 2021: Euler-Maruyama, reverse diffusion, Langevin corrector, PC."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_sde.samplers.base import SAMPLERS, FixedStepSampler, register


@register("euler_maruyama")
@dataclass
class EulerMaruyama(FixedStepSampler):
    """x_s = x_t - [f(x,t) - g^2 score] (t - s) + g sqrt(t - s) z on the reverse SDE; 1 NFE a step."""

    steps: int = 1000

    @property
    def stochastic(self) -> bool:
        return True

    def step(self, denoiser, x, t, s, noise, last, state):
        sde, dt = denoiser.sde, t - s
        x = x - sde.reverse_drift(x, t, denoiser(x, t).score) * dt
        if not last:
            x = x + sde.g(t) * dt.sqrt() * noise().to(x)
        return x


@register("reverse_diffusion")
@dataclass
class ReverseDiffusion(FixedStepSampler):
    """score_sde's reverse-diffusion predictor: reverse the exact forward transition x_t = a x_s + G z.

    x_s = x_t - (a - 1) x_t + G^2 score + G z; 1 NFE a step.
    """

    steps: int = 1000

    @property
    def stochastic(self) -> bool:
        return True

    def step(self, denoiser, x, t, s, noise, last, state):
        a, G2 = denoiser.sde.transition(t, s)
        x = x - (a - 1) * x + G2 * denoiser(x, t).score
        if not last:
            x = x + G2.sqrt() * noise().to(x)
        return x


def langevin_correct(denoiser, x, t, s, noise, n_steps: int, snr: float, at=None, mean_last: bool = False):
    """Langevin corrector at time `at` (default t) of the step t -> s: x += e score + sqrt(2 e) z with
    e = 2 alpha_i (snr sigma_at)^2, alpha_i the step's; with `mean_last`, the last of them without its noise (the
    mean of the sampler's last step, as every stochastic sampler returns).

    score_sde sets e = 2 alpha_i (snr |z| / |score|)^2 with norms averaged over the batch; |z| / |score| -> sigma_t
    as the dimension grows. We use that limit: per-sample norms would make e blow up wherever a sample's score
    vanishes (low dimensions), and batch norms would make a sample depend on its batch.
    """
    sde = denoiser.sde
    at = t if at is None else at
    step = 2 * sde.langevin_scale(t, s) * (snr * sde.sigma(at)) ** 2
    for i in range(n_steps):
        x = x + step * denoiser(x, at).score
        if not (mean_last and i == n_steps - 1):
            x = x + (2 * step).sqrt() * noise().to(x)
    return x


@register("pc")
@dataclass
class PredictorCorrector(FixedStepSampler):
    """Predictor-corrector: at each grid time, `corrector_steps` Langevin steps, then one predictor step. With
    predictor="none", the Langevin steps of each step run at its end time instead (the last ones at eps).

    NFE = steps * (1 + corrector_steps).
    """

    steps: int = 1000
    predictor: str = "reverse_diffusion"
    corrector_steps: int = 1
    snr: float = 0.16

    @property
    def stochastic(self) -> bool:
        return True

    def __post_init__(self):
        super().__post_init__()
        predictors = ("reverse_diffusion", "euler_maruyama", "none")
        if self.predictor not in predictors:
            raise ValueError(f"pc: unknown predictor {self.predictor!r}; choose one of {predictors}")
        if (isinstance(self.corrector_steps, bool) or not isinstance(self.corrector_steps, int)
                or self.corrector_steps < 0):
            raise ValueError(f"pc: corrector_steps must be an integer >= 0; got {self.corrector_steps!r}")
        if isinstance(self.snr, bool) or not isinstance(self.snr, (int, float)) or not 0 < self.snr < math.inf:
            raise ValueError(f"pc: snr must be a finite number > 0; got {self.snr!r}")
        if self.predictor == "none" and self.corrector_steps == 0:
            raise ValueError("pc: with predictor='none' corrector_steps must be >= 1")
        self._predictor = None if self.predictor == "none" else SAMPLERS[self.predictor](steps=self.steps)

    @property
    def nfe_per_step(self) -> int:
        return self.corrector_steps + (self._predictor is not None)

    def step(self, denoiser, x, t, s, noise, last, state):
        if self._predictor is None:  # corrector only: Langevin at the step's end, so that the last one is at eps
            return langevin_correct(denoiser, x, t, s, noise, self.corrector_steps, self.snr, at=s, mean_last=last)
        x = langevin_correct(denoiser, x, t, s, noise, self.corrector_steps, self.snr)
        return self._predictor.step(denoiser, x, t, s, noise, last, state)
