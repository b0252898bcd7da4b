"""The adaptive ODE's error norm for encode / decode / likelihood: each sample held to the tolerance (worst_sample,
the default), so a sample's result does not depend on how many easy samples share its batch."""

import math

import pytest
import torch
from torch import nn

from lightning_sde.probability_flow import ODEOptions, worst_sample_norm
from lightning_sde.sde import DiscreteVPSDE


class OneOscillates(nn.Module):
    """dx/dt = cos(30 t) for sample 0 (x(1) = sin(30) / 30 from x(0) = 0), 0 for every other sample."""

    def forward(self, t, x):
        drift = torch.zeros_like(x)
        drift[0] = torch.cos(30 * t)
        return drift


def endpoint_error(batch: int, error_norm: str, sde=None) -> float:
    """Sample 0's error at t1, from t0 = 0 to t1 = 1 (or sde.eps to sde.T, solved in the SDE's log-SNR when its
    drift jumps)."""
    t0, t1 = (0.0, 1.0) if sde is None else (sde.eps, sde.T)
    x0 = torch.zeros(batch, 3, dtype=torch.float64)
    x1 = ODEOptions("dopri5", rtol=1e-4, atol=1e-4, error_norm=error_norm).solve(OneOscillates(), x0, t0, t1, "cpu",
                                                                                  sde)[-1]
    exact = (math.sin(30 * t1) - math.sin(30 * t0)) / 30
    return float((x1[0] - exact).abs().max())


DDPM = DiscreteVPSDE(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))  # its drift jumps


@pytest.mark.parametrize("sde", [None, DDPM], ids=["in t", "in log-SNR"])
def test_a_samples_error_does_not_grow_with_the_easy_samples_beside_it(sde):
    alone, crowded = endpoint_error(1, "worst_sample", sde), endpoint_error(400, "worst_sample", sde)
    assert crowded == alone  # the same steps: the others add nothing to the largest sample's error
    # the batch RMS divides sample 0's error by sqrt(400), so it takes other steps (in t: 160x the error)
    batch_alone, batch_crowded = endpoint_error(1, "batch", sde), endpoint_error(400, "batch", sde)
    assert batch_crowded != batch_alone and (sde is not None or batch_crowded > 5 * batch_alone)


def test_the_worst_sample_norm_is_the_largest_per_sample_rms_over_a_tuple_state():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 1.0]])  # per-sample RMS 3.536, 0, 1
    divs = torch.tensor([[0.0], [5.0], [0.0]])  # per-sample 0, 5, 0
    assert float(worst_sample_norm(x)) == pytest.approx((12.5) ** 0.5)
    assert float(worst_sample_norm((x, divs))) == pytest.approx(5.0)


def test_an_unknown_error_norm_is_refused():
    with pytest.raises(ValueError, match=r"^ODEOptions: error_norm must be one of \['worst_sample', 'batch'\]"):
        ODEOptions(error_norm="max")
