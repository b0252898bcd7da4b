"""The apps' process groups (lsde-bench, lsde-likelihood): two real gloo processes launched by Fabric."""

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import torch
import torch.distributed as dist
from lightning_sde.distributed import gather_to_zero, launched, rank_world

with launched(2, 1, torch.device("cpu")):
    rank, world = rank_world()
    parts = gather_to_zero(rank)
    inside = dist.is_initialized()
print(f"rank={rank} world={world} inside={inside} after={dist.is_initialized()} parts={parts}", flush=True)
"""


def test_launched_processes_share_work_then_destroy_their_group(tmp_path):
    # a group left alive at exit can abort the interpreter (seen: SIGABRT from a two-process lsde-likelihood)
    script = tmp_path / "two.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(line for line in proc.stdout.splitlines() if line.startswith("rank="))
    assert lines == ["rank=0 world=2 inside=True after=False parts=[0, 1]",
                     "rank=1 world=2 inside=True after=False parts=None"], proc.stdout
