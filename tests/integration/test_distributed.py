"""The apps' process groups (lsde-bench, lsde-likelihood): two real gloo processes launched by Fabric."""

import os
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
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.setenv("SLURM_TASK_PID", str(os.getpid()))  # srun started this process
    with pytest.raises(ValueError, match=r"^config ddp.devices: srun started 4 processes, but ddp.devices x "):
        check_launcher_world(1, 1)
    monkeypatch.setenv("SLURM_PTY_PORT", "45961")  # srun -n 4 --pty <app>: every task runs it
    with pytest.raises(ValueError, match=r"srun started 4 processes"):
        check_launcher_world(1, 1)
    monkeypatch.setenv("SLURM_TASK_PID", str(os.getppid()))  # run from the shell of `srun -n 4 --pty bash`: one
    check_launcher_world(1, 1)
    monkeypatch.delenv("SLURM_PTY_PORT")
    monkeypatch.setenv("SLURM_TASK_PID", "999999999")  # a step's variables inherited (a job submitted from it)
    check_launcher_world(1, 1)
    monkeypatch.setenv("SLURM_TASK_PID", str(os.getpid()))
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # srun -n 1 within a larger allocation
    check_launcher_world(1, 1)


def test_the_processes_are_srun_tasks_where_srun_started_them_and_lightnings_own_elsewhere(monkeypatch):
    """Lightning's SLURM detection goes by the job: in salloc's default job (named 'interactive') each of srun's two
    tasks started a DDP group of its own in one folder; a batch script of a one-task job asking 2 devices ran one
    process; one of a 2-task job running one process was refused (--ntasks)."""
    import pytest
    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    from lightning_sde.distributed import cluster_environment

    for key in ("SLURM_STEP_NUM_TASKS", "SLURM_PTY_PORT", "SLURM_NTASKS_PER_NODE", "TORCHELASTIC_RUN_ID", "NODE_RANK",
                "SLURM_NTASKS", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    assert cluster_environment(2, 1, "trainer") is None  # no SLURM: Lightning's choice
    job = {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "interactive", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
           "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}
    for key, value in job.items():
        monkeypatch.setenv(key, value)
    assert type(cluster_environment(1, 1, "trainer")) is LightningEnvironment  # salloc's shell: one process
    with pytest.raises(ValueError, match=r"^config trainer: num_nodes=2 needs processes started on every node"):
        cluster_environment(1, 2, "trainer")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")  # srun -n 2 in it
    monkeypatch.setenv("SLURM_TASK_PID", str(os.getpid()))
    environment = cluster_environment(2, 1, "trainer")
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue
    assert (environment.world_size(), environment.global_rank(), environment.creates_processes_externally) == (
        2, 1, True)
    monkeypatch.setenv("SLURM_NTASKS", "4")  # a step of 2 tasks in a job of 4: the step's are the world
    assert cluster_environment([0, 1], 1, "ddp").world_size() == 2
    with pytest.raises(ValueError, match=r"^config ddp: srun started 2 task\(s\) on its node\(s\) for this run, but "
                                         r"devices x num_nodes = 4 x 1"):
        cluster_environment(4, 1, "ddp")
    with pytest.raises(ValueError, match=r"^config trainer: srun started 2 tasks for this run: give devices and "
                                         r"num_nodes as numbers .*not 'auto' x 1$"):
        cluster_environment("auto", 1, "trainer")  # each task trained the whole run into one folder
    monkeypatch.setenv("SLURM_STEP_NUM_NODES", "1")  # 2 x 1 is the step's 2 tasks, but not on 2 nodes
    with pytest.raises(ValueError, match=r"^config trainer: srun started 2 task\(s\) on 1 node\(s\)"):
        cluster_environment(1, 2, "trainer")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "n2")  # the step's node, not the job's first
    monkeypatch.setenv("SLURM_NODELIST", "n[1-2]")
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    environment = cluster_environment(2, 1, "trainer")
    assert environment.main_address == "n2" and environment.main_port == 15000 + (7 * 101 + 3) % 20000
    monkeypatch.setenv("SLURM_TASK_PID", str(os.getppid()))  # the shell of srun --pty bash: Lightning starts them
    monkeypatch.setenv("SLURM_PTY_PORT", "45961")
    assert type(cluster_environment(2, 1, "trainer")) is LightningEnvironment
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # torchrun's processes, also under srun
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "GROUP_RANK": "0",
                       "MASTER_ADDR": "localhost", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    assert cluster_environment(2, 1, "trainer") is None


def test_a_task_under_a_jobs_script_or_extern_step_is_no_srun_task():
    """The step is read from the name slurmstepd gives itself, the task's parent: a program under the job's batch
    script or its extern step (sshed into the node) inherits a step's variables but is none of its tasks."""
    child = ("import os, sys; from lightning_sde.distributed import parent_pid, srun_tasks, step_name; "
             "os.environ.update(SLURM_STEP_NUM_TASKS='2', SLURM_TASK_PID=str(os.getpid())); "
             "print(parent_pid(os.getpid()) == os.getppid(), step_name(os.getpid()), srun_tasks())")
    for step, expected in (("0", "True 0 2"), ("batch", "True batch None"), ("extern", "True extern None")):
        stepd = f"import subprocess; subprocess.run([{sys.executable!r}, '-c', {child!r}])"  # its argv[0] renamed
        out = subprocess.run(["bash", "-c", f'exec -a "slurmstepd: [77.{step}]" "$0" -c "$1"', sys.executable, stepd],
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep
                             .join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])})
        assert out.stdout.strip() == expected, out.stderr[-2000:]
