"""A fixed-grid sampler's step does nothing that, on a GPU, waits for the device: it makes no tensor from Python
data (a blocking host-to-device copy) and reads no value back to the host (`.item()`, `float(t)`, `if t > 0`).
Checked on the CPU by the ATen ops each step dispatches; the H200 run in benchmarks/README.md is what it costs."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers.oracles import counting_denoiser
from lightning_sde.exact import eight_gaussians
from lightning_sde.samplers import SAMPLERS, build_sampler
from lightning_sde.samplers.noise import SeededNoise

WAITS_FOR_THE_DEVICE = {"aten.lift_fresh.default", "aten._local_scalar_dense.default"}
SETTINGS = {"unipc": [{"order": k} for k in (1, 2, 3, 4)] + [{"order": 2, "final_corrector": True}],
            "dpmpp": [{"order": k} for k in (1, 2, 3)]}


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func))
        return func(*args, **(kwargs or {}))


def fixed_grid_cases():
    for name in sorted(SAMPLERS):
        if not build_sampler(name).adaptive:  # the adaptive ones step inside torchdiffeq
            for params in SETTINGS.get(name, [{}]):
                yield pytest.param(name, params, id=f"{name}-{params}" if params else name)


@pytest.mark.parametrize("name,params", list(fixed_grid_cases()))
def test_a_step_neither_copies_from_nor_reads_back_to_the_host(name, params, monkeypatch):
    denoiser, _ = counting_denoiser(eight_gaussians(), "vp")
    sampler = build_sampler(name, **params).at_nfe(12)
    log, step = OpLog(), type(sampler).step

    def logged_step(self, *args, **kwargs):
        with log:
            return step(self, *args, **kwargs)

    monkeypatch.setattr(type(sampler), "step", logged_step)
    noise = SeededNoise(range(16), (2,)) if sampler.stochastic else None
    x, _ = sampler(denoiser, torch.randn(16, 2, generator=torch.Generator().manual_seed(0)), noise=noise)
    assert torch.isfinite(x).all() and log.ops, "the steps ran"
    assert not log.ops & WAITS_FOR_THE_DEVICE, f"{name} {params}: a step dispatches {log.ops & WAITS_FOR_THE_DEVICE}"
