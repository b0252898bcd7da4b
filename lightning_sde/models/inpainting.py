"""Inpainting / imputation as a Denoiser, so every sampler fills in the unknown part of x given the known part.

`inpainting(denoiser, known, values, method)`: `known` is a boolean mask (of one sample's shape, or per sample) and
`values` holds x0 on it (B, *shape). Two methods:

  replacement     (Song et al. 2021, "imputation") the known part of the state is a forward-noised copy of the
                  values: the prediction there is pinned to x0 = values (eps = (x - alpha values) / sigma), so every
                  sampler's update keeps x_t,known = alpha_t values + sigma_t eps_known; the unknown part gets the
                  network's prediction at that state. Biased: the unknown part is drawn from p(x_u | x_t,known),
                  which forgets information that only the clean values carry, the more so the noisier x_t.
  reconstruction  replacement plus reconstruction guidance (Ho et al. 2022, "Video Diffusion Models"; Song et al.
                  2023's PiGDM): the unknown part's score also gets grad_x log N(values; x0_hat_known(x_t), C), the
                  Bayes term that replacement drops (given x_t,known and the values, x_t,unknown depends on the
                  values only through p(values | x_t)). `covariance` chooses C:
                    "flat" (default): (sigma_t / alpha_t)^2 I, the posterior variance of x0 under a flat prior: it
                        never trusts the data more than the noise level allows, so a trained network's x0 errors
                        at high noise (amplified by 1 / alpha_t) stay harmless. Weakest correction of the three.
                    "isotropic" (PiGDM's): sigma_t^2 / (alpha_t^2 + sigma_t^2) I, the posterior variance of
                        unit-variance data: stronger; right on the oracle mixtures, diverges on the trained digits
                        model (its guidance at high noise is ~1 / alpha_t^2 times a network error).
                    "gaussian_fit": Cov[x0_known | x_t] of the data's Gaussian fit (the Denoiser's data_moments;
                        its variances floored at MIN_VAR; the full block up to MAX_FULL known entries, its diagonal
                        beyond). Exact when the data are Gaussian (tested); diverges on the digits model too.
                  All measured in tests/unit/test_inpainting.py and benchmarks/inpainting_digits.py.
                  On multimodal data each is an approximation. Costs one backward pass per NFE.

NFE: one network forward per call, as always; the reconstruction method's backward pass is not an NFE and is
reported as `backward_per_nfe` = 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_sde.errors import require_autograd
from lightning_sde.models.denoiser import Denoiser, Prediction

METHODS = ("replacement", "reconstruction")
COVARIANCES = ("flat", "isotropic", "gaussian_fit")
MAX_FULL = 1024  # known entries up to which reconstruction guidance uses the full covariance block
# The smallest data variance the Gaussian fit may claim in any direction: image data have pixels of (near) zero
# variance (the digits' borders), where a singular fit makes the guidance's precision explode on the smallest
# mismatch between a network's x0 and the known values. 1e-2 is about one quantisation level of 8-bit or 17-level
# data in [-1, 1] squared ((2/17)^2 = 0.014) and below every variance of the exact-Gaussian test (0.1 and 1.9).
MIN_VAR = 1e-2


class InpaintingDenoiser(Denoiser):
    conditions = True

    def __init__(self, base: Denoiser, known, values, method: str = "replacement", guidance: float = 1.0,
                 covariance: str = "flat"):
        if method not in METHODS:
            raise ValueError(f"unknown inpainting method {method!r}; choose one of {METHODS}")
        if covariance not in COVARIANCES:
            raise ValueError(f"unknown reconstruction covariance {covariance!r}; choose one of {COVARIANCES}")
        if covariance == "gaussian_fit" and base.data_moments is None:
            raise ValueError("covariance='gaussian_fit' needs the data's moments (Denoiser.data_moments)")
        super().__init__(base.net, base.sde, base.parameterization, base.shape, base.sigma_data, base.data_moments,
                         base.num_classes)
        self.base = base
        values = torch.as_tensor(values)
        raw = torch.as_tensor(known)
        if raw.dtype != torch.bool and not ((raw == 0) | (raw == 1)).all():  # 0.5 would count as known
            raise ValueError(f"known must be a boolean mask (or of 0s and 1s); got {raw.dtype} values such as "
                             f"{raw[(raw != 0) & (raw != 1)].flatten()[0].item()!r}")
        known = raw.to(torch.bool)
        if tuple(values.shape[1:]) != base.shape or values.ndim != len(base.shape) + 1:
            raise ValueError(f"values must have shape (batch, {', '.join(map(str, base.shape))}); got "
                             f"{tuple(values.shape)}")
        if tuple(known.shape) not in (base.shape, tuple(values.shape)):
            raise ValueError(f"known must be a mask of shape {base.shape} or {tuple(values.shape)}; got "
                             f"{tuple(known.shape)}")
        if not known.any() or known.all():
            raise ValueError("known must mark some, but not all, of the entries")
        if not 0 <= guidance < math.inf:
            raise ValueError(f"reconstruction guidance weight must be a finite number >= 0; got {guidance!r}")
        self.known = known.expand_as(values)
        if not (self.known == self.known[:1]).all():
            raise ValueError("known must be the same mask for every sample of the batch")
        if not torch.isfinite(values[self.known]).all():
            raise ValueError("values must be finite on the known entries")
        self.known_index = self.known[0].flatten().nonzero().flatten()
        self.values = values
        self.method = method
        self.guidance = float(guidance)
        self.covariance = covariance

    def for_rows(self, n: int) -> "InpaintingDenoiser":
        """The same inpainting for n rows whose values (and the base's per-row labels) cycle through this batch's (a
        tuning pilot)."""
        if n == len(self.values):
            return self
        return InpaintingDenoiser(self.base.tiled(n), self.known[0], self.values[torch.arange(n) % len(self.values)],
                                  self.method, self.guidance, self.covariance)

    def with_net_batch(self, rows: int | None) -> "InpaintingDenoiser":
        """As Denoiser's, for the base it calls (whose network runs): a pilot's rows a call stay bounded."""
        chunked = super().with_net_batch(rows)
        if chunked is not self:
            chunked._modules = dict(self._modules)  # its own submodules: the chunked base below is the copy's only
            chunked.base = self.base.with_net_batch(rows)
        return chunked

    def finish(self, x: Tensor) -> Tensor:
        """A sampler's output (at t = eps, where sigma_eps is small but not 0) with the known entries set to the
        values exactly."""
        return torch.where(self.known.to(x.device), self.values.to(x), x)

    def _precision_times(self, residual: Tensor, pred: Prediction) -> Tensor:
        """C^-1 residual for C = Cov[x0_known | x_t] (see the module doc); alpha, sigma are one time per call."""
        alpha, sigma = float(pred.alpha.flatten()[0]), float(pred.sigma.flatten()[0])
        moments = self.data_moments
        if self.covariance == "flat":
            return residual * alpha**2 / sigma**2
        if self.covariance == "isotropic":
            return residual * (alpha**2 + sigma**2) / sigma**2
        index = self.known_index.cpu()
        if len(index) > MAX_FULL:
            return residual / moments.posterior_cov(alpha, sigma, index, True, MIN_VAR).to(residual)
        cov = moments.posterior_cov(alpha, sigma, index, min_var=MIN_VAR)
        return residual @ torch.linalg.inv_ex(cov).inverse.to(residual)  # inv_ex: no error check, no GPU wait

    @property
    def backward_per_nfe(self) -> int:
        return 1 if self.method == "reconstruction" else 0

    def fingerprint_extra(self) -> tuple:
        return (self.base.fingerprint_extra(), self.method, self.guidance, self.covariance, self.known.tolist(),
                self.values.tolist())

    def forward(self, x: Tensor, t: Tensor | float, labels: Tensor | None = None) -> Prediction:
        if x.shape != self.values.shape:
            raise ValueError(f"this inpainting denoiser holds values for a batch of shape {tuple(self.values.shape)}; "
                             f"got {tuple(x.shape)}")
        known, values = self.known.to(x.device), self.values.to(x)
        if self.method == "replacement":
            pred = self.base(x, t, labels)
            eps = pred.eps
        else:
            require_autograd(f"inpainting method {self.method!r}")
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                pred = self.base(x_in, t, labels)
                residual = (values - pred.x0).flatten(1)[:, self.known_index]
                misfit = 0.5 * (residual * self._precision_times(residual, pred)).sum()
                (grad,) = torch.autograd.grad(misfit, x_in)
            # score += -grad on the unknown part, i.e. eps -= sigma * grad there
            eps = pred.eps.detach() + self.guidance * pred.sigma * torch.where(known, 0.0, grad)
        eps = torch.where(known, (x - pred.alpha * values) / pred.sigma, eps)
        self.nfe += 1
        return Prediction(x, pred.alpha, pred.sigma, eps)


def inpainting(denoiser: Denoiser, known, values, method: str = "replacement", guidance: float = 1.0,
               covariance: str = "flat") -> InpaintingDenoiser:
    """`denoiser` restricted to samples that agree with `values` on the `known` mask (see the module doc)."""
    return InpaintingDenoiser(denoiser, known, values, method, guidance, covariance)
