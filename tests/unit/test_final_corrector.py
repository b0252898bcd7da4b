"""UniPC's final corrector: the last evaluation corrects the last step at eps instead of taking one more step.

Checked against diffusers' UniPC on its Karras and exponential sigmas, which (final_sigmas_type="sigma_min") repeat
the last sigma and so spend their last evaluation the same way, and against a converged reference for its order."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.convergence import SEEDS, check_order, mixture_reference
from helpers.oracles import SDES, counting_denoiser, rmse, wide_circle
from lightning_sde.samplers import SeededNoise, build_sampler, sample

pytestmark = pytest.mark.usefixtures("one_thread")


def diffusers_unipc(den, x_T, order: int, nfe: int, spacing: str) -> tuple[torch.Tensor, int]:
    """diffusers' UniPC on the VP SDE's 1000 training steps (t_k = k / 1000, the first at eps), its model called at
    the exact continuous time of each sigma; (x at eps, model calls)."""
    from diffusers import UniPCMultistepScheduler

    sde = den.sde
    alpha_bar = sde.alpha(torch.arange(1, 1001, dtype=torch.float64) / 1000) ** 2
    betas = 1 - alpha_bar / torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    sched = UniPCMultistepScheduler(trained_betas=betas.numpy(), solver_order=order, final_sigmas_type="sigma_min",
                                    **{f"use_{spacing}_sigmas": True})
    sched.set_timesteps(nfe)
    sigmas = sched.sigmas.double()
    x, calls = x_T.clone(), 0
    for i, k in enumerate(sched.timesteps):
        t = sde.t_from_log_snr(-sigmas[i].log())
        calls += 1
        x = sched.step(den(x, t).eps, k, x).prev_sample.double()
    assert abs(float(sde.t_from_log_snr(-sigmas[-1].log())) - sde.eps) < 1e-4  # it ends at eps
    return x, calls


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("spacing, grid", [("karras", "karras"), ("exponential", "logsnr")])
def test_it_is_diffusers_unipc_on_its_karras_and_exponential_sigmas(order, spacing, grid):
    sde = SDES["vp"]
    den = wide_circle().denoiser(sde)
    x_T = sde.prior_sample(SeededNoise(range(64), den.shape, dtype=torch.float64).prior())
    theirs, calls = diffusers_unipc(den, x_T, order, 10, spacing)
    ours, info = build_sampler("unipc", order=order, steps=10, grid=grid, final_corrector=True)(den, x_T)
    plain, _ = build_sampler("unipc", order=order, steps=10, grid=grid)(den, x_T)
    assert info["nfe"] == calls == 10
    assert (ours - theirs).abs().max() < 2e-4  # diffusers keeps its sigmas in float32
    assert (plain - theirs).abs().max() > 1e-2  # without it: another run


def test_it_counts_every_evaluation_and_the_last_is_at_eps():
    sde = SDES["vp"]
    den, net = counting_denoiser(wide_circle(), "vp")
    x, info = sample(build_sampler("unipc", order=3, steps=12, final_corrector=True), den, seeds=range(8),
                     dtype=torch.float64)
    assert info["nfe"] == net.calls == 12
    assert float(net.times[-1].min()) == pytest.approx(sde.eps, rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_unipc_3_with_it_has_order_4_against_a_converged_reference(sde_name):
    ref, ref_error = mixture_reference(sde_name)
    den = wide_circle().denoiser(SDES[sde_name])
    steps = (33, 65, 129)  # 32, 64, 128 intervals
    errors = [rmse(sample(build_sampler("unipc", order=3, steps=n, grid="logsnr", final_corrector=True), den,
                          seeds=SEEDS, dtype=torch.float64)[0], ref) for n in steps]
    assert ref_error <= 1e-2 * min(errors)
    check_order([n - 1 for n in steps], errors, 4)


def test_lower_order_final_counts_it_as_a_step():
    from lightning_sde.samplers.multistep import step_orders

    lam = torch.arange(6, dtype=torch.float64)
    assert step_orders(lam, 3, True, math.inf, math.inf) == [1, 2, 3, 2, 1]
    assert step_orders(lam, 3, True, math.inf, math.inf, extra_final=1) == [1, 2, 3, 3, 2]  # as diffusers


def test_select_can_choose_it_and_runs_what_it_chose():
    den = wide_circle().denoiser(SDES["vp"])
    x_T = SDES["vp"].prior_sample(SeededNoise(range(32), den.shape, dtype=torch.float64).prior())
    selecting = build_sampler("unipc", order=3, steps=8, grid="select", pilot=64,
                              select_over={"final_corrector": [False, True]})
    x, info = selecting(den, x_T)
    report = info["selection"]
    assert {label.split(", ")[-1] for label in report["pilot_rmse_by_choice"]} == {"final_corrector=False",
                                                                                   "final_corrector=True"}
    chosen = build_sampler("unipc", order=3, steps=8, grid=report["grid"], final_corrector=report["final_corrector"])
    again, again_info = chosen(den, x_T)
    assert torch.equal(x, again) and info["nfe"] == again_info["nfe"] == 8


@pytest.mark.parametrize("params, message", [
    ({"final_corrector": 1}, "final_corrector must be true or false"),
    ({"final_corrector": True, "steps": 1}, "final_corrector needs steps >= 2"),
    ({"final_corrector": True, "steps": 3, "times": [1.0, 0.5, 0.1, 1e-3]}, "times must be 3 strictly decreasing"),
])
def test_bad_settings_fail_on_construction(params, message):
    with pytest.raises(ValueError, match=message):
        build_sampler("unipc", **params)


def test_a_sweep_leaves_out_budgets_it_cannot_fill():
    sampler = build_sampler("unipc", final_corrector=True)
    assert sampler.at_nfe(1) is None
    assert sampler.at_nfe(2).steps == 2 and sampler.at_nfe(2).intervals == 1
