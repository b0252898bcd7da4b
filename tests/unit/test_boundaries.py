"""Small rules with a sharp edge: the sampler registry, SDE and Denoiser arguments at their limits, the v
parameterisation where alpha^2 + sigma^2 != 1 (VE), and the order of a seed's noise stream."""

import pytest
import torch

from lightning_sde.models.denoiser import Denoiser, eps_to_target, output_to_eps
from lightning_sde.samplers import SAMPLERS
from lightning_sde.samplers.base import register
from lightning_sde.samplers.noise import SeededNoise, steps_per_draw
from lightning_sde.sde import VESDE, VPSDE


def test_the_registry_names_each_class_once_and_takes_a_redefinition_of_the_same_class():
    """A notebook cell that registers a sampler, run again after an edit, was refused ("registered twice")."""
    def define():
        @register("_test_only_sampler")
        class Dummy:
            pass

        return Dummy

    first = define()
    try:
        assert SAMPLERS["_test_only_sampler"] is first and first.name == "_test_only_sampler"
        again = define()
        assert again is not first and SAMPLERS["_test_only_sampler"] is again
        with pytest.raises(ValueError, match=r"sampler name '_test_only_sampler' is taken by .*\.Dummy: register "
                                             "Other under another name"):
            register("_test_only_sampler")(type("Other", (), {}))
        with pytest.raises(ValueError, match=r"sampler name 'ddim' is taken by lightning_sde\.samplers\.ddim\.DDIM"):
            register("ddim")(again)
        assert SAMPLERS["_test_only_sampler"] is again
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2,), (3,), (5, 7), (1, 8, 8), (3, 4, 4)])
def test_a_seeds_noise_comes_in_stream_order_after_its_prior_draw(shape, dtype):
    """Call k returns the seed's (k+1)-th standard-normal draw (the first is the prior), value for value the stream
    that results so far were drawn from: randn of 64 steps at a time after the prior (now drawn a few steps at a
    time, so that a short run draws little beyond what it uses)."""
    seeds, steps = [3, 11], 130
    noise = SeededNoise(seeds, shape, dtype=dtype)
    drawn = torch.stack([noise() for _ in range(steps)], 1)
    for i, seed in enumerate(seeds):
        gen = torch.Generator().manual_seed(seed)
        prior = torch.randn(shape, generator=gen, dtype=dtype)
        blocks = torch.cat([torch.randn((64, *shape), generator=gen, dtype=dtype) for _ in range(3)])
        assert torch.equal(noise.prior()[i], prior)
        assert torch.equal(drawn[i], blocks[:steps])


def test_the_noise_holds_one_block_of_draws_at_a_time():
    """A block is steps_per_draw steps of the whole batch (48 MiB for 128 samples of 3x64x64; 384 MiB when it was
    64 steps): the per-seed draws and their stack, and the old block kept while the next was drawn, made three. A
    fresh process, so that its peak resident memory is this generation's."""
    import subprocess
    import sys

    code = ("import resource, torch\n"
            "from lightning_sde.samplers.noise import SeededNoise\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "noise = SeededNoise(range(128), (3, 64, 64))\n"
            "for _ in range(130): noise()\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)\n")
    growth_mib = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    block_mib = 8 * 128 * 3 * 64 * 64 * 4 / 2**20  # steps_per_draw(3 * 64 * 64) = 8
    assert steps_per_draw(3 * 64 * 64) == 8 and growth_mib < 1.5 * block_mib


def test_generate_holds_one_copy_of_the_samples():
    """Each batch is written into this process's sample tensor in place, which is returned as it is on one process:
    the list of batches, their concatenation and the seed-order copy made three (peak 3.9x the samples). A fresh
    process, so that its peak resident memory is this generation's."""
    import subprocess
    import sys

    code = ("import resource, torch\n"
            "from lightning_sde.generation import generate\n"
            "from lightning_sde.models.denoiser import Denoiser\n"
            "from lightning_sde.samplers import build_sampler\n"
            "from lightning_sde.sde import VPSDE\n"
            "torch.set_num_threads(1)\n"
            "den, ddim = Denoiser(lambda x, t: -x, VPSDE(), 'eps', (3, 64, 64)), build_sampler('ddim', steps=2)\n"
            "generate(ddim, den, range(50), 50, 'cpu')\n"
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "x = generate(ddim, den, range(1500), 50, 'cpu').x\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, x.numel() * 4 / 2**20)\n")
    growth_mib, samples_mib = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                        check=True).stdout.split())
    assert growth_mib < 1.5 * samples_mib


# --- bad input to the library: refused where it is given, not broadcast into numbers ---------------------------------

def test_a_network_output_or_input_of_another_shape_is_refused():
    """A net returning (B,) for (B, 2) inputs would be broadcast across the samples (sample i's coordinate j taking
    sample j's prediction); inputs of another sample shape would be scored as if they were the model's."""
    from lightning_sde.samplers import build_sampler, sample

    sde = VPSDE()
    for wrong in (lambda x, t: x.sum(-1), lambda x, t: x[..., :1], lambda x, t: x[..., None]):
        with pytest.raises(ValueError, match=r"^the network returned shape \([\d, ]+\) for inputs of shape "
                                             r"\(2, 2\): its eps prediction must have the inputs' shape$"):
            sample(build_sampler("ddim", steps=3), Denoiser(wrong, sde, "eps", (2,)), [0, 1])
    from lightning_sde.models.guidance import guided

    conditional = Denoiser(lambda x, t, y: x[..., :1], sde, "eps", (2,), num_classes=3)
    with pytest.raises(ValueError, match=r"^the network returned shape \(8, 1\) for inputs of shape \(8, 2\)"):
        sample(build_sampler("ddim", steps=3), guided(conditional, [0], 2.0), range(4))  # one doubled batch
    den = Denoiser(lambda x, t: -x, sde, "eps", (2,))
    with pytest.raises(ValueError, match=r"^x has shape \(3, 5\): a batch of samples of shape \(2,\) expected$"):
        den(torch.zeros(3, 5), 0.5)
    assert den(torch.zeros(3, 2), 0.5).eps.shape == (3, 2)


def test_an_mlp_given_data_of_another_dimension_names_its_dim():
    """model.net.dim=3 on 2-D data: the MLP says what it expects, not matmul's 'mat1 and mat2 shapes'."""
    from lightning_sde.models.mlp import MLP

    net = MLP(dim=3, width=8, depth=1, time_embed_dim=8)
    for x in (torch.zeros(4, 2), torch.zeros(4, 3, 1)):
        with pytest.raises(ValueError, match=r"^MLP expects x of shape \(B, 3\) \(its dim\); got \(4, "):
            net(x, torch.rand(4))
    assert net(torch.zeros(4, 3), torch.rand(4)).shape == (4, 3)


def test_denoiser_arguments_of_the_wrong_kind_are_named():
    from lightning_sde.models.moments import DataMoments

    with pytest.raises(TypeError, match=r"^sde must be an SDE \(e.g. VPSDE\(\)\); got 'vp'$"):
        Denoiser(lambda x, t: x, "vp", "eps", (2,))
    for shape in ((-2,), (0,), (2.0,), (True,)):
        with pytest.raises(ValueError, match="^shape must be one sample's shape, sizes >= 1"):
            Denoiser(lambda x, t: x, VPSDE(), "eps", shape)
    moments = DataMoments.of_gaussian(torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match=r"^data_moments are of 3 dimensions; samples of shape \(2,\) have 2$"):
        Denoiser(lambda x, t: x, VPSDE(), "eps", (2,), data_moments=moments)
    assert Denoiser(lambda x, t: x, VPSDE(), "eps", (1, 3), data_moments=moments).shape == (1, 3)


def test_a_discrete_schedule_refuses_times_below_its_first_timestep_and_a_table_that_is_not_one_schedule():
    """Below t_0 = 1/N, log alpha extrapolated linearly passes 0: alpha > 1, sigma NaN, samples NaN."""
    from lightning_sde.sde import DiscreteVPSDE

    cumprod = torch.linspace(0.999, 0.01, 1000)
    assert DiscreteVPSDE(cumprod).eps == DiscreteVPSDE(cumprod, eps=1e-3).eps == 1e-3
    with pytest.raises(ValueError, match=r"^eps must lie in \[1/N, 1\) = \[0.001, 1\) for a schedule of N = 1000 "
                                         r"timesteps; got eps=0.0001$"):
        DiscreteVPSDE(cumprod, eps=1e-4)
    assert torch.isfinite(DiscreteVPSDE(cumprod, eps=2e-3).sigma(torch.tensor(2e-3)))
    # with_eps (lsde-likelihood's eps=) checks as the constructor does, 1/N included
    assert DiscreteVPSDE(cumprod, eps=0.5).with_eps(1e-3).eps == 1e-3
    with pytest.raises(ValueError, match=r"^DiscreteVPSDE: eps must lie in \[0.001, T = 1\); got 0.0009$"):
        DiscreteVPSDE(cumprod).with_eps(9e-4)
    with pytest.raises(ValueError, match=r"^alphas_cumprod must be one schedule \(N,\); got shape \(2, 2\)$"):
        DiscreteVPSDE([[0.9, 0.8], [0.7, 0.6]])


@pytest.mark.parametrize("make", [lambda: VPSDE(beta_max=float("inf")), lambda: VPSDE(T=float("inf")),
                                  lambda: VESDE(sigma_max=float("inf")), lambda: VPSDE(eps=float("nan"))])
def test_infinite_sde_parameters_are_refused(make):
    with pytest.raises(ValueError, match="finite"):
        make()


@pytest.mark.parametrize("name, knobs, message", [
    ("dpmpp", {"order": 2.0}, r"^dpmpp: order must be one of \(1, 2, 3\); got 2.0$"),
    ("unipc", {"order": 2.0}, r"^unipc: order must be one of"),
    ("unipc_adaptive", {"order": 3.0}, r"^unipc_adaptive: order must be one of"),
    ("dpmpp", {"lower_order_final": "false"}, r"^dpmpp: lower_order_final must be true or false; got 'false'$"),
])
def test_multistep_knobs_of_the_wrong_type_are_refused(name, knobs, message):
    from lightning_sde.samplers import build_sampler

    with pytest.raises(ValueError, match=message):
        build_sampler(name, **knobs)


@pytest.mark.parametrize("seeds", [[0.4, 0.6], [1.9], ["3"], [True], [-1], [2**32]])
def test_seeds_must_be_integers(seeds):
    """int(0.4) == int(0.6) == 0: two samples from one seed; and torch keeps a seed's low 32 bits: seed 2**32 drew
    seed 0's sample."""
    with pytest.raises(ValueError, match=r"^seeds must be integers in \[0, 2\*\*32\) \(torch keeps"):
        SeededNoise(seeds, (2,))
    assert torch.equal(SeededNoise([2**32 - 1], (2,)).prior(), SeededNoise([2**32 - 1], (2,)).prior())


def test_a_data_seed_whose_streams_another_seed_shares_is_refused():
    from lightning_sde.data import DigitsDataModule

    with pytest.raises(ValueError, match=r"seed must be below 2\*\*28"):
        DigitsDataModule(seed=2**28)  # seed * 16 + stream: seed 0's streams in the 32 bits torch keeps
    assert DigitsDataModule(seed=2**28 - 1).seed == 2**28 - 1


def test_a_network_that_returns_nan_stops_an_adaptive_solver_at_once_with_the_cause():
    """unipc_adaptive's error estimate and dopri5's step size: NaN rejects every step (2000 NFE, then 'no
    convergence'), or underflows torchdiffeq's step (an AssertionError)."""
    from lightning_sde.samplers import build_sampler, sample

    den = Denoiser(lambda x, t: torch.full_like(x, float("nan")), VPSDE(), "eps", (2,))
    for name in ("unipc_adaptive", "ode"):
        den.nfe = 0
        with pytest.raises(FloatingPointError, match=f"^{name}: .*not finite"):
            sample(build_sampler(name), den, [0, 1], progress=False)
        assert den.nfe < 50


def test_a_fixed_step_samplers_nan_samples_are_said_once_per_model(caplog):
    """They are returned (the apps record such a run as diverged), but a library user was told nothing. Once per
    sampler and network: a guided sweep wraps the network anew for every batch; a new network is said again, even
    where it takes the memory (and id) of one freed."""
    import gc

    from lightning_sde.models.guidance import GuidedDenoiser
    from lightning_sde.samplers import build_sampler

    def nan_late():
        net = torch.nn.Module()
        net.forward = lambda x, t, y=None: torch.where(t.reshape(-1, 1) < 0.5, x * float("nan"), x)
        return Denoiser(net, VPSDE(), "eps", (2,), num_classes=3)

    said = "sampler 'ddim': 4 of 4 samples have NaN or infinite values"
    sampler, x_T, model = build_sampler("ddim", steps=8), torch.randn(4, 2), nan_late()
    for _ in range(3):
        assert torch.isnan(sampler(GuidedDenoiser(model, [0, 1, 2, 0], 1.0), x_T)[0]).all()
    assert caplog.text.count(said) == 1
    build_sampler("ddim", steps=4)(model, x_T)
    assert caplog.text.count("NaN or infinite") == 1  # the same sampler
    build_sampler("euler_maruyama", steps=4)(model, x_T, SeededNoise(range(4), (2,)))
    assert caplog.text.count("NaN or infinite") == 2
    sampler(Denoiser(lambda x, t: 0.1 * x, VPSDE(), "eps", (2,)), x_T)
    assert caplog.text.count("NaN or infinite") == 2

    class Scores:
        def eps(self, x, t):
            return x * float("nan")

        def other(self, x, t):
            return x * float("nan")

    scores = Scores()
    for _ in range(3):  # a bound method is a new object at each `scores.eps`
        build_sampler("heun", steps=2)(Denoiser(scores.eps, VPSDE(), "eps", (2,)), x_T)
    assert caplog.text.count("sampler 'heun': 4 of 4 samples have NaN") == 1
    build_sampler("heun", steps=2)(Denoiser(scores.other, VPSDE(), "eps", (2,)), x_T)  # another network
    assert caplog.text.count("sampler 'heun': 4 of 4 samples have NaN") == 2
    for _ in range(3):
        del model
        gc.collect()
        model = nan_late()
        sampler(model, x_T)
    assert caplog.text.count(said) == 4

    def one_bad_coordinate(x, t):  # one sample of four, in one of its coordinates
        return torch.where((torch.arange(len(x)) == 2)[:, None] & (torch.arange(2) == 1), x * float("inf"), 0.1 * x)

    sampler(Denoiser(one_bad_coordinate, VPSDE(), "eps", (2,)), x_T)
    assert "sampler 'ddim': 1 of 4 samples have NaN or infinite values" in caplog.text

    class Slotted:  # cannot be weakly referenced: said at every call rather than never
        __slots__ = ()

        def __call__(self, x, t):
            return x * float("nan")

    for _ in range(2):
        build_sampler("ancestral", steps=2)(Denoiser(Slotted(), VPSDE(), "eps", (2,)), x_T, SeededNoise(range(4), (2,)))
    assert caplog.text.count("sampler 'ancestral': 4 of 4 samples have NaN") == 2


@pytest.mark.parametrize("method", ["dopri5", "euler"])
def test_a_network_that_returns_nan_stops_encode_decode_and_likelihood_with_the_cause(method):
    """flow.py's solves: dopri5 would end in torchdiffeq's step-size underflow (an AssertionError), a fixed method in
    NaN latents and log-likelihoods returned as results."""
    from lightning_sde.flow import decode, encode, log_likelihood
    from lightning_sde.probability_flow import ODEOptions

    den = Denoiser(lambda x, t: torch.where(t.reshape(-1, 1) < 0.5, x * float("nan"), x), VPSDE(), "eps", (2,))
    x = torch.zeros(3, 2, dtype=torch.float64) + 0.1
    options = ODEOptions(method=method, steps=None if method == "dopri5" else 10)
    for call in (lambda: encode(den, x, options), lambda: decode(den, x, options),
                 lambda: log_likelihood(den, x, options)):
        den.nfe = 0
        with pytest.raises(FloatingPointError, match=r"^ODEOptions: .*the drift is not finite"):
            call()
        assert den.nfe < 200
    finite = Denoiser(lambda x, t: 0.1 * x, VPSDE(), "eps", (2,))
    assert torch.isfinite(log_likelihood(finite, x, options)["logp"]).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"means": [[0.0, float("nan")]], "stds": [1.0]}, r"^means must be finite"),
    ({"means": [[0.0, 0.0]], "stds": [float("inf")]}, r"^stds must be positive and finite"),
    ({"means": [[0.0, 0.0], [1.0, 1.0]], "stds": [1.0, 1.0, 1.0]}, r"^stds must be positive and finite with shape "
                                                                     r"\(K,\) or \(K, d\) = \(2, 2\); got \(3,\)$"),
    ({"means": [[0.0, 0.0]], "covs": [[[1.0, 0.5], [0.0, 1.0]]]}, r"^covs must be symmetric"),
    ({"means": [[0.0, 0.0]], "covs": [[[1.0, 0.0], [0.0, float("inf")]]]}, r"^covs must be finite"),
    ({"means": [[0.0, 0.0], [1.0, 1.0]], "stds": [1.0, 1.0], "weights": [float("inf"), 1.0]},
     r"^weights must be 2 positive finite numbers"),
])
def test_a_mixture_refuses_values_that_are_not_a_density(kwargs, message):
    from lightning_sde.exact import GaussianMixture

    with pytest.raises(ValueError, match=message):
        GaussianMixture(**kwargs)


def test_the_exact_mixture_computes_in_its_own_dtype_given_python_numbers():
    """torch.as_tensor(0.7) is float32: alpha and sigma given as numbers lost 1e-7 of the float64 oracle's digits."""
    from lightning_sde.exact import eight_gaussians

    mix, x = eight_gaussians(), torch.randn(16, 2, dtype=torch.float64)
    a, s = torch.tensor(0.7, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    assert torch.allclose(mix.log_prob(x, 0.7, 0.4), mix.log_prob(x, a, s), rtol=1e-14, atol=0)
    assert torch.allclose(mix.score(x, 0.7, 0.4), mix.score(x, a, s), rtol=1e-14, atol=0)


def test_a_float32_labelled_mixture_still_builds_its_conditionals():
    """conditional()'s covariances are products that are symmetric only to rounding: not refused as asymmetric."""
    from lightning_sde.exact import GaussianMixture, random_mixture

    m = random_mixture(dim=16, labels=list(range(10)))
    g = GaussianMixture(m.means, covs=m.covs, weights=m.log_weights.exp(), labels=m.labels, dtype=torch.float32)
    assert g.conditional(3).dim == 16
