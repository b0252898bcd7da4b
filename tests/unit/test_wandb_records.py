"""W&B as the view of the CSV record: the logger's steps and failures, the offline record read back, which rows a
resumed run logs again, and the offline-sync trigger. Real W&B runs, offline."""

from __future__ import annotations

import csv
import logging
import os
import shutil
from types import SimpleNamespace

import pytest

from lightning_sde.tracking import backfill_wandb, offline_history, recorded_group, trim_history, wandb_configured


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    yield
    import wandb

    wandb.finish()


def test_the_logger_keys_rows_on_the_global_step_and_a_failure_stops_it_with_one_warning(tmp_path, offline, capfd,
                                                                                         caplog):
    """W&B's own step is the global step (a replayed lower step is dropped, not appended as a new point); a row
    spanning three of the record's 32 KiB blocks is read back whole; W&B's closing lines are left out; after a
    failure W&B is not called again."""
    import wandb

    from lightning_sde.logger import WandbLogger

    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="p", id="r1")
    assert logger.start()
    for step, value in ((5, 1.0), (7, 2.0), (6, 3.0)):
        logger.log_metrics({"a": value}, step=step)
    logger.experiment.log({"note": "y" * 70_000, "trainer/global_step": 8}, step=8)
    logger.log_metrics({"a": 4.0}, step=9)
    wandb.finish()
    wandb.teardown()  # its service has written the run file when it exits
    assert "wandb sync" not in capfd.readouterr().err  # W&B's sync line names only this launch's folder
    (run_file,) = tmp_path.glob("wandb/offline-run-*-r1/run-r1.wandb")
    rows = offline_history(run_file)
    assert [(r["_step"], r.get("a")) for r in rows] == [(5, 1.0), (7, 2.0), (8, None), (9, 4.0)]
    assert len(rows[2]["note"]) == 70_000

    calls = []

    class Gone:
        offline = True

        def log(self, *args, **kwargs):
            calls.append(args)
            raise RuntimeError("service gone")

    logger._experiment = Gone()
    with caplog.at_level(logging.WARNING):
        for step in (10, 11, 12):
            logger.log_metrics({"a": 1.0}, step=step)
    assert len(calls) == 1 and caplog.text.count("W&B logging stopped (RuntimeError: service gone)") == 1


def test_a_runs_group_is_its_newest_launchs(tmp_path, offline):
    import wandb

    for group, stamp in (("old", "20240101_000000"), ("new", "20250101_000000")):
        wandb.init(dir=str(tmp_path), id="r", project="p", group=group, settings=wandb.Settings(quiet=True))
        wandb.finish()
        wandb.teardown()
        (folder,) = (tmp_path / "wandb").glob("offline-run-*-r")
        folder.rename(tmp_path / f"offline-run-{stamp}-r")
    shutil.rmtree(tmp_path / "wandb")
    assert recorded_group(tmp_path, "r") == "new"


@pytest.mark.parametrize(("mode", "key", "expected"), [("dryrun", "x", False), ("offline", "x", False),
                                                       ("disabled", "x", False), ("online", None, True),
                                                       (None, "x", True)])
def test_wandb_is_online_only_where_its_mode_allows(monkeypatch, tmp_path, mode, key, expected):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    for name, value in (("WANDB_MODE", mode), ("WANDB_API_KEY", key)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert wandb_configured() is expected


def write_metrics(path, rows, fields):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fields)
        writer.writeheader()
        writer.writerows(rows)


def test_a_resume_drops_the_checkpoint_steps_training_row_and_keeps_its_evaluation(tmp_path):
    """The checkpoint at step 10 was written after training step 9's row; the resumed run logs step 10's training
    row again, and Lightning logged the evaluation at 10 at step 9 (kept unless it is redone)."""
    path = tmp_path / "csv" / "version_0" / "metrics.csv"
    write_metrics(path, [{"step": 9, "train/loss": 1}, {"step": 10, "train/loss": 2}, {"step": 9, "val/loss": 3},
                         {"step": 11, "train/loss": 5}], ["step", "train/loss", "val/loss"])
    trim_history(tmp_path, 10)
    assert [(r["step"], r["train/loss"], r["val/loss"]) for r in csv.DictReader(open(path))] == [
        ("9", "1", ""), ("9", "", "3")]
    trim_history(tmp_path, 10, redo_evaluation=True)
    assert [(r["step"], r["train/loss"]) for r in csv.DictReader(open(path))] == [("9", "1")]


def test_an_online_resume_logs_again_only_the_rows_the_server_lacks(tmp_path):
    """The server holds steps up to 200; the checkpoint is at 300: the CSV's 249 is logged again, not 200 (it has
    it), nor 300 and 349 (training logs them again)."""
    write_metrics(tmp_path / "csv" / "version_0" / "metrics.csv",
                  [{"step": 49, "train/loss": 0.5}, {"step": 200, "val/x/mmd": 0.7}, {"step": 200, "train/loss": 0.45},
                   {"step": 249, "train/loss": 0.4}, {"step": 300, "train/loss": 0.3},
                   {"step": 349, "train/loss": 0.2}], ["step", "train/loss", "val/x/mmd"])
    calls = []
    logger = SimpleNamespace(experiment=SimpleNamespace(offline=False, summary={"trainer/global_step": 200}, id="r"),
                             log_metrics=lambda metrics, step: calls.append((step, metrics)),
                             log_image=lambda **kwargs: None)
    assert backfill_wandb(logger, tmp_path, 300) == 1 and calls == [(249, {"train/loss": 0.4})]


def test_the_offline_sync_is_asked_for_after_each_evaluation_and_at_the_end_not_at_the_sanity_check(tmp_path):
    pytest.importorskip("wandb_osh")
    from lightning.pytorch.loggers import WandbLogger

    from lightning_sde.callbacks.wandb_sync import WandbOfflineSync

    run_dir = tmp_path / "wandb" / "offline-run-x-r"
    (run_dir / "files").mkdir(parents=True)
    callback = WandbOfflineSync(str(tmp_path / "commands"))
    logger = WandbLogger.__new__(WandbLogger)
    logger._experiment = SimpleNamespace(offline=True, dir=str(run_dir / "files"))
    trainer = SimpleNamespace(sanity_checking=True, is_global_zero=True, loggers=[logger])
    callback.on_validation_end(trainer, None)
    assert callback.triggered == 0 and not (tmp_path / "commands").exists()
    trainer.sanity_checking = False
    callback.on_validation_end(trainer, None)
    callback.on_train_end(trainer, None)
    assert callback.triggered == 2
    commands = list((tmp_path / "commands").glob("*.command"))
    assert commands and all(os.path.samefile(p.read_text().strip(), run_dir) for p in commands)
