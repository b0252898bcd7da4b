"""Inpainting by sequential Monte Carlo: asymptotically exact p(x_unknown | x_known) on any data, multimodal too.

Replacement and reconstruction guidance (models/inpainting.py) run any sampler but are biased on multimodal data.
`smc_inpainting` follows SMCDiff (Trippe et al. 2022): for each sample, `particles` copies of the reverse process
whose known part is a forward-noised path y_t of the values, reweighted at each step by how likely the model makes
the path's next point:

  1. y_eps ~ q(y_eps | values), then y_{t_i} ~ q(y_{t_i} | y_{t_(i+1)}) up to T: one forward path per sample,
     shared by its particles (the forward SDE acts coordinate-wise, so the unknown part of x_0 depends on the whole
     path only through the values: conditioning on the path is conditioning on the values);
  2. each step t -> s draws every particle from the ancestral kernel q(x_s | x_t, x0_hat(x_t)) (DDPM's posterior,
     samplers/ddim.py at eta = 1): its unknown part is kept, its known part is replaced by y_s, and the particle's
     log-weight grows by log N(y_s; mean_known, var), the kernel's density of the path's point;
  3. the particles of a sample are resampled (systematic) when their effective sample size falls below
     `ess_threshold` x particles; at eps one particle is drawn by its weight.

With exact scores it converges to p(x_u | x_k) as steps and particles grow together (measured against
GaussianMixture.given in tests/unit/test_smc.py and docs/conditional.md). At fixed steps more particles converge to
the step chain's own posterior, not p(x_u | x_k): at coarse steps the last steps' narrow kernels make the weights
collapse onto one particle (min_ess 1) and more particles move the result further off (docs/conditional.md).
Every draw (path, kernel noise, resampling) comes from the sample's seed, so sample i is the same in any batch.

NFE: one forward of the network over particles x batch rows per step = 1 NFE, `batch_factor` = particles in info.
"""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from lightning_sde.models.inpainting import InpaintingDenoiser
from lightning_sde.samplers.grids import GRIDS, time_grid
from lightning_sde.samplers.noise import SeededNoise


def _check(particles, steps, ess_threshold, grid):
    for key, value in (("particles", particles), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"smc_inpainting: {key} must be an integer >= 1; got {value!r}")
    if isinstance(ess_threshold, bool) or not isinstance(ess_threshold, (int, float)) or not 0 <= ess_threshold <= 1:
        raise ValueError(f"smc_inpainting: ess_threshold must lie in [0, 1]; got {ess_threshold!r}")
    if grid not in GRIDS:
        raise ValueError(f"smc_inpainting: unknown grid {grid!r}; choose one of {GRIDS}")


def smc_inpainting(denoiser: InpaintingDenoiser, seeds, particles: int = 64, steps: int = 400,
                   ess_threshold: float = 0.5, grid: str = "uniform", dtype=torch.float32, device="cpu",
                   progress: bool = False) -> tuple[Tensor, dict]:
    """One completion per seed of `denoiser`'s known values (rows of `denoiser.values`, one per seed); see module doc.
    `denoiser` is an `inpainting(...)` Denoiser: only its mask, values and the model it wraps are used (not its
    method: the particles' kernel is the wrapped model's own). Returns (x (B, *shape), the known part set to the
    values; info)."""
    if not isinstance(denoiser, InpaintingDenoiser):
        raise ValueError("smc_inpainting needs an inpainting(...) Denoiser: it names the known mask and values")
    _check(particles, steps, ess_threshold, grid)
    seeds = list(seeds)
    B, K, shape, sde = len(seeds), particles, denoiser.shape, denoiser.sde
    if B != denoiser.values.shape[0]:
        raise ValueError(f"smc_inpainting: {B} seeds but the denoiser holds values for {denoiser.values.shape[0]} rows")
    model = denoiser.base.tiled(K * B)  # particle row k * B + b belongs to sample b (its label, where guided)
    nfe0 = model.nfe
    noise = SeededNoise(seeds, (K, *shape), dtype=dtype, device=device)
    known = denoiser.known[0].to(device)
    values = denoiser.values.to(device, dtype)
    times = time_grid(sde, steps, grid).to(device, dtype)
    flat = lambda p: p.reshape(K * B, *shape)  # noqa: E731
    draw = lambda: noise().transpose(0, 1)  # noqa: E731  (K, B, *shape), row b from seed b

    path = [sde.marginal(values, times[-1].expand(B), draw()[0])]  # y at eps, then upwards to T
    for i in range(steps - 1, -1, -1):
        a, G2 = sde.transition(times[i], times[i + 1])
        path.append(a * path[-1] + G2.sqrt() * draw()[0])
    path.reverse()  # path[i]: y at times[i]

    x = sde.prior_sample(noise.prior().transpose(0, 1))
    x = torch.where(known, path[0], x)
    log_w = torch.zeros(K, B, dtype=dtype, device=device)
    n_resampled, min_ess = 0, float(K)
    with torch.no_grad(), tqdm(total=steps, desc="smc_inpainting", unit="nfe", disable=not progress,
                               leave=False) as bar:
        for i in range(steps):
            t, s = times[i], times[i + 1]
            pred = model(flat(x), t)
            alpha_s, sigma_s = sde.alpha(s), sde.sigma(s)
            var = sigma_s**2 * (1 - (sde.alpha(t) * sigma_s / (alpha_s * sde.sigma(t))) ** 2)
            mean = (alpha_s * pred.x0 + (sigma_s**2 - var).sqrt() * pred.eps).reshape(K, B, *shape)
            log_w = log_w - 0.5 * _sq(torch.where(known, path[i + 1] - mean, 0.0)) / var
            x = mean if i == steps - 1 else mean + var.sqrt() * draw()  # the last step: the mean, as every SDE sampler
            x = torch.where(known, path[i + 1], x)
            weights = torch.softmax(log_w, dim=0)
            ess = 1 / weights.pow(2).sum(0)  # (B,)
            min_ess = min(min_ess, float(ess.min()))
            uniform = _uniform(draw())
            if i < steps - 1:
                resample = ess < ess_threshold * K
                if resample.any():
                    index = _systematic(weights, uniform)
                    picked = torch.gather(x, 0, index.view(K, B, *[1] * len(shape)).expand_as(x))
                    x = torch.where(resample.view(1, B, *[1] * len(shape)), picked, x)
                    log_w = torch.where(resample, 0.0, log_w)
                    n_resampled += int(resample.sum())
            bar.update(1)
    cumulative = weights.cumsum(0).T.contiguous()  # one particle per sample, drawn by its final weight
    chosen = torch.searchsorted(cumulative, uniform[:, None].contiguous()).flatten().clamp_max(K - 1)
    x = x[chosen, torch.arange(B, device=device)]
    info = {"sampler": "smc_inpainting", "nfe": model.nfe - nfe0, "steps": steps, "particles": K,
            "batch_factor": K * getattr(model, "batch_factor", 1), "resampled": n_resampled, "min_ess": min_ess}
    return denoiser.finish(x), info


def _sq(z: Tensor) -> Tensor:
    """Squared norm of each particle, (K, B, ...) -> (K, B)."""
    return z.pow(2).flatten(2).sum(-1)


def _uniform(z: Tensor) -> Tensor:
    """One U(0, 1) per sample from a standard-normal draw (K, B, ...): Phi of its first entry."""
    return torch.special.ndtr(z[0].flatten(1)[:, 0])


def _systematic(weights: Tensor, uniform: Tensor) -> Tensor:
    """Systematic resampling of each column of weights (K, B) with one uniform per column: (K, B) particle indices."""
    K = weights.shape[0]
    positions = (uniform[None, :] + torch.arange(K, dtype=weights.dtype, device=weights.device)[:, None]) / K
    cumulative = weights.cumsum(0).T.contiguous()
    cumulative[:, -1] = 1.0  # exact upper end, whatever the rounding of the sum
    return torch.searchsorted(cumulative, positions.T.contiguous()).T.clamp_max(K - 1)
