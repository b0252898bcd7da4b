"""Class-conditional training as a user runs it: lsde-train experiment=toy2d_cond (8 Gaussians, each a class,
label dropout), then guided sampling from the checkpoint, scored against the exact labelled mixture."""

import os
import sys

import pytest
import torch

from helpers.launch import run_app
from lightning_sde import load_denoiser
from lightning_sde.data import Toy2DDataModule
from lightning_sde.metrics.mmd import mmd
from lightning_sde.models.guidance import guided
from lightning_sde.samplers import build_sampler, sample

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_toy2d_cond_trains_a_model_that_samples_each_class(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lightning_sde.cli.train", "experiment=toy2d_cond", f"run_dir={run}", "run_name=c",
           "logger=csv", "trainer.max_steps=1500", "trainer.val_check_interval=1500", "samplers=quick",
           "callbacks.sampler.n_samples=300", "callbacks.best.monitor=val/ddim_10/sliced_w2",
           "callbacks.sampler.guidance=1.0"]
    proc = run_app(*cmd[2:], env=ENV)
    assert proc.returncode == 0, proc.stderr[-4000:]
    denoiser = load_denoiser(run / "checkpoints" / "last.ckpt")
    assert denoiser.num_classes == 8
    mixture = Toy2DDataModule(n_train=10, n_val=10, labels=True).mixture  # the labelled truth
    n = 800
    labels = torch.arange(n) % 8
    x, info = sample(build_sampler("dpmpp", steps=20), guided(denoiser, labels, 0.0), range(n))
    nearest = ((x[:, None].double() - mixture.means[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == labels).float().mean() > 0.97  # measured 0.999 at w = 0
    assert info["nfe"] == 20
    # class 3's samples against exact p(x | y = 3), relative to the unconditional model's distance to it
    rows = labels == 3
    exact = mixture.conditional(3).sample(int(rows.sum()), torch.Generator().manual_seed(1)).float()
    unconditional, _ = sample(build_sampler("dpmpp", steps=20), denoiser, range(n))
    assert mmd(x[rows], exact) < 0.25 * mmd(unconditional[rows], exact)
    # lsde-figures draws one class of the conditional model at a guidance weight; a class it lacks fails clearly
    figures = [sys.executable, "-m", "lightning_sde.cli.figures", f"checkpoint={run / 'checkpoints' / 'last.ckpt'}",
               "figures=[trajectories]", "formats=[png]", f"out={tmp_path}/f", f"output_dir={tmp_path}/h",
               "guidance=1.0", "label=2", "paths_per_figure=4"]
    proc = run_app(*figures[2:], env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "f" / "trajectories_vp_run_class2_w1.png").is_file()
    proc = run_app(*figures[2:-2], "label=8", env=ENV, timeout=300)
    assert proc.returncode == 1 and "config label: must be a class in 0..7; got 8" in proc.stderr
    # resumed at another guidance weight, its evaluations would share the run's val/ curves and best-checkpoint choice
    again = [c for c in cmd if not c.startswith(("trainer.max_steps=", "callbacks.sampler.guidance="))]
    proc = run_app(*again[2:], "trainer.max_steps=1600", "callbacks.sampler.guidance=3", env=ENV, timeout=300)
    assert proc.returncode == 1 and ("config callbacks.sampler.guidance: the run's evaluations so far sampled at "
                                     "guidance 1, this config at 3") in proc.stderr, proc.stderr[-3000:]
