"""The Gaussian start (samplers/gaussian.py): the data's Gaussian fit, its closed-form flow against the ODE solved
numerically, the samplers that start with it (NFE, accuracy), its tuned grids, and bad input."""

import math

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


# --- gaussian_start_kl: where the Gaussian fit's KL bound reaches a budget in nats -----------------------------------


def kl_to_gaussian_fit_1d(mix: GaussianMixture, sde, t: float) -> float:
    """KL(p_t || N(its mean, its variance)) of a 1-D mixture, by quadrature on a fine grid."""
    t = torch.tensor(t, dtype=torch.float64)
    a, s = sde.alpha(t), sde.sigma(t)
    moments = mix.moments()
    mean, var = a * moments.mean[0], a**2 * moments.eigvals[0] + s**2
    x = torch.linspace(float(mean - 12 * var.sqrt()), float(mean + 12 * var.sqrt()), 200_001, dtype=torch.float64)
    log_p = mix.marginal_log_prob(sde, x[:, None], t.expand(len(x)))
    log_q = -0.5 * ((x - mean) ** 2 / var + torch.log(2 * torch.pi * var))
    return float(torch.trapezoid(log_p.exp() * (log_p - log_q), x))


@pytest.mark.parametrize("sde_name", SDES)
def test_kl_start_is_where_the_bound_reaches_the_budget_and_scales_with_the_dimension(sde_name):
    sde = SDES[sde_name]
    for dim in (1, 16, 256):
        moments = DataMoments.of_gaussian(torch.zeros(dim, dtype=torch.float64),
                                          0.5**2 * torch.eye(dim, dtype=torch.float64))
        for nats in (0.01, 0.3):
            t = torch.tensor(moments.start_time_kl(sde, nats), dtype=torch.float64)
            snr = lambda t: float(sde.alpha(t) ** 2 * 0.5**2 / sde.sigma(t) ** 2)  # noqa: E731
            # d equal directions: 1/2 d log(1 + snr) = nats, so the squared std ratio there is expm1(2 nats / d);
            # where the bound is already above the budget at T (VE's 50 is 100 stds at 256-D), the start is T
            target = math.expm1(2 * nats / dim)
            if snr(torch.tensor(sde.T, dtype=torch.float64)) >= target:
                assert float(t) == sde.T and (sde_name, dim, nats) == ("ve", 256, 0.01)
            else:
                assert snr(t) == pytest.approx(target, rel=1e-8)
    # one direction: the KL start at 1/2 log(1 + r^2) nats is the std-ratio start at r
    one = DataMoments.of_gaussian(torch.zeros(1, dtype=torch.float64), torch.eye(1, dtype=torch.float64) * 0.7)
    r = 0.3
    assert one.start_time_kl(sde, 0.5 * math.log1p(r**2)) == pytest.approx(
        one.start_time(sde, r), rel=1e-8)
    # the directions a low-rank fit leaves out count once each, at the shared residual variance
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    variances = torch.tensor([4.0, 2.0, 1.0] + [0.05] * 9, dtype=torch.float64)
    full = DataMoments.of_gaussian(torch.zeros(12, dtype=torch.float64), basis @ torch.diag(variances) @ basis.T)
    low = DataMoments(full.mean, variances[:3], basis[:, :3], residual_var=0.05)
    assert low.start_time_kl(sde, 0.2) == pytest.approx(full.start_time_kl(sde, 0.2), rel=1e-6)


def test_kl_start_bounds_the_true_kl_of_the_gaussian_fit():
    sde = SDES["vp"]
    mix = GaussianMixture(torch.tensor([[-1.0], [0.5], [2.0]], dtype=torch.float64),
                          stds=torch.tensor([[0.1], [0.3], [0.05]], dtype=torch.float64),
                          weights=torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    true = [kl_to_gaussian_fit_1d(mix, sde, mix.moments().start_time_kl(sde, nats)) for nats in (0.01, 0.1, 0.5)]
    assert all(0 < kl <= nats for kl, nats in zip(true, (0.01, 0.1, 0.5))), true
    assert true[0] < true[1] < true[2]


@pytest.mark.slow
def test_kl_start_keeps_the_sde_sampler_exact_where_the_std_ratio_start_is_biased():
    """64-D scale mixture (a narrow component holding most weight, rare wide ones): each direction's std ratio 0.3
    sums to ~2.8 nats over 64 directions, a start far from p_t that 50 stochastic steps do not repair; the KL start
    at 0.1 nats samples as exactly as independent exact sets do."""
    from lightning_sde.metrics.sliced import sliced_wasserstein

    d = 64
    stds = torch.tensor([0.15, 0.4, 0.43, 0.75, 1.0, 4.65, 6.8], dtype=torch.float64)
    weights = torch.tensor([0.64, 0.18, 0.063, 0.038, 0.043, 0.019, 0.0084], dtype=torch.float64)
    means = 0.09 * torch.randn(len(weights), d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scale = float((weights @ stds**2 + 0.0081) ** 0.5)
    mix = GaussianMixture(means / scale, stds=(stds / scale)[:, None].expand(-1, d).clone(), weights=weights)
    den = mix.denoiser(SDES["vp"])
    reference = mix.sample(10_000, torch.Generator().manual_seed(1))
    floor = [sliced_wasserstein(mix.sample(1000, torch.Generator().manual_seed(2 + i)), reference) for i in range(4)]
    w2 = {}
    for label, start in {"ratio": {"gaussian_start": 0.3}, "kl": {"gaussian_start_kl": 0.1}}.items():
        x, info = sample(build_sampler("sde_dpmpp", steps=50, grid="karras", **start), den, range(1000),
                         dtype=torch.float64)
        assert info["nfe"] == 50
        w2[label] = sliced_wasserstein(x, reference)
    mean_floor = sum(floor) / len(floor)
    assert w2["kl"] < 1.15 * mean_floor and w2["ratio"] > 1.8 * mean_floor, (w2, floor)


def test_bad_gaussian_start_kl_input_fails_with_a_clear_error():
    den = eight_gaussians().denoiser(SDES["vp"])
    for bad in (0, -0.1, True, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="gaussian_start_kl must be a number of nats > 0"):
            build_sampler("unipc", steps=4, gaussian_start_kl=bad)
    with pytest.raises(ValueError, match=r"set one Gaussian start.*got both \(0.3, 0.1\)"):
        build_sampler("sde_dpmpp", steps=4, gaussian_start=0.3, gaussian_start_kl=0.1)
    with pytest.raises(ValueError, match="gaussian_start_kl=1000.0 is reached only after eps"):
        sample(build_sampler("unipc", steps=4, gaussian_start_kl=1e3), den, range(2))
    bare, _ = counting_denoiser(eight_gaussians(), "vp")
    with pytest.raises(ValueError, match="^ddim: gaussian_start_kl needs the data's mean and covariance"):
        sample(build_sampler("ddim", steps=4, gaussian_start_kl=0.1), bare, range(2))
    # a start at T when the bound is above the budget there already
    unit = DataMoments.of_gaussian(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    assert unit.start_time_kl(SDES["vp"], 1e-9) == SDES["vp"].T


def test_select_with_a_kl_start_compares_it_with_the_start_at_t():
    from lightning_sde.samplers.tuning import select_schedule

    den = eight_gaussians().denoiser(SDES["vp"])
    sampler = build_sampler("unipc", steps=6, grid="select", gaussian_start_kl=0.05)
    start, times, knobs, report = select_schedule(sampler, den, pilot=64)
    labels = set(report["pilot_rmse_by_choice"])
    assert {label.split(", ")[1] for label in labels} == {"gaussian_start_kl=None", "gaussian_start_kl=0.05"}
    kl_start = den.data_moments.start_time_kl(SDES["vp"], 0.05)
    assert start == (kl_start if knobs["gaussian_start_kl"] == 0.05 else SDES["vp"].T) and float(times[0]) == start


def test_select_runs_a_gaussian_start_that_resolves_to_t_once_as_the_start_at_t():
    """It ran the same candidates twice (80 of 433 pilot NFE on a 50-D mixture): the choice, its scores, its NFE."""
    from lightning_sde.samplers.tuning import select_schedule

    den = eight_gaussians().denoiser(SDES["vp"])
    assert den.data_moments.start_time_kl(SDES["vp"], 1e-9) == SDES["vp"].T
    *_, plain = select_schedule(build_sampler("unipc", steps=6, grid="select"), den, pilot=32)
    *_, both = select_schedule(build_sampler("unipc", steps=6, grid="select", gaussian_start_kl=1e-9), den, pilot=32)
    scores = both["pilot_rmse_by_choice"]
    assert both["pilot_nfe"] == plain["pilot_nfe"] and len(scores) == 2 * len(plain["pilot_rmse_by_choice"])
    for label, score in plain["pilot_rmse_by_choice"].items():
        grid = label.split(",")[0]
        assert scores[f"{grid}, gaussian_start_kl=None"] == scores[f"{grid}, gaussian_start_kl=1e-09"] == score


def test_a_tuned_grid_says_before_its_pilot_that_it_tunes_first(caplog):
    """lsde-sample's default sampler ran its pilot (minutes on a 32x32 model) behind a 0 % progress bar, unannounced."""
    import logging

    from lightning_sde.sde import VPSDE

    caplog.set_level(logging.INFO, "lightning_sde.samplers.tuning")
    sampler = build_sampler("unipc", steps=4, grid="select", pilot=16)
    sample(sampler, eight_gaussians().denoiser(VPSDE()), range(4))
    said = [r.getMessage() for r in caplog.records]
    assert "unipc, 4 steps, grid=select: tuned first on a pilot of 16 rows against dopri5 at 1e-06" in said[0]
    assert said[-1].startswith("selected ")  # announced before, reported after
