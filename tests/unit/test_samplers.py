"""Samplers: NFE counted exactly, seed-addressed reproducibility, distributional accuracy, clear errors."""

import math

import pytest
import torch

from lightning_sde.exact import eight_gaussians
from lightning_sde.metrics import mmd, sliced_wasserstein
from lightning_sde.samplers import SAMPLERS, SeededNoise, build_sampler, sample, time_grid
from lightning_sde.sde import VESDE, VPSDE

MIX = eight_gaussians()

# (name, params, NFE rule) -- the documented cost of each sampler for `steps` steps.
NFE_RULES = [
    ("euler_maruyama", {"steps": 7}, 7),
    ("reverse_diffusion", {"steps": 7}, 7),
    ("pc", {"steps": 7, "corrector_steps": 2}, 7 * (1 + 2)),
    ("pc", {"steps": 7, "predictor": "none", "corrector_steps": 1}, 7),
    ("ancestral", {"steps": 7}, 7),
    ("ddim", {"steps": 7, "eta": 0.5}, 7),
    ("heun", {"steps": 7}, 2 * 7),
    ("ode", {"method": "euler", "steps": 7}, 7),
    ("ode", {"method": "midpoint", "steps": 7}, 2 * 7),
    ("ode", {"method": "heun2", "steps": 7}, 2 * 7),
    ("ode", {"method": "heun3", "steps": 7}, 3 * 7),
    ("ode", {"method": "rk4", "steps": 7}, 4 * 7),
]


@pytest.mark.parametrize("name, params, nfe", NFE_RULES, ids=lambda v: str(v))
def test_exact_nfe(name, params, nfe, sde):
    den = MIX.denoiser(sde)
    sampler = build_sampler(name, **params)
    x, info = sample(sampler, den, range(16))
    assert info["nfe"] == nfe == den.nfe
    assert sampler.nfe_per_step * sampler.steps == nfe
    assert torch.isfinite(x).all() and x.shape == (16, 2)


def test_dopri5_nfe_rule():
    """dopri5 (FSAL): f(t0), then 6 evaluations per attempted step (the first step is set, so no probe)."""
    den = MIX.denoiser(VPSDE())
    _, info = sample(build_sampler("ode", method="dopri5", rtol=1e-6, atol=1e-6), den, range(64), dtype=torch.float64)
    assert info["n_reject"] >= 0 and info["n_accept"] > 0
    assert info["nfe"] == den.nfe == 1 + 6 * (info["n_accept"] + info["n_reject"])


@pytest.mark.parametrize("name", ["euler_maruyama", "pc", "ancestral", "ddim", "heun"])
def test_same_seeds_same_samples_any_batch(name):
    sampler = build_sampler(name, steps=20, **({"eta": 0.7} if name == "ddim" else {}))
    den = MIX.denoiser(VPSDE())
    a, _ = sample(sampler, den, range(10))
    b, _ = sample(sampler, den, range(10))
    assert torch.equal(a, b), "same seeds must give bitwise-identical samples"
    part, _ = sample(sampler, den, [7, 3, 4])  # other batch size, other order
    torch.testing.assert_close(part, a[[7, 3, 4]], rtol=1e-6, atol=1e-6)


def test_seeded_noise_streams_do_not_depend_on_batch():
    full, part = SeededNoise(range(5), (3,)), SeededNoise([4, 1], (3,))
    assert torch.equal(full.prior()[[4, 1]], part.prior())
    for _ in range(70):  # crosses a block boundary
        torch.testing.assert_close(full()[[4, 1]], part(), rtol=0, atol=0)


def test_callback_and_progress():
    seen = []
    sample(build_sampler("ddim", steps=5), MIX.denoiser(VPSDE()), range(4), callback=seen.append, progress=True)
    assert [s["i"] for s in seen] == list(range(5))
    assert float(seen[-1]["t"]) == pytest.approx(1e-3)


@pytest.mark.parametrize("kind", ["uniform", "trailing", "logsnr", "karras", "quadratic"])
def test_time_grids(sde, kind):
    t = time_grid(sde, 12, kind)
    assert t.shape == (13,) and t[0] == sde.T and t[-1] == sde.eps and (t[1:] < t[:-1]).all()
    lam = sde.log_snr(t)
    if kind == "logsnr":
        torch.testing.assert_close(lam.diff(), lam.diff().mean().expand(12), rtol=1e-6, atol=1e-9)
    if kind == "karras":
        root = torch.exp(-lam / 7)  # (sigma_t / alpha_t)^(1/rho) is linear in the step index
        torch.testing.assert_close(root.diff(), root.diff().mean().expand(12), rtol=1e-6, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 50.0)], ids=lambda s: s.name)
def test_stochastic_samplers_reach_the_noise_floor(sde):
    """1000-step samplers land within a small multiple of the sampling noise floor; 10 steps are measurably worse.

    The floor is the MMD between independent exact sample sets of the same size (its spread over three pairs is
    a few per cent, measured: 0.052-0.054 at n = 2000). Sliced W2 is too noisy here: it is dominated by the
    multinomial scatter of the component counts.
    """
    n = 2000
    den = MIX.denoiser(sde)
    data = MIX.sample(n, torch.Generator().manual_seed(123))
    floor = sum(mmd(MIX.sample(n, torch.Generator().manual_seed(s)), data) for s in (1, 2, 3)) / 3
    for name, params in [("euler_maruyama", {}), ("pc", {"steps": 500}), ("ancestral", {})]:
        x, _ = sample(build_sampler(name, **params), den, range(n), dtype=torch.float64)
        assert mmd(x, data) < 1.5 * floor, name
        x10, _ = sample(build_sampler(name, steps=10), den, range(n), dtype=torch.float64)
        assert mmd(x10, data) > 1.8 * floor, f"{name} with 10 steps should be clearly worse"


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("euler", {}, "unknown sampler 'euler'; choose one of"),
        ("ddim", {"steps": 0}, "steps must be an integer >= 1"),
        ("ddim", {"steps": 2.5}, "steps must be an integer >= 1"),
        ("ddim", {"eta": 1.5}, r"eta must lie in \[0, 1\]"),
        ("ddim", {"grid": "cosine"}, "unknown grid 'cosine'"),
        ("ddim", {"nfe": 10}, r"no parameter\(s\) \['nfe'\]"),
        ("ancestral", {"eta": 0.5}, "no parameter"),
        ("heun", {"rho": -1.0}, "rho must be a number in \\[0.1, 100\\]"),
        ("heun", {"rho": math.inf}, "rho must be a number in \\[0.1, 100\\]"),
        ("heun", {"rho": 1e-9}, "rho must be a number in \\[0.1, 100\\]"),
        ("pc", {"snr": 0.0}, "snr must be a finite number > 0"),
        ("pc", {"snr": math.inf}, "snr must be a finite number > 0"),
        ("pc", {"predictor": "ddim"}, "unknown predictor"),
        ("pc", {"step_size": "paper"}, r"unknown step_size 'paper'; choose one of \('sigma', 'score_sde'\)"),
        ("ode", {"method": "rk45"}, "unknown ODE method 'rk45'"),
        ("ode", {"rtol": -1e-5}, "rtol must be a number in \\(0, 1\\)"),
        ("ode", {"atol": 0.0}, "atol must be a number in \\(0, 1\\)"),
        ("ode", {"atol": math.inf}, "atol must be a number in \\(0, 1\\)"),
        ("ode", {"method": "dopri5", "steps": 10}, "adaptive"),
        ("ode", {"method": "rk4", "steps": 0}, "steps must be an integer >= 1"),
    ],
)
def test_bad_sampler_parameters(name, params, match):
    with pytest.raises(ValueError, match=match):
        build_sampler(name, **params)


def test_bad_inputs_at_call_time():
    den = MIX.denoiser(VPSDE())
    with pytest.raises(ValueError, match=r"x_T must have shape \(batch, 2\)"):
        build_sampler("ddim", steps=2)(den, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="stochastic"):
        build_sampler("euler_maruyama", steps=2)(den, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="seeds"):
        sample(build_sampler("ddim", steps=2), den, [])


def test_registry_lists_every_family():
    assert {"euler_maruyama", "reverse_diffusion", "pc", "ancestral", "ddim", "heun", "ode"} <= set(SAMPLERS)


def test_sliced_wasserstein_of_a_shift():
    """Shifting a set by v moves every projection by theta.v: SW^2 = E (theta.v)^2 = |v|^2 / d."""
    x = torch.randn(500, 4, dtype=torch.float64)
    v = torch.tensor([1.0, 2.0, 0.0, 2.0], dtype=torch.float64)
    got = sliced_wasserstein(x + v, x, n_projections=20000)
    assert got == pytest.approx(3.0 / 2.0, rel=0.02)
    assert sliced_wasserstein(x, x) == 0.0


def test_sliced_wasserstein_of_sets_of_different_sizes_is_the_exact_empirical_distance():
    """Unequal sizes (lsde-bench's reference_count != seeds.count): a set repeated k times is the same empirical
    distribution (distance 0; linear quantile interpolation gave 0.006 on digits), and 1-D sets {0, 1} against
    {0, 0, 1}: W2^2 = the mass 1/6 moved by 1 (no projection needed: every direction of 1-D is +-1)."""
    x = torch.randn(100, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert sliced_wasserstein(x.repeat(3, 1), x) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(x[:40].repeat(4, 1), x[:40]) == pytest.approx(0.0, abs=1e-12)
    two, three = torch.tensor([[0.0], [1.0]], dtype=torch.float64), torch.tensor([[0.0], [0.0], [1.0]])
    assert sliced_wasserstein(two, three) == pytest.approx((1 / 6) ** 0.5, rel=1e-12)
    assert sliced_wasserstein(three, two) == pytest.approx((1 / 6) ** 0.5, rel=1e-12)


def test_generate_stops_within_a_batch_when_its_stop_check_answers_true():
    """SLURM's requeue signal during a long evaluation: the batch under way stops at the next step, and no more are
    started; without a stop check, or one that never answers True, the samples are as before."""
    from lightning_sde.generation import GenerationStopped, generate

    den = eight_gaussians().denoiser(VPSDE())
    ddim = build_sampler("ddim", steps=50)
    whole = generate(ddim, den, range(8), 4, "cpu", torch.float64)
    assert torch.equal(generate(ddim, den, range(8), 4, "cpu", torch.float64, stop=lambda: False).x, whole.x)
    den.nfe = 0
    with pytest.raises(GenerationStopped):
        generate(ddim, den, range(8), 4, "cpu", torch.float64, stop=lambda: den.nfe >= 10)
    assert den.nfe == 10  # stopped 10 steps into the first of two batches of 50


def test_a_compiled_network_sees_each_batch_shape_once_before_the_timed_sampling_and_the_nfe():
    """model.compile compiles at the first call of each shape: the first cell's wall time (and the training
    evaluation's) held the compilation, 18 s for 0.01 s of sampling."""
    from lightning_sde.generation import generate
    from lightning_sde.module import ScoreModule

    den = ScoreModule(net={"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 8, "depth": 1},
                      sde={"_target_": "lightning_sde.sde.VPSDE"}, shape=[2]).denoiser.eval()
    calls = []
    den.net.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    ddim = build_sampler("ddim", steps=3)
    eager = generate(ddim, den, range(10), 4, "cpu")
    assert calls == [4] * 6 + [2] * 3
    calls.clear()
    den.net._compiled_call_impl = den.net._call_impl  # what an in-place torch.compile sets (here: eager, same numbers)
    compiled = generate(ddim, den, range(10), 4, "cpu")
    assert calls == [2, 4] + [4] * 6 + [2] * 3  # each shape once, before the batches
    assert compiled.nfe == eager.nfe and torch.equal(compiled.x, eager.x)


def test_generate_takes_seeds_as_any_iterable_and_refuses_an_empty_set_or_a_bad_batch_size():
    from lightning_sde.generation import generate

    den = eight_gaussians().denoiser(VPSDE())
    ddim = build_sampler("ddim", steps=3)
    from_list = generate(ddim, den, list(range(5)), 2, "cpu", torch.float64)
    from_iterator = generate(ddim, den, iter(range(5)), 2, "cpu", torch.float64)
    assert torch.equal(from_iterator.x, from_list.x) and len(from_list.x) == 5
    for seeds, batch_size, message in [([], 2, "no seeds"), (range(5), 0, "batch_size must be an integer >= 1"),
                                       (range(5), -1, "batch_size must be an integer >= 1")]:
        with pytest.raises(ValueError, match=message):
            generate(ddim, den, seeds, batch_size, "cpu", torch.float64)


@pytest.mark.parametrize("name, params", [("pc", {"steps": 200}), ("ddim", {"steps": 50}), ("heun", {"steps": 25}),
                                          ("ode", {"method": "dopri5", "rtol": 1e-6, "atol": 1e-6})])
def test_denoise_removes_the_noise_left_at_eps_for_one_more_nfe(name, params):
    """Samples end at t = eps with noise sigma(eps) in them (0.02 under the CIFAR-10 VE settings, ~2.5 levels of 8-bit
    data); score_sde's noise_removal returns E[x0 | x_eps]. Point-like modes: the exact posterior mean is the mode."""
    from lightning_sde.exact import GaussianMixture

    means = torch.tensor([[2.0, 0, 0, 0], [-2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, -2.0, 0, 0]], dtype=torch.float64)
    points = GaussianMixture(means, stds=torch.full((4,), 1e-3))
    sde = VESDE(sigma_min=0.02, sigma_max=100.0, eps=1e-5)
    seeds = range(64)

    def run(denoise):
        den = points.denoiser(sde)
        x, info = sample(build_sampler(name, **params, denoise=denoise), den, seeds)
        return x, info, den

    def to_modes(x):  # RMS distance to the nearest mode
        return torch.cdist(x.double(), means).min(1).values.pow(2).mean().sqrt().item()

    (noisy, plain, _), (clean, info, den) = run(False), run(True)
    assert to_modes(noisy) == pytest.approx(sde.sigma(torch.tensor(sde.eps)).item() * 2, rel=0.25)  # sqrt(d) sigma
    assert to_modes(clean) < 2e-3  # the modes' own std
    assert info["nfe"] == plain["nfe"] + 1 == den.nfe  # counted
    assert torch.equal(clean, points.denoiser(sde)(noisy, sde.eps).x0)  # exactly that prediction, nothing else


def test_a_denoised_samplers_budget_keeps_its_last_nfe_and_its_key_says_so():
    plain, denoised = build_sampler("dpmpp", steps=5), build_sampler("dpmpp", steps=5, denoise=True)
    assert plain.at_nfe(10).steps == 10 and denoised.at_nfe(10).steps == 9  # equal NFE: one of the 10 denoises
    assert denoised.at_nfe(1) is None
    assert "denoise" not in plain.params() and denoised.params()["denoise"] is True  # older rows keep their keys
    pc, langevin = build_sampler("pc"), build_sampler("pc", step_size="score_sde")  # a knob added later, likewise
    assert "step_size" not in pc.params() and langevin.params()["step_size"] == "score_sde"
    # score_sde's step takes the batch's norms: rows and chunks then record the batch size and processes
    assert langevin.batch_dependent and not pc.batch_dependent and build_sampler("ode").batch_dependent
    from omegaconf import OmegaConf

    from lightning_sde.bench.spec import run_settings

    cfg = OmegaConf.create({"dtype": "float32", "device": "cpu", "batch_size": 10,
                            "ddp": {"devices": 2, "num_nodes": 1}})
    assert run_settings(cfg, langevin)["batch_size"] == 10 and "batch_size" not in run_settings(cfg, pc)
    assert "step_size" not in build_sampler("ddim").params()
    x, info = sample(denoised.at_nfe(10), MIX.denoiser(VPSDE()), range(8))
    assert info["nfe"] == 10
    with pytest.raises(ValueError, match="dpmpp: denoise must be true or false; got 'yes'"):
        build_sampler("dpmpp", denoise="yes")
    with pytest.raises(ValueError, match="select_over"):  # the pilot compares runs before any denoising
        build_sampler("dpmpp", steps=5, grid="select", select_over={"denoise": [True, False]})
