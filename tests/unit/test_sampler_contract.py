"""The Sampler contract, held by every registered sampler: the step callback and the progress bar, budgets set
through at_nfe / at_tolerance, the Gaussian start and explicit times resolved in one place, grid tuning counted as
set-up and cached per model weights, and the shared sample path's per-batch NFE."""

import dataclasses

import pytest
import torch

from helpers.oracles import SDES
from lightning_sde.exact import eight_gaussians
from lightning_sde.generation import generate
from lightning_sde.samplers import SAMPLERS, build_sampler, sample, time_grid
from lightning_sde.samplers import schedule as schedule_module

MIX = eight_gaussians()
FIXED_STEPS = {name for name, cls in SAMPLERS.items() if not build_sampler(name).adaptive}


def small(name: str, **params):
    """Every sampler, cheaply: 6 steps for fixed-step ones, loose tolerances for adaptive ones."""
    if name in FIXED_STEPS or params.get("method") == "rk4":
        return build_sampler(name, **{"steps": 6, **params})
    return build_sampler(name, **{"rtol": 1e-3, "atol": 1e-3, **params})


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_reports_each_step_and_its_nfe_to_the_callback_and_bar(name, capsys):
    den = MIX.denoiser(SDES["vp"])
    seen = []
    x, info = sample(small(name), den, range(8), dtype=torch.float64, callback=seen.append, progress=True)
    assert info["nfe"] == den.nfe and torch.isfinite(x).all()
    assert [s["i"] for s in seen] == list(range(len(seen))) and len(seen) >= 1
    assert float(seen[-1]["t"]) == pytest.approx(SDES["vp"].eps)  # the last step reaches eps
    assert torch.equal(seen[-1]["x"], x)
    if name in FIXED_STEPS:
        assert len(seen) == 6
    else:
        assert len(seen) == info["n_accept"]  # one report per accepted step
    assert "nfe" in capsys.readouterr().err  # the bar counts NFE


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_budgets_come_from_the_contract(name):
    sampler = build_sampler(name)
    if sampler.adaptive:
        tuned = sampler.at_tolerance(1e-4)
        assert tuned.rtol == tuned.atol == 1e-4 and tuned is not sampler
        with pytest.raises(ValueError, match="adaptive"):
            sampler.at_nfe(10)
        with pytest.raises(ValueError, match="measured"):
            _ = sampler.nfe_per_step
    else:
        budgeted = sampler.at_nfe(12)
        assert budgeted.steps == 12 // sampler.nfe_per_step and budgeted.steps * budgeted.nfe_per_step <= 12
        assert sampler.at_nfe(sampler.nfe_per_step - 1) is None
        with pytest.raises(ValueError, match="fixed number of steps"):
            sampler.at_tolerance(1e-3)


def test_ode_budgets_follow_its_method():
    assert build_sampler("ode", method="rk4").at_nfe(12).steps == 3
    assert build_sampler("ode").adaptive and not build_sampler("ode", method="rk4").adaptive


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_takes_the_gaussian_start(name):
    sde = SDES["vp"]
    den = MIX.denoiser(sde)
    start = den.data_moments.start_time(sde, 0.15)
    calls = []
    den.net.register_forward_hook(lambda module, args, out: calls.append(float(args[1].max())))
    x, info = sample(small(name, gaussian_start=0.15), den, range(8), dtype=torch.float64)
    assert info["start_time"] == pytest.approx(start) and 0.6 < start < 0.9
    assert max(calls) <= start + 1e-12, "no evaluation before the start time"
    assert len(calls) == info["nfe"] and torch.isfinite(x).all()


@pytest.mark.parametrize("name", sorted(FIXED_STEPS | {"ode"}))
def test_explicit_times_are_followed_exactly(name):
    sde = SDES["vp"]
    den = MIX.denoiser(sde)
    times = time_grid(sde, 6, "quadratic")
    params = {"method": "euler"} if name == "ode" else {}
    queried = []
    den.net.register_forward_hook(lambda module, args, out: queried.append(float(args[1][0])))
    sample(build_sampler(name, steps=6, times=times.tolist(), **params), den, range(4), dtype=torch.float64)
    assert {round(t, 12) for t in queried} <= {round(float(t), 12) for t in times}

def test_grid_tuning_is_set_up_counted_apart_and_cached_per_weights():
    sde = SDES["vp"]
    den = MIX.denoiser(sde)
    schedule_module._tuned.clear()
    sampler = build_sampler("dpmpp", steps=6, grid="optimized")
    x, info = sample(sampler, den, range(16), dtype=torch.float64)
    assert info["nfe"] == 6 and info["setup_nfe"] > 0 and den.nfe == 6 + info["setup_nfe"]
    again, info2 = sample(sampler, den, range(16), dtype=torch.float64)
    assert info2["nfe"] == 6 and "setup_nfe" not in info2 and info2["tuning"]["cached"]  # same weights: cached
    assert torch.equal(x, again)
    other = eight_gaussians(radius=3.0).denoiser(sde)  # other "weights": tuned anew, never the first grid
    _, info3 = sample(sampler, other, range(16), dtype=torch.float64)
    assert info3["setup_nfe"] > 0


def test_the_fingerprint_follows_the_weights():
    net = torch.nn.Linear(2, 2)
    from lightning_sde.models.denoiser import Denoiser

    den = Denoiser(lambda x, t: net(x), SDES["vp"], "eps", shape=(2,))
    module = Denoiser(net, SDES["vp"], "eps", shape=(2,))
    before = module.fingerprint()
    with torch.no_grad():
        net.weight.add_(1e-3)  # an optimiser step
    assert module.fingerprint() != before and den.fingerprint() == den.fingerprint()


def test_generate_reports_the_nfe_of_each_batch_not_their_sum():
    den = MIX.denoiser(SDES["vp"])
    whole = generate(build_sampler("ddim", steps=7), den, range(10), batch_size=10, device="cpu")
    batched = generate(build_sampler("ddim", steps=7), den, range(10), batch_size=3, device="cpu")
    assert whole.nfe_per_batch == [7] and batched.nfe_per_batch == [7, 7, 7, 7] and batched.nfe == 7
    torch.testing.assert_close(batched.x, whole.x, rtol=1e-6, atol=1e-6)
    assert batched.n_nonfinite == 0 and batched.world_size == 1


def test_params_round_trip_through_the_constructor():
    for name in SAMPLERS:
        sampler = build_sampler(name)
        fields = {f.name for f in dataclasses.fields(sampler) if f.init}
        assert type(sampler)(**{k: v for k, v in sampler.params().items() if k in fields}) == sampler
