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


def test_more_processes_started_than_the_settings_say_are_refused(monkeypatch):
    """srun -n 2 / torchrun --nproc-per-node 2 of an app left at ddp.devices=1: each process did the whole run."""
    import pytest

    from lightning_sde.distributed import check_launcher_world

    for key in ("SLURM_STEP_NUM_TASKS", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    check_launcher_world(1, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"^config ddp.devices: the launcher \(WORLD_SIZE\) started 2 processes"):
        check_launcher_world(1, 1)
    check_launcher_world(2, 1)  # what they share
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    with pytest.raises(ValueError, match=r"^config ddp.devices: srun started 4 processes, but ddp.devices x "):
        check_launcher_world(1, 1)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # srun -n 1 within a larger allocation
    check_launcher_world(1, 1)
