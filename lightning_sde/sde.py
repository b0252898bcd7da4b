"""Linear forward SDEs dx = f(t) x dt + g(t) dw with Gaussian marginals x_t = alpha_t x_0 + sigma_t z.

Song et al. 2021, "Score-Based Generative Modeling through SDEs" (eqs. 9-11 and appendix B):
  VP      f = -beta(t)/2,  g^2 = beta(t),                         alpha = exp(-B(t)/2), sigma^2 = 1 - alpha^2
  sub-VP  f = -beta(t)/2,  g^2 = beta(t) (1 - exp(-2 B(t))),      alpha = exp(-B(t)/2), sigma   = 1 - alpha^2
  VE      f = 0,           g^2 = d sigma^2/dt,                    alpha = 1, sigma = sigma_min (sigma_max/sigma_min)^t
with beta(t) = beta_min + t (beta_max - beta_min) and B(t) = int_0^t beta. VE's sigma(t) is the whole noise std, as
in the paper's code: p_t is the data convolved with N(0, sigma(t)^2), where appendix B's kernel has variance
sigma^2(t) - sigma^2(0). Both solve the same SDE (g^2 = d sigma^2/dt); they differ in what p_t, and so VE's log p at
eps, refers to (the mean log p of 200 samples of 8 Gaussians differs by 1.7e-4 nats).
And DiscreteVPSDE, the VP SDE through a discrete-time model's alphas_cumprod (DDPM and the models published in
diffusers' format).
Each class states alpha, sigma, f and g^2; everything else (lambda_t, its inverse, transitions, reverse drifts,
prior) is derived once in the base class.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor


def broadcast_time(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient (B,) or scalar so it multiplies a batch x of shape (B, ...)."""
    coef = torch.as_tensor(coef, dtype=x.dtype, device=x.device)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


TIME_METHODS = ("alpha", "sigma", "f", "g2", "t_from_log_snr", "log_alpha")  # each subclass's own; first argument: t


def as_time(t) -> Tensor:
    """A time argument as a tensor: a Python number as float64 (the formulas call torch on it); a tensor as it is."""
    return t if torch.is_tensor(t) else torch.tensor(t, dtype=torch.float64)


def _numbers_as_tensors(method):
    """`method(self, t, ...)` taking its time argument t (however named, positional or keyword) as a Python number
    too."""
    name = list(inspect.signature(method).parameters)[1]

    @functools.wraps(method)
    def taking_numbers(self, *args, **kwargs):
        if args:
            args = (as_time(args[0]), *args[1:])
        elif name in kwargs:
            kwargs[name] = as_time(kwargs[name])
        return method(self, *args, **kwargs)

    return taking_numbers


class SDE(ABC):
    """A linear forward SDE on t in [eps, T]; time arguments are tensors (scalar or per sample) or Python numbers."""

    name: str  # what results, figures and logs call it: a subclass's own (or inherited), else its class name
    drift_jumps = False  # f and g^2 jump in t (a discrete schedule): ODE solvers integrate in log-SNR instead

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls):
            cls._name_given = True
        elif not getattr(cls, "_name_given", False):  # none up the line but class names: README's recipe sets none
            cls.name, cls._name_given = cls.__name__, False
        for key in TIME_METHODS:
            if key in vars(cls) and not getattr(vars(cls)[key], "__isabstractmethod__", False):
                setattr(cls, key, _numbers_as_tensors(vars(cls)[key]))

    def __init__(self, eps: float = 1e-3, T: float = 1.0):
        real_numbers(type(self).__name__, eps=eps, T=T)
        if not (math.isfinite(eps) and math.isfinite(T) and 0.0 < eps < T):
            raise ValueError(f"SDE time range needs 0 < eps < T, both finite; got eps={eps}, T={T}")
        self.eps = float(eps)
        self.T = float(T)

    def with_eps(self, eps: float) -> "SDE":
        """This SDE on [eps, T]: another smallest time (e.g. a likelihood from 1e-5 of a model trained from 1e-3),
        checked as the constructor checks it (a discrete schedule's from its first timestep, 1/N)."""
        real_numbers(type(self).__name__, eps=eps)
        lowest = self.earliest
        if not (math.isfinite(eps) and lowest <= eps < self.T and eps > 0):
            raise ValueError(f"{type(self).__name__}: eps must lie in {'[' if lowest else '('}{lowest:g}, T = "
                             f"{self.T:g}); got {eps}")
        out = copy.copy(self)
        out.eps = float(eps)
        return out

    @property
    def earliest(self) -> float:
        """The smallest time its formulas hold at: 0, or a discrete schedule's first timestep 1/N."""
        return 1.0 / self.num_timesteps if hasattr(self, "num_timesteps") else 0.0

    # --- the four quantities each SDE defines ---------------------------------------------------
    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Mean scale of p_t(x | x_0)."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Standard deviation of p_t(x | x_0)."""

    @abstractmethod
    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient: f(x, t) = f(t) x."""

    @abstractmethod
    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion g(t)^2."""

    @abstractmethod
    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of log_snr."""

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the prior N(0, prior_std^2 I) that stands in for p_T."""

    # --- derived -------------------------------------------------------------------------------
    def g(self, t: Tensor) -> Tensor:
        return self.g2(t).sqrt()

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return broadcast_time(self.f(t), x) * x

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda_t = log(alpha_t / sigma_t), strictly decreasing in t."""
        return self.alpha(t).log() - self.sigma(t).log()

    def marginal(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = alpha_t x_0 + sigma_t z for given z."""
        return broadcast_time(self.alpha(t), x0) * x0 + broadcast_time(self.sigma(t), x0) * noise

    def transition(self, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Forward transition x_t | x_s = a x_s + G z for s < t: returns (a, G^2), exact for these linear SDEs."""
        a = self.alpha(t) / self.alpha(s)
        return a, self.sigma(t) ** 2 - a**2 * self.sigma(s) ** 2

    def reverse_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Drift of the reverse-time SDE: f(x,t) - g(t)^2 grad log p_t (eq. 6)."""
        return self.drift(x, t) - broadcast_time(self.g2(t), x) * score

    def ode_drift(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Probability-flow ODE: dx/dt = f(x,t) - g(t)^2/2 grad log p_t (eq. 13)."""
        return self.drift(x, t) - 0.5 * broadcast_time(self.g2(t), x) * score

    def prior_gap(self, mean_square: float = 1.0) -> float:
        """An upper bound on KL(p_T || prior) per dimension, for data whose coordinates have mean square
        `mean_square`: the mean over x_0 of KL(N(alpha_T x_0, sigma_T^2) || N(0, prior_std^2)) per dimension (KL is
        jointly convex). What starting every sampler at the prior instead of p_T can cost: 2e-5 for the default VP
        SDE on unit-scale data, 0.04 with beta_max=5."""
        T = torch.tensor(self.T, dtype=torch.float64)
        a, s, p = float(self.alpha(T)), float(self.sigma(T)), self.prior_std
        return 0.5 * (a * a * mean_square + s * s) / (p * p) - 0.5 - math.log(s / p)

    def prior_sample(self, noise: Tensor) -> Tensor:
        return self.prior_std * noise

    def prior_logp(self, x: Tensor) -> Tensor:
        """log N(x; 0, prior_std^2 I), summed over all but the batch dimension."""
        d = math.prod(x.shape[1:])
        sq = x.reshape(x.shape[0], d).pow(2).sum(-1)
        return -0.5 * sq / self.prior_std**2 - d * (math.log(self.prior_std) + 0.5 * math.log(2 * math.pi))

    def langevin_scale(self, t: Tensor, s: Tensor) -> Tensor:
        """Step-size factor of score_sde's Langevin corrector: 1, except VP's alpha_i = 1 - beta_i."""
        return torch.ones_like(as_time(t))

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


def real_numbers(owner: str, **values) -> None:
    """ValueError naming the first of `values` that is not a real number (a string from the command line, a bool)."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{owner}: {key} must be a number; got {value!r}")


class _BetaSchedule(SDE):
    """Shared linear beta(t) schedule of VP and sub-VP."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, eps: float = 1e-3, T: float = 1.0):
        super().__init__(eps, T)
        real_numbers(type(self).__name__, beta_min=beta_min, beta_max=beta_max)
        if not beta_min > 0:
            raise ValueError(f"beta_min must be > 0; got beta_min={beta_min}")
        if not beta_max > beta_min or not math.isfinite(beta_max):
            raise ValueError(f"beta_max must be > beta_min, and finite; got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def t_from_integrated_beta(self, B: Tensor) -> Tensor:
        # Root of (d/2) t^2 + beta_min t - B = 0, written without cancellation.
        d = self.beta_max - self.beta_min
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * B))

    def alpha(self, t):
        return torch.exp(-0.5 * self.integrated_beta(t))

    def f(self, t):
        return -0.5 * self.beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0


class VPSDE(_BetaSchedule):
    name = "vp"

    def sigma(self, t):
        return (-torch.expm1(-self.integrated_beta(t))).sqrt()

    def g2(self, t):
        return self.beta(t)

    def t_from_log_snr(self, lam):
        # sigma^2/alpha^2 = exp(B) - 1 = exp(-2 lambda)  =>  B = softplus(-2 lambda)
        return self.t_from_integrated_beta(torch.nn.functional.softplus(-2 * lam))

    def langevin_scale(self, t, s):
        a, _ = self.transition(t, s)
        return a**2  # score_sde's alpha_i = 1 - beta_i = (alpha_i / alpha_{i-1})^2 of the discrete DDPM chain


class SubVPSDE(_BetaSchedule):
    name = "subvp"

    def sigma(self, t):
        return -torch.expm1(-self.integrated_beta(t))

    def g2(self, t):
        return self.beta(t) * -torch.expm1(-2 * self.integrated_beta(t))

    def t_from_log_snr(self, lam):
        # alpha / sigma = e^{-B/2} / (1 - e^{-B}) = 1 / (2 sinh(B/2)) = e^lambda: no alpha ~ 1 to cancel near t = 0
        return self.t_from_integrated_beta(2 * torch.asinh(0.5 * torch.exp(-lam)))


class VESDE(SDE):
    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, eps: float = 1e-5, T: float = 1.0):
        super().__init__(eps, T)
        real_numbers(type(self).__name__, sigma_min=sigma_min, sigma_max=sigma_max)
        if not 0 < sigma_min < sigma_max < math.inf:
            raise ValueError("VE SDE needs 0 < sigma_min < sigma_max, both finite; "
                             f"got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self._log_ratio = math.log(sigma_max / sigma_min)

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def f(self, t):
        return torch.zeros_like(t)

    def g2(self, t):
        # d sigma^2 / dt: the square root is taken in g(), not here (score_sde's VE "mind the square root").
        return 2 * self._log_ratio * self.sigma(t) ** 2

    def t_from_log_snr(self, lam):
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    @property
    def prior_std(self) -> float:
        # sigma(T) in float64 (sigma_max exactly at T = 1)
        return self.sigma_max if self.T == 1 else float(self.sigma(torch.tensor(self.T, dtype=torch.float64)))


class DiscreteVPSDE(SDE):
    """The VP SDE of a discrete-time model (DDPM and its descendants) trained on N timesteps k = 0..N-1 with
    cumulative products alphas_cumprod[k]: timestep k sits at t_k = (k + 1) / N, log alpha_t is piecewise linear in t
    through log sqrt(alphas_cumprod[k]) at the t_k (extrapolated linearly outside them), so T = 1 and eps = 1/N
    (Lu et al. 2022's discrete wrapper). Between the t_k, f = d log alpha / dt is constant and g^2 = -2 f; a network
    trained on the timesteps is fed `timestep(t) = t N - 1`, which is k at t_k."""

    name = "vp_discrete"
    drift_jumps = True

    def __init__(self, alphas_cumprod, eps: float | None = None, T: float = 1.0):
        cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if cumprod.ndim != 1:
            raise ValueError(f"alphas_cumprod must be one schedule (N,); got shape {tuple(cumprod.shape)}")
        n = cumprod.numel()
        if n < 2 or not torch.isfinite(cumprod).all():
            raise ValueError(f"alphas_cumprod must hold at least 2 finite values; got {n}")
        if not ((cumprod > 0) & (cumprod < 1)).all() or not (cumprod.diff() < 0).all():
            raise ValueError("alphas_cumprod must decrease strictly inside (0, 1) (betas in (0, 1); a zero-terminal-"
                             "SNR schedule, alphas_cumprod[-1] = 0, has no log-SNR at T)")
        if T != 1.0:
            raise ValueError(f"a discrete-time VP SDE spans t in (0, 1]: T = 1; got T={T}")
        if eps is not None and not 1.0 / n <= eps < 1.0:  # below t_0, alpha extrapolated past 1: sigma is NaN
            raise ValueError(f"eps must lie in [1/N, 1) = [{1.0 / n:g}, 1) for a schedule of N = {n} timesteps; "
                             f"got eps={eps}")
        super().__init__(1.0 / n if eps is None else eps, T)
        self.num_timesteps = n
        self.log_alphas = 0.5 * cumprod.log()  # at t_k = (k + 1) / N
        self._tables: dict = {}

    def _table(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = self.log_alphas.to(device=like.device, dtype=like.dtype)
        return self._tables[key]

    def timestep(self, t: Tensor) -> Tensor:
        """The model's (continuous) timestep input at time t: k at t_k = (k + 1) / N."""
        return t * self.num_timesteps - 1

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log alpha at the segment's left knot, its slope per unit of timestep, the offset into it)."""
        t = torch.as_tensor(t)
        table = self._table(t if t.is_floating_point() else t.double())
        u = self.timestep(t)
        k = u.detach().floor().clamp(0, self.num_timesteps - 2).long()
        left = table.take(k)  # take, not table[k]: indexing by a 0-d tensor would sync with the GPU
        return left, table.take(k + 1) - left, u - k

    def log_alpha(self, t: Tensor) -> Tensor:
        left, slope, offset = self._segment(t)
        return left + slope * offset

    def alpha(self, t):
        return self.log_alpha(t).exp()

    def sigma(self, t):
        return (-torch.expm1(2 * self.log_alpha(t))).sqrt()

    def f(self, t):
        _, slope, _ = self._segment(t)
        return slope * self.num_timesteps

    def g2(self, t):
        return -2 * self.f(t)

    def t_from_log_snr(self, lam):
        log_alpha = -0.5 * torch.nn.functional.softplus(-2 * lam)  # alpha^2 = sigmoid(2 lambda)
        table = self._table(log_alpha)
        k = (torch.searchsorted(-table, -log_alpha.detach().contiguous()) - 1).clamp(0, self.num_timesteps - 2)
        left = table.take(k)
        offset = (log_alpha - left) / (table.take(k + 1) - left)
        return (k + offset + 1) / self.num_timesteps

    @property
    def prior_std(self) -> float:
        return 1.0

    def __repr__(self) -> str:
        digest = hashlib.blake2b(self.log_alphas.numpy().tobytes(), digest_size=8).hexdigest()
        return f"DiscreteVPSDE(num_timesteps={self.num_timesteps}, alphas_cumprod=<{digest}>, eps={self.eps})"


SDES: dict[str, type[SDE]] = {cls.name: cls for cls in (VPSDE, SubVPSDE, VESDE, DiscreteVPSDE)}


def build_sde(name: str, **params) -> SDE:
    if name not in SDES:
        raise ValueError(f"unknown sde {name!r}; choose one of {sorted(SDES)}")
    try:
        return SDES[name](**params)
    except TypeError as err:
        raise ValueError(f"bad parameters for sde {name!r}: {err}") from None


def sde_from_config(cfg: dict) -> SDE:
    """An SDE from its config node: `_target_` (configs/sde/), or a {name: ...} node of checkpoints before 0.2."""
    if "_target_" not in cfg and "name" in cfg:
        return build_sde(**cfg)
    from lightning_sde.configuration import build

    sde = build(cfg, "sde")
    if not isinstance(sde, SDE):
        raise ValueError(f"config sde: {cfg.get('_target_')!r} is not an SDE (got {type(sde).__name__})")
    try:
        check_sde(sde)
    except ValueError as err:
        raise ValueError(f"config sde: {err}") from None
    return sde


def check_sde(sde: SDE, points: int = 33, rtol: float = 1e-2) -> None:
    """ValueError unless the SDE's functions agree with each other on [eps, T] (a user's class, checked when built):
    alpha in (0, 1], sigma > 0, log-SNR falling, t_from_log_snr its inverse, and (where the drift is smooth)
    d log alpha / dt = f and g^2 = d sigma^2 / dt - 2 f sigma^2, by central differences in float64."""
    name = type(sde).__name__
    t = torch.linspace(sde.eps, sde.T, points, dtype=torch.float64)
    alpha, sigma, lam = sde.alpha(t), sde.sigma(t), sde.log_snr(t)
    if not (torch.isfinite(alpha).all() and torch.isfinite(sigma).all()):
        raise ValueError(f"{name}: alpha(t) or sigma(t) is not finite on [eps, T]")
    if not ((alpha > 0).all() and (alpha <= 1 + 1e-9).all() and (sigma > 0).all()):
        at = int(((alpha <= 0) | (alpha > 1 + 1e-9) | (sigma <= 0)).nonzero()[0])
        raise ValueError(f"{name}: needs 0 < alpha(t) <= 1 and sigma(t) > 0 on [eps, T]; at t={float(t[at]):.4g}: "
                         f"alpha {float(alpha[at]):.4g}, sigma {float(sigma[at]):.4g}")
    if not (lam[1:] < lam[:-1]).all():
        raise ValueError(f"{name}: its log-SNR log(alpha/sigma) must fall with t on [eps, T]")
    back = sde.t_from_log_snr(lam)
    worst = int((back - t).abs().argmax())
    if abs(float(back[worst] - t[worst])) > 1e-6 * sde.T:
        raise ValueError(f"{name}: t_from_log_snr is not log_snr's inverse: t={float(t[worst]):.6g} -> log-SNR "
                         f"{float(lam[worst]):.6g} -> t={float(back[worst]):.6g}")
    if sde.drift_jumps:
        return
    # a step and tolerance that hold for functions computed in float32 too (a sanity check: a missing square root
    # or a halved drift is off by far more than 1 %)
    inner, h = t[1:-1], (sde.T - sde.eps) * 1e-3
    up, down = inner + h, inner - h
    dlog_alpha = (sde.alpha(up).log() - sde.alpha(down).log()) / (2 * h)
    dvar = (sde.sigma(up) ** 2 - sde.sigma(down) ** 2) / (2 * h)
    f, g2, var = sde.f(inner), sde.g2(inner), sde.sigma(inner) ** 2
    for what, have, want in (("f(t)", f, dlog_alpha), ("g2(t)", g2, dvar - 2 * f * var)):
        bad = (have - want).abs() > rtol * (want.abs() + (2 * f * var).abs() + 1e-12)
        if bad.any():
            i = int(bad.nonzero()[0])
            rule = "d log alpha / dt" if what == "f(t)" else "d sigma^2 / dt - 2 f sigma^2"
            raise ValueError(f"{name}: {what} = {float(have[i]):.6g} at t={float(inner[i]):.4g}, but {rule} = "
                             f"{float(want[i]):.6g} there: the drift, diffusion and marginals must describe one SDE")
