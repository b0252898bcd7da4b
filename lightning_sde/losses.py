"""Continuous-time denoising score matching (Song et al. 2021, eq. 7).

  L(theta) = E_t E_{x0} E_{z} [ lambda(t) || s_theta(x_t, t) - grad log p_t(x_t | x0) ||^2 ],
  x_t = alpha_t x0 + sigma_t z.
With s = -eps / sigma the integrand is lambda(t) / sigma_t^2 || eps_theta - z ||^2, whatever the network predicts.
  sigma2      lambda = sigma_t^2: the plain eps-MSE, t ~ U[t_min, T]
  likelihood  lambda = g(t)^2 (Song et al. 2021b, "Maximum likelihood training"), which bounds the NLL; its weight
              g^2 / sigma^2 explodes as t -> 0, so by default t is importance-sampled from p(t) ~ g^2 / sigma^2 and
              every sample gets the constant weight Z / (T - t_min), Z = int g^2 / sigma^2 dt: the same
              expectation (`importance_sampling`, a setting of this weighting only; false: t ~ U[t_min, T]).
  min_snr     Min-SNR-gamma (Hang et al. 2023): lambda = sigma_t^2 min(SNR, gamma) / SNR, SNR = alpha^2 / sigma^2;
              the eps-MSE down-weighted where SNR > gamma (low noise), t ~ U[t_min, T]. gamma: `min_snr_gamma`.
  edm         EDM's training distribution and weighting (Karras et al. 2022, Table 1), in the noise level of x / alpha,
              sigma~ = sigma / alpha = exp(-lambda_t): log sigma~ ~ N(p_mean, p_std^2), truncated to the levels of
              [t_min, T], and the weight (sigma~^2 + sigma_data^2) / (sigma~ sigma_data)^2 on ||D - x0||^2, the
              denoised x0's error; that error is sigma~ times the eps error, so the eps-MSE's weight is
              1 + sigma~^2 / sigma_data^2.
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

WEIGHTINGS = ("sigma2", "likelihood", "min_snr", "edm")
# The settings only one weighting has, with their defaults: Hang et al.'s gamma; EDM's P_mean, P_std and sigma_data.
WEIGHTING_SETTINGS = {"min_snr": {"min_snr_gamma": 5.0}, "edm": {"p_mean": -1.2, "p_std": 1.2, "sigma_data": 0.5}}
# The least mass of EDM's log-normal on the SDE's levels: below it the truncated draw would pile up at one end.
EDM_LEAST_MASS = 1e-6


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


def weighting_settings(weighting: str, given: dict) -> dict:
    """The weighting's own settings, defaults filled in; ValueError for one set to another weighting or not a number
    in its range."""
    own = WEIGHTING_SETTINGS.get(weighting, {})
    for key, value in given.items():
        if value is None:
            continue
        if key not in own:
            users = [name for name, settings in WEIGHTING_SETTINGS.items() if key in settings]
            raise ValueError(f"loss {key} belongs to weighting {users[0]}, not {weighting}; drop it "
                             f"(or set loss={users[0]})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (key != "p_mean" and value <= 0):
            kind = "a finite number" if key == "p_mean" else "a positive number"
            raise ValueError(f"loss {key} must be {kind}; got {value!r}")
    return {key: float(default if given.get(key) is None else given[key]) for key, default in own.items()}


class LogNormalLevelSampler:
    """EDM's proposal: log sigma~ ~ N(p_mean, p_std^2) truncated to [log sigma~(t_min), log sigma~(T)] by inverting the
    truncated normal's CDF, and t the time at that level (sigma~ = exp(-lambda_t)). With at least EDM_LEAST_MASS on
    the levels the CDF values between the ends keep 1e10 steps or more; the inverse's infinite end (its CDF rounded to
    1) is clamped to the level there."""

    def __init__(self, sde: SDE, t_min: float, p_mean: float, p_std: float):
        self.ends = -sde.log_snr(torch.tensor([t_min, sde.T], dtype=torch.float64))
        self.sde, self.t_min, self.p_mean, self.p_std = sde, t_min, p_mean, p_std
        self.cdf_ends = torch.special.ndtr((self.ends - p_mean) / p_std)
        mass = (self.cdf_ends[1] - self.cdf_ends[0]).item()
        if not mass >= EDM_LEAST_MASS:
            low, high = self.ends.tolist()
            fix = f"move p_mean into [{low:.2f}, {high:.2f}]" if not low <= p_mean <= high else \
                f"lower p_std (the levels span {high - low:.1f} in log sigma/alpha)"
            raise ValueError(f"loss p_mean={p_mean:g}, p_std={p_std:g} put {mass:.1e} of the log-normal on the SDE's "
                             f"noise levels sigma/alpha in [{math.exp(low):.3g}, {math.exp(high):.3g}] (t in "
                             f"[{t_min:g}, {sde.T:g}]): {fix}")

    def sample(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Map u ~ U(0, 1) to (t, log sigma~)."""
        low, high = self.cdf_ends
        z = torch.special.ndtri(low + (high - low) * u.to(torch.float64).cpu())
        log_level = (self.p_mean + self.p_std * z).clamp(*self.ends.tolist())
        return self.sde.t_from_log_snr(-log_level).clamp(self.t_min, self.sde.T), log_level


class DSMLoss:
    def __init__(self, sde: SDE, weighting: str = "sigma2", importance_sampling: bool | None = None,
                 t_min: float | None = None, min_snr_gamma: float | None = None, p_mean: float | None = None,
                 p_std: float | None = None, sigma_data: float | None = None):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"loss weighting {weighting!r} is not one of {WEIGHTINGS}")
        self.settings = weighting_settings(weighting, dict(min_snr_gamma=min_snr_gamma, p_mean=p_mean, p_std=p_std,
                                                           sigma_data=sigma_data))
        if importance_sampling is not None and weighting != "likelihood":
            raise ValueError(f"loss importance_sampling belongs to weighting likelihood (its time proposal), not "
                             f"{weighting}; drop it (or set loss=likelihood)")
        if importance_sampling is not None and not isinstance(importance_sampling, bool):
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
        self.importance = ImportanceTimeSampler(sde, self.t_min) \
            if weighting == "likelihood" and importance_sampling is not False else None
        self.levels = LogNormalLevelSampler(sde, self.t_min, self.settings["p_mean"], self.settings["p_std"]) \
            if weighting == "edm" else None

    def sample_time(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Times t (float64, CPU) and the weight w(t) that multiplies the eps-MSE at each."""
        sde = self.sde
        u = torch.rand(n, dtype=torch.float64, generator=generator)
        if self.importance is not None:
            return self.importance.sample(u), torch.full((n,), self.importance.normalizer / (sde.T - self.t_min),
                                                         dtype=torch.float64)
        if self.levels is not None:
            t, log_level = self.levels.sample(u)
            return t, 1 + (2 * log_level).exp() / self.settings["sigma_data"] ** 2
        t = self.t_min + (sde.T - self.t_min) * u
        if self.weighting == "likelihood":
            return t, sde.g2(t) / sde.sigma(t) ** 2
        if self.weighting == "min_snr":
            return t, (self.settings["min_snr_gamma"] * (-2 * sde.log_snr(t)).exp()).clamp(max=1)
        return t, torch.ones_like(t)

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
