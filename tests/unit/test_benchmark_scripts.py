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
