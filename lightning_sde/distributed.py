"""Processes that share work: the rank and world size, and the two collectives the sampling path needs.

Everything here goes through torch.distributed when it is initialised (by Lightning's DDP strategy during fit, or by
Lightning Fabric in lsde-bench / lsde-likelihood), and is a no-op in a single process. Objects travel by pickling
(`gather_object`), so shards of different sizes need no padding.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# Where launchers number a job's processes: torchrun, srun, Lightning's workers and nodes, MPI, LSF's jsrun.
LAUNCHER_RANKS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK",
                  "JSM_NAMESPACE_RANK")


def slurm_job() -> str | None:
    """This SLURM job's id as scontrol takes it (an array task: <array job>_<task>), or None outside SLURM."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID") or None


def slurm_restarts() -> int:
    """How many times SLURM requeued this job (0 outside SLURM)."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "")
    return int(restarts) if restarts.isdigit() else 0


def parent_pid(pid: int) -> int | None:
    """`pid`'s parent (Linux's /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def lineage() -> set[int]:
    """This process's pid and its ancestors' (Linux's /proc; elsewhere its parent's only)."""
    pids, pid = {os.getpid(), os.getppid()}, os.getppid()
    while (pid := parent_pid(pid)) is not None and pid > 1 and pid not in pids:
        pids.add(pid)
    return pids


def step_name(task: int) -> str | None:
    """The SLURM step whose task `task` is, as its slurmstepd names it ("0", "batch", "interactive"), or None."""
    stepd = parent_pid(task)
    try:
        with open(f"/proc/{stepd}/cmdline", "rb") as fh:
            match = re.match(rb"slurmstepd: \[[^\]]*\.(\w+)\]", fh.read())
    except (OSError, TypeError):
        return None
    return match[1].decode() if match else None


def srun_tasks() -> int | None:
    """How many tasks the srun step this process is one of started; None where srun started no program of this run:
    a batch script, an salloc shell, a program run from the shell of `srun --pty bash`, or no SLURM. A step's task is
    the process srun started (SLURM_TASK_PID) or one it runs (a wrapper script); the step's variables inherited by
    other processes (a job submitted from inside a step, a program of a pty shell) name another process."""
    started, task = os.environ.get("SLURM_STEP_NUM_TASKS", ""), os.environ.get("SLURM_TASK_PID", "")
    if not (started.isdigit() and task.isdigit()) or int(task) not in lineage():
        return None
    if step_name(int(task)) in ("batch", "interactive", "extern"):  # a job's script, not an srun step's task: the
        return None  # step variables are inherited (a job submitted from inside a step)
    if os.environ.get("SLURM_PTY_PORT") and int(task) != os.getpid():  # run from the shell that srun --pty started
        return None
    return int(started)


def cluster_environment(devices, num_nodes, key: str):
    """The process layout Lightning (Trainer or Fabric) should take, or None to let it detect one (torchrun's, or none).
    Lightning's own SLURM detection goes by the job, not the process: it leaves out jobs named 'bash' or
    'interactive' (salloc's default: every srun task then started a DDP group of its own, in one folder), and takes a
    batch script or an salloc shell of a job of several tasks for one of its tasks (a wrong world, or a refusal of
    --ntasks), or of one task for the whole run (devices=2 ran one process). So: srun's tasks are the processes
    (SrunEnvironment); where srun started none, Lightning starts them itself on this node."""
    from lightning.fabric.plugins.environments import LightningEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():  # torchrun's processes (also under srun, one task a node)
        return None
    counts = [len(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for v in (devices, num_nodes)]
    known = all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
    tasks = srun_tasks()
    if tasks is not None:
        if tasks > 1 and not known:  # devices=auto: one device on the CPU, and each task trained the whole run
            raise ValueError(f"config {key}: srun started {tasks} tasks for this run: give devices and num_nodes as "
                             f"numbers (the tasks per node and the nodes), not {devices!r} x {num_nodes!r}")
        nodes = os.environ.get("SLURM_STEP_NUM_NODES", "")
        if known and (counts[0] * counts[1] != tasks or nodes.isdigit() and counts[1] != int(nodes)):
            raise ValueError(f"config {key}: srun started {tasks} task(s) on {nodes or 'its'} node(s) for this run, "
                             f"but devices x num_nodes = {counts[0]} x {counts[1]}: set them to the tasks per node "
                             f"and the nodes (one task per device), or start {counts[0] * counts[1]} task(s)")
        return srun_environment()(auto_requeue=False)
    if "SLURM_NTASKS" not in os.environ:
        return None
    if known and counts[1] > 1 and "NODE_RANK" not in os.environ:
        raise ValueError(f"config {key}: num_nodes={counts[1]} needs processes started on every node: launch with "
                         "srun, one task per device (slurm/train.sbatch does), or with torchrun")
    return LightningEnvironment()


@functools.cache
def srun_environment() -> type:
    """SrunEnvironment, made on first use (Lightning is imported then, not by the library's sampling path)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    class SrunEnvironment(SLURMEnvironment):
        """SLURM's environment for the tasks of one srun step: the step's tasks are the world (not the job's
        SLURM_NTASKS, which may be more), whatever the job's name, with or without --ntasks-per-node."""

        @staticmethod
        def _validate_srun_used() -> None:
            return None

        @staticmethod
        def _validate_srun_variables() -> None:
            return None

        def world_size(self) -> int:
            return int(os.environ["SLURM_STEP_NUM_TASKS"])

        @property
        def main_address(self) -> str:  # the step's first node (the job's may run none of its tasks)
            if "MASTER_ADDR" not in os.environ:
                nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_NODELIST", "127.0.0.1")
                os.environ["MASTER_ADDR"] = self.resolve_root_node_address(nodes)
            return os.environ["MASTER_ADDR"]

        @property
        def main_port(self) -> int:  # the job's and the step's: two runs of one allocation side by side do not meet
            if "MASTER_PORT" not in os.environ:
                job, step = (os.environ.get(k, "") for k in ("SLURM_JOB_ID", "SLURM_STEP_ID"))
                both = job.isdigit() and step.isdigit()
                os.environ["MASTER_PORT"] = str(15000 + (int(job) * 101 + int(step)) % 20000 if both else 12910)
            return int(os.environ["MASTER_PORT"])

        def validate_settings(self, num_devices: int, num_nodes: int) -> None:
            return None  # cluster_environment checked devices x num_nodes against the step's tasks

    return SrunEnvironment


def launched_first() -> bool:
    """Whether this process is the first of its job as its launcher numbered it, before any process group exists:
    every LAUNCHER_RANKS variable set is 0 (a process nobody launched is the first)."""
    return all(os.environ.get(key, "0") == "0" for key in LAUNCHER_RANKS)


def gather_to_zero(obj) -> list | None:
    """Every process's `obj`, in rank order, on rank 0 (None elsewhere)."""
    rank, world = rank_world()
    if world == 1:
        return [obj]
    out = [None] * world if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_zero(obj):
    """Rank 0's `obj` on every process."""
    _, world = rank_world()
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_multirun_world(devices, num_nodes, key: str) -> None:
    """Local DDP in a job of an in-process multirun (-m): the DDP workers re-run the command line, each restarting
    the whole sweep and joining another job's processes; refused unless SLURM starts the processes (submitit).
    `devices` as a Trainer takes it too: a list of indices counts its length; "auto" is left to Lightning."""
    counts = [len(v) if hasattr(v, "__len__") and not isinstance(v, str) else v for v in (devices, num_nodes)]
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts) or counts[0] * counts[1] <= 1:
        return
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN and srun_tasks() is None:
        raise ValueError(f"config {key}: a multirun (-m) with local DDP would restart the whole sweep in every DDP "
                         "worker (they re-run the command line); use hydra/launcher=slurm (one SLURM job per run) "
                         "or launch each run on its own")


def check_launcher_world(devices: int, num_nodes: int) -> None:
    """srun / torchrun starting several processes for one asked for (ddp.devices x ddp.num_nodes = 1): each would do
    the whole run, side by side in one folder; refused, naming the settings that let them share it. And local DDP in
    a multirun's job (check_multirun_world)."""
    check_multirun_world(devices, num_nodes, "ddp")
    tasks = srun_tasks()
    started = os.environ.get("WORLD_SIZE") or (str(tasks) if tasks is not None else "1")
    if devices * num_nodes == 1 and started.isdigit() and int(started) > 1:
        launcher = "the launcher (WORLD_SIZE)" if os.environ.get("WORLD_SIZE") else "srun"
        raise ValueError(f"config ddp.devices: {launcher} started {started} processes, but ddp.devices x "
                         f"ddp.num_nodes = 1: each would do the whole run; set ddp.devices=<tasks per node> "
                         f"ddp.num_nodes=<nodes> to share it among them, or start one task")


@contextmanager
def launched(devices: int, num_nodes: int, device: torch.device) -> Iterator:
    """For the apps without a Trainer: None for one process; else a launched Fabric (DDP; gloo on CPU, NCCL on
    CUDA) that starts the local processes itself, or joins those srun / torchrun started. On leaving, the processes
    meet and the process group is destroyed: a group left alive at exit can abort the interpreter (SIGABRT) while its
    communication threads are torn down."""
    check_launcher_world(devices, num_nodes)
    if devices * num_nodes == 1:
        yield None
        return
    from lightning.fabric import Fabric

    try:
        environment = cluster_environment(devices, num_nodes, "ddp")
        fabric = Fabric(accelerator="cuda" if device.type == "cuda" else "cpu", devices=devices, num_nodes=num_nodes,
                        strategy="ddp", plugins=[environment] if environment is not None else None)
        fabric.launch()
    except (RuntimeError, ValueError) as err:  # Lightning's checks of srun's layout against devices and num_nodes
        if "SLURM" not in str(err):
            raise
        raise ValueError(f"config ddp: {' '.join(str(err).split())} (here devices is ddp.devices, the processes of a "
                         f"node, and num_nodes ddp.num_nodes)") from None
    try:
        yield fabric
        fabric.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
