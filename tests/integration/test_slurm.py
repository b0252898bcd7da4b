"""The project's own sbatch templates on a real SLURM (Debian's slurm-wlm + munge, started here on localhost):
2-task DDP training, preemption with requeue and resume, and a benchmark job array. CPU settings throughout."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.slurm_cluster import SlurmCluster, unavailable_reason
from helpers.wandb_offline import history
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
        if not (version / "metrics.csv").is_file():  # not flushed yet
            out.append([])
            continue
        with open(version / "metrics.csv") as fh:
            out.append([int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss")])
    return out


def test_a_template_submitted_by_plain_sbatch_from_a_path_with_spaces_finds_its_env(slurm, workdir):
    """`sbatch "<clone>/slurm/report.sbatch" ...` (no submit.sh, so no LSDE_SLURM_DIR): the template finds env.sh
    through the path SLURM records, which held its arguments too and was cut at the first space ("/tmp/env.sh: No
    such file", exit 2)."""
    import shutil

    spaced = workdir / "a clone" / "slurm"
    shutil.copytree(REPO / "slurm", spaced)
    exports = f"ALL,LSDE_PYTHON={sys.executable},OMP_NUM_THREADS=1"
    job = slurm.sbatch(f"--output={workdir}/logs/r-%j.out", f"--export={exports}", "--cpus-per-task=1",
                       str(spaced / "report.sbatch"), "--no-wandb", str(workdir / "no such.jsonl"), cwd=workdir)
    slurm.wait(job, timeout=180)
    log = log_of(workdir, "r", job)
    assert "No such file or directory" not in log and "no results file at" in log, log[-3000:]
    assert "[lsde] lsde-bench report exited 1" in log  # the app ran (and refused the missing file), not the shell


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
    # each task's Hydra record in the sweep's folder, named by its job and shard
    assert {p.name for p in (workdir / "outputs/bench/array/logs").iterdir()} == {f"{job}_0_shard0-of-2",
                                                                                 f"{job}_1_shard1-of-2"}
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
    cmd = [sys.executable, "-m", "lightning_sde.cli.train", "-m", "hydra/launcher=slurm", *TRAIN, "trainer=ddp_cpu",
           "trainer.max_steps=100", "trainer.val_check_interval=100", "hydra.launcher.gpus_per_node=0",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15", f"hydra.sweep.dir={workdir}/multirun",
           "+hydra.launcher.additional_parameters.comment=lsde"]  # beside the site's mem and mail
    site = workdir / "site.env"  # the same site file as the templates'
    site.write_text("LSDE_PARTITION=debug\nLSDE_MAIL_TYPE=FAIL\nLSDE_MEM=300M\nLSDE_SETUP='echo submitit-site-setup'\n")
    env = {**slurm.env, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "LSDE_SITE_ENV": str(site)}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (sbatch_file,) = (workdir / "multirun" / ".submitit").glob("*/*_submission.sh")
    script = sbatch_file.read_text()
    assert "--signal=USR2@300" in script and "--ntasks-per-node=2" in script
    assert all(line in script for line in ("#SBATCH --partition=debug", "#SBATCH --mail-type=FAIL",
                                           "#SBATCH --mem=300M", "#SBATCH --comment=lsde",
                                           "echo submitit-site-setup")), script
    job = sbatch_file.parent.name
    run_dir = workdir / "outputs" / "train" / f"{job}_0"  # <SLURM job id>_<multirun job number>
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 100
    job_log = "".join(p.read_text() for p in sbatch_file.parent.glob("*_log.out"))
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in job_log and "requeue is submitit's" in job_log


def test_a_run_that_fails_under_the_submitit_launcher_fails_its_slurm_job(slurm, workdir):
    """Hydra's launcher kept the failure in the job's return value: SLURM recorded COMPLETED, exit 0 (afterok and sacct
    took it for a success). The sweep ends with the run's one line. (timeout_min > 5: USR2 comes 300 s before the
    limit.)"""
    cmd = [sys.executable, "-m", "lightning_sde.cli.train", "-m", "hydra/launcher=slurm", *TRAIN, "optim.lr=-1",
           "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10",
           f"hydra.sweep.dir={workdir}/multirun"]
    env = {**slurm.env, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true", "LSDE_SITE_ENV": str(workdir / "none.env")}
    (workdir / "none.env").write_text("")
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "lsde-train: error: the sweep failed; its first failure: config optim.lr: " in proc.stderr, proc.stderr
    assert "_log.out)" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr  # its log named, no trace
    (sbatch_file,) = (workdir / "multirun" / ".submitit").glob("*/*_submission.sh")
    job = sbatch_file.parent.name  # submitit reads the job's result file while the job may still be exiting
    slurm.wait(job, timeout=60)
    state = slurm.state(job)
    assert (state["JobState"], state["ExitCode"]) == ("FAILED", "1:0"), state


# --- preemption with the default loggers (W&B offline + CSV): SIGTERM to every process of the job ---------------


def wandb_steps(run_dir: Path) -> list[list[int]]:
    """The global steps with a training loss in each launch's offline W&B run (same id), in launch order."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)
    return [[int(r["trainer/global_step"]) for r in history(run) if "train/loss" in r] for run in runs]


def wait_for_steps(run_dir: Path, job: str, workdir: Path, n: int = 20, launch: int = 1, timeout: float = 180) -> None:
    """Until launch number `launch` of the job has logged n training steps."""
    deadline = time.monotonic() + timeout
    while len(logged := logged_steps(run_dir)) < launch or len(logged[launch - 1]) < n:
        assert time.monotonic() < deadline, log_of(workdir, "lsde-train", job)[-5000:]
        time.sleep(0.5)


def saved_step(log: str) -> int:
    """The step of the checkpoint written at the signal (the log's 'SIGTERM: saved ... at global step N')."""
    return int(log.split("SIGTERM: saved ")[1].split(" at global step ")[1].split()[0])


def check_one_history(run_dir: Path, stops: list[int], steps: int) -> None:
    """One continuous history: in the CSV each launch logged from the previous one's checkpoint up to its own; in
    W&B (one id, one offline file a launch) every step once, in order: the rows W&B's killed service never wrote are
    logged again by the resumed run, from the CSV."""
    bounds = [0, *stops, steps]
    assert logged_steps(run_dir) == [list(range(a, b)) for a, b in zip(bounds, bounds[1:])], "a step lost or repeated"
    launches = wandb_steps(run_dir)
    assert len(launches) == len(bounds) - 1 and [s for launch in launches for s in launch] == list(range(steps)), \
        launches


def test_a_ddp_job_preempted_twice_resumes_each_time_without_losing_or_repeating_a_step(slurm, workdir):
    """2-task DDP training (W&B offline + CSV) stopped twice mid-run: by the time-limit signal (USR1, what
    --signal=USR1@<s> sends before the limit: the app checkpoints and requeues its job), then by `scontrol requeue`
    (SIGTERM to every process of the job, W&B's service included: the checkpoint is written at the current step
    before anything can fail, and SLURM requeues). Each launch goes on from exactly where the last one stopped."""
    steps = 600
    job = submit(slurm, workdir, "train.sbatch", *TRAIN, f"trainer.max_steps={steps}", "trainer.val_check_interval=300",
                 "callbacks.last.every_n_train_steps=1000", options=CPU_TASKS, env={"LSDE_TRAINER": "ddp_cpu"})
    run_dir = workdir / "outputs" / "train" / job  # keyed on the job id
    wait_for_steps(run_dir, job, workdir)
    slurm.run("scancel", "--signal=USR1", job)
    release_after_requeue(slurm, job)
    wait_for_steps(run_dir, job, workdir, launch=2)
    slurm.run("scontrol", "requeue", job)
    release_after_requeue(slurm, job, restarts=2)
    states = slurm.wait(job, timeout=300)
    log = log_of(workdir, "lsde-train", job)
    assert states == ["COMPLETED"], log[-5000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in log and "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # both ranks ran
    launches = log.split("[lsde] job ")[1:]  # each from env.sh's header: "<job> restart <n> on <nodes>:"
    assert [launch.split()[2] for launch in launches] == ["0", "1", "2"], log[-5000:]
    assert "for the time limit" in launches[0] and "requeued SLURM job" in launches[0], launches[0][-3000:]
    first = int(launches[0].split("stopped at global step ")[1].split()[0])
    assert "task 0: Exited with exit code 143" in launches[1] and "task 1: Exited with exit code 143" in launches[1]
    second = saved_step(launches[1])  # SIGTERM's checkpoint, both tasks interrupted
    assert 0 < first < second < steps, "the signals must arrive mid-training for this test to mean anything"
    check_one_history(run_dir, [first, second], steps)
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == steps
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {steps}, "the optimizer continued from the checkpoint"
    assert f"wandb sync {run_dir.resolve()}/wandb/offline-run-" in log  # lsde-train names the real run


def test_scancel_signal_term_mid_run_fails_the_job_and_a_resubmission_resumes(slurm, workdir):
    """`scancel --signal=TERM` (how many sites preempt): checkpoint at the step, the job ends FAILED (143), so an
    `afterok` dependency does not fire; resubmitted under its run name it continues from that step."""
    steps = 300
    args = [*TRAIN, f"trainer.max_steps={steps}", "trainer.val_check_interval=1000",
            "callbacks.last.every_n_train_steps=1000"]
    job = submit(slurm, workdir, "train.sbatch", *args, options=CPU_TASKS, env={"LSDE_TRAINER": "ddp_cpu"})
    run_dir = workdir / "outputs" / "train" / job
    wait_for_steps(run_dir, job, workdir)
    slurm.run("scancel", "--signal=TERM", job)
    states = slurm.wait(job, timeout=120)
    log = log_of(workdir, "lsde-train", job)
    assert states == ["FAILED"] and slurm.state(job)["ExitCode"].startswith("143"), log[-5000:]
    stopped = saved_step(log)
    assert 0 < stopped < steps and f"run directory: {run_dir.resolve()}" in log
    again = submit(slurm, workdir, "train.sbatch", *args, f"run_name={job}", options=CPU_TASKS,
                   env={"LSDE_TRAINER": "ddp_cpu"})
    assert slurm.wait(again, timeout=300) == ["COMPLETED"], log_of(workdir, "lsde-train", again)[-5000:]
    assert f"run directory: {run_dir.resolve()}" in log_of(workdir, "lsde-train", again)  # the real directory
    assert f" task(s), run {job}, in " in log_of(workdir, "lsde-train", again)  # its header names it too
    check_one_history(run_dir, [stopped], steps)


def test_srun_starting_more_processes_than_the_app_was_told_of_is_one_line_refusal(slurm, workdir):
    """`srun` with 2 tasks and no ddp.* ran lsde-likelihood twice side by side in one folder (each process the whole
    run, its own summary, the folder lock skipped by the second); ddp.devices=2 under `--ntasks=2` was a traceback
    (Lightning wants --ntasks-per-node): srun's two tasks are the run's two processes, whatever the job's layout."""
    app = f"{sys.executable} -m lightning_sde.cli.likelihood n=20 batch_size=5 paths.root={workdir}/out"
    script = (f"srun {app} name=plain; echo plain=$?; srun {app} name=ddp ddp.devices=2; echo ddp=$?")
    job = slurm.sbatch("--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--time=10", f"--output={workdir}/logs/a.out",
                       "--export=ALL,OMP_NUM_THREADS=1", "--wrap", script, cwd=workdir)
    assert slurm.wait(job, timeout=300) == ["COMPLETED"]
    log = (workdir / "logs" / "a.out").read_text()
    assert "plain=1" in log and "ddp=0" in log and "Traceback" not in log, log[-3000:]
    assert log.count("lsde-likelihood: error: config ddp.devices: srun started 2 processes, but ddp.devices x "
                     "ddp.num_nodes = 1: each would do the whole run") == 2
    (summary,) = (workdir / "out").rglob("summary.json")
    assert summary.parent.name == "ddp" and json.loads(summary.read_text())["world_size_this_run"] == 2


def test_srun_tasks_are_the_run_in_an_interactive_named_job_and_a_job_submitted_from_an_array_task_is_its_own(
        slurm, workdir):
    """salloc's job is named `interactive`, which Lightning's SLURM detection leaves out: `srun -n 2` of a 2-device run
    started two DDP groups in one folder (4 processes, two best checkpoints, two W&B runs); a job of `--ntasks=2`
    without --ntasks-per-node was refused. And `submit.sh train` from an array task's script: the new job took the
    task's array variables, was named after the task (27_0) and requeued the task instead of itself."""
    train = (f"srun {sys.executable} -m lightning_sde.cli.train {' '.join(TRAIN)} trainer=ddp_cpu trainer.devices=2 "
             "trainer.max_steps=4 trainer.val_check_interval=4 logger=csv trainer.enable_progress_bar=false "
             "run_name=pair")
    job = slurm.sbatch("--job-name=interactive", "--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--time=10",
                       f"--output={workdir}/logs/pair.out", "--export=ALL,OMP_NUM_THREADS=1", "--wrap", train,
                       cwd=workdir)
    states, log = slurm.wait(job, timeout=300), (workdir / "logs" / "pair.out").read_text()
    assert states == ["COMPLETED"] and "Traceback" not in log, log[-3000:]
    assert log.count("MEMBER: 1/2") == 1 and log.count("MEMBER: 2/2") == 1, log[-3000:]  # one group of two
    run = workdir / "outputs" / "train" / "pair"
    assert [p.name for p in (run / "csv").iterdir()] == ["version_0"]
    assert [p.name for p in (run / "checkpoints").glob("best-*.ckpt")] == ["best-step=4.ckpt"]

    child = (f"{REPO / 'slurm' / 'submit.sh'} train --nodes=1 --ntasks-per-node=1 --gpus-per-node=0 "
             f"--cpus-per-task=1 --time=10 {' '.join(TRAIN)} trainer.max_steps=2 trainer.val_check_interval=2 "
             "logger=csv")
    parent = slurm.sbatch("--array=0", "--ntasks=1", "--cpus-per-task=1", "--time=5",
                          f"--output={workdir}/logs/parent.out",
                          f"--export=ALL,OMP_NUM_THREADS=1,LSDE_TRAINER=ddp_cpu,LSDE_PYTHON={sys.executable}",
                          "--wrap", child, cwd=workdir)
    assert slurm.wait(parent, timeout=120) == ["COMPLETED"], (workdir / "logs" / "parent.out").read_text()
    submitted = (workdir / "logs" / "parent.out").read_text().split("train job ")[1].split(":")[0]
    states = slurm.wait(submitted, timeout=300)
    log = (workdir / "outputs" / "slurm-logs" / f"lsde-train-{submitted}.out").read_text()
    assert states == ["COMPLETED"], log[-3000:]
    assert f"run {submitted}," in log and (workdir / "outputs" / "train" / submitted / "checkpoints").is_dir(), log


def release_after_requeue(slurm, job: str, restarts: int = 1) -> None:
    """Skip SLURM's ~2 min requeue delay (of the job's requeue number `restarts`), but not its reason: the node must
    have cleaned up the last run and a new credential must be younger (by the clock's second) than the revoked one,
    else the restart is refused."""
    deadline = time.monotonic() + 120
    while int(slurm.state(job).get("Restarts", "0")) < restarts or slurm.state(job).get("JobState") != "PENDING":
        assert time.monotonic() < deadline, f"not requeued: {slurm.state(job)}"
        time.sleep(0.5)
    deadline = time.monotonic() + 60
    while not slurm.node_idle():
        assert time.monotonic() < deadline, "the node never went idle after the requeue"
        time.sleep(0.5)
    time.sleep(3)
    slurm.run("scontrol", "update", f"jobid={job}", "StartTime=now")


def header_cpu_examples(template: str) -> list[list[str]]:
    """The sbatch options of the CPU examples in a template's header comment (continuation lines joined)."""
    lines, joined = (REPO / "slurm" / template).read_text().splitlines(), []
    for line in (ln[1:].strip() for ln in lines if ln.startswith("# ") or ln.startswith("#   ")):
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line
        else:
            joined.append(line)
    examples = [ex.split() for ex in joined if ex.startswith("sbatch ") and ("gpus-per-node=0" in ex or "gpus=0" in ex)]
    return [[t for t in ex[1 : ex.index(f"slurm/{template}")] if t.startswith("--")] for ex in examples]


@pytest.mark.parametrize("template", ["train.sbatch", "bench.sbatch"])
def test_the_cpu_examples_in_the_template_headers_can_run_on_this_one_node_cluster(slurm, workdir, template):
    examples = header_cpu_examples(template)
    assert examples, f"{template} has no CPU example in its header"
    for options in examples:
        out = slurm.run("sbatch", "--test-only", *options, str(REPO / "slurm" / template), cwd=workdir, check=False)
        assert out.returncode == 0 and "to start at" in out.stderr, f"{options}: {out.stderr}"


# --- the cluster workflow: site settings, slurm/submit.sh from anywhere, the pipeline, bench requeue ---------------


def submit_sh(slurm, cwd: Path, *args: str, env=None, timeout=120) -> str:
    """slurm/submit.sh as a user runs it (from `cwd`, outside the clone); returns its stdout."""
    proc = subprocess.run([str(REPO / "slurm" / "submit.sh"), *args], cwd=cwd, capture_output=True, text=True,
                          env={**slurm.env, "LSDE_PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
                               "WANDB_SILENT": "true", **(env or {})}, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--time=5", "experiment=toy2d"], "--time=5 leaves no time before train.sbatch's time-limit signal, "
                                                "sent 300 s before the end: give at least 7 minutes"),
    (["bench", "--time=0:02:00", "nfe=[10]"], "--time=0:02:00 leaves no time before bench.sbatch's"),
    (["pipeline", "--bench", "data=toy2d", "--train-sbatch", "--time=1-0:00 --time=4"], "--time=4 leaves no time"),
    (["pipeline", "--bench", "data=toy2d", "--train-sbatch", "-t 4"], "--time=4 leaves no time before train"),
    (["pipeline", "--bench", "data=toy2d", "--bench-sbatch", "--time 0:02:00"], "--time=0:02:00 leaves no time"),
    (["pipeline", "--bench", "data=toy2d", "--bench-sbatch", "-t2 --exclusive"], "--time=2 leaves no time before b"),
    (["train", "-t", "5", "experiment=toy2d"], "-t: give sbatch options in their long form, with '='"),
    (["train", "--time", "5", "experiment=toy2d"], "'5' is neither an sbatch option (--name=value) nor a Hydra"),
    (["bench", "--tasks", "abc", "nfe=[10]"], "--tasks must be an integer >= 1; got 'abc'"),
    (["bench", "--throttle", "0", "nfe=[10]"], "--throttle must be an integer >= 1; got '0'"),
    (["bench", "--tasks"], "--tasks needs a value"),
    (["pipeline", "--bench"], "--bench needs a value"),
    (["pipeline", "--run", "exp:v2", "--bench", "data=toy2d"],
     "--run may hold ASCII letters, digits and . _ - + @ only"),
    # what the job would refuse as it starts, refused before the wait in the queue
    (["train", "experiment=toy2d", "trainer.max_stepz=10"], "the training config is not valid (above)"),
    (["train", "ckpt_path=/nowhere/last.ckpt"], "the training config is not valid (above)"),
    (["pipeline", "--train", "experiment=nosuch", "--bench", "data=toy2d"], "the training config is not valid"),
    (["bench", "data=toy2d", "checkpoint=/nowhere/last.ckpt", "nfe=[10]"], "the sweep's config is not valid"),
])
def test_submit_refuses_what_sbatch_would_take_and_get_wrong(slurm, workdir, args, message):
    """A time limit within the template's signal lead (the job would be signalled as it starts, or requeue itself
    for ever), in any of sbatch's forms, an option whose value would be taken for an override, and array sizes that
    are not numbers: refused before anything is submitted, exit 2."""
    refused(slurm, workdir, args, message)


def test_a_time_limit_among_the_site_flags_is_checked_too(slurm, workdir):
    """LSDE_SBATCH_EXTRA="--time=3" in the site file: the limit every job gets, checked like one on the command line;
    a longer one given to the job overrides it."""
    site = workdir / "site.env"
    site.write_text('LSDE_SBATCH_EXTRA="--exclusive --time=3"\n')
    refused(slurm, workdir, ["train", "experiment=toy2d"], "--time=3 leaves no time before train.sbatch's",
            env={"LSDE_SITE_ENV": str(site)})
    refused(slurm, workdir, ["train", "--time=20", "--time=5", "experiment=toy2d"], "--time=5 leaves no time",
            env={"LSDE_SITE_ENV": str(site)})


def test_a_log_folder_that_cannot_be_made_is_named_and_nothing_is_submitted(slurm, workdir):
    """LSDE_LOGS under a file: the folder is made only after every check passed, and its failure names it and the
    variable it came from, with no job queued."""
    blocker = workdir / "not-a-folder"
    blocker.write_text("")
    before = slurm.run("squeue", "-h", "-o", "%i").stdout
    refused(slurm, workdir, ["train", *TRAIN], f"cannot create the log folder {blocker}/logs (LSDE_LOGS)",
            env={"LSDE_LOGS": str(blocker / "logs")})
    assert slurm.run("squeue", "-h", "-o", "%i").stdout == before


def refused(slurm, workdir, args, message, env=None):
    proc = subprocess.run([str(REPO / "slurm" / "submit.sh"), *args], cwd=workdir, capture_output=True, text=True,
                          env={**slurm.env, "LSDE_PYTHON": sys.executable, **(env or {})}, timeout=120, check=False)
    assert proc.returncode == 2 and f"submit.sh: error: {message}" in proc.stderr, proc.stderr


def test_a_python_without_the_dependencies_is_named_before_the_sweep_is_sized(slurm, workdir):
    """From a clone's root `import lightning_sde` works without torch or Hydra: the check imports those too."""
    bare = workdir / "bare-python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    proc = subprocess.run([str(REPO / "slurm" / "submit.sh"), "bench", "nfe=[10]"], cwd=REPO, capture_output=True,
                          text=True, env={**slurm.env, "LSDE_PYTHON": str(bare), "LSDE_LOGS": str(workdir / "logs")},
                          timeout=120, check=False)  # its logs folder: not in the checkout
    assert proc.returncode == 2 and f"error: {bare} cannot import lightning_sde and its dependencies" in proc.stderr
    assert "the sweep's config is not valid" not in proc.stderr


def test_site_settings_reach_sbatch_from_a_submission_outside_the_clone(slurm, workdir):
    site = workdir / "site.env"
    site.write_text("LSDE_ACCOUNT=acme            # a comment after a value\n"
                    "LSDE_PARTITION=debug\nLSDE_MEM=200M\nLSDE_MAIL_TYPE=END,FAIL\nLSDE_MAIL_USER=nobody@example.org\n"
                    "LSDE_SBATCH_EXTRA=\"--comment='lsde site test' --nice=5\"\n"  # a quoted value keeps its spaces
                    "LSDE_SETUP='export LSDE_SITE_MARK=from-site && echo site-mark=$LSDE_SITE_MARK'\n")
    out = submit_sh(slurm, workdir, "train", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0",
                    "--cpus-per-task=1", "--time=10", *TRAIN, "trainer.max_steps=20", "trainer.val_check_interval=20",
                    env={"LSDE_SITE_ENV": str(site), "LSDE_TRAINER": "ddp_cpu"})
    job = out.split("train job ")[1].split(":")[0]
    state = slurm.state(job)
    assert (state["Account"], state["Partition"], state["MailType"], state["MailUser"], state["MinMemoryNode"],
            state["Nice"]) == ("acme", "debug", "END,FAIL", "nobody@example.org", "200M", "5"), state
    assert " Comment=lsde site test " in slurm.run("scontrol", "show", "job", "-o", job).stdout  # one flag
    assert state["WorkDir"] == str(workdir)
    states = slurm.wait(job, timeout=300)
    log = (workdir / "outputs" / "slurm-logs" / f"lsde-train-{job}.out").read_text()  # an absolute log path
    assert states == ["COMPLETED"], log[-5000:]
    assert "site-mark=from-site" in log and f"run directory: {workdir / 'outputs' / 'train' / job}" in log


def test_a_bench_task_signalled_at_its_time_limit_requeues_and_keeps_its_finished_cells(slurm, workdir):
    sweep = ["~samplers", "+sampler@samplers.em=euler_maruyama", "nfe=[200,400,800,1600]", "noise_floor=false",
             "seeds.count=2000", "batch_size=2000", "progress=false", f"results={workdir}/results.jsonl"]
    out = submit_sh(slurm, workdir, "bench", "--tasks", "1", "--gpus=0", "--cpus-per-task=1", "--time=10", *sweep)
    job = out.split("bench array ")[1].split(":")[0]
    deadline = time.monotonic() + 180
    while not (workdir / "results.jsonl").is_file() or not load(workdir / "results.jsonl"):
        assert time.monotonic() < deadline, "no cell finished"
        time.sleep(0.5)
    done_before = {r["requested"] for r in load(workdir / "results.jsonl")}
    slurm.run("scancel", "--signal=USR1", "--batch", f"{job}_0")  # what --signal=B:USR1@120 sends at the limit
    release_after_requeue(slurm, f"{job}_0")
    states = slurm.wait(job, timeout=300)
    log = (workdir / "outputs" / "slurm-logs" / f"lsde-bench-{job}_0.out").read_text()
    assert states == ["COMPLETED"], log[-5000:]
    # the task alone: the array's id would requeue every task of an array (a sibling mid-cell, a finished one)
    assert f"time limit near: requeueing {job}_0 " in log and "restart 1" in log
    rows = load(workdir / "results.jsonl")
    assert sorted(r["requested"] for r in rows if r["metric"] == "sliced_w2") == [200, 400, 800, 1600]
    second = log.split("restart 1")[1]
    recomputed = {int(c.split("nfe=")[1].split()[0]) for c in second.split("computing cell")[1:]}
    assert recomputed and not recomputed & done_before, (recomputed, done_before)  # finished cells not redone


def test_one_task_of_a_bench_array_reruns_alone_with_its_own_cells(slurm, workdir):
    """`submit.sh bench --tasks 2 --array=1` (the slurm/README recipe): SLURM says that array has 1 task, and the
    task still takes shard 1 of 2, not an index out of range."""
    sweep = ["~samplers", "+sampler@samplers.ddim=ddim", "nfe=[5,10]", "noise_floor=false", "seeds.count=64",
             "batch_size=64", "progress=false", "wandb.enabled=false", f"results={workdir}/rerun.jsonl"]
    out = submit_sh(slurm, workdir, "bench", "--array=1", "--gpus=0", "--tasks=2", "--cpus-per-task=1",
                    "--time=10", *sweep)  # --tasks among sbatch's options: submit.sh's, not sbatch's --ntasks
    job = out.split("bench array ")[1].split(":")[0]
    states = slurm.wait(job, timeout=300)
    log = (workdir / "outputs" / "slurm-logs" / f"lsde-bench-{job}_1.out").read_text()
    assert states == ["COMPLETED"], log[-5000:]
    assert "1 in shard 1/2" in log and "1 node(s) x 1 task(s)" in log, log[-3000:]
    assert len({r["requested"] for r in load(workdir / "rerun.jsonl")}) == 1  # one of the two cells: task 1's


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A second cluster: nodes n1 and n2 on this host (one slurmd each, own ports and spool)."""
    if unavailable_reason():
        pytest.skip(unavailable_reason())
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm2"), nodes=2).start()
    yield cluster
    cluster.stop()


def pipeline_jobs(out: str, run: str) -> tuple[str, str, str]:
    """The train, bench-array and report job ids from submit.sh pipeline's first line."""
    train, bench, report = out.split(f"pipeline {run}: train ")[1].split("\n")[0].split(" -> ")
    return train, bench.split()[-1], report.split()[1]


def test_a_two_node_pipeline_trains_with_world_size_4_then_benches_as_an_array_and_reports(two_nodes, workdir):
    """num_nodes=2 x 2 tasks (gloo on CPU, world size 4) through the pipeline command, then a bench array of its
    checkpoint (5 cells in 3 tasks, 2 at once) and the report, which logs the sweep's W&B run in the sweep's project.
    MASTER_ADDR is set because the test's node names (n1, n2) do not resolve; on a real cluster Lightning takes the
    first node of SLURM_NODELIST."""
    env = {"LSDE_TRAINER": "ddp_cpu", "MASTER_ADDR": "127.0.0.1"}
    train_sbatch = "--nodes=2 --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 --time=10"
    sweep = ("data=toy2d ~samplers +sampler@samplers.ddim=ddim +sampler@samplers.em=euler_maruyama 'nfe=[3, 10]' "
             "seeds.count=100 batch_size=100 progress=false")
    out = submit_sh(two_nodes, workdir, "pipeline", "--run", "two",
                    "--train", " ".join([*TRAIN, "trainer.max_steps=30", "trainer.val_check_interval=30"]),
                    "--train-sbatch", train_sbatch, "--bench", f"{sweep} wandb.project=pipe-project",
                    "--bench-sbatch", "--gpus=0 --cpus-per-task=1 --time=10", "--tasks=3", "--throttle=2", env=env)
    # 2 x 2 and the noise floor: 'nfe=[3, 10]' one override (it was split at the space), --tasks=3 the array's cap
    assert "the sweep has 5 cells: 3 array tasks, at most 2 at once" in out, out
    train, bench, report = pipeline_jobs(out, "two")
    assert two_nodes.state(report)["Dependency"].startswith(f"afterok:{bench}")  # each step after the previous one
    assert two_nodes.state(bench)["Dependency"].startswith(f"afterok:{train}")

    # meanwhile: a sweep with wandb.enabled=false gets a report of the views only (its train job held, then cancelled)
    off = submit_sh(two_nodes, workdir, "pipeline", "--run", "off", "--train", " ".join(TRAIN),
                    "--train-sbatch", f"{train_sbatch} --hold", "--bench", f"{sweep} wandb.enabled=false",
                    "--bench-sbatch", "--gpus=0 --cpus-per-task=1 --time=10", env=env)
    off_jobs = pipeline_jobs(off, "off")
    off_report = two_nodes.run("scontrol", "show", "job", "-o", off_jobs[-1]).stdout
    two_nodes.run("scancel", *off_jobs)
    assert "report.sbatch --no-wandb " in off_report, off_report

    states = two_nodes.wait(report, timeout=420)
    logs = workdir / "outputs" / "slurm-logs"
    train_log = (logs / f"lsde-train-{train}.out").read_text()
    report_log = (logs / f"lsde-report-{report}.out").read_text()
    assert states == ["COMPLETED"], "".join(p.read_text()[-3000:] for p in sorted(logs.glob("*.out")))
    assert "2 node(s) x 2 task(s)" in train_log
    assert all(f"GLOBAL_RANK: {r}, MEMBER: {r + 1}/4" in train_log for r in range(4)), train_log[-4000:]
    assert two_nodes.state(train)["NodeList"] == "n[1-2]"
    ckpts = list((workdir / "outputs" / "train" / "two" / "checkpoints").glob("*.ckpt"))
    # last.ckpt written again after the final evaluation: the copy from before it is last.prev.ckpt
    assert sorted(p.name for p in ckpts if p.name.startswith("last")) == ["last.ckpt", "last.prev.ckpt"]
    for name in ("last.ckpt", "last.prev.ckpt"):
        assert torch.load(workdir / "outputs/train/two/checkpoints" / name, weights_only=True)["global_step"] == 30
    assert two_nodes.array_states(bench) == ["COMPLETED"] * 3
    results = workdir / "outputs" / "bench" / "two" / "results.jsonl"
    rows = load(results)
    assert len({(r["sampler"], r["requested"]) for r in rows}) == 5 and len(rows) == 5 * 2  # sliced_w2, mmd
    assert sorted({r["requested"] for r in rows if r["grid"] != "exact"}) == [3, 10]
    assert all(r["checkpoint"].endswith("outputs/train/two/checkpoints/last.ckpt") and r["global_step"] == 30
               for r in rows), rows[0]
    assert (results.parent / "results.png").is_file() and "wandb sync" in report_log
    assert list((results.parent / "wandb").glob("offline-run-*"))
    assert json.loads((results.parent / "results.wandb.json").read_text())["project"] == "pipe-project"  # the sweep's
