"""lsde-train end to end, as a user runs it: the CLI in a subprocess, real DDP (gloo), real offline W&B files."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.launch import run_app
from helpers.runs import copy_of
from helpers.wandb_offline import find_run, history, media, run_info
from lightning_sde import load_denoiser
from lightning_sde.data import Toy2DDataModule
from lightning_sde.data.base import MOMENT_SAMPLES
from lightning_sde.metrics.image import tensor_sha256
from lightning_sde.models.moments import DataMoments
from lightning_sde.samplers import build_sampler, sample

QUICK = ["samplers=quick", "callbacks.best.monitor=val/ddim_10/sliced_w2"]  # one DDIM-10 sampler per evaluation
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}


def run_train(run_dir: Path, *overrides, timeout=900, **env_vars):
    env = {**{k: v for k, v in ENV.items() if k != "LSDE_RUN_NAME"}, **env_vars}
    proc = run_app("lightning_sde.cli.train", f"run_dir={run_dir}", f"run_name={run_dir.name}", *overrides, env=env,
                   timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def csv_rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_toy2d_trains_samples_and_logs_offline(tmp_path):
    """Also under callbacks=wandb_osh (the default callbacks and wandb-osh's trigger): a command file naming this
    run's offline W&B folder, for the login node's `wandb-osh` loop (which runs `wandb sync` on it), written after
    each evaluation so the dashboard follows the job."""
    run_dir, comm = tmp_path / "toy", tmp_path / "comm"
    proc = run_train(run_dir, "experiment=toy2d", "trainer.max_steps=1500", "trainer.val_check_interval=750",
                     "callbacks.sampler.n_samples=1000", "callbacks.sampler.batch_size=1000",
                     "trainer.enable_progress_bar=false", "callbacks.progress.every_s=0",  # as in a batch job
                     "callbacks=wandb_osh", f"callbacks.wandb_osh.communication_dir={comm}",
                     LSDE_PROGRESS_EVERY_S="1")
    (command,) = comm.glob("*.command")  # one file per run, rewritten at each trigger
    target = Path(command.read_text())
    assert target.parent == (run_dir / "wandb").resolve() and target.name.startswith("offline-run-")
    assert list(target.glob("run-*.wandb")), proc.stdout[-2000:]
    # the log file holds what the console shows: a progress line every 50 steps and the sampler table per evaluation
    log_text = (run_dir / "train.log").read_text()
    assert "step 50/1500 (3%) | loss " in log_text and "steps/s | ETA " in log_text and "step 1500/1500" in log_text
    assert log_text.count("sampler evaluation at step") == 2 and "\nem_1000 " in log_text
    assert "sampling em_1000 (step 750): " in log_text and "% (" in log_text  # sampling's own progress lines
    # the loss fell
    metrics = [r for r in csv_rows(run_dir / "csv" / "version_0" / "metrics.csv") if r.get("train/loss")]
    first, last = float(metrics[0]["train/loss"]), float(metrics[-1]["train/loss"])
    assert last < 0.7 * first
    # EM samples of the EMA model are close to the data: sliced W2 < 0.35 (the floor of two exact 1000-sample
    # sets of 8 Gaussians is ~0.25; an untrained model's samples are at ~2.5)
    rows = {r["sampler"]: r for r in csv_rows(run_dir / "samples" / "sampler_metrics.csv") if r["step"] == "1500"}
    assert float(rows["em_1000"]["sliced_w2"]) < 0.35
    assert float(rows["em_1000"]["nfe"]) == 1000 and float(rows["ddim_50"]["nfe"]) == 50
    assert float(rows["noise_floor"]["nfe"]) == 0 and float(rows["noise_floor"]["sliced_w2"]) < 0.35  # 2000 real
    out = proc.stdout + proc.stderr
    assert "em_1000" in out and "sync it to W&B with: wandb sync " in out, out[-3000:]
    assert "You can sync this run" not in out  # W&B's own line syncs one launch's folder: a resumed run's last only
    # the offline W&B run holds the logged metrics and the scatter plots
    run_file = find_run(run_dir / "wandb")
    logged = [row for row in history(run_file) if "val/em_1000/sliced_w2" in row]
    em_1000 = float(rows["em_1000"]["sliced_w2"])
    assert len(logged) == 2 and logged[-1]["val/em_1000/sliced_w2"] == pytest.approx(em_1000)
    # ... at the step its sample pictures and its metric-against-NFE charts carry
    steps = {int(row["trainer/global_step"]) for row in logged}
    assert steps == {750, 1500}
    for key in ("samples/scatter/_type", "val_vs_nfe/sliced_w2_table/_type"):
        assert steps == {int(r["trainer/global_step"]) for r in history(run_file) if key in r}, key
    # a run that names itself, with its group, job type and tags, and the config once
    info = run_info(run_file)
    assert info["name"] == "toy2d-vp-toy" and info["group"] == "toy2d" and info["job_type"] == "train"
    assert {"sde:vp", "data:toy2d", "sampler:euler_maruyama", "sampler:ddim"} <= set(info["tags"]), info["tags"]
    (config,) = info["config_records"]
    assert {"sde", "model", "data", "optim", "trainer", "samplers", "run_name", "git_commit"} <= set(config), config
    assert info["summary"]["best/em_1000/sliced_w2"] == pytest.approx(min(float(r["val/em_1000/sliced_w2"])
                                                                           for r in logged))
    assert any("scatter" in p.name for p in media(run_file))
    # the checkpoint rebuilds the (EMA) model from its path alone
    denoiser = load_denoiser(run_dir / "checkpoints" / "last.ckpt")
    assert denoiser(torch.zeros(3, 2), 0.5).eps.shape == (3, 2)
    # with the training data's mean and covariance (MOMENT_SAMPLES of them), which gaussian_start uses
    expected = DataMoments.of_samples(Toy2DDataModule(name="eight_gaussians").reference(MOMENT_SAMPLES))
    assert torch.allclose(denoiser.data_moments.mean, expected.mean)
    assert torch.allclose(denoiser.data_moments.eigvals, expected.eigvals)
    x, info = sample(build_sampler("unipc", steps=8, gaussian_start=0.15), denoiser, range(16))
    assert info["nfe"] == 8 and bool(torch.isfinite(x).all())


# a toy2d run of 200 steps with CSV logs, a checkpoint and an evaluation every 100: trained once for the tests below
COMMON = ["experiment=toy2d", "logger=csv", "callbacks.last.every_n_train_steps=100", "trainer.val_check_interval=100",
          "callbacks.sampler.n_samples=50", *QUICK]


@pytest.fixture(scope="module")
def trained_200(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("trained") / "source"
    run_train(source, *COMMON, "trainer.max_steps=200")
    return source


@pytest.mark.slow
def test_resume_continues_where_it_stopped(tmp_path, trained_200):
    run_dir, common = copy_of(trained_200, tmp_path), COMMON
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert (first["global_step"], first["batch_size"]) == (200, 512)
    with pytest.raises(AssertionError, match="config data.batch_size: the checkpoint .* trained on batches of 512"):
        run_train(run_dir, *common, "trainer.max_steps=400", "data.batch_size=256")  # the data position would move
    other_monitor = [c for c in common if not c.startswith("callbacks.best.monitor=")]
    other_monitor.append("callbacks.best.monitor=val/loss")
    with pytest.raises(AssertionError, match="chosen by val/ddim_10/sliced_w2, this config chooses by val/loss: a "
                                             "second best checkpoint would start"):
        run_train(run_dir, *other_monitor, "trainer.max_steps=400")
    proc = run_train(run_dir, *common, "trainer.max_steps=400")  # same run_name and dir: ckpt_path=last resumes
    assert "Restoring states from the checkpoint" in proc.stdout + proc.stderr
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert final["global_step"] == 400
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {400}, "the optimizer state must continue, not restart"
    assert int(final["averaging_state"]["n_averaged"]) == 400, "the EMA must continue, not restart"
    rows = csv_rows(run_dir / "samples" / "sampler_metrics.csv")
    steps = [int(r["step"]) for r in rows if r["sampler"] != "noise_floor"]
    assert steps == [100, 200, 300, 400], "each evaluation once: nothing repeated or lost"
    assert [int(r["step"]) for r in rows if r["sampler"] == "noise_floor"] == steps


@pytest.mark.slow
def test_a_new_run_starts_from_another_runs_weights_and_resumes_its_own(tmp_path, trained_200):
    source, common = trained_200, COMMON  # read, never written: its runs are new ones beside it
    trained = torch.load(source / "checkpoints" / "last.ckpt", weights_only=True)
    ema, raw = trained["state_dict"], trained["current_model_state"]
    assert max((ema[k] - raw[k]).abs().max() for k in ema) > 1e-2  # the average and the raw weights differ
    # a fine-tune on other data with a learning rate too small to move the weights: it trains from the EMA weights
    tune = tmp_path / "tune"
    proc = run_train(tune, *common, f"init_from={source / 'checkpoints' / 'last.ckpt'}", "data.name=swiss_roll",
                     "optim.lr=1e-12", "trainer.max_steps=100")
    assert "starting from the weights of" in proc.stdout + proc.stderr
    tuned = torch.load(tune / "checkpoints" / "last.ckpt", weights_only=True)
    assert tuned["global_step"] == 100 and int(tuned["averaging_state"]["n_averaged"]) == 100  # a new step count
    assert tuned["init_from"] == str((source / "checkpoints" / "last.ckpt").resolve())
    adam_steps = {int(s["step"]) for s in tuned["optimizer_states"][0]["state"].values()}
    assert adam_steps == {100}, "a new optimizer"
    for part in ("state_dict", "current_model_state"):
        assert all(torch.allclose(tuned[part][k], ema[k], atol=1e-6) for k in ema), part
    theirs, ours = trained["data_moments"]["eigvals"], tuned["data_moments"]["eigvals"]
    assert not torch.allclose(ours, theirs, rtol=0.05)  # measured on its own data
    # run again with more steps (as a requeue): its own checkpoint is resumed, not the source's weights again
    proc = run_train(tune, *common, f"init_from={source / 'checkpoints' / 'last.ckpt'}", "data.name=swiss_roll",
                     "optim.lr=1e-12", "trainer.max_steps=200")
    assert "started this run" in proc.stdout + proc.stderr
    resumed = torch.load(tune / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 200 and resumed["init_from"] == tuned["init_from"]  # the record kept
    # a run that went on from the source's checkpoint (ckpt_path=), rerun with the same command: its own checkpoint
    branch = tmp_path / "branch"
    go_on = [*common, f"ckpt_path={source / 'checkpoints' / 'last.ckpt'}"]
    run_train(branch, *go_on, "trainer.max_steps=300")
    assert torch.load(branch / "checkpoints" / "last.ckpt", weights_only=True)["resumed_from"] == \
        str((source / "checkpoints" / "last.ckpt").resolve())
    proc = run_train(branch, *go_on, "trainer.max_steps=400")  # a requeue's same command: it went back to step 200
    out = proc.stdout + proc.stderr
    assert "this run's own checkpoint" in out and f"checkpoint path at {branch / 'checkpoints' / 'last.ckpt'}" in out
    final = torch.load(branch / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 400 and {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()} \
        == {400} and final["resumed_from"] == str((source / "checkpoints" / "last.ckpt").resolve())
    rows = csv_rows(branch / "samples" / "sampler_metrics.csv")
    assert [int(r["step"]) for r in rows if r["sampler"] != "noise_floor"] == [200, 300, 400]  # its start's; none twice


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """Two gloo processes, with gradient accumulation (2 batches a step): evaluations at the configured steps."""
    run_dir = tmp_path / "ddp"
    proc = run_train(run_dir, "experiment=toy2d", "trainer=ddp_cpu", "logger=csv", "trainer.max_steps=60",
                     "trainer.val_check_interval=30", "trainer.accumulate_grad_batches=2",
                     "callbacks.sampler.n_samples=101", *QUICK,
                     "+sampler@samplers.em_100=euler_maruyama", "samplers.em_100.steps=100")
    out = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out and "GLOBAL_RANK: 0, MEMBER: 1/2" in out
    assert "batch: 512 per process x 2 process(es) x 2 accumulated = 2048 samples a step" in out  # said once
    assert out.count("samples a step") == 1
    assert "sync_dist=True" not in out  # the sampler metrics (the same on every rank) raised Lightning's advice
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 60
    rows = csv_rows(run_dir / "samples" / "sampler_metrics.csv")
    assert {r["sampler"] for r in rows} == {"noise_floor", "ddim_10", "em_100"}
    assert sorted({int(r["step"]) for r in rows}) == [30, 60]
    for r in rows:  # 101 seeds split 51 + 50 across the ranks: exactly 101 distinct samples, none padded
        assert float(r["n_samples"]) == 101 and float(r["n_distinct"]) == 101
    # resumed on one process, the data position (step x batches) would land elsewhere in each rank's share: refused
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["world_size"], last["batch_size"]) == (2, 512)
    cmd = [sys.executable, "-m", "lightning_sde.cli.train", f"run_dir={run_dir}", "run_name=ddp", "experiment=toy2d",
           "logger=csv", "trainer.max_steps=90", "trainer.accumulate_grad_batches=2", "callbacks.sampler.n_samples=101",
           *QUICK]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in ENV.items() if k != "LSDE_RUN_NAME"})
    assert proc.returncode != 0 and "config trainer.devices / trainer.num_nodes: the checkpoint" in proc.stderr
    assert "trained on 2 processes, this run has 1" in proc.stderr and "Traceback" not in proc.stderr
    assert len(list((run_dir / "csv").glob("version_*"))) == 1  # refused before the loggers


def test_a_nan_under_ddp_sets_the_bad_checkpoint_aside_on_rank_0_while_the_other_rank_waits(tmp_path):
    """Two gloo processes diverge (a checkpoint every step): both stop at the same first bad step (all-reduced), rank 0
    moves last.ckpt aside and names the resume while rank 1 waits at a barrier (under srun a rank that exits first
    has SLURM stop rank 0 midway); no hang."""
    run_dir = tmp_path / "nan"
    cmd = [sys.executable, "-m", "lightning_sde.cli.train", f"run_dir={run_dir}", "run_name=nan", "experiment=toy2d",
           "trainer=ddp_cpu", "logger=csv", "trainer.max_steps=30", "trainer.val_check_interval=30", *QUICK,
           "data.n_train=4096", "optim.lr=1e3", "optim.warmup_steps=200", "trainer.gradient_clip_val=0",
           "callbacks.last.every_n_train_steps=1"]
    env = {k: v for k, v in ENV.items() if k != "LSDE_RUN_NAME"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lsde-train: error: training stopped")]
    assert proc.returncode == 1 and len(errors) == 2, proc.stderr[-5000:]
    steps = {int(line.split("at step ")[1].split()[0]) for line in errors}
    (step,) = steps
    assert sum(f"last.ckpt (written at step {step}: their weights gave it) moved to *.nonfinite; lsde-train ... "
               f"run_name=nan resumes from last.prev.ckpt (step {step - 1})" in line for line in errors) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt.nonfinite", "last.prev.ckpt"]


@pytest.mark.slow
def test_digits_samples_beat_noise_on_domain_fid(tmp_path):
    from torchmetrics.image.fid import FrechetInceptionDistance

    from lightning_sde.data import DigitsDataModule
    from lightning_sde.metrics.features import build_feature_extractor

    run_dir = tmp_path / "digits"
    run_train(run_dir, "experiment=digits", "logger=csv", "trainer.max_steps=300", "trainer.val_check_interval=300",
              "samplers=quick", "samplers.ddim_10.steps=50", "callbacks.best.monitor=val/ddim_10/fid",
              "callbacks.sampler.n_samples=500")
    floor, row = csv_rows(run_dir / "samples" / "sampler_metrics.csv")
    assert (floor["sampler"], row["sampler"]) == ("noise_floor", "ddim_10")
    assert float(floor["fid"]) < float(row["fid"])  # 500 more real digits are closer than 300 steps' samples
    # The same FID protocol on uniform noise: what an untrained model's samples score.
    fid = FrechetInceptionDistance(feature=build_feature_extractor("digits"), normalize=True)
    fid.update((DigitsDataModule(batch_size=128).reference(500) + 1) / 2, real=True)
    fid.update(torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(0)), real=False)
    noise_fid = float(fid.compute())
    assert float(row["fid"]) < 0.7 * noise_fid, (row["fid"], noise_fid)
    # IS (the digits classifier's, higher is better): real digits near its 10 classes, the samples below them
    assert 8.5 < float(floor["is"]) <= 10 and 1 < float(row["is"]) < float(floor["is"]), (floor["is"], row["is"])
    assert any(p.name.startswith("ddim_10_step") for p in (run_dir / "samples").glob("*.png"))


def test_the_sampler_callback_reports_non_finite_samples_and_never_scores_them(tmp_path):
    """A model whose samples diverge: the callback logs n_nonfinite and NaN metrics, not numbers, and the best
    checkpoint never takes them (Lightning's own saves its first top-k whatever the value)."""
    import lightning as L

    from lightning_sde.callbacks import BestCheckpoint, SamplerCallback
    from lightning_sde.module import ScoreModule
    from lightning_sde.samplers import DDIM

    module = ScoreModule(net={"_target_": "helpers.nets.NaNWhenSampling"}, shape=[2],
                         sde={"_target_": "lightning_sde.sde.VPSDE"})
    callback = SamplerCallback({"ddim": DDIM(steps=5)}, n_samples=20, batch_size=20)
    best = BestCheckpoint(dirpath=tmp_path / "checkpoints", filename="best-{step}", monitor="val/ddim/sliced_w2")
    trainer = L.Trainer(max_steps=4, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0,
                        callbacks=[callback, best], logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, datamodule=Toy2DDataModule(batch_size=64, n_train=256, n_val=64))
    row = callback.last_rows["ddim"]
    assert row["n_nonfinite"] == 20 and row["n_samples"] == 20
    assert math.isnan(row["sliced_w2"]) and math.isnan(row["mmd"])
    assert best.best_model_path == "" and not list((tmp_path / "checkpoints").glob("best-*.ckpt"))


def test_a_moved_run_resumes_its_best_checkpoints_choice(tmp_path):
    """Lightning keeps a ModelCheckpoint's state only in the folder it was saved in (an absolute path): a run moved
    (rsync, a renamed project) then resumed saved a worse evaluation as a second best-*.ckpt."""
    import shutil

    import lightning as L

    from lightning_sde.callbacks import BestCheckpoint, LastCheckpoint
    from lightning_sde.module import ScoreModule

    class Scripted(L.Callback):  # the monitored value at each evaluation: step 4's is worse than step 2's
        def on_validation_epoch_end(self, trainer, pl_module):
            pl_module.log("val/x", {2: 1.0, 4: 5.0}[trainer.global_step])

    def fit(root, steps, ckpt_path=None):
        folder = root / "checkpoints"
        best = BestCheckpoint(dirpath=folder, filename="best-{step}", monitor="val/x")
        last = LastCheckpoint(dirpath=folder, save_last=True, save_top_k=0, enable_version_counter=False)
        module = ScoreModule(net={"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 1},
                             shape=[2], sde={"_target_": "lightning_sde.sde.VPSDE"})
        trainer = L.Trainer(max_steps=steps, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0,
                            callbacks=[Scripted(), best, last], logger=False, enable_progress_bar=False,
                            default_root_dir=root, accelerator="cpu")
        trainer.fit(module, datamodule=Toy2DDataModule(batch_size=64, n_train=256, n_val=64), ckpt_path=ckpt_path)
        return best

    fit(tmp_path / "cluster", 2)
    shutil.move(tmp_path / "cluster", tmp_path / "laptop")
    best = fit(tmp_path / "laptop", 4, tmp_path / "laptop" / "checkpoints" / "last.ckpt")
    folder = (tmp_path / "laptop" / "checkpoints").resolve()
    assert sorted(p.name for p in folder.glob("best-*.ckpt")) == ["best-step=2.ckpt"]
    assert float(best.best_model_score) == 1.0 and Path(best.best_model_path) == folder / "best-step=2.ckpt"


def test_the_sampler_callback_reports_the_nfe_of_a_batch_over_several_batches(tmp_path):
    import lightning as L

    from lightning_sde.callbacks import SamplerCallback
    from lightning_sde.module import ScoreModule
    from lightning_sde.samplers import DDIM

    module = ScoreModule(net={"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 1},
                         shape=[2], sde={"_target_": "lightning_sde.sde.VPSDE"})
    callback = SamplerCallback({"ddim": DDIM(steps=5)}, n_samples=20, batch_size=6)  # batches of 6, 6, 6, 2
    trainer = L.Trainer(max_steps=2, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0,
                        callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, datamodule=Toy2DDataModule(batch_size=64, n_train=256, n_val=64))
    row = callback.last_rows["ddim"]
    assert row["nfe"] == 5 and row["n_samples"] == 20 and row["n_distinct"] == 20 and row["n_nonfinite"] == 0
    state = callback.state_dict()  # what a resume must sample alike (check_same_evaluations)
    assert state["samplers"] == {"ddim": callback.sampled_as("ddim")} and state["n_samples"] == 20
    assert state["samplers"]["ddim"][1]["steps"] == 5
    data = Toy2DDataModule(batch_size=64, n_train=256, n_val=64)
    assert state["reference_sha256"] == tensor_sha256(data.reference(20))  # the set it scored against


def test_a_wandb_run_that_cannot_start_leaves_training_going_and_wandb_mode_disabled_makes_none(tmp_path):
    """W&B is a view of the CSV logs: when its run cannot start (here its folder is a file; a server out of reach
    fails alike), training goes on without it and exits 0, with one warning and no traceback; WANDB_MODE=disabled
    makes no W&B files at all (not offline ones)."""
    short = ["experiment=toy2d", *QUICK, "trainer.max_steps=20", "trainer.val_check_interval=20",
             "callbacks.sampler.n_samples=50"]
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "wandb").write_text("not a folder")
    proc = run_train(broken, *short, "logger=wandb")  # the only logger: Lightning's lr monitor then has none
    out = proc.stdout + proc.stderr
    assert "W&B could not start (NotADirectoryError" in out and "Traceback" not in out, out[-3000:]
    assert csv_rows(broken / "samples" / "sampler_metrics.csv") and list((broken / "checkpoints").glob("*.ckpt"))
    assert "W&B" not in out[out.index("run directory:"):]  # no sync command for a run that never started
    off = tmp_path / "off"
    run_train(off, *short, WANDB_MODE="disabled")
    assert not (off / "wandb").exists() and csv_rows(off / "samples" / "sampler_metrics.csv")
    # the logged config names the code that ran (as bench rows do): here this checkout's commit
    import yaml

    from lightning_sde.tracking import source_revision

    hparams = yaml.safe_load((off / "csv" / "version_0" / "hparams.yaml").read_text())
    assert str(hparams["git_commit"]) == source_revision()


@pytest.mark.slow
def test_a_resume_at_max_steps_names_an_evaluation_that_was_stopped(tmp_path, trained_200):
    """A signal during the last evaluation leaves the checkpoint at max_steps and no rows at that step; resumed there,
    Lightning trains no step (no hook to redo it in): the start says so, and how to get it, instead of exiting 0 with
    the final evaluation silently missing."""
    run_dir, common = copy_of(trained_200, tmp_path), [*COMMON, "trainer.max_steps=200"]
    path = run_dir / "samples" / "sampler_metrics.csv"
    assert {r["step"] for r in csv_rows(path)} == {"100", "200"}
    proc = run_train(run_dir, *common)
    assert "was stopped before it finished" not in proc.stdout + proc.stderr  # it finished: nothing to say
    rows = csv_rows(path)  # less the rows of step 200: what the stopped evaluation leaves
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["step"] != "200")
    proc = run_train(run_dir, *common)
    assert "the evaluation at step 200 was stopped before it finished, and this fit has no step left to train " \
           "(trainer.max_steps=200)" in proc.stdout + proc.stderr
