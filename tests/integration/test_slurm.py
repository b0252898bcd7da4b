"""The project's own sbatch templates on a real SLURM (Debian's slurm-wlm + munge, started here on localhost):
2-task DDP training, preemption with requeue and resume, and a benchmark job array. CPU settings throughout."""

import csv
import os
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.slurm_cluster import SlurmCluster, unavailable_reason
from lightning_sde.bench.report import load

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
# toy2d, small and quick: ddim-10 evaluations on 50 samples, every step logged
TRAIN = ["experiment=toy2d", "trainer.log_every_n_steps=1", "callbacks.sampler.n_samples=50", "samplers=quick",
         "callbacks.best.monitor=val/ddim_10/sliced_w2"]
CPU_TASKS = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM must run in CI: {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def workdir(tmp_path):
    """The submit directory: run directories and logs land here, not in the clone."""
    (tmp_path / "logs").mkdir()
    return tmp_path


def submit(slurm, workdir: Path, template: str, *args: str, options=(), env=None, log="%x-%j") -> str:
    env = {"LSDE_SLURM_DIR": str(REPO / "slurm"), "LSDE_PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "WANDB_SILENT": "true", **(env or {})}
    exports = "ALL," + ",".join(f"{k}={v}" for k, v in env.items())
    return slurm.sbatch(*options, f"--output={workdir}/logs/{log}.out", f"--export={exports}",
                        str(REPO / "slurm" / template), *args, cwd=workdir)


def log_of(workdir: Path, name: str, job: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((workdir / "logs").glob(f"{name}-{job}*.out")))


def logged_steps(run_dir: Path) -> list[list[int]]:
    """The global steps with a training loss in each launch's metrics.csv (csv/version_<n>), in launch order."""
    out = []
    for version in sorted((run_dir / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1])):
        with open(version / "metrics.csv") as fh:
            out.append([int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss")])
    return out


def test_two_task_ddp_training_job(slurm, workdir):
    job = submit(slurm, workdir, "train.sbatch", *TRAIN, "trainer.max_steps=200", "trainer.val_check_interval=100",
                 options=CPU_TASKS, env={"LSDE_TRAINER": "ddp_cpu"})
    states = slurm.wait(job, timeout=300)
    log = log_of(workdir, "lsde-train", job)
    assert states == ["COMPLETED"], log[-5000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # both ranks ran
    run_dir = workdir / "outputs" / "train" / job  # keyed on the job id
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 200
    assert logged_steps(run_dir) == [list(range(200))]
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B must log offline on a compute node"
    assert f"wandb sync outputs/train/{job}/wandb/offline-run-" in log


def test_preempted_job_checkpoints_requeues_and_resumes_without_losing_a_step(slurm, workdir):
    steps = 600
    job = submit(slurm, workdir, "train.sbatch", *TRAIN, f"trainer.max_steps={steps}", "trainer.val_check_interval=300",
                 "callbacks.last.every_n_train_steps=1000", options=CPU_TASKS, env={"LSDE_TRAINER": "ddp_cpu"})
    run_dir = workdir / "outputs" / "train" / job
    deadline = time.monotonic() + 180
    while not list(run_dir.glob("csv/version_0/hparams.yaml")):  # written just before fit starts
        assert time.monotonic() < deadline, log_of(workdir, "lsde-train", job)[-5000:]
        time.sleep(0.5)
    time.sleep(4)
    slurm.run("scancel", "--signal=USR1", job)  # what --signal=USR1@<s> sends before the time limit
    deadline = time.monotonic() + 120
    while slurm.state(job).get("Restarts", "0") == "0" or slurm.state(job).get("JobState") != "PENDING":
        log = log_of(workdir, "lsde-train", job)[-5000:]
        assert time.monotonic() < deadline, f"not requeued: {slurm.state(job)}\n{log}"
        time.sleep(0.5)
    # Skip SLURM's ~2 min requeue delay, but not its reason: the node must have cleaned up the first run and a
    # new credential must be younger (by the clock's second) than the revoked one, else the restart is refused.
    deadline = time.monotonic() + 60
    while not slurm.node_idle():
        assert time.monotonic() < deadline, "the node never went idle after the requeue"
        time.sleep(0.5)
    time.sleep(3)
    slurm.run("scontrol", "update", f"jobid={job}", "StartTime=now")
    states = slurm.wait(job, timeout=300)
    log = log_of(workdir, "lsde-train", job)
    assert states == ["COMPLETED"], log[-5000:]
    assert "restart 1" in log and "requeued SLURM job" in log
    stopped = int(log.split("stopped at global step ")[1].split()[0])
    assert 0 < stopped < steps, "the signal must arrive mid-training for this test to mean anything"
    first, second = logged_steps(run_dir)
    assert first == list(range(stopped)) and second == list(range(stopped, steps)), "a step lost or repeated"
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == steps
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {steps}, "the optimizer continued from the checkpoint"


def test_benchmark_array_tasks_write_disjoint_shares_of_one_table(slurm, workdir):
    from hydra import compose, initialize_config_module

    from lightning_sde.bench.runner import prepare
    from lightning_sde.configuration import CONFIG_PACKAGE

    results = workdir / "results.jsonl"
    sweep = ["~samplers", "+sampler@samplers.ddim=ddim", "+sampler@samplers.em=euler_maruyama", "nfe=[3,10,50]",
             "noise_floor=false", "seeds.count=300", "batch_size=128", "progress=false", f"results={results}"]
    job = submit(slurm, workdir, "bench.sbatch", "name=array", *sweep,
                 options=["--array=0-1", "--gpus=0", "--cpus-per-task=1", "--time=15"], log="%x-%A_%a")
    states = slurm.wait(job, timeout=300)
    logs = [log_of(workdir, "lsde-bench", f"{job}_{i}") for i in (0, 1)]
    assert states == ["COMPLETED", "COMPLETED"], "\n".join(logs)[-6000:]
    assert [log.count("computing cell") for log in logs] == [3, 3]  # disjoint shares of the 6 cells
    rows = load(results)
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("bench", overrides=sweep)
    cells = prepare(cfg).cells
    expected = {c.key(m) for c in cells for m in c.metrics}
    assert sorted(r["key"] for r in rows) == sorted(expected), "one complete table, each row once"
    assert {r["shard"] for r in rows} == {"0/2", "1/2"}
    from lightning_sde.cli.bench import report_main

    report_main([str(results)])  # the merge: views of the shared file
    assert len((workdir / "results.csv").read_text().splitlines()) == 1 + len(expected)


def test_hydra_submitit_launcher_submits_a_ddp_run_and_owns_requeue(slurm, workdir):
    import subprocess

    cmd = [sys.executable, "-m", "lightning_sde.cli.train", "-m", "hydra/launcher=slurm", *TRAIN, "trainer=ddp_cpu",
           "trainer.max_steps=100", "trainer.val_check_interval=100", "hydra.launcher.gpus_per_node=0",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15", f"hydra.sweep.dir={workdir}/multirun"]
    env = {**slurm.env, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (sbatch_file,) = (workdir / "multirun" / ".submitit").glob("*/*_submission.sh")
    script = sbatch_file.read_text()
    assert "--signal=USR2@300" in script and "--ntasks-per-node=2" in script
    job = sbatch_file.parent.name
    run_dir = workdir / "outputs" / "train" / job
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 100
    job_log = "".join(p.read_text() for p in sbatch_file.parent.glob("*_log.out"))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in job_log and "requeue is submitit's" in job_log
