"""Sequential Monte Carlo inpainting against exact conditionals of Gaussian mixtures (GaussianMixture.given)."""

from __future__ import annotations

import pytest
import torch

from lightning_sde.exact import eight_gaussians
from lightning_sde.metrics.sliced import sliced_wasserstein
from lightning_sde.models.guidance import guided
from lightning_sde.models.inpainting import inpainting
from lightning_sde.samplers.smc import smc_inpainting
from lightning_sde.sde import VESDE, VPSDE

F64 = torch.float64
KNOWN = torch.tensor([True, False])


def _values(n: int, x: float = 1.5) -> torch.Tensor:
    values = torch.zeros(n, 2, dtype=F64)
    values[:, 0] = x
    return values


def test_smc_removes_replacements_bias_on_a_multimodal_conditional():
    """8 Gaussians with x = 1.5 known: p(y | x) has its modes at y < 0 only (89 % / 11 %), but replacement puts about
    half its samples on the modes above. One particle is replacement itself; 32 reach the exact-sample floor
    (measured: W2 4.1 with one particle, 0.07 with 32 and 0.035 with 64 at 400 steps; floor 0.04)."""
    mix, n = eight_gaussians(), 1000
    exact = mix.given(KNOWN, torch.tensor([1.5], dtype=F64))
    ref = exact.sample(n, torch.Generator().manual_seed(1))
    floor = sliced_wasserstein(exact.sample(n, torch.Generator().manual_seed(2)), ref)
    den = inpainting(mix.denoiser(VPSDE()), KNOWN, _values(n))
    single, _ = smc_inpainting(den, range(n), particles=1, steps=400, dtype=F64)
    x, info = smc_inpainting(den, range(n), particles=32, steps=400, dtype=F64)
    assert float((single[:, 1] > 0).double().mean()) > 0.4  # the bias SMC must remove (the test can fail)
    assert torch.equal(x[:, 0], _values(n)[:, 0]) and float((x[:, 1] > 0).double().mean()) < 0.005
    assert sliced_wasserstein(x[:, 1:], ref) < 2.5 * floor
    lower = float((x[:, 1] < -3.5).double().mean())  # the 11 % mode at y = -4 (exact samples: 16.7 % below -3.5)
    assert abs(lower - float((ref[:, 0] < -3.5).double().mean())) < 0.05
    assert info["nfe"] == 400 and info["particles"] == 32 and info["batch_factor"] == 32 and info["resampled"] > 0


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_smc_is_seed_addressed(sde):
    den = inpainting(eight_gaussians().denoiser(sde), KNOWN, _values(6))
    x, _ = smc_inpainting(den, range(6), particles=4, steps=20, dtype=F64)
    part, _ = smc_inpainting(inpainting(eight_gaussians().denoiser(sde), KNOWN, _values(3)), [3, 4, 5],
                             particles=4, steps=20, dtype=F64)
    torch.testing.assert_close(part, x[3:], rtol=1e-9, atol=1e-9)
    assert torch.isfinite(x).all() and not torch.equal(x[3], x[4])


def test_smc_on_a_guided_model_follows_each_rows_class():
    """w = 0 with mixed labels: each row is what SMC gives on its class's own exact mixture (the particles of row b
    carry row b's label, also where a run's pilot classes are given: they took those, cycled)."""
    sde, n, labels = VPSDE(), 6, torch.tensor([0, 1, 1, 0, 1, 0])
    mix = eight_gaussians(labels=[0, 1] * 4)
    den = inpainting(guided(mix.denoiser(sde), labels, 0.0), KNOWN, _values(n, 1.0))
    x, info = smc_inpainting(den, range(n), particles=4, steps=30, dtype=F64)
    run = inpainting(guided(mix.denoiser(sde), labels, 0.0, pilot_labels=torch.tensor([1])), KNOWN, _values(n, 1.0))
    assert torch.equal(smc_inpainting(run, range(n), particles=4, steps=30, dtype=F64)[0], x)
    for c in (0, 1):
        rows = (labels == c).nonzero().flatten()
        own = inpainting(mix.conditional(c).denoiser(sde), KNOWN, _values(len(rows), 1.0))
        expect, _ = smc_inpainting(own, rows.tolist(), particles=4, steps=30, dtype=F64)
        torch.testing.assert_close(x[rows], expect, rtol=1e-6, atol=1e-6)
    assert info["nfe"] == 30


def test_smc_refuses_bad_input():
    den = inpainting(eight_gaussians().denoiser(VPSDE()), KNOWN, _values(2))
    with pytest.raises(ValueError, match="needs an inpainting"):
        smc_inpainting(eight_gaussians().denoiser(VPSDE()), range(2))
    with pytest.raises(ValueError, match="particles must be an integer >= 1"):
        smc_inpainting(den, range(2), particles=0)
    with pytest.raises(ValueError, match="ess_threshold must lie in"):
        smc_inpainting(den, range(2), ess_threshold=1.5)
    with pytest.raises(ValueError, match="unknown grid"):
        smc_inpainting(den, range(2), grid="cosine")
    with pytest.raises(ValueError, match="3 seeds but the denoiser holds values for 2"):
        smc_inpainting(den, range(3))


def test_inpainting_on_other_guidance_or_labels_is_tuned_apart():
    """The tuned-grid cache key of an inpainting denoiser left its base's guidance and labels out: two such batches
    with equal values shared one grid."""
    mix = eight_gaussians(labels=[0, 1] * 4)
    base = mix.denoiser(VPSDE())
    keys = {inpainting(guided(base, labels, w), KNOWN, _values(2, 1.0)).fingerprint()
            for labels, w in (([0, 1], 0.0), ([0, 1], 2.0), ([1, 1], 0.0))}
    assert len(keys) == 3
