"""Runs that never lie, never lose work and never run code from a file, tried as a demanding user would: the apps
as subprocesses, a crafted checkpoint, a NaN loss, a multirun, a corrupted checkpoint, SIGTERM, bad values."""

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.launch import run_app
from helpers.runs import copy_of
from helpers.wandb_offline import find_run, history, run_info
from lightning_sde import load_denoiser
from lightning_sde.loading import CheckpointError

pytestmark = pytest.mark.slow
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV.pop("LSDE_RUN_NAME", None)
# toy2d, tiny: 30 steps, one DDIM-10 evaluation at the end on 100 samples, checkpoints every 10 steps
TOY = ["experiment=toy2d", "trainer.max_steps=30", "trainer.val_check_interval=30", "samplers=quick",
       "callbacks.best.monitor=val/ddim_10/sliced_w2", "callbacks.sampler.n_samples=100", "data.n_train=4096",
       "callbacks.last.every_n_train_steps=10", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]


def app(module: str, *args, cwd=None, timeout=600, env=None):
    return run_app(f"lightning_sde.cli.{module}", *args, env=env or ENV, cwd=cwd, timeout=timeout)


def train(run_dir: Path, *overrides, **kw):
    return app("train", f"run_dir={run_dir}", f"run_name={run_dir.name}", *overrides, **kw)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished TOY run (logger=csv), trained once for the tests that start from one; each takes a copy (copy_of)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    proc = train(run, *TOY, "logger=csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


class Evil:
    """Unpickling this creates a file: what a crafted checkpoint would do with weights_only=False."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- 1. a checkpoint never runs the code inside it ----------------------------------------------------------------


def test_a_crafted_checkpoint_runs_nothing_anywhere(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": {}, "sde": {}, "shape": [2]}, "x": Evil(marker)}, evil)
    text = tmp_path / "notes.ckpt"
    text.write_text("this is a text file, not a checkpoint\n")
    for path in (evil, text):  # the apps refuse either through this reader: the crafted one through each app below
        with pytest.raises(CheckpointError, match=f"{path}: not a lightning-sde checkpoint") as info:
            load_denoiser(path)
        assert ("holds objects other than tensors" if path == evil else "not a torch.save archive") in str(info.value)
    resumed = tmp_path / "requeued"  # a requeued job whose last.ckpt was replaced
    (resumed / "checkpoints").mkdir(parents=True)
    (resumed / "checkpoints" / "last.ckpt").write_bytes(evil.read_bytes())
    runs = {
        "train ckpt_path": train(tmp_path / "fresh", *TOY, f"ckpt_path={evil}", "logger=csv"),
        "train resume": train(resumed, *TOY, "logger=csv"),
        "bench": app("bench", f"checkpoint={evil}", "data=toy2d", f"results={tmp_path}/r.jsonl",
                     f"output_dir={tmp_path}/o"),
        "likelihood": app("likelihood", f"checkpoint={evil}", "data=toy2d", f"out={tmp_path}/l",
                          f"output_dir={tmp_path}/o"),
        "figures": app("figures", f"checkpoint={evil}", f"out={tmp_path}/f", f"output_dir={tmp_path}/o"),
    }
    for name, proc in runs.items():
        assert proc.returncode != 0, f"{name} accepted {evil.name}"
        assert "not a lightning-sde checkpoint" in proc.stderr, f"{name}: {proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr.split("not a lightning-sde checkpoint")[0][-300:]
    assert not marker.exists(), "unpickling ran code from the file"


def test_a_checkpoint_naming_an_untrusted_class_is_refused(tmp_path, finished_run):
    good = finished_run
    ckpt = torch.load(good / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["net"]["_target_"] = "os.system"
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"names \['os.system'\], outside the trusted targets"):
        load_denoiser(tmp_path / "bad.ckpt")
    assert load_denoiser(good / "checkpoints" / "last.ckpt").shape == (2,)


# --- 2. a non-finite loss stops the work ----------------------------------------------------------------------------


def test_a_nan_loss_stops_training_names_the_step_and_saves_nothing_bad(tmp_path):
    """... and W&B (offline) shows the run failed, with the error: it was closed with exit code 0 ("finished")."""
    run = tmp_path / "nan"
    proc = train(run, *TOY, "optim.lr=1e6", "optim.warmup_steps=0")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "lsde-train: error: training stopped: at step" in out and "the last finite loss was" in out, out
    assert "lsde-train failed: NonFiniteError: training stopped: at step" in (run / "train.log").read_text()
    info = run_info(find_run(run / "wandb"))
    assert info["exit_code"] == 1 and info["summary"]["error"].startswith("NonFiniteError: training stopped: at step")
    # W&B's closing lines are off: the sync command of the failed run is lsde-train's (it was not printed at all)
    assert f"sync the failed run's record with: wandb sync {run.resolve()}/wandb/offline-run-*-nan" in out, out
    for ckpt in (run / "checkpoints").glob("*.ckpt"):  # whatever was written before is finite
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt


def test_after_a_nan_loss_the_advice_resumes_from_a_checkpoint_before_it(tmp_path):
    """A checkpoint every step and a diverging lr: last.ckpt is written at the step whose loss is NaN (its weights
    give it again, whatever the lr). It is set aside, and the command the error names, with a lower lr, resumes from
    the checkpoint before it and finishes."""
    run = tmp_path / "nan"
    common = [*TOY, "logger=csv", "callbacks.last.every_n_train_steps=1", "optim.warmup_steps=200",
              "trainer.gradient_clip_val=0"]
    proc = train(run, *common, "optim.lr=1e3")
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("lsde-train: error: training stopped")]
    step = int(line.split("at step ")[1].split()[0])
    assert proc.returncode == 1 and f"last.ckpt (written at step {step}: their weights gave it) moved to " \
        f"*.nonfinite; lsde-train ... run_name=nan resumes from last.prev.ckpt (step {step - 1})" in line, line
    assert torch.load(run / "checkpoints" / "last.ckpt.nonfinite", weights_only=True)["global_step"] == step
    proc = train(run, *common, "optim.lr=1e-4", "trainer.gradient_clip_val=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    restored = f"Restoring states from the checkpoint path at {run / 'checkpoints' / 'last.prev.ckpt'}"
    assert restored in proc.stdout + proc.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30


# --- 3. every job of a multirun is its own run ------------------------------------------------------------------


def test_each_job_of_a_multirun_has_its_own_directory_checkpoint_and_wandb_run(tmp_path):
    proc = app("train", "-m", *TOY, "sde=vp,ve", "trainer.max_steps=20", f"paths.root={tmp_path}/outputs",
               "run_name=sweep", f"hydra.sweep.dir={tmp_path}/multirun", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = sorted((tmp_path / "outputs" / "train").iterdir())
    assert [r.name for r in runs] == ["sweep_0", "sweep_1"], runs  # run_name given: still one directory per job
    targets, ids = [], set()
    for run in runs:
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 20  # the second job trained from step 0, not on the first one's checkpoint
        targets.append(ckpt["hyper_parameters"]["sde"]["_target_"])
        wandb_run = find_run(run / "wandb")
        ids.add(wandb_run.stem)
        assert run_info(wandb_run)["group"] == "sweep"  # the name given, kept by a resubmission: not the sweep's time
        steps = [row["trainer/global_step"] for row in history(wandb_run) if "train/loss" in row]
        assert steps[0] == 0
    assert targets == ["lightning_sde.sde.VPSDE", "lightning_sde.sde.VESDE"] and len(ids) == 2


# --- 4. a corrupted last.ckpt does not stop every rerun ---------------------------------------------------------


def test_a_truncated_last_checkpoint_resumes_from_the_previous_one(tmp_path, finished_run):
    run = copy_of(finished_run, tmp_path)
    last, previous = run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.prev.ckpt"
    # step 30's, written before the evaluation at 30 and kept when last.ckpt was written again after it
    assert torch.load(previous, weights_only=True)["global_step"] == 30
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # as a kill during a write by hand, or a disk fault, would leave it
    proc = train(run, *TOY, "trainer.max_steps=50", "logger=csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert f"cannot resume from {last}: not a lightning-sde checkpoint" in out
    assert "resuming from" in out and "the newest checkpoint that reads back" in out
    assert torch.load(last, weights_only=True)["global_step"] == 50


# --- 6. exit codes a scheduler can trust ---------------------------------------------------------------------------


def _start_and_signal(run: Path, signum, *overrides, group: bool = False, logger: str = "csv",
                      console_gone: bool = False):
    # SIGINT as a terminal gives it (pytest-xdist's workers ignore it, and a child inherits that); `group`: to the
    # process group, as a terminal's Ctrl-C (loader processes too); `console_gone`: the output's reader closes first
    # (`| tee`, stopped by the same Ctrl-C)
    proc = subprocess.Popen([sys.executable, "-m", "lightning_sde.cli.train", f"run_dir={run}", f"run_name={run.name}",
                             *TOY, "trainer.max_steps=100000", "trainer.val_check_interval=100000", f"logger={logger}",
                             *overrides], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), start_new_session=group)
    try:
        deadline = time.monotonic() + 120
        while not list(run.glob("csv/version_0/metrics.csv")):  # training has started and logged a step
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.2)
        if console_gone:
            proc.stdout.close()
            proc.stdout = None
        os.killpg(proc.pid, signum) if group else proc.send_signal(signum)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never left training for 100000 steps after the test
            proc.kill()
            proc.wait(timeout=30)
    return proc.returncode, out


def test_sigterm_checkpoints_and_exits_143_without_slurm(tmp_path):
    code, out = _start_and_signal(tmp_path / "term", signal.SIGTERM)
    assert code == 143, out[-3000:]
    step = torch.load(tmp_path / "term" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert f"SIGTERM: saved {tmp_path / 'term' / 'checkpoints' / 'last.ckpt'} at global step {step}" in out
    previous = tmp_path / "term" / "checkpoints" / "last.prev.ckpt"  # the signal's save is not written twice
    assert not previous.exists() or torch.load(previous, weights_only=True)["global_step"] < step
    # SIGUSR1 (the time limit's): below, with W&B's record of it


def test_a_stop_is_recorded_in_wandb_as_the_processs_exit_and_ctrl_c_through_a_closed_pipe_still_checkpoints(
        tmp_path):
    """Ctrl-C with the console piped to `tee` (stopped by the same Ctrl-C) failed inside the signal handler: no
    checkpoint, exit 1. W&B recorded a Ctrl-C as a failure (exit 1, error KeyboardInterrupt) and the time limit
    without a requeue as a finished run (exit 0, the process 138). The time-limit signal outside SLURM: a checkpoint,
    then exit 138."""
    from helpers.wandb_offline import find_run, run_info

    code, _ = _start_and_signal(tmp_path / "tee", signal.SIGINT, logger="default", console_gone=True)
    assert code == 130
    assert torch.load(tmp_path / "tee" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] > 0
    info = run_info(find_run(tmp_path / "tee" / "wandb"))
    assert info["exit_code"] == 130 and "error" not in info["summary"], info
    code, out = _start_and_signal(tmp_path / "limit", signal.SIGUSR1, logger="default")
    assert code == 138 and "requeue signal received outside SLURM" in out, out[-3000:]
    assert (tmp_path / "limit" / "checkpoints" / "last.ckpt").is_file()
    assert run_info(find_run(tmp_path / "limit" / "wandb"))["exit_code"] == 138


def test_an_error_while_training_keeps_its_steps_and_the_same_command_resumes_once_fixed(tmp_path):
    """An unreadable image met mid-run (every training image overwritten while it trains) saves last.ckpt at the last
    step boundary (checkpoints every 1000 steps: the steps were lost); Ctrl-C, at the end of the step it came in."""
    import numpy as np
    from PIL import Image

    root, run = tmp_path / "images", tmp_path / "imf"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"img{i:02d}.png")
    originals = {path: path.read_bytes() for path in root.iterdir()}
    common = ["experiment=digits", "data=image_folder", f"data.root={root}", "data.image_size=8", "data.channels=1",
              "data.batch_size=4", "data.n_val=4", "logger=csv", "callbacks.sampler=null", "callbacks.best=null",
              "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1",
              "callbacks.last.every_n_train_steps=1000"]
    proc = subprocess.Popen([sys.executable, "-m", "lightning_sde.cli.train", f"run_dir={run}", f"run_name={run.name}",
                             *common, "trainer.max_steps=100000", "trainer.val_check_interval=100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not list(run.glob("csv/version_0/metrics.csv")):  # training has logged a step
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.2)
        for path in originals:
            path.write_text("not an image")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 1 and "not a readable image" in err.splitlines()[-1], err[-3000:]
    said = re.search(r"lsde-train \.\.\. run_name=\S+ resumes the run from global step (\d+)", out)
    assert said, out[-3000:]
    step = int(said[1])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == step > 0 and all(v.isfinite().all() for v in ckpt["state_dict"].values())
    for path, data in originals.items():
        path.write_bytes(data)
    done = train(run, *common, f"trainer.max_steps={step + 3}", "trainer.val_check_interval=100000")
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step + 3
    code, out = _start_and_signal(tmp_path / "int", signal.SIGINT)
    assert code == 130 and "lsde-train: interrupted (Ctrl-C); what it wrote before stays on disk" in out, out[-3000:]
    assert "Ctrl-C: stopping at the end of this step, with a checkpoint there (Ctrl-C again: " in out, out[-3000:]
    step = torch.load(tmp_path / "int" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert f"Ctrl-C: saved {tmp_path / 'int' / 'checkpoints' / 'last.ckpt'} at global step {step}" in out, out[-3000:]
    assert f"lsde-train ... run_name=int resumes the run from global step {step}" in out, out[-3000:]
    code, out = _start_and_signal(tmp_path / "workers", signal.SIGINT, "data.num_workers=2", group=True)
    assert code == 130 and "Ctrl-C: saved" in out and "exited unexpectedly" not in out, out[-3000:]  # (loaders: 1)


# --- 7. start-up checks ---------------------------------------------------------------------------------------------


# One value per kind of check (a run value, a component that refuses to build, a monitor the evaluations never log):
# what the command line does with any of them. The messages of the others: tests/unit/test_configs.py.
@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", "config optim.lr: must be a finite number > 0; got -1"),
    ("model.net.width=0", "config model.net: ValueError: MLP: width must be an integer >= 1; got 0"),
    ("callbacks.best.monitor=val/ddim_10/fid", "config callbacks.best.monitor: 'val/ddim_10/fid' names metric 'fid'"),
])
def test_a_bad_value_fails_before_anything_is_created(tmp_path, override, message):
    run = tmp_path / "run"
    proc = train(run, *TOY, *override.split())  # default loggers: W&B and CSV
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    assert not run.exists(), f"a failed start-up left {sorted(p.name for p in run.rglob('*'))}"


def test_a_bad_value_on_an_existing_run_lands_in_its_log(tmp_path, finished_run):
    run = copy_of(finished_run, tmp_path)
    proc = train(run, *TOY, "optim.lr=-1", "logger=csv")
    assert proc.returncode != 0
    assert "lsde-train failed: ValueError: config optim.lr" in (run / "train.log").read_text()
    assert (run / "checkpoints" / "last.ckpt").is_file()  # the run itself is untouched


# --- 8. what a resume starts from, and with which config ------------------------------------------------------


def test_a_resume_takes_the_highest_step_follows_the_monitor_and_a_new_lr_and_refuses_another_model(tmp_path):
    run = tmp_path / "run"
    auto_monitor = [o for o in TOY if not o.startswith("callbacks.best.monitor=")]  # callbacks.best.monitor=auto
    assert train(run, *auto_monitor, "optim.lr=1e-3", "optim.warmup_steps=0", "logger=csv").returncode == 0
    checkpoints = run / "checkpoints"
    assert (checkpoints / "best-step=30.ckpt").is_file()  # auto: val/ddim_10/sliced_w2, the set's one sampler
    metrics = run / "csv" / "version_0" / "metrics.csv"
    logged = metrics.read_bytes()

    proc = train(run, *auto_monitor, "model.net.width=64", "trainer.max_steps=40", "logger=csv")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (f"config model: the checkpoint {checkpoints / 'last.ckpt'} does not fit this model config "
            "(denoiser.net.") in proc.stderr and "there, (64" in proc.stderr, proc.stderr
    assert "; model.net.width: 128 there, 64 here)" in proc.stderr, proc.stderr  # and the setting that made it
    assert metrics.read_bytes() == logged and not (run / "csv" / "version_1").exists()  # nothing rewound or added

    latest = time.time() + 60  # as after `cp -r`: the older checkpoints look newer than last.ckpt (step 30)
    for i, name in enumerate(("last.prev.ckpt", "best-step=30.ckpt")):
        os.utime(checkpoints / name, (latest + i, latest + i))
    proc = train(run, *auto_monitor, "optim.lr=1e-4", "optim.warmup_steps=0", "trainer.max_steps=40", "logger=csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {checkpoints / 'last.ckpt'}" in proc.stdout + proc.stderr
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 40
    rows = [row for version in ("version_0", "version_1") for row in
            csv.DictReader(open(run / "csv" / version / "metrics.csv")) if row.get("lr-AdamW")]
    lrs = {int(row["step"]): float(row["lr-AdamW"]) for row in rows}
    assert sorted(lrs) == list(range(40)), "a step's row was dropped or repeated"
    assert {lrs[step] for step in range(30)} == {1e-3} and {lrs[step] for step in range(30, 40)} == {1e-4}


def noise_image_folder(root: Path, count: int, batch_size: int) -> list[str]:
    """`count` random 8x8 grey PNGs under `root`, and the overrides of a digits run on them (4 validation images,
    an evaluation every 2 steps)."""
    import numpy as np
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"img{i:02d}.png")
    return ["experiment=digits", "data=image_folder", f"data.root={root}", "data.image_size=8", "data.channels=1",
            f"data.batch_size={batch_size}", "data.n_val=4", "trainer.val_check_interval=2", "logger=csv",
            "trainer.enable_progress_bar=false"]


def test_a_resume_on_an_image_folder_whose_validation_images_changed_is_refused(tmp_path):
    """A resume went on after files were added to the folder, with most of its validation images moved into
    training (the split was a permutation of the sorted list)."""
    import numpy as np
    from PIL import Image

    from lightning_sde.data import ImageFolderDataModule

    root, run = tmp_path / "images", tmp_path / "imf"
    common = [*noise_image_folder(root, 24, batch_size=8), "callbacks.sampler=null", "callbacks.best=null"]
    assert train(run, *common, "trainer.max_steps=2").returncode == 0
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "added.png")
    dm = ImageFolderDataModule(root, image_size=8, channels=1, n_val=4)
    added_to_training = root / "added.png" in dm.train_files
    proc = train(run, *common, "trainer.max_steps=3")
    assert (proc.returncode == 0) == added_to_training, proc.stderr[-2000:]
    dm.val_files[0].unlink()
    proc = train(run, *common, "trainer.max_steps=4")
    assert proc.returncode == 1 and "lsde-train: error: config data.root: the images under" in proc.stderr
    assert "its validation images are not the run's" in proc.stderr
    # the way on it names: a new run from the checkpoint's weights, with its own split of the folder as it is now
    advice = re.search(r"start a new run from its weights \(another run_name, init_from=(\S+)\)", proc.stderr)
    assert advice and Path(advice[1]) == run / "checkpoints" / "last.ckpt", proc.stderr[-2000:]
    proc = train(tmp_path / "imf2", *common, f"init_from={advice[1]}", "trainer.max_steps=2")
    assert proc.returncode == 0 and "starting from the weights of" in proc.stdout, proc.stderr[-2000:]


def test_a_resume_whose_evaluations_would_score_against_another_reference_is_refused(tmp_path):
    """Images added to the folder moved its first n_samples training images, the FID reference: the val/ curves
    before and after the resume compared two references without a word. The folder as it was goes on."""
    import numpy as np
    from PIL import Image

    root, run = tmp_path / "images", tmp_path / "imf"
    common = [*noise_image_folder(root, 40, batch_size=4), "callbacks.sampler.n_samples=16", "samplers=quick",
              "callbacks.sampler.metrics=[fid,kid]"]  # IS takes 20
    assert train(run, *common, "trainer.max_steps=2").returncode == 0
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "added.png")
    proc = train(run, *common, "trainer.max_steps=4")
    assert proc.returncode == 1 and "lsde-train: error: config data: the run's evaluations so far were scored " \
        "against another reference set (the first 16 training samples" in proc.stderr, proc.stderr[-2000:]
    (root / "added.png").unlink()
    proc = train(run, *common, "trainer.max_steps=4")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_resume_into_another_sde_is_refused_before_anything_is_touched_and_an_unchanged_one_goes_on(
        tmp_path, finished_run):
    """The same network trained on with another forward process (or output parameterization, or a network setting
    that keeps the shapes) would fit the weights and train silently as another model: refused at start-up, one line
    naming the key, the run left as it was. (More settings: tests/unit/test_resume_choice.py.)"""
    run = copy_of(finished_run, tmp_path)  # TOY's 30 steps under the default sde=vp
    short = [*TOY, "logger=csv"]
    last, metrics = run / "checkpoints" / "last.ckpt", run / "csv" / "version_0" / "metrics.csv"
    saved, logged = last.read_bytes(), metrics.read_bytes()
    (first_start,) = (run / ".hydra").iterdir()  # Hydra's record of the config this run trained with
    recorded = {path.name: path.read_bytes() for path in first_start.iterdir()}
    for override, change in (
            ("sde=subvp", "sde._target_: 'lightning_sde.sde.VPSDE' there, 'lightning_sde.sde.SubVPSDE' here"),
            # a network setting that keeps the weights' shapes
            ("+model.net.fourier_scale=4", "model.net.fourier_scale: 16.0 there, 4 here")):
        proc = train(run, *short, override, "trainer.max_steps=40")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        (line,) = [line for line in proc.stderr.splitlines() if line.startswith("lsde-train: error:")]
        assert line.startswith(f"lsde-train: error: config {change.split('.')[0]}: the checkpoint {last} was trained "
                               "with another forward process") and change in line, line
        assert last.read_bytes() == saved and metrics.read_bytes() == logged  # nothing rewound, trained or added
        assert not (run / "csv" / "version_1").exists()
        assert {path.name: path.read_bytes() for path in first_start.iterdir()} == recorded  # nor its record

    proc = train(run, *short, "sde=vp", "trainer.max_steps=5")  # below the checkpoint's step: not "reached"
    assert proc.returncode == 1 and "lsde-train: error: config trainer.max_steps: 5 is below the step of the " \
        f"checkpoint it resumes from (30: {last})" in proc.stderr, proc.stderr[-3000:]
    assert last.read_bytes() == saved
    proc = train(run, *short, "sde=vp", "trainer.max_steps=40")  # unchanged: goes on from step 30
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in proc.stdout + proc.stderr
    assert torch.load(last, weights_only=True)["global_step"] == 40


# --- 9. exact resume --------------------------------------------------------------------------------------------


def test_resume_under_gradient_accumulation_is_exact_and_evaluates_at_its_steps(tmp_path):
    """3 batches a step: 8 batches of 512 an epoch hold 2 whole steps. 10 steps straight against 5 (mid-epoch) +
    resume to 10: every weight identical; the evaluations (val_check_interval=4 steps) at steps 4 and 8 in both."""
    common = [*TOY, "trainer.accumulate_grad_batches=3", "trainer.max_steps=10", "trainer.val_check_interval=4",
              "callbacks.last.every_n_train_steps=10", "logger=csv"]
    assert train(tmp_path / "straight", *common).returncode == 0
    proc = train(tmp_path / "resumed", *common, "trainer.max_steps=5", "callbacks.last.every_n_train_steps=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = train(tmp_path / "resumed", *common)
    assert proc.returncode == 0 and "not resumable" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    a, b = (torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
            for name in ("straight", "resumed"))
    assert a["global_step"] == b["global_step"] == 10
    for key in ("state_dict", "current_model_state"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    for name in ("straight", "resumed"):
        with open(tmp_path / name / "samples" / "sampler_metrics.csv") as fh:
            assert sorted({int(r["step"]) for r in csv.DictReader(fh)}) == [4, 8], name


@pytest.mark.parametrize("precision", ["32-true", "64-true"])
def test_a_finished_run_extended_to_more_steps_continues_from_its_raw_weights(tmp_path, precision):
    """A run that ended at max_steps (its last checkpoint written at the end of fit, after the EMA was applied),
    rerun with a larger max_steps: bit for bit the weights (raw and EMA) and Adam's moments of a run that went
    straight there (Lightning's EMA callback would have put the EMA weights in place of the raw ones at the end; off
    by ~2e-3 here), and its values logged at the same steps and epoch (they came a step late, in the next epoch).
    4096 samples in batches of 512: 8 batches an epoch, so the resume lands mid-epoch and the run crosses epoch
    boundaries. Under 64-true the checkpoint was restored into fp32 parameters before Lightning converted them: off
    by ~4e-9."""
    common = [*TOY, "callbacks.last.every_n_train_steps=1000", "trainer.val_check_interval=1000", "logger=csv",
              f"trainer.precision={precision}", "trainer.log_every_n_steps=1"]
    assert train(tmp_path / "straight", *common, "trainer.max_steps=24").returncode == 0
    assert train(tmp_path / "extended", *common, "trainer.max_steps=12").returncode == 0
    proc = train(tmp_path / "extended", *common, "trainer.max_steps=24")
    assert proc.returncode == 0 and "not resumable" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    a, b = (torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
            for name in ("straight", "extended"))
    assert a["global_step"] == b["global_step"] == 24
    for key in ("state_dict", "current_model_state"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    moments = [[s[m] for s in ckpt["optimizer_states"][0]["state"].values() for m in ("exp_avg", "exp_avg_sq")]
               for ckpt in (a, b)]
    assert len(moments[0]) > 2 and all(torch.equal(x, y) for x, y in zip(*moments, strict=True))

    def logged(run):
        rows = [r for path in sorted((run / "csv").glob("version_*/metrics.csv")) for r in csv.DictReader(open(path))]
        return [(r["step"], r["epoch"], r["train/loss"]) for r in rows if r.get("train/loss") and int(r["step"]) >= 12]

    assert len(logged(tmp_path / "straight")) == 12 and logged(tmp_path / "extended") == logged(tmp_path / "straight")
