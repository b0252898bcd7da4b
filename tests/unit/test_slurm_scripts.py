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
