"""EDM's stochastic sampler (heun with s_churn): against the exact marginals of a Gaussian, which every churn step
keeps (noise from sigma~ to sigma^ is exactly the forward process in x / alpha) and the probability-flow step carries;
churn off is the deterministic Heun bit for bit; the noise goes where s_tmin / s_tmax say, never above sigma~(T)."""

import math

import pytest
import torch

from helpers.convergence import GAUSSIAN, MU, S, alpha_sigma
from helpers.oracles import SDES, counting_denoiser
from lightning_sde.samplers import SeededNoise, build_sampler, sample, time_grid

N = 4000


def exact_x_T(sde_name: str, n: int) -> torch.Tensor:
    """Draws of the exact marginal at T (not the prior): the sampler's output then has the exact marginal at eps."""
    a, s = alpha_sigma(sde_name, SDES[sde_name].T)
    z = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(99))
    return a * MU + (a**2 * S**2 + s**2).sqrt() * z


def moments_error(sde_name: str, x: torch.Tensor) -> float:
    """The largest error of the samples' mean and std per coordinate against the marginal at eps, in standard
    errors (mean: std / sqrt(n); std: std / sqrt(2 n))."""
    a, s = alpha_sigma(sde_name, SDES[sde_name].eps)
    mean, std = a * MU[0], (a**2 * S[0] ** 2 + s**2).sqrt()
    se_mean, se_std = std / math.sqrt(len(x)), std / math.sqrt(2 * len(x))
    return max(((x.mean(0) - mean).abs() / se_mean).max().item(), ((x.std(0) - std).abs() / se_std).max().item())


@pytest.mark.parametrize("sde_name", list(SDES))
def test_churn_keeps_the_exact_marginals_of_a_gaussian(sde_name):
    den = GAUSSIAN.denoiser(SDES[sde_name])
    x_T = exact_x_T(sde_name, N)
    churned = build_sampler("heun", steps=96, s_churn=200.0)  # gamma at its cap sqrt(2) - 1 on every step
    x, info = churned(den, x_T, SeededNoise(range(N), (2,), dtype=torch.float64))
    assert info["nfe"] == 192
    assert moments_error(sde_name, x) < 4
    # the same check sees noise of the wrong size (s_noise 1.2: 44 % more variance at each step)
    louder = build_sampler("heun", steps=96, s_churn=200.0, s_noise=1.2)
    x, _ = louder(den, x_T, SeededNoise(range(N), (2,), dtype=torch.float64))
    assert moments_error(sde_name, x) > 8


def sigma_levels(sde, times):
    return (sde.sigma(times) / sde.alpha(times))[:-1]


class CountingNoise(SeededNoise):
    draws = 0

    def __call__(self):
        self.draws += 1
        return super().__call__()


@pytest.mark.parametrize("s_churn, s_tmin, s_tmax", [(5.0, 0.0, None), (5.0, 0.05, 2.0), (60.0, 1.0, 10.0)])
def test_churn_raises_the_levels_in_range_by_its_factor(s_churn, s_tmin, s_tmax):
    """Noise is drawn at the steps whose level is in range, and the first evaluation of each such step is at the
    level raised by 1 + gamma (EDM: gamma = min(s_churn / steps, sqrt(2) - 1)); the second ones at the steps' ends."""
    sde = SDES["vp"]
    den, net = counting_denoiser(GAUSSIAN, "vp")
    sampler = build_sampler("heun", steps=12, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax)
    times = time_grid(sde, 12, "karras")
    levels = sigma_levels(sde, times)
    top = float(sde.sigma(sde.T) / sde.alpha(sde.T))
    inside = [s_tmin <= lv <= (s_tmax or math.inf) and lv < top for lv in levels.tolist()]  # at T: no room above
    noise = CountingNoise(range(8), (2,), dtype=torch.float64)
    sampler(den, sde.prior_sample(noise.prior()), noise)
    assert noise.draws == sum(inside) >= 1
    queried = torch.stack([t[0] for t in net.times]).double()
    assert torch.equal(queried[1::2], times[1:])  # each step's second evaluation: at its end
    raised = sigma_levels(sde, torch.cat([queried[0::2], times[-1:]]))
    gamma = min(s_churn / 12, math.sqrt(2) - 1)
    expected = torch.where(torch.tensor(inside), (1 + gamma) * levels, levels)
    torch.testing.assert_close(raised, expected, rtol=1e-9, atol=0)


def test_churn_off_or_out_of_range_is_the_deterministic_heun_bit_for_bit():
    sde = SDES["vp"]
    den = GAUSSIAN.denoiser(sde)
    plain, _ = sample(build_sampler("heun", steps=10), den, range(64), dtype=torch.float64)
    assert not build_sampler("heun", s_churn=0.0).stochastic and build_sampler("heun", s_churn=0.5).stochastic
    top = float(sde.sigma(sde.T) / sde.alpha(sde.T))
    for bounds in ({"s_tmin": 1e6}, {"s_tmax": 1e-9}, {"s_tmin": top}):  # the last: only T, where none is added
        churned, _ = sample(build_sampler("heun", steps=10, s_churn=8.0, **bounds), den, range(64),
                            dtype=torch.float64)
        assert torch.equal(churned, plain), bounds
    churned, _ = sample(build_sampler("heun", steps=10, s_churn=8.0), den, range(64), dtype=torch.float64)
    assert not torch.allclose(churned, plain, atol=1e-3)


def test_churn_samples_depend_on_their_seed_only():
    den = GAUSSIAN.denoiser(SDES["ve"])
    sampler = build_sampler("heun", steps=15, s_churn=10.0)
    a, _ = sample(sampler, den, range(10), dtype=torch.float64)
    part, _ = sample(sampler, den, [7, 3, 4], dtype=torch.float64)
    torch.testing.assert_close(part, a[[7, 3, 4]], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="is stochastic: pass noise"):
        sampler(den, torch.zeros(2, 2, dtype=torch.float64))


def test_churn_knobs_join_the_result_key_only_when_set():
    assert set(build_sampler("heun").params()) == set(build_sampler("heun", s_churn=0.0, s_noise=1.0).params())
    assert not {"s_churn", "s_tmin", "s_tmax", "s_noise"} & set(build_sampler("heun").params())
    params = build_sampler("heun", s_churn=30.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003).params()
    assert (params["s_churn"], params["s_tmin"], params["s_tmax"], params["s_noise"]) == (30.0, 0.05, 50.0, 1.003)


@pytest.mark.parametrize("params, message", [
    ({"s_churn": -1.0}, "s_churn must be a finite number >= 0"),
    ({"s_churn": math.inf}, "s_churn must be a finite number >= 0"),
    ({"s_churn": "40"}, "s_churn must be a finite number >= 0"),
    ({"s_churn": True}, "s_churn must be a finite number >= 0; got True"),  # sampler.s_churn=true
    ({"s_noise": 0.0}, "s_noise must be > 0"),
    ({"s_tmin": -0.1}, "s_tmin must be a finite number >= 0"),
    ({"s_tmax": math.nan}, "s_tmax must be a finite number >= 0"),
    ({"s_tmin": 2.0, "s_tmax": 1.0}, r"s_tmax \(1.0\) is below s_tmin \(2.0\)"),
    ({"s_churn": 10.0, "grid": "select"}, "tunes deterministic samplers"),
])
def test_bad_churn_knobs_are_refused_when_built(params, message):
    with pytest.raises(ValueError, match=message):
        build_sampler("heun", **params)
