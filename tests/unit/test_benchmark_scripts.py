"""Every benchmark script answers --help with its usage and starts no work: a reader trying `--help` must not rerun
a benchmark for minutes or rewrite its committed results. The scripts run from a copy, so a script that ignored
--help could not touch benchmarks/results."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("benchmarks")
    for script in BENCHMARKS.glob("*.py"):
        shutil.copy(script, folder)
    return folder


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_the_usage_and_does_nothing_else(copy, script):
    proc = subprocess.run([sys.executable, str(copy / script), "--help"], capture_output=True, text=True, timeout=120,
                          check=False, cwd=copy, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.startswith("usage:"), proc.stdout[-500:] + proc.stderr[-1500:]
    assert sorted(p.name for p in copy.iterdir() if p.suffix != ".py" and p.name != "__pycache__") == []
