"""Small networks for tests, importable by `_target_` (tests/ is on the path)."""

import torch
from torch import nn

from lightning_sde.sde import SDE, VPSDE


class NaNWhenSampling(nn.Module):
    """A linear eps-network that trains normally but returns NaN in eval mode: a model whose samples diverge."""

    def __init__(self, dim: int = 2):
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        return out if self.training else out * float("nan")



class OwnVP(VPSDE):
    """A user's SDE class: defined outside the package (trusted through $LSDE_TRUSTED_MODULES)."""


class ConstantBeta(SDE):
    """A user's SDE as README's recipe writes one (the six methods, no name): VP with beta(t) = 2."""

    def alpha(self, t):
        return torch.exp(-t)

    def sigma(self, t):
        return (-torch.expm1(-2 * t)).sqrt()

    def f(self, t):
        return -torch.ones_like(t)

    def g2(self, t):
        return 2 * torch.ones_like(t)

    def t_from_log_snr(self, lam):
        return 0.5 * torch.nn.functional.softplus(-2 * lam)

    @property
    def prior_std(self) -> float:
        return 1.0
