"""Probability-flow ODE as a bijection, against the exact mixture: likelihoods, Hutchinson, encode/decode, slerp,
and reproducibility of deterministic sampling across processes and batch sizes."""

import math
import re

import pytest
import torch

from lightning_sde.exact import GaussianMixture, eight_gaussians, random_mixture
from lightning_sde.flow import ODEOptions, bits_per_dim, decode, encode, log_likelihood, slerp
from lightning_sde.sde import build_sde

TIGHT = ODEOptions("dopri5", rtol=1e-9, atol=1e-9)
SDES = {"vp": {}, "subvp": {}, "ve": {"sigma_max": 30.0}}


def points(mixture, n=48, seed=0):
    """Exact samples plus points off the data (between modes, far out): the identity must hold everywhere."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([mixture.sample(n, g), 3 * torch.randn(16, mixture.dim, generator=g, dtype=torch.float64)])


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_exact_divergence_likelihood_is_the_true_log_density(sde_name):
    sde = build_sde(sde_name, **SDES[sde_name])
    mixture = eight_gaussians()
    x = points(mixture)
    out = log_likelihood(mixture.denoiser(sde), x, TIGHT)
    T = torch.tensor(sde.T, dtype=torch.float64)
    truth = mixture.marginal_log_prob(sde, x, torch.tensor(sde.eps, dtype=torch.float64))
    # the only approximation besides the solver: the prior stands in for p_T at x_T
    mismatch = out["prior_logp"] - mixture.marginal_log_prob(sde, out["x_T"], T)
    assert torch.allclose(out["logp"] - mismatch, truth, atol=2e-5, rtol=0)
    assert (out["logp"] - truth).abs().max() <= mismatch.abs().max() + 2e-5  # the tolerance the prior sets
    assert out["nfe"] > 0 and torch.all(out["logp_se"] == 0)


@pytest.mark.slow
def test_hutchinson_agrees_with_the_exact_divergence_within_its_standard_error():
    sde = build_sde("vp")
    mixture = random_mixture(dim=8, n_components=4, seed=0)
    x = points(mixture, n=16)
    # the solve's error (against rtol 1e-9) << the 8 probes' SE: 6e-4 nats at most on the samples (SE ~0.8), 11 on the
    # points far out (SE ~120; at rtol 1e-3 it would be 191)
    opts = ODEOptions("dopri5", rtol=1e-4, atol=1e-4)
    exact = log_likelihood(mixture.denoiser(sde), x, opts)["logp"]
    for probe in ("rademacher", "gaussian"):
        hutch = log_likelihood(mixture.denoiser(sde), x, opts, divergence="hutchinson", probes=8, probe=probe,
                               generator=torch.Generator().manual_seed(1))
        # z ~ Student t with k - 1 = 7 degrees of freedom (the SE is itself estimated from the 8 probes)
        z = (hutch["logp"] - exact) / hutch["logp_se"]
        assert (z.abs() < 3.5).float().mean() >= 0.9, (probe, z)  # P(|t_7| > 3.5) = 1 %
        assert 0.3 < z.abs().median() < 1.5, (probe, z)  # median |t_7| = 0.71: the SE is the error's actual size


def gaussian_and_its_flow(sde):
    """(N(m, s^2 I), 32 of its samples x, their exact latents): p_t = N(alpha m, alpha^2 s^2 + sigma^2), and the flow
    keeps the standardised value."""
    m, s = torch.tensor([1.5, -0.5], dtype=torch.float64), 0.3
    gauss = GaussianMixture(m[None], stds=torch.full((1, 2), s, dtype=torch.float64),
                            weights=torch.ones(1, dtype=torch.float64))
    x = m + s * torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps, T = (torch.tensor(v, dtype=torch.float64) for v in (sde.eps, sde.T))
    scale = lambda t: torch.sqrt(sde.alpha(t) ** 2 * s**2 + sde.sigma(t) ** 2)  # noqa: E731
    return gauss, x, sde.alpha(T) * m + scale(T) * (x - sde.alpha(eps) * m) / scale(eps)


def test_encode_is_the_closed_form_flow_of_a_gaussian_and_decode_inverts_it():
    sde = build_sde("vp")
    gauss, x, expected = gaussian_and_its_flow(sde)
    z = encode(gauss.denoiser(sde), x, TIGHT)
    assert torch.allclose(z, expected, atol=1e-7)
    # on the data (off it, e.g. between modes, the backward flow is exponentially sensitive near the separatrices)
    mixture = eight_gaussians()
    x = mixture.sample(64, torch.Generator().manual_seed(1))
    roundtrip = decode(mixture.denoiser(sde), encode(mixture.denoiser(sde), x, TIGHT), TIGHT)
    assert (roundtrip - x).abs().max() < 1e-5


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun3", "rk4"])
def test_a_fixed_grid_flow_takes_the_steps_asked_for_and_converges_at_its_order(method):
    """encode through a fixed grid costs steps x the method's stages, and its error against the closed-form flow of a
    Gaussian falls as steps^-order (a grid of one step fewer than asked kept the NFE rule's count unseen)."""
    from lightning_sde.probability_flow import FIXED_METHODS

    sde = build_sde("vp")
    gauss, x, expected = gaussian_and_its_flow(sde)
    steps, errors = torch.tensor([16.0, 32.0, 64.0, 128.0], dtype=torch.float64), []
    for n in steps.int().tolist():
        den = gauss.denoiser(sde)
        z = encode(den, x, ODEOptions(method, steps=n))
        assert den.nfe == FIXED_METHODS[method] * n
        errors.append(float((z - expected).abs().max()))
    log_n, log_err = steps.log(), torch.tensor(errors, dtype=torch.float64).log()
    slope = -((log_n - log_n.mean()) * (log_err - log_err.mean())).sum() / ((log_n - log_n.mean()) ** 2).sum()
    order = {"euler": 1, "midpoint": 2, "heun3": 3, "rk4": 4}[method]  # fitted: 1.03, 1.81, 2.79, 4.07
    assert float(slope) == pytest.approx(order, abs=0.4), errors


def test_slerp_keeps_the_norm_of_equal_norm_latents_and_hits_both_ends():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    z1 = z1 * z0.norm() / z1.norm()
    path = slerp(z0, z1, 9)
    assert path.shape == (9, 3, 4, 4)
    assert torch.allclose(path[0], z0) and torch.allclose(path[-1], z1)
    assert torch.allclose(path.flatten(1).norm(dim=1), z0.norm().expand(9))


def test_bits_per_dim_of_a_known_density():
    # uniform density on [-1, 1]^D: log p = -D log 2, i.e. 1 bit/dim in x; + log2(256/2) for 8-bit data = 8 bits
    D = 3072
    logp = torch.tensor([-D * math.log(2)])
    assert torch.allclose(bits_per_dim(logp, D), torch.tensor([1.0]))
    assert torch.allclose(bits_per_dim(logp, D, offset=math.log2(128)), torch.tensor([8.0]))


@pytest.mark.parametrize("bad, message", [
    ({"divergence": "trace"}, "divergence must be one of"),
    ({"divergence": "hutchinson", "probes": 0}, "probes must be an integer >= 1"),
    ({"divergence": "hutchinson", "probe": "uniform"}, "probe must be one of"),
])
def test_bad_likelihood_options_are_rejected(bad, message):
    mixture = eight_gaussians()
    with pytest.raises(ValueError, match=message):
        log_likelihood(mixture.denoiser(build_sde("vp")), points(mixture), **bad)
    with pytest.raises(ValueError, match="unknown ODE method"):
        ODEOptions("rk45")


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "euler", "rtol": 0.5}, "ODEOptions: rtol=0.5 would be ignored: rtol/atol/error_norm apply to adaptive"),
    ({"method": "rk4", "error_norm": "batch"}, "ODEOptions: error_norm='batch' would be ignored"),
    ({"method": "dopri5", "steps": 3}, "ODEOptions: method 'dopri5' is adaptive and takes rtol/atol, not steps"),
])
def test_ode_options_a_method_would_ignore_are_refused(kwargs, message):
    """lsde-likelihood ode.method=euler ode.rtol=0.5 ran with rtol unused (and recorded it among its settings)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        ODEOptions(**kwargs)
    assert ODEOptions("euler").steps == 100 and ODEOptions("dopri5").steps is None
    assert ODEOptions("rk4", rtol=None, atol=None, error_norm=None) == ODEOptions("rk4")  # null: not used


def test_an_empty_batch_is_named_not_a_reshape_error():
    from lightning_sde.flow import decode, encode

    mixture = eight_gaussians()
    den, empty = mixture.denoiser(build_sde("vp")), torch.zeros(0, 2, dtype=torch.float64)
    for call in (lambda: encode(den, empty), lambda: decode(den, empty), lambda: log_likelihood(den, empty)):
        with pytest.raises(ValueError, match=r"an empty batch \(0 samples\)"):
            call()


def test_hutchinson_is_unbiased_with_a_standard_error_of_the_right_size_fast():
    """The fast twin of the test above (4-D, 12 points, 6 probes): each probe's estimate scatters around the exact
    divergence integral, the reported SE is their spread over sqrt(k), and a single probe has no SE."""
    sde = build_sde("vp")
    mixture = random_mixture(dim=4, n_components=3, seed=1)
    x = points(mixture, n=12)
    opts = ODEOptions("dopri5", rtol=1e-5, atol=1e-5)
    exact = log_likelihood(mixture.denoiser(sde), x, opts)
    assert torch.equal(exact["logp_se"], torch.zeros(len(x), dtype=torch.float64))
    for probe in ("rademacher", "gaussian"):
        hutch = log_likelihood(mixture.denoiser(sde), x, opts, divergence="hutchinson", probes=6, probe=probe,
                               generator=torch.Generator().manual_seed(3))
        z = (hutch["logp"] - exact["logp"]) / hutch["logp_se"]
        assert (hutch["logp_se"] > 0).all() and z.abs().max() < 6 and 0.25 < z.abs().median() < 2.5, (probe, z)
        torch.testing.assert_close(hutch["prior_logp"], exact["prior_logp"], rtol=1e-4, atol=1e-4)  # same latents
    one = log_likelihood(mixture.denoiser(sde), x, opts, divergence="hutchinson",  # one probe by default
                         generator=torch.Generator().manual_seed(3))
    assert torch.isnan(one["logp_se"]).all() and torch.isfinite(one["logp"]).all()
    assert exact["nfe"] > 10 and exact["x_T"].shape == x.shape
    torch.testing.assert_close(exact["logp"], exact["prior_logp"] + exact["delta"])


def test_a_discrete_schedule_is_solved_in_log_snr_accurately_and_cheaply():
    """f and g^2 of a DDPM schedule jump at its 1000 knots: in t dopri5 at 1e-6 spends 325 NFE for a 1.5e-2 encode
    error, 757 NFE for a 9e-4 decode (the `ode` sampler) and 1441 NFE for a 1.3e-2 nats likelihood; in log-SNR
    109 / 121 / 229 NFE and 7e-6, 6e-7, 5e-5 (these with the batch RMS error norm; the likelihood with the per-sample
    one, the default: 265 NFE, 3e-6). Truth: the closed-form flow of a Gaussian and the mixture's log p."""
    from lightning_sde.samplers import build_sampler
    from lightning_sde.sde import DiscreteVPSDE

    sde = DiscreteVPSDE(torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0))
    options = ODEOptions("dopri5", rtol=1e-6, atol=1e-6)
    gauss, x, z = gaussian_and_its_flow(sde)
    den = gauss.denoiser(sde)
    assert (encode(den, x, options) - z).abs().max() < 1e-4 and den.nfe < 200
    times = []
    x_eps, info = build_sampler("ode", rtol=1e-6, atol=1e-6)(gauss.denoiser(sde), z,
                                                            callback=lambda step: times.append(float(step["t"])))
    assert (x_eps - x).abs().max() < 1e-5 and info["nfe"] < 200 and info["n_accept"] > 3
    # the steps are reported in t, from T down to eps
    assert times == sorted(times, reverse=True) and sde.T > times[0] and times[-1] == sde.eps
    mixture = eight_gaussians()
    x = mixture.sample(32, torch.Generator().manual_seed(1))
    out = log_likelihood(mixture.denoiser(sde), x, options)
    eps, T = (torch.tensor(v, dtype=torch.float64) for v in (sde.eps, sde.T))
    mismatch = out["prior_logp"] - mixture.marginal_log_prob(sde, out["x_T"], T)
    assert (out["logp"] - mismatch - mixture.marginal_log_prob(sde, x, eps)).abs().max() < 5e-4
    assert out["nfe"] < 400


def test_flow_refuses_half_precision_and_integers_and_log_likelihood_carries_no_gradient():
    """bf16 encode/decode/likelihood were silently wrong (1.6 nats, a round trip off by 0.26); an integer tensor
    failed inside torchdiffeq; x with requires_grad gave logp a gradient of the prior at x_T alone, not d log p/dx."""
    mixture, sde = eight_gaussians(), build_sde("vp")
    x = mixture.sample(4, torch.Generator().manual_seed(0)).float()
    denoiser = mixture.denoiser(sde).float()
    for dtype in (torch.bfloat16, torch.float16, torch.int64):
        for call, what in ((encode, "x0"), (decode, "z"), (log_likelihood, "x")):
            with pytest.raises(TypeError, match=f"^{what} is {str(dtype)[6:]}: samplers and ODE solves step in"):
                call(denoiser, x.to(dtype))
    out = log_likelihood(denoiser, x.clone().requires_grad_(True))
    assert not any(torch.is_tensor(v) and v.requires_grad for v in out.values())


def test_what_takes_gradients_says_so_under_inference_mode():
    from lightning_sde.models.inpainting import inpainting
    from lightning_sde.samplers import build_sampler, sample

    mixture, sde = eight_gaussians(), build_sde("vp")
    denoiser = mixture.denoiser(sde)
    x = mixture.sample(4, torch.Generator().manual_seed(0))
    painted = inpainting(denoiser, torch.tensor([True, False]).expand(4, 2), x, method="reconstruction")
    calls = {"log_likelihood": lambda: log_likelihood(denoiser, x),
             "optimize_grid": lambda: sample(build_sampler("dpmpp", steps=4, grid="optimized", pilot=16), denoiser,
                                             seeds=range(4)),
             "inpainting method 'reconstruction'": lambda: sample(build_sampler("ddim", steps=4), painted,
                                                                  seeds=range(4))}
    with torch.inference_mode():
        for what, call in calls.items():
            with pytest.raises(RuntimeError, match=f"^{re.escape(what)}.* takes gradients, which "
                                                   r"torch.inference_mode\(\) forbids"):
                call()
    with torch.no_grad():
        assert torch.isfinite(log_likelihood(denoiser, x)["logp"]).all()


def test_the_likelihood_apps_probes_are_each_samples_own():
    """lsde-likelihood seeds each sample's Hutchinson probes by the run's seed and the sample's index: one point at
    three indices gets three different estimates (one shared probe made every error the same draw, so they did not
    average out over the samples), the same at any batch, and another seed draws others."""
    from lightning_sde.cli.likelihood import probe_generators

    sde = build_sde("vp")
    mixture = random_mixture(dim=16, n_components=3, seed=1)  # 2^15 sign patterns (4-D has 8 estimates)
    x = mixture.sample(1, torch.Generator().manual_seed(0)).repeat(3, 1)
    opts = ODEOptions("rk4", steps=12)

    def logp(indices, seed=0):
        return log_likelihood(mixture.denoiser(sde), x[: len(indices)], opts, divergence="hutchinson",
                              generator=probe_generators(seed, indices))["logp"]

    three = logp([0, 1, 2])
    assert len(set(three.tolist())) == 3, three
    torch.testing.assert_close(logp([2]), three[2:])  # alone, as in a batch of three
    assert (logp([0, 1, 2], seed=1) != three).all()
    draws = [torch.randn(4, generator=g[0]) for g in (probe_generators(1, [0]), probe_generators(0, [1]))]
    assert not torch.equal(*draws)  # seed 1's sample 0 is not seed 0's sample 1
