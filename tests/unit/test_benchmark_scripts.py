"""Every benchmark script answers --help with its usage and starts no work: a reader trying `--help` must not rerun
a benchmark for minutes or rewrite its committed results. The scripts run from a copy, so a script that ignored
--help could not touch benchmarks/results; one interpreter runs them all (torch is imported once)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())
RUN_ALL = """
import contextlib, io, json, runpy, sys
folder, scripts = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, folder)
answers = {}
for script in scripts:
    sys.argv = [script, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(f"{folder}/{script}", run_name="__main__")
        code = "ran to its end"  # it did not stop at --help
    except SystemExit as stop:
        code = stop.code
    answers[script] = [code, out.getvalue()[:200]]
print(json.dumps(answers))
"""


def test_help_prints_the_usage_and_does_nothing_else(tmp_path):
    for script in BENCHMARKS.glob("*.py"):
        shutil.copy(script, tmp_path)
    proc = subprocess.run([sys.executable, "-c", RUN_ALL, str(tmp_path), json.dumps(SCRIPTS)], capture_output=True,
                          text=True, timeout=300, check=False, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = json.loads(proc.stdout.splitlines()[-1])
    assert len(SCRIPTS) >= 20 and sorted(answers) == SCRIPTS
    wrong = {s: a for s, a in answers.items() if a[0] != 0 or not a[1].startswith("usage:")}
    assert not wrong, wrong
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".py" and p.name != "__pycache__") == []


def test_the_shell_scripts_help_writes_nothing_and_the_gpu_check_refuses_a_machine_without_one(tmp_path):
    """`gpu_check.sh --help` took --help for its output folder (mkdir's usage, two failed runs); on a CPU it printed
    two tracebacks; `submit.sh --help`, and a refused submission, made ./outputs/slurm-logs where it was asked."""
    import torch

    gpu_check, submit = BENCHMARKS / "gpu_check.sh", BENCHMARKS.parent / "slurm" / "submit.sh"
    for script in (gpu_check, submit):
        proc = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0 and "usage" not in proc.stderr and proc.stdout.strip(), proc.stderr
    for args in (["train", "--time=1", "data=toy2d"], ["bench", "--tasks=0"]):
        proc = subprocess.run(["bash", str(submit), *args], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2 and "submit.sh: error: " in proc.stderr, proc.stderr
    assert not list(tmp_path.iterdir())
    if not torch.cuda.is_available():
        proc = subprocess.run(["bash", str(gpu_check), str(tmp_path / "out")], capture_output=True, text=True,
                              env={**os.environ, "PYTHON": sys.executable})
        assert proc.returncode == 1 and "no CUDA GPU visible" in proc.stderr and not (tmp_path / "out").exists()
