"""The Gaussian start (samplers/gaussian.py): the data's Gaussian fit, its closed-form flow against the ODE solved
numerically, the samplers that start with it (NFE, accuracy), its tuned grids, and bad input."""

import pytest
import torch

from helpers.oracles import SDES, counting_denoiser, rmse
from lightning_sde.exact import GaussianMixture, eight_gaussians
from lightning_sde.models.moments import DataMoments
from lightning_sde.samplers import build_sampler, optimize_grid, sample


def rotated_gaussian(dim=3, seed=0) -> GaussianMixture:
    gen = torch.Generator().manual_seed(seed)
    rot, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
    cov = rot @ torch.diag(torch.tensor([0.05, 0.6, 2.0], dtype=torch.float64) ** 2) @ rot.T
    return GaussianMixture(torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64), covs=cov[None])


@pytest.mark.parametrize("sde_name", SDES)
def test_flow_is_the_solution_of_the_gaussians_probability_flow_ode(sde_name):
    sde = SDES[sde_name]
    gauss = rotated_gaussian()
    den = gauss.denoiser(sde)
    x_T = sde.prior_sample(torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    solved, _ = build_sampler("ode", rtol=1e-11, atol=1e-11)(den, x_T)
    moments = den.data_moments
    assert rmse(moments.flow(x_T, sde, sde.T, sde.eps), solved) < 1e-7 * (1 + solved.abs().max().item())
    t1 = 0.3 * sde.T
    two_legs = moments.flow(moments.flow(x_T, sde, sde.T, t1), sde, t1, sde.eps)
    assert rmse(two_legs, moments.flow(x_T, sde, sde.T, sde.eps)) < 1e-10 * (1 + solved.abs().max().item())


def test_mixture_moments_match_its_samples_and_low_rank_moments_match_full_ones():
    mix = eight_gaussians()
    x = mix.sample(400_000, torch.Generator().manual_seed(0))
    exact, empirical = mix.moments(), DataMoments.of_samples(x)
    cov = lambda m: m.eigvecs @ torch.diag(m.eigvals) @ m.eigvecs.T  # noqa: E731
    assert torch.allclose(exact.mean, empirical.mean, atol=0.02)
    assert torch.allclose(cov(exact), cov(empirical), atol=0.05)
    # 12-D data: 3 strong directions and an isotropic rest; rank 3 keeps the rest as one shared variance
    gen = torch.Generator().manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    stds = torch.tensor([3.0, 2.0, 1.5] + [0.3] * 9, dtype=torch.float64)
    data = (torch.randn(200_000, 12, generator=gen, dtype=torch.float64) * stds) @ basis.T + 1.0
    full, low = DataMoments.of_samples(data), DataMoments.of_samples(data, rank=3)
    assert low.eigvecs.shape == (12, 3) and low.residual_var == pytest.approx(0.09, rel=0.02)
    y = SDES["vp"].prior_sample(torch.randn(100, 12, generator=gen, dtype=torch.float64))
    assert rmse(low.flow(y, SDES["vp"], 1.0, 0.2), full.flow(y, SDES["vp"], 1.0, 0.2)) < 0.01


def test_gaussian_start_costs_no_nfe_and_lowers_the_error_on_eight_gaussians():
    sde = SDES["vp"]
    mix = eight_gaussians()
    den, net = counting_denoiser(mix, "vp")
    den.data_moments = mix.moments()
    seeds = range(1024)
    ref = sample(build_sampler("ode", rtol=1e-9, atol=1e-9), eight_gaussians().denoiser(sde), seeds,
                 dtype=torch.float64)[0]
    errors = {}
    for ratio in (None, 0.15):
        net.calls, net.times = 0, []
        x, info = sample(build_sampler("unipc", steps=10, order=3, grid="uniform", gaussian_start=ratio), den, seeds,
                         dtype=torch.float64)
        assert info["nfe"] == net.calls == 10
        t_start = den.data_moments.start_time(sde, ratio) if ratio else sde.T
        assert float(net.times[0][0]) == pytest.approx(t_start, rel=1e-12)
        errors[ratio] = rmse(x, ref)
    # measured on 3 x 4096 seeds: 0.111 -> 0.091 (RMSE per dimension); the Gaussian carries x_T to t* = 0.76
    assert 0.6 < den.data_moments.start_time(sde, 0.15) < 0.9
    assert errors[0.15] < 0.9 * errors[None], errors


@pytest.mark.slow
def test_optimized_grid_starts_at_the_gaussian_start_and_powell_improves_the_pilot():
    sde = SDES["vp"]
    den = eight_gaussians().denoiser(sde)
    sampler = build_sampler("unipc", steps=8, order=3, grid="uniform", gaussian_start=0.15)
    times, report = optimize_grid(sampler, den, pilot=128, iters=60, method="powell")
    assert len(times) == 9 and sde.eps < float(times[-2]) and float(times[-1]) == sde.eps
    assert float(times[0]) == pytest.approx(den.data_moments.start_time(sde, 0.15)), "the grid starts at t* = 0.76"
    assert bool((times[1:] < times[:-1]).all()) and report["method"] == "powell"
    assert report["pilot_rmse_final"] < report["pilot_rmse_init"]
    assert den.nfe == report["pilot_nfe"] > 0, "the Denoiser counts every forward; the report names the pilot's"
    x, info = sample(build_sampler("unipc", steps=8, order=3, times=times.tolist(), gaussian_start=0.15), den, range(8))
    assert info["nfe"] == 8 and x.shape == (8, 2)


def test_bad_gaussian_start_input_fails_with_a_clear_error():
    sde = SDES["vp"]
    den = eight_gaussians().denoiser(sde)
    with pytest.raises(ValueError, match="gaussian_start must be a ratio > 0"):
        build_sampler("unipc", steps=4, gaussian_start=0)
    with pytest.raises(ValueError, match="reached only after eps"):
        sample(build_sampler("unipc", steps=4, gaussian_start=1e4), den, range(2))
    with pytest.raises(ValueError, match="times must run from the start time 1.0"):  # a late start needs gaussian_start
        sample(build_sampler("unipc", steps=2, times=[0.8, 0.5, 1e-3]), den, range(2))
    with pytest.raises(ValueError, match="times must run from the start time 0.7"):  # the grid starts at t*, not T
        sample(build_sampler("unipc", steps=2, times=[1.0, 0.5, 1e-3], gaussian_start=0.15), den, range(2))
    bare, _ = counting_denoiser(eight_gaussians(), "vp")
    with pytest.raises(ValueError, match="needs the data's mean and covariance"):
        sample(build_sampler("ddim", steps=4, gaussian_start=0.15), bare, range(2))
    with pytest.raises(ValueError, match="method must be 'adam' or 'powell'"):
        optimize_grid(build_sampler("unipc", steps=4), den, pilot=4, iters=1, method="lbfgs")
    with pytest.raises(ValueError, match="at least 2 samples"):
        DataMoments.of_samples(torch.zeros(1, 3))
