"""The data's Gaussian fit and its exact probability-flow map: a start for the samplers that costs no NFE.

At high noise p_t is close to the diffusion of N(m, C), the Gaussian with the data's mean and covariance, and that
Gaussian's probability-flow ODE is linear with a closed-form solution: in C's eigenbasis (variances v),

    x_t1 = alpha_1 m + sqrt((alpha_1^2 v + sigma_1^2) / (alpha_0^2 v + sigma_0^2)) (x_t0 - alpha_0 m).

A sampler with `gaussian_start = r` carries x_T by this map to the time t* at which the data's largest std is r
times the noise level sigma_t / alpha_t, and spends all its NFE on [t*, eps] (the "analytical teleportation" of
Wang & Vastola 2023, "The hidden linear structure in score-based models"). That ratio ignores the dimension: with d
directions of that spread, the bound below is d times larger. `gaussian_start_kl = k` starts instead where

    I(t) = 1/2 sum_i log(1 + alpha_t^2 v_i / sigma_t^2)   (nats, over every direction of C)

equals k. I(t) bounds KL(p_t || its Gaussian fit): the fit has p_t's covariance, so the KL is h(fit) - h(p_t), and
h(p_t) >= h(p_t | x_0), the entropy of the noise alone. An invertible flow keeps a start's divergence from p_t to
the end (KL is invariant under it); a stochastic sampler shrinks it. The moments belong to the model side: a
Denoiser carries them (`Denoiser(..., data_moments=...)`): exact for GaussianMixture oracles, the training data's
for trained models (measured when a fit starts, kept in the checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_sde.sde import SDE


def _as64(t) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


@dataclass(frozen=True)
class DataMoments:
    """Mean and covariance of the data, flattened to d dimensions, as an eigendecomposition: the k leading
    eigenpairs (k <= d) and, for k < d, one variance shared by the directions they leave out."""

    mean: Tensor  # (d,)
    eigvals: Tensor  # (k,)
    eigvecs: Tensor  # (d, k), orthonormal columns
    residual_var: float = 0.0

    def mean_square(self) -> float:
        """E|x|^2 / d: the data's mean square per coordinate."""
        d, k = len(self.mean), len(self.eigvals)
        return float(self.mean.double().pow(2).sum() + self.eigvals.double().sum() + self.residual_var * (d - k)) / d

    @classmethod
    def of_gaussian(cls, mean: Tensor, cov: Tensor) -> "DataMoments":
        """The moments of N(mean, cov); a covariance's rounding (a sample covariance's eigenvalues of -1e-17) is
        taken as 0, anything else that is not symmetric positive semi-definite is refused."""
        mean, cov = torch.as_tensor(mean).flatten(), torch.as_tensor(cov)
        d = len(mean)
        if cov.shape != (d, d) or not torch.isfinite(cov).all() or not torch.isfinite(mean).all():
            raise ValueError(f"DataMoments.of_gaussian: mean (d,) and covariance (d, d) must be finite; got shapes "
                             f"{tuple(mean.shape)} and {tuple(cov.shape)}")
        rounding = 100 * torch.finfo(cov.dtype).eps * float(cov.abs().max()) if cov.is_floating_point() else 0.0
        if not torch.allclose(cov, cov.T, rtol=0, atol=rounding):
            raise ValueError("DataMoments.of_gaussian: the covariance must be symmetric")
        eigvals, eigvecs = torch.linalg.eigh(0.5 * (cov + cov.T))
        if len(eigvals) and eigvals.min() < -rounding * d:
            raise ValueError(f"DataMoments.of_gaussian: the covariance must be positive semi-definite; its smallest "
                             f"eigenvalue is {float(eigvals.min()):.3g}")
        return cls(mean, eigvals.clamp_min(0), eigvecs)

    @classmethod
    def of_samples(cls, x: Tensor, rank: int = 1024) -> "DataMoments":
        """Moments of samples x (n, ...): all eigenpairs when d <= rank, else the `rank` leading ones."""
        if x.ndim < 2:
            raise ValueError(f"DataMoments.of_samples needs a batch of samples (n, ...), 1-D data as (n, 1); got shape "
                             f"{tuple(x.shape)}")
        x = x.flatten(1).double()
        n, d = x.shape
        if n < 2:
            raise ValueError(f"DataMoments.of_samples needs at least 2 samples; got {n}")
        mean = x.mean(0)
        if d <= rank:
            return cls.of_gaussian(mean, torch.cov(x.T).reshape(d, d))
        _, s, v = torch.svd_lowrank(x - mean, q=rank, niter=4)
        eigvals = s**2 / (n - 1)
        total = float((x - mean).pow(2).sum() / (n - 1))
        return cls(mean, eigvals, v, residual_var=max(total - float(eigvals.sum()), 0.0) / (d - rank))

    def to_state(self) -> dict:
        return {"mean": self.mean, "eigvals": self.eigvals, "eigvecs": self.eigvecs, "residual_var": self.residual_var}

    @classmethod
    def from_state(cls, state: dict) -> "DataMoments":
        """The moments a checkpoint keeps (to_state), checked: ValueError for anything else."""
        keys = {"mean", "eigvals", "eigvecs"}
        if not isinstance(state, dict) or not keys <= set(state) <= keys | {"residual_var"}:
            raise ValueError("data_moments must hold mean, eigvals, eigvecs (and residual_var)")
        mean, eigvals, eigvecs = (state[k] for k in ("mean", "eigvals", "eigvecs"))
        residual = state.get("residual_var", 0.0)
        residual = float(residual) if torch.is_tensor(residual) and residual.numel() == 1 else residual
        shaped = all(torch.is_tensor(t) and t.is_floating_point() for t in (mean, eigvals, eigvecs)) and \
            mean.ndim == 1 and eigvals.ndim == 1 and eigvecs.shape == (len(mean), len(eigvals))
        number = not isinstance(residual, bool) and isinstance(residual, (int, float)) and 0 <= residual < math.inf
        if not shaped or not number or not all(torch.isfinite(t).all() for t in (mean, eigvals, eigvecs)):
            raise ValueError("data_moments: mean (d,), eigvals (k,), eigvecs (d, k), finite, and residual_var >= 0")
        return cls(mean, eigvals, eigvecs, float(residual))

    @property
    def max_std(self) -> float:
        return math.sqrt(max(float(self.eigvals.max()), self.residual_var))

    def flow(self, x: Tensor, sde: SDE, t0: float, t1: float) -> Tensor:
        """The probability-flow map of N(mean, cov) from time t0 to t1, applied to x (batch, ...)."""
        a0, s0, a1, s1 = (float(f(_as64(t))) for t in (t0, t1) for f in (sde.alpha, sde.sigma))
        gain = lambda v: ((a1**2 * v + s1**2) / (a0**2 * v + s0**2)) ** 0.5  # noqa: E731
        mean, vecs = self.mean.to(x), self.eigvecs.to(x)
        y = x.flatten(1) - a0 * mean
        coef = y @ vecs
        out = (a1 * mean + gain(self.residual_var) * y
               + (coef * (gain(self.eigvals.to(x)) - gain(self.residual_var))) @ vecs.T)
        return out.reshape(x.shape)

    def posterior_cov(self, alpha: float, sigma: float, index: Tensor | None = None, diagonal: bool = False,
                      min_var: float = 0.0) -> Tensor:
        """Cov[x0 | x_t] for data N(mean, cov) and x_t = alpha x0 + sigma z: in the eigenbasis v sigma^2 /
        (alpha^2 v + sigma^2), with every variance v at least `min_var`. Restricted to the flat coordinates `index`
        (all by default); its diagonal only if `diagonal` (no d x d matrix)."""
        shrink = lambda v: v * sigma**2 / (alpha**2 * v + sigma**2)  # noqa: E731
        vecs = self.eigvecs if index is None else self.eigvecs[index]
        g, g_res = shrink(self.eigvals.clamp_min(min_var)), shrink(max(self.residual_var, min_var))
        if diagonal:
            return (vecs**2) @ (g - g_res) + g_res
        return (vecs * (g - g_res)) @ vecs.T + g_res * torch.eye(len(vecs), dtype=vecs.dtype)

    def information(self, log_snr: Tensor) -> Tensor:
        """I at log-SNR lambda = log(alpha / sigma): 1/2 sum_i log(1 + e^(2 lambda) v_i), the residual variance
        counted once for each of the d - k directions the eigenpairs leave out."""
        snr = torch.exp(2 * _as64(log_snr))
        left_out = self.mean.numel() - self.eigvals.numel()
        return 0.5 * (torch.log1p(snr[..., None] * self.eigvals.double()).sum(-1)
                      + left_out * torch.log1p(snr * self.residual_var))

    def start_time_kl(self, sde: SDE, nats: float) -> float:
        """The time t* at which information(lambda_t) = nats, or T if it is already more at T."""
        lo, hi = (float(sde.log_snr(_as64(t))) for t in (sde.T, sde.eps))
        if float(self.information(_as64(lo))) >= nats:
            return float(sde.T)
        if float(self.information(_as64(hi))) <= nats:
            raise ValueError(f"gaussian_start_kl={nats} is reached only after eps = {sde.eps} (the Gaussian fit's "
                             f"bound there is {float(self.information(_as64(hi))):.3g} nats); use a smaller value")
        for _ in range(60):  # bisection on lambda: information is increasing in it
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if float(self.information(_as64(mid))) < nats else (lo, mid)
        return float(sde.t_from_log_snr(_as64(0.5 * (lo + hi))))

    def start_time(self, sde: SDE, ratio: float) -> float:
        """The time t* at which max_std alpha_t / sigma_t = ratio, or T if that is already so at T."""
        lam_star = math.log(ratio / self.max_std)
        if lam_star <= float(sde.log_snr(_as64(sde.T))):
            return float(sde.T)
        if lam_star >= float(sde.log_snr(_as64(sde.eps))):
            raise ValueError(f"gaussian_start={ratio} is reached only after eps = {sde.eps} (data max std "
                             f"{self.max_std:.3g}); use a smaller ratio")
        return float(sde.t_from_log_snr(_as64(lam_star)))
