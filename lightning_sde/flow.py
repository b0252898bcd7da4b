"""The probability-flow ODE as a bijection: encode data to latents, decode them back, interpolate, and exact
log-likelihoods by the instantaneous change of variables (Song et al. 2021, Sec. 4.3 and App. D.2).

Along dx/dt = f~(x, t) = f(x, t) - g(t)^2/2 score(x, t), the density obeys d log p_t(x_t)/dt = -div f~(x_t, t), so

    log p_eps(x) = log p_T(x_T) + int_eps^T div f~(x_t, t) dt,

with x_T the ODE solution from x at eps, and p_T replaced by the prior N(0, prior_std^2 I): the result is off by
log prior(x_T) - log p_T(x_T), the prior mismatch at T (tiny for VP with beta_max = 20; exactly computable for an
exact mixture, which the tests use). The divergence is exact (one backward pass per dimension: low dimensions) or
Hutchinson's estimate E_v[v^T (d f~/dx) v] with k fixed probes v per sample (Rademacher or Gaussian), carried as k
separate integrals: their mean is the estimate and their standard error is reported.

torchdiffeq solves each direction as the `ode` sampler does (probability_flow.py: the score is never queried outside
[eps, T]).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_sde.errors import require_autograd
from lightning_sde.models.denoiser import warn_if_training
from lightning_sde.probability_flow import ODEOptions, ProbabilityFlow, check_step_dtype

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")


@torch.no_grad()
def encode(denoiser, x0: Tensor, options: ODEOptions | None = None) -> Tensor:
    """x at t = eps -> its latent x_T (the ODE forward in time)."""
    check_step_dtype(x0, "x0")
    warn_if_training(denoiser, "latents")
    sde = denoiser.sde
    return (options or ODEOptions()).solve(ProbabilityFlow(denoiser), x0, sde.eps, sde.T, x0.device, sde)[-1]


@torch.no_grad()
def decode(denoiser, z: Tensor, options: ODEOptions | None = None) -> Tensor:
    """A latent x_T -> x at t = eps (the ODE backward in time: what the `ode` sampler does)."""
    check_step_dtype(z, "z")
    warn_if_training(denoiser, "decoded samples")
    sde = denoiser.sde
    return (options or ODEOptions()).solve(ProbabilityFlow(denoiser), z, sde.T, sde.eps, z.device, sde)[-1]


def slerp(z0: Tensor, z1: Tensor, n: int) -> Tensor:
    """n points on the great circle from latent z0 to latent z1, each one sample (of the model's sample shape, no batch
    axis: a batch would be taken as one vector; interpolate pair by pair): (n, *z0.shape).

    Latents of a Gaussian prior concentrate on a sphere; linear interpolation would pass through its low-norm
    interior, which the prior never produces. One-dimensional latents have no sphere: they interpolate linearly.
    Antipodal latents (angle pi) lie on many great circles, none of them the one: refused."""
    if z0.shape != z1.shape:
        raise ValueError(f"slerp: latents of shapes {tuple(z0.shape)} and {tuple(z1.shape)}; both must be one sample's")
    a, b = z0.reshape(-1).double(), z1.reshape(-1).double()
    if a.numel() > 1 and not (a.isfinite().all() and b.isfinite().all() and a.norm() > 0 and b.norm() > 0):
        raise ValueError("slerp: a latent of norm 0 (or not finite) has no direction to interpolate along")
    omega = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
    w = torch.linspace(0, 1, n, dtype=torch.float64, device=z0.device)
    if a.numel() > 1 and math.pi - omega < 1e-6:
        raise ValueError("slerp: the two latents point in opposite directions (angle pi): the great circle between "
                         "them is not unique")
    if omega < 1e-6 or a.numel() == 1:
        out = (1 - w)[:, None] * a + w[:, None] * b
    else:
        out = (torch.sin((1 - w) * omega)[:, None] * a + torch.sin(w * omega)[:, None] * b) / torch.sin(omega)
    return out.to(z0.dtype).reshape(n, *z0.shape)


class _AugmentedDrift(nn.Module):
    """(x, div integrals) -> (f~, div f~ per probe): exact (k = 1 column) or Hutchinson (k columns)."""

    def __init__(self, denoiser, probes: Tensor | None):
        super().__init__()
        self.flow, self.probes = ProbabilityFlow(denoiser), probes  # probes: (k, B, *shape) or None: exact divergence

    def forward(self, t, state):
        x, _ = state
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            drift = self.flow(t, x)
            flat = drift.reshape(len(x), -1)
            if self.probes is None:  # exact: one vector-Jacobian product per dimension
                div = torch.zeros(len(x), dtype=x.dtype, device=x.device)
                for i in range(flat.shape[1]):
                    (grad,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)
                    div = div + grad.reshape(len(x), -1)[:, i]
                divs = div[:, None]
            else:
                cols = []
                for j, v in enumerate(self.probes):
                    (vjp,) = torch.autograd.grad(drift, x, grad_outputs=v, retain_graph=j < len(self.probes) - 1)
                    cols.append((vjp * v).reshape(len(x), -1).sum(-1))
                divs = torch.stack(cols, dim=1)
        return drift.detach(), divs.detach()


def log_likelihood(denoiser, x: Tensor, options: ODEOptions | None = None, divergence: str = "exact",
                   probes: int = 1, probe: str = "rademacher", generator=None) -> dict:
    """log p_eps(x) per sample through the probability-flow ODE. `generator`: one torch.Generator for the batch's
    probes, or one per sample (each sample's probes then do not depend on the batch it is in).

    Returns {"logp": (B,), "logp_se": (B,) Hutchinson's standard error over the k probes (0 for exact; NaN for
    k = 1), "prior_logp": (B,), "delta": (B,) the divergence integral, "x_T": latents, "nfe": score evaluations}.
    None of them carries a gradient with respect to x (the divergence is taken inside the solve).
    """
    check_step_dtype(x, "x")
    require_autograd("log_likelihood (the divergence)")
    warn_if_training(denoiser, "log-likelihoods")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}; got {divergence!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}; got {probe!r}")
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes must be an integer >= 1; got {probes!r}")
    options = options or ODEOptions()
    sde = denoiser.sde
    v = None
    if divergence == "hutchinson":
        def draw(shape, gen):
            if probe == "gaussian":
                return torch.randn(shape, generator=gen, dtype=x.dtype, device="cpu")
            return (torch.randint(0, 2, shape, generator=gen, device="cpu") * 2 - 1).to(x.dtype)

        if isinstance(generator, (list, tuple)):
            if len(generator) != len(x):
                raise ValueError(f"one generator per sample: got {len(generator)} for {len(x)} samples")
            v = torch.stack([draw((probes, *x.shape[1:]), gen) for gen in generator], dim=1).to(x.device)
        else:
            v = draw((probes, *x.shape), generator).to(x.device)
    k = 1 if v is None else probes
    nfe0 = denoiser.nfe
    state0 = (x.detach(), torch.zeros(len(x), k, dtype=x.dtype, device=x.device))
    xs, deltas = options.solve(_AugmentedDrift(denoiser, v), state0, sde.eps, sde.T, x.device, sde)
    x_T, delta = xs[-1], deltas[-1]
    prior = sde.prior_logp(x_T)
    logp_k = prior[:, None] + delta
    se = torch.zeros(len(x), dtype=x.dtype, device=x.device) if v is None else (
        logp_k.std(dim=1) / math.sqrt(k) if k > 1
        else torch.full((len(x),), float("nan"), dtype=x.dtype, device=x.device))
    return {"logp": logp_k.mean(dim=1), "logp_se": se, "prior_logp": prior, "delta": delta.mean(dim=1),
            "x_T": x_T, "nfe": denoiser.nfe - nfe0}


def bits_per_dim(logp: Tensor, dim: int, offset: float = 0.0) -> Tensor:
    """-log p / (D ln 2) + offset: `offset` = log2(levels / 2) turns the density of uniformly dequantised data in
    [-1, 1] into a bound on the discrete data's bits/dim (7 for 8-bit images; `bits_per_dim_offset` in data.base)."""
    return -logp / (dim * math.log(2)) + offset
