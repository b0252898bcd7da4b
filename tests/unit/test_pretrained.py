"""Published diffusers models as Denoisers, cross-checked against diffusers itself on tiny random models with the
published structure (float64): the same network, the same x_T and noise, our samplers against diffusers' loops."""

import json
import math
import sys

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler, ScoreSdeVeScheduler

from helpers.tiny_diffusers import ddpm_pipeline, ddpm_unet, ncsnpp_pipeline, save_pipeline
from lightning_sde import load_denoiser
from lightning_sde.models.denoiser import Denoiser
from lightning_sde.models.pretrained import PretrainedError, locate
from lightning_sde.samplers import DDIM, Ancestral, ReverseDiffusion, build_sampler, sample
from lightning_sde.sde import VESDE, DiscreteVPSDE

F64 = torch.float64


class Stream:
    """Noise for our samplers drawn from a generator in the order diffusers draws it."""

    def __init__(self, batch, shape, seed):
        self.seeds = [0] * batch
        self.shape = tuple(shape)  # one sample's, as SeededNoise's
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self):
        return torch.randn((len(self.seeds), *self.shape), generator=self.generator, dtype=F64)


def in_float64(scheduler):
    """diffusers keeps its schedule in float32 (its coefficients then carry ~1e-7 relative error, more in
    1 - alphas_cumprod near 1); the same values in float64 make the cross-check a test of the arithmetic."""
    for name, value in vars(scheduler).items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            setattr(scheduler, name, value.double())
    return scheduler


def loaded(folder):
    return load_denoiser(f"diffusers:{folder}").to(F64)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_reproduces_diffusers_ddim_loop(tmp_path, prediction_type):
    """Our DDIM on diffusers' own timesteps (trailing spacing, 10 steps) = a DDIMScheduler loop, same x_T."""
    folder = ddpm_pipeline(tmp_path / "m", prediction_type=prediction_type, timestep_spacing="trailing")
    denoiser = loaded(folder)
    scheduler = in_float64(DDIMScheduler.from_pretrained(folder / "scheduler"))
    scheduler.set_timesteps(10)
    unet = denoiser.net.unet
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    x = x_T
    with torch.no_grad():
        for k in scheduler.timesteps:
            x = scheduler.step(unet(x, k).sample, k, x).prev_sample
    n = scheduler.config.num_train_timesteps
    times = [(int(k) + 1) / n for k in scheduler.timesteps] + [1 / n]  # the last step lands on alphas_cumprod[0]
    ours, info = DDIM(steps=10, times=times)(denoiser, x_T)
    assert info["nfe"] == 10
    torch.testing.assert_close(ours, x, rtol=1e-6, atol=1e-9)
    assert (ours - x_T).abs().mean() > 0.1  # the loop moved x: the match is not of two identities


def test_ancestral_reproduces_ddpm_given_the_same_noise(tmp_path):
    """Ancestral sampling = DDPMScheduler (fixed_small variance) over all 100 training steps, step by step."""
    n = 100
    folder = save_pipeline(tmp_path / "m", ddpm_unet(3), DDPMScheduler(num_train_timesteps=n, clip_sample=False))
    denoiser = loaded(folder)
    scheduler = in_float64(DDPMScheduler.from_pretrained(folder / "scheduler"))
    scheduler.set_timesteps(n)
    unet = denoiser.net.unet
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(5), dtype=F64)
    reference, x = [], x_T
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for k in scheduler.timesteps[:-1]:  # k = 99 .. 1: each adds noise; the step from k = 0 returns x0
            x = scheduler.step(unet(x, k).sample, k, x, generator=generator).prev_sample
            reference.append(x)
    states = []
    times = [(k + 1) / n for k in range(n - 1, -1, -1)]
    ours, _ = Ancestral(steps=n - 1, times=times)(denoiser, x_T, Stream(2, (1, 8, 8), 7),
                                                  callback=lambda s: states.append(s["x"]))
    torch.testing.assert_close(torch.stack(states[:-1]), torch.stack(reference[:-1]), rtol=1e-6, atol=1e-9)
    # our last step (k = 1 -> 0) returns the posterior mean; diffusers adds sqrt(beta~_1) z with z its 99th draw
    z = Stream(2, (1, 8, 8), 7)
    for _ in range(n - 1):
        last_noise = z()
    acp = scheduler.alphas_cumprod.double()
    var = (1 - acp[0]) / (1 - acp[1]) * (1 - acp[1] / acp[0])
    torch.testing.assert_close(ours + var.sqrt() * last_noise, reference[-1], rtol=1e-6, atol=1e-9)


def test_ve_import_reproduces_score_sde_ve_predictor_step(tmp_path):
    """One reverse-diffusion step of ours on the imported NCSN++ = ScoreSdeVeScheduler.step_pred (data in [0, 1]
    there, [-1, 1] here), same model output convention, same noise."""
    folder = ncsnpp_pipeline(tmp_path / "m", sigma_min=0.01, sigma_max=50.0)
    denoiser = loaded(folder)
    assert isinstance(denoiser.sde, VESDE) and denoiser.parameterization == "score"
    assert (denoiser.sde.sigma_min, denoiser.sde.sigma_max) == (0.02, 100.0)  # [0, 1] -> [-1, 1] doubles sigma
    scheduler = ScoreSdeVeScheduler.from_pretrained(folder / "scheduler")
    scheduler.set_timesteps(20)
    in_float64(scheduler.set_sigmas(20) or scheduler)
    i = 6
    t = scheduler.timesteps[i]
    index = int(t * (len(scheduler.timesteps) - 1))
    sigma, adjacent = scheduler.discrete_sigmas[index].double(), scheduler.discrete_sigmas[index - 1].double()
    x_model = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=F64) + sigma * torch.randn(
        2, 3, 8, 8, generator=torch.Generator().manual_seed(3), dtype=F64)
    with torch.no_grad():
        output = denoiser.net.unet(x_model, sigma.expand(2)).sample
    reference = scheduler.step_pred(output, t, x_model, generator=torch.Generator().manual_seed(4)).prev_sample
    ratio = math.log(50.0 / 0.01)
    t_ours, s_ours = math.log(sigma / 0.01) / ratio, math.log(adjacent / 0.01) / ratio
    x = ReverseDiffusion(steps=1).step(denoiser, 2 * x_model - 1, torch.tensor(t_ours, dtype=F64),
                                       torch.tensor(s_ours, dtype=F64), Stream(2, (3, 8, 8), 4), False, {})
    torch.testing.assert_close((x + 1) / 2, reference, rtol=1e-6, atol=1e-8)


def test_ve_model_input_is_sigma_and_output_is_the_score(tmp_path):
    """The probe behind the VE convention: with the time embedding held fixed, the network's output times sigma
    does not change with sigma (it divides by its time input), and the time input is sigma (log-embedded)."""
    folder = ncsnpp_pipeline(tmp_path / "m")
    denoiser = loaded(folder)
    unet = denoiser.net.unet
    seen = []
    unet.time_proj.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    x = torch.rand(2, 3, 8, 8, dtype=F64)
    t = torch.tensor([0.3, 0.7], dtype=F64)
    with torch.no_grad():
        denoiser(2 * x - 1, t)
    torch.testing.assert_close(seen[-1], denoiser.sde.sigma(t) / 2)  # the model's own sigma, data in [0, 1]
    fixed = unet.time_proj(torch.tensor([1.0, 1.0], dtype=F64)).detach()
    unet.time_proj.forward = lambda timesteps: fixed
    with torch.no_grad():
        scaled = [unet(x, torch.tensor([s, s], dtype=F64)).sample * s for s in (0.5, 2.0, 7.0)]
    torch.testing.assert_close(scaled[0], scaled[1])
    torch.testing.assert_close(scaled[0], scaled[2])


TRAINED_BETAS = (torch.linspace(1e-4, 0.02, 1000, dtype=F64) ** 1.3 * 6).clamp(max=0.05).tolist()


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "trained"])
def test_denoiser_matches_diffusers_at_every_training_timestep(tmp_path, schedule, prediction_type):
    """For each beta_schedule and prediction_type: x_t = alpha x0 + sigma eps as diffusers' add_noise at every
    timestep k (t_k = (k + 1) / N), and the Denoiser's x0 (hence eps) = what DDIMScheduler.step predicts."""
    config = {"beta_schedule": schedule} if schedule != "trained" else {"trained_betas": TRAINED_BETAS}
    folder = ddpm_pipeline(tmp_path / "m", prediction_type=prediction_type, **config)
    denoiser = loaded(folder)
    scheduler = in_float64(DDIMScheduler.from_pretrained(folder / "scheduler"))
    n = scheduler.config.num_train_timesteps
    scheduler.set_timesteps(n)
    k = torch.arange(n)
    t = (k.double() + 1) / n
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(n, 1, 8, 8, generator=gen, dtype=F64) * 2 - 1
    eps = torch.randn(n, 1, 8, 8, generator=gen, dtype=F64)
    x_t = scheduler.add_noise(x0, eps, k)
    torch.testing.assert_close(denoiser.sde.marginal(x0, t, eps), x_t, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        pred = denoiser(x_t, t)
        output = denoiser.net.unet(x_t, k).sample
    reference = torch.cat([scheduler.step(output[i:i + 1], int(i), x_t[i:i + 1]).pred_original_sample
                           for i in range(n)])
    torch.testing.assert_close(pred.x0, reference, rtol=1e-6, atol=1e-6)


def test_learned_variance_channels_are_dropped(tmp_path):
    unet = ddpm_unet(0, channels=1, out_channels=2)
    folder = save_pipeline(tmp_path / "m", unet, DDPMScheduler(variance_type="learned_range"))
    denoiser = loaded(folder)
    x, t = torch.randn(2, 1, 8, 8, dtype=F64), torch.tensor([0.2, 0.9], dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(denoiser(x, t).eps, unet.double()(x, t * 1000 - 1).sample[:, :1])


def test_every_sampler_runs_on_imported_models(tmp_path):
    """Shapes, finiteness and honest NFE for every registered sampler on both imported kinds."""
    vp = load_denoiser(f"diffusers:{ddpm_pipeline(tmp_path / 'vp')}")
    ve = load_denoiser(f"diffusers:{ncsnpp_pipeline(tmp_path / 've')}")
    for denoiser in (vp, ve):
        for name, params in [("ddim", {"steps": 4}), ("ancestral", {"steps": 4}), ("dpmpp", {"steps": 4}),
                             ("unipc", {"steps": 4}), ("heun", {"steps": 2}), ("euler_maruyama", {"steps": 4}),
                             ("sde_dpmpp", {"steps": 4}), ("pc", {"steps": 2}),
                             ("ode", {"method": "euler", "steps": 4})]:
            x, info = sample(build_sampler(name, **params), denoiser, [0, 1])
            assert x.shape == (2, *denoiser.shape) and torch.isfinite(x).all(), name
            assert info["nfe"] >= 4, name


def test_an_imported_model_samples_in_float64_as_the_apps_ask(tmp_path):
    """lsde-compare runs in float64 and lsde-bench takes dtype=float64: a float32 diffusers network computes in its
    weights' dtype and answers in the samples' (as the project's own networks): the float64 network's numbers."""
    for folder in (ddpm_pipeline(tmp_path / "vp"), ncsnpp_pipeline(tmp_path / "ve")):
        as_float32 = load_denoiser(f"diffusers:{folder}")
        x, _ = sample(build_sampler("ddim", steps=3), as_float32, [0, 1], dtype=F64)
        exact, _ = sample(build_sampler("ddim", steps=3), loaded(folder), [0, 1], dtype=F64)
        assert x.dtype == F64 and torch.allclose(x, exact, rtol=1e-4, atol=1e-4 * float(exact.abs().max()))


def test_hub_id_is_read_from_the_local_cache_only(tmp_path, monkeypatch):
    """A hub id resolves through the Hugging Face cache layout (models--owner--name/snapshots/<rev>, refs/main);
    one that is not cached fails at once, naming the command that fetches it."""
    cache = tmp_path / "hub"
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))  # what HF_HUB_CACHE sets at import
    with pytest.raises(PretrainedError, match="lsde-prepare diffusers someone/ddpm-tiny"):
        locate("diffusers:someone/ddpm-tiny")
    revision = "0" * 40
    repo = cache / "models--someone--ddpm-tiny"
    ddpm_pipeline(repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    denoiser = load_denoiser("diffusers:someone/ddpm-tiny")
    assert denoiser.shape == (1, 8, 8) and isinstance(denoiser.sde, DiscreteVPSDE)


def test_subfolder_and_bare_model_folders(tmp_path):
    folder = ddpm_pipeline(tmp_path / "pipe")
    assert load_denoiser(f"diffusers:{folder}#unet").shape == (1, 8, 8)
    bare = tmp_path / "bare"  # a model folder with its scheduler config beside the weights
    ddpm_unet(1).save_pretrained(bare)
    DDPMScheduler(prediction_type="sample").save_pretrained(bare)
    assert load_denoiser(f"diffusers:{bare}").parameterization == "x0"


def write_json(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


@pytest.mark.parametrize("case, match", [
    ("empty", "not a diffusers model folder"),
    ("conditional-unet", "supported: UNet2DModel"),
    ("no-weights", "no weights"),
    ("no-scheduler", "no scheduler config"),
    ("karras-ve", "unsupported scheduler 'KarrasVeScheduler'"),
    ("zero-snr", "rescale_betas_zero_snr"),
    ("prediction", "prediction_type 'flow'"),
    ("ve-positional", "time_embedding_type='fourier'"),
    ("not-a-folder", "no folder"),
    ("a-file", "is a file"),
    # read as a linear-beta DDPM (the defaults where DDPMScheduler drops what it does not know) and sampled
    ("edm", "unsupported scheduler 'EDMEulerScheduler'"),
    ("continuous", "timestep_type='continuous'"),
    # tracebacks (KeyError, TypeError, diffusers' NotImplementedError) rather than one line
    ("no-class-name", "the scheduler config names no scheduler"),
    ("unsized", "integer in_channels, out_channels and sample_size .* sample_size=None"),
    ("beta-schedule", "its noise schedule cannot be read .*NotImplementedError"),
    ("timesteps", "its noise schedule cannot be read .*TypeError"),
    ("ve-sigma", "the scheduler's sigma_max must be a number; got '1348'"),
    ("ve-null", "the scheduler's sigma_min must be a number; got None"),
    ("ve-channels", "out_channels 6 != in_channels 3 .a ScoreSdeVeScheduler model returns the score"),
    # loaded with diffusers' warning, the tensors left uninitialised (up to 1e20), or NaN: sampled, exit 0
    ("missing-tensor", r"lack 1 of the model's tensors \(e.g. 'conv_in.weight'\): a torn or partial copy"),
    ("nan-weights", r"its weights hold NaN or infinite values \(1 tensors, e.g. 'conv_out.bias'\)"),
])
def test_loader_refuses_what_it_cannot_read(tmp_path, case, match):
    folder = tmp_path / "m"
    folder.mkdir()
    spec = f"diffusers:{folder}"
    if case == "conditional-unet":
        write_json(folder / "config.json", {"_class_name": "UNet2DConditionModel"})
    elif case == "no-weights":
        write_json(folder / "config.json", {"_class_name": "UNet2DModel"})
    elif case in ("no-scheduler", "karras-ve", "zero-snr", "prediction", "ve-positional", "edm", "continuous",
                  "no-class-name", "unsized", "beta-schedule", "timesteps"):
        ddpm_unet().save_pretrained(folder)
        scheduler = {"karras-ve": {"_class_name": "KarrasVeScheduler"},
                     "zero-snr": {"_class_name": "DDPMScheduler", "rescale_betas_zero_snr": True},
                     "prediction": {"_class_name": "DDPMScheduler", "prediction_type": "flow"},
                     "ve-positional": {"_class_name": "ScoreSdeVeScheduler"},
                     "edm": {"_class_name": "EDMEulerScheduler", "sigma_min": 0.002, "sigma_max": 80.0},
                     "continuous": {"_class_name": "EulerDiscreteScheduler", "timestep_type": "continuous"},
                     "no-class-name": {"num_train_timesteps": 1000},
                     "unsized": {"_class_name": "DDPMScheduler"},
                     "beta-schedule": {"_class_name": "DDPMScheduler", "beta_schedule": "bogus"},
                     "timesteps": {"_class_name": "DDPMScheduler", "num_train_timesteps": "abc"}}.get(case)
        if scheduler:
            write_json(folder / "scheduler_config.json", scheduler)
        if case == "unsized":
            config = json.loads((folder / "config.json").read_text())
            write_json(folder / "config.json", {**config, "sample_size": None})
    elif case == "ve-channels":
        ncsnpp_pipeline(folder)
        path = folder / "unet" / "config.json"
        write_json(path, {**json.loads(path.read_text()), "out_channels": 6})
    elif case in ("ve-sigma", "ve-null"):
        ncsnpp_pipeline(folder)
        path = folder / "scheduler" / "scheduler_config.json"
        write_json(path, {**json.loads(path.read_text()), **({"sigma_max": "1348"} if case == "ve-sigma" else
                                                            {"sigma_min": None})})
    elif case in ("missing-tensor", "nan-weights"):
        from safetensors.torch import load_file, save_file

        unet = ddpm_unet()
        if case == "nan-weights":
            with torch.no_grad():
                unet.conv_out.bias.fill_(math.nan)
        unet.save_pretrained(folder)
        DDPMScheduler().save_pretrained(folder)
        if case == "missing-tensor":
            weights = folder / "diffusion_pytorch_model.safetensors"
            save_file({k: v for k, v in load_file(weights).items() if k != "conv_in.weight"}, weights)
    elif case == "not-a-folder":
        spec = f"diffusers:{tmp_path / 'missing' / 'folder'}"
    elif case == "a-file":
        (tmp_path / "f.txt").write_text("x")
        spec = f"diffusers:{tmp_path / 'f.txt'}"
    with pytest.raises(PretrainedError, match=match) as err:
        load_denoiser(spec)
    assert "\n" not in str(err.value)


def test_other_vp_schedulers_share_the_schedule(tmp_path):
    """A pipeline saved with PNDMScheduler (any DDPM-compatible scheduler) gives the same SDE as DDPMScheduler."""
    a = load_denoiser(f"diffusers:{save_pipeline(tmp_path / 'a', ddpm_unet(), PNDMScheduler())}")
    b = load_denoiser(f"diffusers:{save_pipeline(tmp_path / 'b', ddpm_unet(), DDPMScheduler())}")
    assert repr(a.sde) == repr(b.sde)


class TimestepEpsNet(torch.nn.Module):
    """A user's own network in the DDPM convention: net(x, k) for timestep k = 0..N-1, predicting eps. Here it is
    the exact eps of a 2-D Gaussian mixture (so the recipe is checked against the truth)."""

    def __init__(self, mixture, sde):
        super().__init__()
        self.exact = mixture.denoiser(sde)
        self.n = sde.num_timesteps

    def forward(self, x, k):
        return self.exact(x, (k + 1) / self.n).eps


def test_own_network_recipe(eight_gaussians):
    """docs/models.md's recipe: an nn.Module(x, k) in DDPM's timestep convention, wrapped as a Denoiser."""
    sde = DiscreteVPSDE(DDPMScheduler().alphas_cumprod)
    my_net = TimestepEpsNet(eight_gaussians, sde)
    denoiser = Denoiser(lambda x, t: my_net(x, sde.timestep(t)), sde, "eps", shape=(2,))
    exact = eight_gaussians.denoiser(sde)
    x = torch.randn(64, 2, dtype=F64) * 2
    t = torch.rand(64, dtype=F64) * (1 - sde.eps) + sde.eps
    torch.testing.assert_close(denoiser(x, t).eps, exact(x, t).eps)
    a, _ = sample(build_sampler("dpmpp", steps=20), denoiser, range(256), dtype=F64)
    b, _ = sample(build_sampler("dpmpp", steps=20), exact, range(256), dtype=F64)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("spec", ["diffusers:someone/ddpm-tiny", "diffusers:{folder}"])
def test_without_diffusers_every_path_names_the_package_to_install(spec, tmp_path, monkeypatch):
    """A core install has neither diffusers nor huggingface_hub: a hub id, a folder, and fetching one fail with the
    install line, not a ModuleNotFoundError from inside."""
    from lightning_sde.models.pretrained import fetch

    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    ddpm_pipeline(tmp_path / "pipe")
    with pytest.raises(PretrainedError, match="needs the diffusers package: pip install diffusers"):
        load_denoiser(spec.format(folder=tmp_path / "pipe"))
    with pytest.raises(PretrainedError, match="needs the diffusers package"):
        fetch("someone/ddpm-tiny")


def test_a_ve_model_samples_from_its_schedulers_eps_and_loads_in_eval_mode(tmp_path):
    from lightning_sde.models.pretrained import load

    denoiser = load(f"diffusers:{ncsnpp_pipeline(tmp_path / 'm', sampling_eps=1e-3)}")
    assert denoiser.sde.eps == 1e-3 and not denoiser.training and not denoiser.net.training
    assert load(f"diffusers:{ncsnpp_pipeline(tmp_path / 'd')}").sde.eps == 1e-5  # the scheduler's default


def test_the_model_id_changes_when_its_weights_are_replaced_by_a_file_of_the_same_size(tmp_path):
    import os

    folder = ddpm_pipeline(tmp_path / "m")
    before = locate(f"diffusers:{folder}").id()
    weights = next(p for p in (folder / "unet").iterdir() if p.suffix in (".safetensors", ".bin"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten: same size, a later time
    assert locate(f"diffusers:{folder}").id() != before
    assert locate(f"diffusers:{folder}").id() == locate(f"diffusers:{folder}").id()
