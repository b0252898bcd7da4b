"""Small rules with a sharp edge: the sampler registry, SDE and Denoiser arguments at their limits, the v
parameterisation where alpha^2 + sigma^2 != 1 (VE), and the order of a seed's noise stream."""

import pytest
import torch

from lightning_sde.models.denoiser import Denoiser, eps_to_target, output_to_eps
from lightning_sde.samplers import SAMPLERS
from lightning_sde.samplers.base import register
from lightning_sde.samplers.noise import BLOCK_STEPS, SeededNoise
from lightning_sde.sde import VESDE, VPSDE


def test_the_registry_names_each_class_once():
    @register("_test_only_sampler")
    class Dummy:
        pass

    try:
        assert SAMPLERS["_test_only_sampler"] is Dummy and Dummy.name == "_test_only_sampler"
        with pytest.raises(ValueError, match="registered twice"):
            register("_test_only_sampler")(type("Other", (), {}))
        assert SAMPLERS["_test_only_sampler"] is Dummy
    finally:
        SAMPLERS.pop("_test_only_sampler", None)


def test_a_beta_schedule_needs_beta_max_above_beta_min_and_sigma_data_must_be_positive():
    with pytest.raises(ValueError, match="beta"):
        VPSDE(beta_min=1.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        Denoiser(lambda x, t: x, VPSDE(), "eps", shape=(2,), sigma_data=0.0)


@pytest.mark.parametrize("parameterization", ["eps", "score", "x0", "v"])
def test_every_parameterisation_round_trips_to_eps_on_ve_where_alpha2_plus_sigma2_is_not_1(parameterization):
    sde = VESDE()
    gen = torch.Generator().manual_seed(0)
    x0, eps = (torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(2))
    t = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)[:, None]
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    assert not torch.allclose(alpha**2 + sigma**2, torch.ones_like(t))
    x = alpha * x0 + sigma * eps
    target = eps_to_target(parameterization, eps, x0, alpha, sigma)
    torch.testing.assert_close(output_to_eps(parameterization, target, x, alpha, sigma), eps)


def test_a_seeds_noise_comes_in_stream_order_after_its_prior_draw():
    """Call k returns the seed's (k+1)-th standard-normal draw (the first is the prior), across block boundaries."""
    shape = (2,)
    gen = torch.Generator().manual_seed(7)
    prior = torch.randn(shape, generator=gen)
    first_block = torch.randn((BLOCK_STEPS,) + shape, generator=gen)
    second_block = torch.randn((BLOCK_STEPS,) + shape, generator=gen)
    noise = SeededNoise([7], shape)
    draws = torch.stack([noise()[0] for _ in range(BLOCK_STEPS + 2)])
    torch.testing.assert_close(noise.prior()[0], prior)
    torch.testing.assert_close(draws, torch.cat([first_block, second_block[:2]]))
