"""The SLURM scripts run under bash 4.2 (CentOS 7 login nodes): there, `set -u` calls an empty "${a[@]}" unbound and
aborts the submission, so every array expands as ${a[@]+"${a[@]}"}. (The scripts themselves run on a real SLURM
in tests/integration/test_slurm.py.)"""

import re
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).parents[2] / "slurm").glob("*.sh")) + sorted(
    (Path(__file__).parents[2] / "slurm").glob("*.sbatch"))
BARE = re.compile(r'(?<!\+)"\$\{(\w+)\[[@*]\]\}"')  # "${a[@]}" not inside ${a[@]+...}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_array_expansion_aborts_an_old_bash_when_empty(script):
    bare = [f"{script.name}:{n}: {line.strip()}" for n, line in enumerate(script.read_text().splitlines(), 1)
            if BARE.search(line) and not line.lstrip().startswith("#")]
    assert not bare, "\n".join(bare)


def test_the_check_sees_a_bare_expansion():
    assert BARE.search('sbatch "${site[@]}" x') and not BARE.search('sbatch ${site[@]+"${site[@]}"} x')


@pytest.mark.parametrize("missing", [None, "torch", "lightning", "hydra", "lightning_sde"])
def test_the_python_check_refuses_a_python_without_any_one_of_what_the_apps_import(tmp_path, missing):
    """slurm/env.sh's lsde_check_python, asked of the real interpreter with one module hidden (a Python without it):
    without hydra, submissions went on to a ModuleNotFoundError traceback in the config check."""
    import subprocess
    import sys

    python = tmp_path / "python"
    hide = f'sys.modules["{missing}"] = None; ' if missing else ""  # (inside the wrapper's single quotes)
    python.write_text(f"#!/bin/bash\n[ \"$1\" = -c ] || exit 99\n"
                      f"exec {sys.executable} -c 'import sys; {hide}exec(sys.argv.pop(1))' \"$2\"\n")
    python.chmod(0o755)
    env_sh = SCRIPTS[0].parent / "env.sh"
    proc = subprocess.run(["bash", "-c", 'source "$1" && lsde_check_python "$2"', "_", str(env_sh), str(python)],
                          capture_output=True, text=True, cwd=tmp_path)
    if missing is None:
        assert proc.returncode == 0 and not proc.stderr, proc.stderr
    else:
        assert proc.returncode == 2 and f"error: {python} cannot import lightning_sde and its dependencies" in \
            proc.stderr, proc.stderr
