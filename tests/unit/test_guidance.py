"""Class-conditional denoising and classifier-free guidance against a labelled Gaussian mixture, whose conditional
scores p_t(x | y) are exact: w = 0 is the exact conditional for every sampler, w > 0 is its closed form, and one
guided evaluation is one NFE over a doubled batch."""

import math

import pytest
import torch

from lightning_sde.exact import GaussianMixture, eight_gaussians
from lightning_sde.generation import batch_model, generate
from lightning_sde.metrics.mmd import mmd
from lightning_sde.models.guidance import guided
from lightning_sde.samplers import build_sampler, optimize_grid, sample
from lightning_sde.sde import VESDE, VPSDE

F64 = torch.float64


def labelled_circle() -> GaussianMixture:
    """8 components on a circle of radius 3, classes 0 (even angles, heavier) and 1 (odd angles)."""
    angles = torch.arange(8, dtype=F64) * (2 * math.pi / 8)
    means = 3.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    weights = torch.tensor([2.0, 1.0] * 4, dtype=F64)
    return GaussianMixture(means, stds=0.3 + 0.05 * torch.arange(8, dtype=F64), weights=weights,
                           labels=torch.arange(8) % 2)


MIX = labelled_circle()


def test_labelled_mixture_conditionals():
    c1 = MIX.conditional(1)
    torch.testing.assert_close(c1.means, MIX.means[1::2])
    torch.testing.assert_close(c1.log_weights.exp(), torch.full((4,), 0.25, dtype=F64))
    torch.testing.assert_close(MIX.class_weights(), torch.tensor([2 / 3, 1 / 3], dtype=F64))
    x, y = MIX.sample_labelled(4000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, MIX.sample(4000, torch.Generator().manual_seed(0)))
    assert abs(float((y == 0).double().mean()) - 2 / 3) < 0.03
    # Bayes: p(x) = sum_y p(y) p(x | y)
    grid = torch.randn(50, 2, dtype=F64) * 3
    mixed = torch.logsumexp(torch.stack([MIX.class_weights()[c].log() + MIX.conditional(c).log_prob(grid)
                                         for c in (0, 1)]), 0)
    torch.testing.assert_close(mixed, MIX.log_prob(grid))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 50.0)], ids=["vp", "ve"])
@pytest.mark.parametrize("w", [0.0, 0.5, 2.0])
def test_guided_score_is_the_closed_form(sde, w):
    """(1 + w) grad log p_t(x | y) - w grad log p_t(x), per row, for mixed labels in one batch; x0 through eps."""
    den = guided(MIX.denoiser(sde), torch.tensor([0, 1, 1, 0, 1, 0]), w)
    x = torch.randn(6, 2, dtype=F64) * 3
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95], dtype=F64)
    pred = den(x, t)
    for i, y in enumerate([0, 1, 1, 0, 1, 0]):
        s_c = MIX.conditional(y).marginal_score(sde, x[i:i + 1], t[i:i + 1])
        s_u = MIX.marginal_score(sde, x[i:i + 1], t[i:i + 1])
        torch.testing.assert_close(pred.score[i:i + 1], (1 + w) * s_c - w * s_u)
    assert den.nfe == 1 and den.batch_factor == (1 if w == 0 else 2)


class Recording(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.batches = net, []

    def forward(self, x, t, y=None):
        self.batches.append((x.shape[0], None if y is None else y.tolist()))
        return self.net(x, t, y)


def test_one_guided_evaluation_is_one_nfe_over_a_doubled_batch():
    base = MIX.denoiser(VPSDE())
    base.net = Recording(base.net)
    den = guided(base, torch.tensor([1, 0, 1]), 1.5)
    x, info = build_sampler("dpmpp", steps=7)(den, torch.randn(3, 2, dtype=F64))
    assert info["nfe"] == 7 and len(base.net.batches) == 7
    assert all(b == (6, [1, 0, 1, 2, 2, 2]) for b in base.net.batches)  # [y, null] in one forward
    den0 = guided(base, torch.tensor([1, 0, 1]), 0.0)
    base.net.batches.clear()
    build_sampler("ddim", steps=4)(den0, torch.randn(3, 2, dtype=F64))
    assert base.net.batches == [(3, [1, 0, 1])] * 4


def test_net_batch_splits_the_doubled_batch_and_a_guided_denoiser_keeps_its_base_options():
    """with_net_batch(4) on a guided batch of 3: the network sees [x, x] as 4 + 2 rows, the prediction is the same
    and it is one NFE; the guided copy keeps its base's net_batch and autocast (bf16 on the network's inputs)."""
    base = MIX.denoiser(VPSDE())
    base.net = Recording(base.net)
    den = guided(base, torch.tensor([1, 0, 1]), 1.5)
    x, t = torch.randn(3, 2, dtype=F64), torch.tensor(0.3, dtype=F64)
    whole = den(x, t).eps
    chunked = den.with_net_batch(4)
    base.net.batches.clear()
    nfe = chunked.nfe
    torch.testing.assert_close(chunked(x, t).eps, whole, rtol=1e-12, atol=0)
    assert base.net.batches == [(4, [1, 0, 1, 2]), (2, [2, 2])] and chunked.nfe == nfe + 1 and den.net_batch is None
    assert guided(base.with_net_batch(2), torch.tensor([0]), 1.0).net_batch == 2
    dtypes = []
    bf16 = type(base)(lambda x, t, y: dtypes.append(torch.get_autocast_dtype("cpu")
                                                    if torch.is_autocast_enabled("cpu") else None) or x,
                      base.sde, "eps", base.shape, num_classes=base.num_classes, autocast="bf16")
    guided(bf16, torch.tensor([1]), 1.0)(x.float(), t)
    assert dtypes == [torch.bfloat16]
    with pytest.raises(ValueError, match="net_batch must be a number of rows >= 1"):
        den.with_net_batch(0)


SAMPLERS = [("ddim", {"steps": 30}), ("dpmpp", {"steps": 15}), ("unipc", {"steps": 15}), ("heun", {"steps": 15}),
            ("ode", {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5}), ("ancestral", {"steps": 40}),
            ("euler_maruyama", {"steps": 40}), ("reverse_diffusion", {"steps": 40}), ("pc", {"steps": 20}),
            ("sde_dpmpp", {"steps": 20}), ("unipc_adaptive", {})]


@pytest.mark.parametrize("name, params", SAMPLERS, ids=[s[0] for s in SAMPLERS])
def test_unguided_conditional_sampling_is_the_exact_conditional(name, params):
    """w = 0 with mixed labels: each row is exactly what the sampler gives on that class's own mixture, seed by
    seed (seed-addressed x_T and noise), for every sampler, deterministic or stochastic."""
    sde = VPSDE()
    seeds = list(range(12))
    labels = torch.tensor([0, 1] * 6)
    sampler = build_sampler(name, **params)
    x, _ = sample(sampler, guided(MIX.denoiser(sde), labels, 0.0), seeds, dtype=F64)
    for c in (0, 1):
        rows = (labels == c).nonzero().flatten().tolist()
        own, _ = sample(sampler, MIX.conditional(c).denoiser(sde), [seeds[i] for i in rows], dtype=F64)
        tol = 1e-3 if sampler.adaptive else 1e-6
        torch.testing.assert_close(x[rows], own, rtol=tol, atol=tol)


@pytest.mark.slow
def test_conditional_samples_reach_the_exact_noise_floor():
    """w = 0, class 1: DPM-Solver++ at 30 steps and Euler-Maruyama at 1000 land within the MMD noise floor of exact
    p(x | y = 1) samples; guidance w = 3 is measurably off it (it sharpens the class)."""
    n, sde = 2000, VPSDE()
    exact = MIX.conditional(1)
    data = exact.sample(n, torch.Generator().manual_seed(123))
    floor = sum(mmd(exact.sample(n, torch.Generator().manual_seed(s)), data) for s in (1, 2, 3)) / 3
    labels = torch.ones(n, dtype=torch.long)
    for name, params in [("dpmpp", {"steps": 30}), ("euler_maruyama", {"steps": 1000})]:
        x, _ = sample(build_sampler(name, **params), guided(MIX.denoiser(sde), labels, 0.0), range(n), dtype=F64)
        assert mmd(x, data) < 1.5 * floor, name
    x, _ = sample(build_sampler("dpmpp", steps=30), guided(MIX.denoiser(sde), labels, 3.0), range(n), dtype=F64)
    assert mmd(x, data) > 2 * floor


def test_a_guided_model_starts_at_t_whatever_gaussian_start_asks():
    """The Gaussian start carries x_T by the fit of p(x), not of p(x | y): under guidance a mode's occupancy came out
    0.034 off its exact weight (0.012 from T; standard error 0.007) on a 16-D mixture. Guided, samplers start at T
    (both knobs)."""
    den = guided(MIX.denoiser(VPSDE()), torch.tensor([0, 1] * 4), 0.0)
    plain = sample(build_sampler("unipc", steps=8), den, range(8), dtype=F64)[0]
    for knob in ({"gaussian_start": 0.3}, {"gaussian_start_kl": 0.1}):
        torch.testing.assert_close(sample(build_sampler("unipc", steps=8, **knob), den, range(8), dtype=F64)[0], plain,
                                   rtol=0, atol=0)
    # grid=select does not spend pilot runs on Gaussian-start candidates that would start at T too
    _, info = sample(build_sampler("unipc", steps=8, grid="select", pilot=32,
                                   select_over={"gaussian_start": [None, 0.3]}), den, range(8), dtype=F64)
    assert all(choice.endswith("gaussian_start=None") for choice in info["selection"]["pilot_rmse_by_choice"])


def test_the_exact_oracle_refuses_a_label_beyond_the_null_one():
    """Labels 0..C-1 are classes and C the null label (the unconditional score); C + 1 was taken for the null label,
    where a trained network fails on it."""
    den = MIX.denoiser(VPSDE())
    x = torch.zeros(2, 2, dtype=F64)
    torch.testing.assert_close(den(x, 0.5, torch.tensor([2, 2])).eps, den(x, 0.5).eps)  # the null label
    with pytest.raises(ValueError, match=r"^labels must lie in 0\.\.2 \(2: the null label\); got \[3\]"):
        den(x, 0.5, torch.tensor([0, 3]))


def test_guidance_refuses_bad_input():
    with pytest.raises(ValueError, match="unconditional"):
        guided(MIX.conditional(0).denoiser(VPSDE()).__class__(lambda x, t: x, VPSDE(), "eps", (2,)), [0], 1.0)
    with pytest.raises(ValueError, match="classes in 0..1"):
        guided(MIX.denoiser(VPSDE()), torch.tensor([0, 2]), 1.0)
    import numpy as np

    assert guided(MIX.denoiser(VPSDE()), torch.tensor([0]), np.float32(1.5)).guidance == 1.5  # np.arange's weights
    for w in (float("nan"), float("inf"), -0.5, True):
        with pytest.raises(ValueError, match=r"^guidance: must be a number >= 0 \(0: the conditional model\); got"):
            guided(MIX.denoiser(VPSDE()), torch.tensor([0]), w)
    den = guided(MIX.denoiser(VPSDE()), torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match="holds 2 labels but got a batch of 3"):
        den(torch.zeros(3, 2, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="labels must be 8 class indices"):
        GaussianMixture(torch.zeros(8, 2), stds=torch.ones(8), labels=[0.5] * 8)
    with pytest.raises(ValueError, match=r"classes \[1\] have no component"):
        GaussianMixture(torch.zeros(2, 2), stds=torch.ones(2), labels=[0, 2])


def test_generate_with_guidance_is_seed_addressed():
    """The sample of seed i, its class (i mod num_classes) and its noise do not depend on the batch it runs in."""
    from lightning_sde.generation import generate, seed_labels

    den = MIX.denoiser(VPSDE())
    sampler = build_sampler("sde_dpmpp", steps=8)
    a = generate(sampler, den, range(10), 3, "cpu", F64, guidance=1.0)
    b = generate(sampler, den, range(10), 10, "cpu", F64, guidance=1.0)
    torch.testing.assert_close(a.x, b.x)
    assert a.batch_factor == 2 and a.nfe_per_batch == [8] * 4
    torch.testing.assert_close(seed_labels(range(5), "cycle", 2), torch.tensor([0, 1, 0, 1, 0]))
    torch.testing.assert_close(seed_labels(range(3), 1, 2), torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="class in 0..1"):
        seed_labels(range(3), 2, 2)


def test_one_label_for_every_row_of_any_batch():
    den = MIX.denoiser(VPSDE())
    x, t = torch.randn(5, 2, dtype=F64), torch.full((5,), 0.4, dtype=F64)
    torch.testing.assert_close(guided(den, torch.tensor([1]), 1.5)(x, t).eps,
                               guided(den, torch.ones(5, dtype=torch.long), 1.5)(x, t).eps)
    assert guided(den, 1, 0.0)(x[:3], t[:3]).eps.shape == (3, 2)


def test_a_guided_model_tunes_its_grid_on_a_pilot_with_its_class_mix():
    den = guided(MIX.denoiser(VPSDE()), torch.tensor([0, 1, 1]), 2.0)
    pilot = den.for_rows(7)
    assert pilot.labels.tolist() == [0, 1, 1, 0, 1, 1, 0] and pilot.guidance == 2.0 and pilot.net is den.net
    assert den.for_rows(3) is den and guided(den, 1, 2.0).for_rows(5).labels.tolist() == [1]
    times, report = optimize_grid(build_sampler("dpmpp", steps=4), den, pilot=16, iters=2)
    assert len(times) == 5 and report["pilot_nfe"] > 0
    x, info = sample(build_sampler("dpmpp", steps=4, times=times.tolist()), den, seeds=range(3), dtype=F64)
    assert info["nfe"] == 4 and torch.isfinite(x).all()
    _, info = sample(build_sampler("dpmpp", steps=2, grid="optimized"), den, seeds=range(3), dtype=F64)
    assert info["nfe"] == 2 and info["setup_nfe"] == info["tuning"]["pilot_nfe"] > 0  # the pilot's copy counted


def test_a_guided_grid_selection_is_one_for_the_run_whatever_the_batches_labels():
    mixture = eight_gaussians(labels=list(range(8)))
    sampler = build_sampler("unipc", steps=12, grid="select", pilot=32, select_over={"order": [2, 3]})
    whole = generate(sampler, mixture.denoiser(VPSDE()), range(12), 12, "cpu", dtype=F64, guidance=0.5)
    pairs = generate(sampler, mixture.denoiser(VPSDE()), range(12), 2, "cpu", dtype=F64, guidance=0.5)
    assert torch.equal(whole.x, pairs.x) and whole.selected == pairs.selected  # one pilot over all 8 classes
    assert whole.setup_nfe == pairs.setup_nfe > 0
    denoiser = mixture.denoiser(VPSDE())
    for batch in ([20, 21], [30, 31]):  # a new model: its pilot runs once, for the first batch only
        _, info = sample(sampler, batch_model(denoiser, batch, 0.7), batch, dtype=F64)
        assert info["selection"].get("cached", False) == (batch[0] == 30)
    one_class = generate(sampler, mixture.denoiser(VPSDE()), range(4), 2, "cpu", dtype=F64, guidance=0.5, labels=3)
    pilot = batch_model(mixture.denoiser(VPSDE()), [5], 0.5, 3).for_rows(4)
    assert pilot.labels.tolist() == [3] and one_class.setup_nfe > 0


def test_a_model_trained_without_label_dropout_is_refused_guidance_and_one_with_no_labels_is_refused(tmp_path):
    """p_uncond=0: the null label never trained, guided samples far off (mean |x| 11.9 for 4.4); p_uncond=1: no label
    trained, 'class 3' at chance. Both trained and sampled without a word."""
    from omegaconf import OmegaConf

    from lightning_sde.module import ScoreModule
    from lightning_sde.targets import check_guidance_learned

    net = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 2, "time_embed_dim": 8,
           "num_classes": 4}
    sde = {"_target_": "lightning_sde.sde.VPSDE"}
    with pytest.raises(ValueError, match=r"^config model.p_uncond: 1 drops every label"):
        ScoreModule(net=net, sde=sde, shape=[2], p_uncond=1.0)
    module = ScoreModule(net=net, sde=sde, shape=[2], p_uncond=0.0)
    with pytest.raises(ValueError, match="never learned \\(trained with model.p_uncond=0\\); sample it at guidance 0"):
        guided(module.denoiser, [1], 2.0)
    assert guided(module.denoiser, [1], 0.0).guidance == 0  # the conditional model itself
    assert ScoreModule(net=net, sde=sde, shape=[2]).denoiser.unconditional_learned
    path = tmp_path / "c.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    cfg = OmegaConf.create({"checkpoint": str(path)})
    with pytest.raises(ValueError, match=r"^config guidance: the checkpoint was trained with model.p_uncond=0"):
        check_guidance_learned(cfg, "checkpoint", [0, 3])
    with pytest.raises(ValueError, match=r"prediction unconditional samples \(guidance=null\) use; sample it at "):
        check_guidance_learned(cfg, "checkpoint", [None])  # the null label alone: samples near the origin
    check_guidance_learned(cfg, "checkpoint", [0])
    # lsde-likelihood (log p through the null label) and lsde-figures (unconditional paths) of such a checkpoint
    from hydra import compose, initialize_config_module

    from lightning_sde.cli.figures import check_values
    from lightning_sde.cli.likelihood import validate
    from lightning_sde.configuration import CONFIG_PACKAGE

    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "global_step": 1,
                "data_config": {"_target_": "lightning_sde.data.Toy2DDataModule", "labels": True}}, path)
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        scored = compose("likelihood", overrides=[f"checkpoint={path}", "data=toy2d", f"out={tmp_path}/l"])
        drawn = compose("figures", overrides=[f"checkpoint={path}", f"out={tmp_path}/f"])
    with pytest.raises(ValueError, match=r"^config checkpoint: a class-conditional model trained with "
                                         r"model.p_uncond=0 never learned the unconditional prediction"):
        validate(scored)  # it scored -8.5 where p_uncond=0.1 scores -4.7, exit 0
    with pytest.raises(ValueError, match=r"unconditional samples \(guidance=null\) use; draw it at guidance=0 "
                                         r"\(class `label`, label=<class>\)$"):  # its key; advised labels= failed
        check_values(drawn)
    unconditional = ScoreModule(net={**net, "num_classes": None}, sde=sde, shape=[2], p_uncond=0.0)
    torch.save({"state_dict": unconditional.state_dict(), "hyper_parameters": dict(unconditional.hparams)}, path)
    check_guidance_learned(cfg, "checkpoint", [None])  # no labels: p_uncond means nothing
