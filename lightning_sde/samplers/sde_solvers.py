"""Reverse-SDE samplers of Song et al. 2021: Euler-Maruyama, reverse diffusion, Langevin corrector, PC."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

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


LANGEVIN_STEP_SIZES = ("sigma", "score_sde")


def langevin_correct(denoiser, x, t, s, noise, n_steps: int, snr: float, at=None, mean_last: bool = False,
                     step_size: str = "sigma"):
    """Langevin corrector at time `at` (default t) of the step t -> s: x += e score + sqrt(2 e) z, alpha_i the step's,
    with `step_size`
      "sigma"      e = 2 alpha_i (snr sigma_at)^2: per sample, whatever its batch;
      "score_sde"  e = 2 alpha_i (snr |z| / |score|)^2, the norms averaged over the batch (score_sde's rule): a
                   sample depends on its batch, and e grows wherever the batch's score is small.
    |z| / |score| -> sigma_at where the data's variance is far below sigma_at^2; at low noise it is larger. With
    `mean_last`, the last step without its noise (the mean of the sampler's last step, as every stochastic sampler
    returns)."""
    sde = denoiser.sde
    at = t if at is None else at
    step = 2 * sde.langevin_scale(t, s) * (snr * sde.sigma(at)) ** 2
    for i in range(n_steps):
        score = denoiser(x, at).score
        noisy = not (mean_last and i == n_steps - 1)
        z = noise().to(x) if noisy or step_size == "score_sde" else None
        if step_size == "score_sde":
            ratio = z.flatten(1).norm(dim=1).mean() / score.flatten(1).norm(dim=1).mean()
            step = 2 * sde.langevin_scale(t, s) * (snr * ratio) ** 2
        x = x + step * score
        if noisy:
            x = x + (2 * step).sqrt() * z
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
    step_size: str = "sigma"  # the Langevin step's rule (langevin_correct): "sigma" or "score_sde"
    keyed_unless: ClassVar[dict] = {**FixedStepSampler.keyed_unless, "step_size": "sigma"}

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
        if self.step_size not in LANGEVIN_STEP_SIZES:
            raise ValueError(f"pc: unknown step_size {self.step_size!r}; choose one of {LANGEVIN_STEP_SIZES}")
        if self.predictor == "none" and self.corrector_steps == 0:
            raise ValueError("pc: with predictor='none' corrector_steps must be >= 1")
        self._predictor = None if self.predictor == "none" else SAMPLERS[self.predictor](steps=self.steps)

    @property
    def batch_dependent(self) -> bool:
        return self.step_size == "score_sde"  # the batch's norms set the Langevin step

    @property
    def nfe_per_step(self) -> int:
        return self.corrector_steps + (self._predictor is not None)

    def step(self, denoiser, x, t, s, noise, last, state):
        if self._predictor is None:  # corrector only: Langevin at the step's end, so that the last one is at eps
            return langevin_correct(denoiser, x, t, s, noise, self.corrector_steps, self.snr, at=s, mean_last=last,
                                    step_size=self.step_size)
        x = langevin_correct(denoiser, x, t, s, noise, self.corrector_steps, self.snr, step_size=self.step_size)
        return self._predictor.step(denoiser, x, t, s, noise, last, state)
