"""`lsde-compare` as a user runs it: a subprocess with Hydra overrides; bad configs fail fast, naming the key."""

import csv
import subprocess
import sys
import time

import pytest


def run_compare(tmp_path, *overrides):
    cmd = [sys.executable, "-m", "lightning_sde.cli.compare", f"hydra.run.dir={tmp_path}", "progress=false", *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_compare_writes_table_csv_and_plot(tmp_path):
    proc = run_compare(
        tmp_path,
        "n_samples=300",
        "samplers.em_1000.steps=100",
        "samplers.pc_1000.steps=50",
        "~samplers.ddim_100",
    )
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "comparison.csv")))
    nfe = {r["sampler"]: int(r["nfe"]) for r in rows}
    assert nfe["em_1000"] == 100 and nfe["pc_1000"] == 100 and nfe["ddim_50"] == 50 and nfe["heun_50"] == 100
    assert nfe["ode_dopri5"] > 20
    assert (tmp_path / "samples.png").stat().st_size > 10_000
    assert "exact (noise floor)" in proc.stdout and "ode_dopri5" in proc.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("samplers.ddim_50.steps=0", "config samplers.ddim_50: ddim: steps must be an integer >= 1"),
        ("samplers.ode_dopri5.rtol=-1", "config samplers.ode_dopri5: ode: rtol must be a number > 0"),
        ("sde.eps=2.0", "config sde: SDE time range needs 0 < eps < T"),
        ("samplers.heun_50.name=heunn", "config samplers.heun_50: unknown sampler 'heunn'"),
    ],
)
def test_bad_config_fails_fast_naming_the_key(tmp_path, override, message):
    start = time.perf_counter()
    proc = run_compare(tmp_path, override)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert time.perf_counter() - start < 60  # start-up only: no sampling happened
    assert not (tmp_path / "comparison.csv").exists()
