"""Gaussian mixtures: data whose every diffused marginal, score and denoiser is known in closed form.

If x_0 ~ sum_k w_k N(mu_k, S_k) and x_t = alpha x_0 + sigma z, then
  p_t = sum_k w_k N(alpha mu_k, alpha^2 S_k + sigma^2 I).
With S_k = U_k diag(s_k) U_k^T factored once, every covariance of p_t is U_k diag(alpha^2 s_k + sigma^2) U_k^T:
log-densities and scores need no inverse per call, and responsibilities go through logsumexp.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_sde.errors import check_int
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.models.moments import DataMoments
from lightning_sde.sde import SDE, broadcast_time


class GaussianMixture:
    """sum_k weights_k N(means_k, covs_k); covs are (K, d, d) matrices, or (K, d) standard deviations (diagonal);
    weights are normalised to sum to 1."""

    def __init__(self, means, covs=None, stds=None, weights=None, labels=None, dtype=torch.float64):
        means = torch.as_tensor(means, dtype=dtype)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, d); got {tuple(means.shape)}")
        if not torch.isfinite(means).all():
            raise ValueError("means must be finite")
        K, d = means.shape
        if (covs is None) == (stds is None):
            raise ValueError("give exactly one of covs (K, d, d) or stds (K, d) / (K,)")
        if stds is not None:
            stds = torch.as_tensor(stds, dtype=dtype)
            if stds.shape not in ((K,), (K, d)) or not ((stds > 0) & torch.isfinite(stds)).all():
                raise ValueError(f"stds must be positive and finite with shape (K,) or (K, d) = ({K}, {d}); "
                                 f"got {tuple(stds.shape)}")
            stds = stds[:, None].expand(K, d) if stds.ndim == 1 else stds
            eigvals, eigvecs = stds**2, torch.eye(d, dtype=dtype).expand(K, d, d).clone()
        else:
            covs = torch.as_tensor(covs, dtype=dtype)
            if covs.shape != (K, d, d):
                raise ValueError(f"covs must have shape (K, d, d) = ({K}, {d}, {d}); got {tuple(covs.shape)}")
            if not torch.isfinite(covs).all():
                raise ValueError("covs must be finite")
            rounding = 100 * torch.finfo(covs.dtype).eps * float(covs.abs().max())  # conditional()'s own products
            if not torch.allclose(covs, covs.transpose(-1, -2), rtol=0, atol=rounding):
                raise ValueError("covs must be symmetric")
            eigvals, eigvecs = torch.linalg.eigh(0.5 * (covs + covs.transpose(-1, -2)))
            if not (eigvals > 0).all():
                raise ValueError("covs must be positive definite")
        weights = torch.full((K,), 1.0 / K, dtype=dtype) if weights is None else torch.as_tensor(weights, dtype=dtype)
        if weights.shape != (K,) or not ((weights > 0) & torch.isfinite(weights)).all():
            raise ValueError(f"weights must be {K} positive finite numbers; got {weights.tolist()}")
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != (K,) or labels.is_floating_point() or not (labels >= 0).all():
                raise ValueError(f"labels must be {K} class indices >= 0, one per component; got {labels.tolist()}")
            missing = sorted(set(range(int(labels.max()) + 1)) - set(labels.tolist()))
            if missing:
                raise ValueError(f"labels must use every class from 0 to their maximum; classes {missing} have no "
                                 "component")
            labels = labels.long()
        self.labels = labels  # (K,) the class of each component, or None (unlabelled)
        self.means = means
        self.eigvals = eigvals  # (K, d)
        self.eigvecs = eigvecs  # (K, d, d); columns are eigenvectors
        self.log_weights = (weights / weights.sum()).log()
        self.dim = d

    @property
    def num_classes(self) -> int | None:
        return None if self.labels is None else int(self.labels.max()) + 1

    def conditional(self, label: int) -> "GaussianMixture":
        """p(x | y = label): the components of that class, their weights renormalised."""
        if self.labels is None or not 0 <= label < self.num_classes:
            raise ValueError(f"no class {label!r} in this mixture (classes: {self.num_classes})")
        keep = self.labels == label
        return GaussianMixture(self.means[keep], covs=self.covs[keep], weights=self.log_weights[keep].exp(),
                               labels=torch.zeros(int(keep.sum()), dtype=torch.long), dtype=self.means.dtype)

    def class_weights(self) -> Tensor:
        """p(y) of each class."""
        return torch.zeros(self.num_classes, dtype=self.means.dtype).index_add_(0, self.labels, self.log_weights.exp())

    def sample_labelled(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n samples (the same as sample(n) from the same generator state) and their class labels."""
        if self.labels is None:
            raise ValueError("this mixture has no labels")
        x, k = self._draw(n, generator)
        return x, self.labels[k]

    def _draw(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=self.means.dtype, generator=generator)
        return self.means[k] + torch.einsum("nde,ne->nd", self.eigvecs[k], self.eigvals[k].sqrt() * z), k

    def given(self, known, values) -> "GaussianMixture":
        """p(x_unknown | x_known = values): a mixture over the other coordinates (in their order) whose components
        are the components' Gaussian conditionals, reweighted by how likely each makes the known values."""
        known = torch.as_tensor(known, dtype=torch.bool)
        values = torch.as_tensor(values, dtype=self.means.dtype)
        if known.shape != (self.dim,) or not known.any() or known.all() or values.shape != (int(known.sum()),):
            raise ValueError(f"known must mark some but not all of {self.dim} coordinates, values one per marked one")
        k, u = known.nonzero().flatten(), (~known).nonzero().flatten()
        covs = self.covs
        s_kk, s_uk, s_uu = covs[:, k][:, :, k], covs[:, u][:, :, k], covs[:, u][:, :, u]
        gain = torch.linalg.solve(s_kk, s_uk.transpose(-1, -2)).transpose(-1, -2)  # S_uk S_kk^-1
        delta = values - self.means[:, k]
        means = self.means[:, u] + torch.einsum("kuj,kj->ku", gain, delta)
        cond_covs = s_uu - gain @ s_uk.transpose(-1, -2)
        log_lik = torch.distributions.MultivariateNormal(self.means[:, k], s_kk).log_prob(values)
        log_w = self.log_weights + log_lik
        weights = torch.softmax(log_w, 0).clamp_min(torch.finfo(log_w.dtype).tiny)  # far components: ~0, not 0
        return GaussianMixture(means, covs=cond_covs, weights=weights, labels=None,
                               dtype=self.means.dtype)

    @property
    def covs(self) -> Tensor:
        return self.eigvecs @ torch.diag_embed(self.eigvals) @ self.eigvecs.transpose(-1, -2)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self._draw(n, generator)[0]

    def _components(self, x: Tensor, alpha: Tensor, sigma: Tensor):
        """Per-component log-density terms at x of the diffused mixture; alpha, sigma of shape (B,) or ()."""
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor; got {x.dtype}")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be a batch of points of shape (N, {self.dim}); got {tuple(x.shape)}")
        means, vecs = self.means.to(x), self.eigvecs.to(x)
        a = broadcast_time(alpha, x)[..., None]  # (B, 1, 1) or ()
        s = broadcast_time(sigma, x)[..., None]
        var = a**2 * self.eigvals.to(x) + s**2  # (B, K, d): eigenvalues of the diffused covariances
        y = torch.einsum("bkd,kde->bke", x[:, None, :] - a * means, vecs)  # coordinates in each eigenbasis
        log_comp = (
            self.log_weights.to(x)
            - 0.5 * (y**2 / var).sum(-1)
            - 0.5 * var.log().sum(-1)
            - 0.5 * self.dim * math.log(2 * math.pi)
        )
        return log_comp, y, var

    def _coefficient(self, value) -> Tensor:
        """alpha or sigma as a tensor; a Python number in the mixture's dtype (as_tensor would make it float32)."""
        return value if torch.is_tensor(value) else torch.tensor(value, dtype=self.means.dtype)

    def log_prob(self, x: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """log p(x) of the mixture diffused to x = alpha x_0 + sigma z (the data itself by default)."""
        log_comp, _, _ = self._components(x, self._coefficient(alpha), self._coefficient(sigma))
        return torch.logsumexp(log_comp, dim=-1)

    def score(self, x: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """grad_x log p(x) of the diffused mixture: -sum_k r_k(x) C_k^{-1} (x - alpha mu_k)."""
        log_comp, y, var = self._components(x, self._coefficient(alpha), self._coefficient(sigma))
        resp = torch.softmax(log_comp, dim=-1)
        # Weight first, then one contraction: a three-operand einsum here builds a (B, K, d, d) temporary.
        return -torch.einsum("kde,bke->bd", self.eigvecs.to(x), resp[..., None] * y / var)

    def marginal_log_prob(self, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
        return self.log_prob(x, sde.alpha(t), sde.sigma(t))

    def marginal_score(self, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
        return self.score(x, sde.alpha(t), sde.sigma(t))

    def denoiser(self, sde: SDE) -> Denoiser:
        """The exact score of p_t as a Denoiser, interchangeable with a trained network; for a labelled mixture a
        class-conditional one (net(x, t, y): p_t(x | y), and p_t(x) for the null label y = num_classes)."""
        return Denoiser(ExactScore(self, sde), sde, parameterization="score", shape=(self.dim,),
                        data_moments=self.moments(), num_classes=self.num_classes)

    def moments(self) -> DataMoments:
        """The mixture's exact mean and covariance (law of total covariance)."""
        p = self.log_weights.exp()
        mean = p @ self.means
        centred = self.means - mean
        cov = torch.einsum("k,kde->de", p, self.covs) + torch.einsum("k,kd,ke->de", p, centred, centred)
        return DataMoments.of_gaussian(mean, cov)


class ExactScore(nn.Module):
    """net(x, t) = grad log p_t(x) of a GaussianMixture under an SDE; net(x, t, y) = grad log p_t(x | y) per row
    of a labelled one (y = num_classes: the unconditional score, as a network trained with label dropout)."""

    def __init__(self, mixture: GaussianMixture, sde: SDE):
        super().__init__()
        self.mixture = mixture
        self.sde = sde
        self._by_class: dict[int, GaussianMixture] = {}

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if y is None:
            return self.mixture.marginal_score(self.sde, x, t)
        out = self.mixture.marginal_score(self.sde, x, t)  # the null label's rows keep the unconditional score
        labels = y.unique().tolist()
        if any(label > self.mixture.num_classes for label in labels):
            raise ValueError(f"labels must lie in 0..{self.mixture.num_classes} ({self.mixture.num_classes}: the null "
                             f"label); got {[label for label in labels if label > self.mixture.num_classes]}")
        for label in labels:
            if label < self.mixture.num_classes:
                if label not in self._by_class:
                    self._by_class[label] = self.mixture.conditional(label)
                rows = y == label
                out[rows] = self._by_class[label].marginal_score(self.sde, x[rows], t[rows])
        return out

    def fingerprint_tensors(self) -> tuple[Tensor, ...]:
        m = self.mixture
        return (m.means, m.eigvals, m.eigvecs, m.log_weights) + (() if m.labels is None else (m.labels,))


# --- built-in problems ---------------------------------------------------------------------------


def _check_scale(problem: str, key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{problem}: {key} must be a finite number > 0; got {value!r}")


def eight_gaussians(radius: float = 4.0, labels=None) -> GaussianMixture:
    """Means on a circle of radius 4, std_k = 0.1 + 0.4 k / 7 (unequal widths), equal weights; `labels`: the class
    of each component (a labelled mixture: exact p(x | y), e.g. problem.labels=[0,1,2,3,4,5,6,7])."""
    _check_scale("eight_gaussians", "radius", radius)
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    stds = 0.1 + 0.4 * torch.arange(8, dtype=torch.float64) / 7
    return GaussianMixture(means, stds=stds, labels=labels)


def gaussians_1d() -> GaussianMixture:
    """Three 1-D modes of unequal width and weight: the chapter's figures of p_t over (t, x)."""
    means = torch.tensor([[-2.5], [0.5], [2.5]], dtype=torch.float64)
    stds = torch.tensor([[0.25], [0.4], [0.15]], dtype=torch.float64)
    return GaussianMixture(means, stds=stds, weights=torch.tensor([0.3, 0.45, 0.25], dtype=torch.float64))


def swiss_roll(n_components: int = 24, tangent_std: float = 0.35, normal_std: float = 0.08) -> GaussianMixture:
    """Components along a spiral r = theta (scaled into about [-4, 4]^2), each elongated along the spiral."""
    check_int("swiss_roll", "n_components", n_components, 1)
    _check_scale("swiss_roll", "tangent_std", tangent_std)
    _check_scale("swiss_roll", "normal_std", normal_std)
    theta = torch.linspace(1.5 * math.pi, 4.5 * math.pi, n_components, dtype=torch.float64)
    scale = 4.0 / (4.5 * math.pi)
    means = scale * theta[:, None] * torch.stack([theta.cos(), theta.sin()], dim=1)
    tangent = torch.stack([theta.cos() - theta * theta.sin(), theta.sin() + theta * theta.cos()], dim=1)
    tangent = tangent / tangent.norm(dim=1, keepdim=True)
    normal = torch.stack([-tangent[:, 1], tangent[:, 0]], dim=1)
    basis = torch.stack([tangent, normal], dim=2)  # (K, 2, 2), columns tangent and normal
    variances = torch.tensor([tangent_std**2, normal_std**2], dtype=torch.float64)
    covs = basis @ torch.diag(variances) @ basis.transpose(1, 2)
    return GaussianMixture(means, covs=covs, weights=theta / theta.sum())  # outer turns hold more mass


def random_mixture(dim: int = 16, n_components: int = 10, seed: int = 0, labels=None) -> GaussianMixture:
    """A seeded mixture with full, anisotropic covariances (stds 0.05-0.5) and unequal weights; `labels` as in
    eight_gaussians."""
    check_int("random_mixture", "dim", dim, 1)
    check_int("random_mixture", "n_components", n_components, 1)
    check_int("random_mixture", "seed", seed, 0)
    gen = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(n_components, dim, generator=gen, dtype=torch.float64)
    rotations, _ = torch.linalg.qr(torch.randn(n_components, dim, dim, generator=gen, dtype=torch.float64))
    log_std = math.log(0.05) + (math.log(0.5) - math.log(0.05)) * torch.rand(n_components, dim, generator=gen,
                                                                              dtype=torch.float64)
    covs = rotations @ torch.diag_embed((2 * log_std).exp()) @ rotations.transpose(1, 2)
    weights = 0.5 + torch.rand(n_components, generator=gen, dtype=torch.float64)
    return GaussianMixture(means, covs=covs, weights=weights, labels=labels)


PROBLEMS = {"gaussians_1d": gaussians_1d, "eight_gaussians": eight_gaussians, "swiss_roll": swiss_roll,
            "random_mixture": random_mixture}


def build_mixture(name: str, **params) -> GaussianMixture:
    if name not in PROBLEMS:
        raise ValueError(f"unknown mixture problem {name!r}; choose one of {sorted(PROBLEMS)}")
    return PROBLEMS[name](**params)
