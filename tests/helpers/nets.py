"""Small networks for tests, importable by `_target_` (tests/ is on the path)."""

import torch
from torch import nn

from lightning_sde.sde import VPSDE


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
