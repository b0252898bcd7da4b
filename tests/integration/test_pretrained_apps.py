"""A published-format model through the apps, as a user runs them: `checkpoint=diffusers:<folder>` in lsde-bench,
lsde-likelihood and lsde-figures on a tiny random DDPM-structured model of the digits' shape (1 x 8 x 8), and the
offline failures (a hub id not in the cache, lsde-prepare without a network) in one line each."""

import json
import os
import subprocess
import sys

import pytest

from helpers.launch import run_app
from helpers.tiny_diffusers import ddpm_pipeline
from lightning_sde.bench.report import load

ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def app(name, *overrides, env=ENV, timeout=300):
    return run_app(f"lightning_sde.cli.{name}", *overrides, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return ddpm_pipeline(tmp_path_factory.mktemp("pretrained") / "ddpm-digits-shape")


def test_bench_sweeps_samplers_on_an_imported_model(tmp_path, model):
    spec = f"diffusers:{model}"
    # a loader batch above the training set's size (no training here) does not stop the data moments' measurement
    proc = app("bench", f"checkpoint={spec}", "data=digits", "data.batch_size=5000", "nfe=[4,8]", "seeds.count=64",
               "progress=false",
               "~samplers", "+sampler@samplers.ddim=ddim", "+sampler@samplers.dpmpp=dpmpp",
               "+sampler@samplers.unipc=unipc", "+sampler@samplers.sde=recommended_sde", f"results={tmp_path}/r.jsonl",
               f"output_dir={tmp_path}/h", "wandb.enabled=false")
    assert proc.returncode == 0, proc.stderr[-4000:]
    # the model has no data moments: the Gaussian start of recommended_sde uses the data's
    assert "Gaussian starts use its data's" in proc.stdout + proc.stderr
    rows = load(tmp_path / "r.jsonl")
    assert {(r["sampler"], r["nfe"]) for r in rows} == {
        (s, n) for s in ("ddim", "dpmpp", "unipc", "sde") for n in (4, 8)} | {
        ("exact (noise floor)", 0)}  # the digits the reference leaves
    assert all(r["checkpoint"] == spec and r["target"].startswith(f"diffusers:{model}/unet@") for r in rows)
    assert all(r["value"] == r["value"] and r["n_nonfinite"] == 0 for r in rows)


def test_likelihood_and_figures_on_an_imported_model(tmp_path, model):
    spec = f"diffusers:{model}"
    proc = app("likelihood", f"checkpoint={spec}", "data=digits", "data.dequantize=true", "n=4", "batch_size=4",
               "divergence=hutchinson", "ode.rtol=1e-3", "ode.atol=1e-3",  # the app's path under test, not the ODE
               f"out={tmp_path}/l", f"output_dir={tmp_path}/h1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(next((tmp_path / "l").rglob("summary.json")).read_text())
    assert summary["target"] == spec and summary["n"] == 4 and summary["bpd"] > 0
    proc = app("figures", f"checkpoint={spec}", "figures=[interpolation]", "interpolation.n=5", "formats=[png]",
               f"out={tmp_path}/f", f"output_dir={tmp_path}/h2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert list((tmp_path / "f").glob("interpolation_vp_discrete_ddpm-digits-shape.png"))


def test_uncached_hub_model_fails_at_start_naming_the_fetch_command(tmp_path):
    env = {**ENV, "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    proc = app("bench", "checkpoint=diffusers:google/ddpm-cifar10-32", "data=digits", f"results={tmp_path}/r.jsonl",
               f"output_dir={tmp_path}/h", env=env, timeout=120)
    assert proc.returncode == 1
    assert "lsde-prepare diffusers google/ddpm-cifar10-32" in proc.stderr
    assert not (tmp_path / "r.jsonl").exists()
    proc = subprocess.run([sys.executable, "-m", "lightning_sde.cli.prepare", "diffusers", "google/ddpm-cifar10-32"],
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 1 and proc.stderr.startswith("lsde-prepare diffusers: error: google/ddpm-cifar10-32: "
                                                           "could not fetch")
    assert len(proc.stderr.strip().splitlines()) == 1  # the hub's own multi-line message folded into one
