"""What the sampler callback produces per evaluation, field by field, on a real Trainer (one process, CPU): the row
of each sampler (NFE over several batches, the sampling dtype, the metrics asked for), what it logs, the pictures it
draws and hands to W&B, the CSV record, the table at the end of fit; non-finite samples; a datamodule without a
kind; metrics or a feature extractor that do not fit."""

import csv
import logging
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import Logger, WandbLogger

import lightning_sde.callbacks.sampler as sampler_callback
from lightning_sde.callbacks import SamplerCallback
from lightning_sde.data import DigitsDataModule, Toy2DDataModule
from lightning_sde.generation import generate
from lightning_sde.metrics.scorer import Scorer
from lightning_sde.module import ScoreModule
from lightning_sde.samplers import DDIM, Heun

MLP = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 1}
UNET = {
    "_target_": "lightning_sde.models.unet.UNet",
    "in_channels": 1,
    "image_size": 8,
    "channels": 8,
    "channel_mult": [1],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "dropout": 0.0,
}
VP = {"_target_": "lightning_sde.sde.VPSDE"}


class RecordingWandb(WandbLogger):
    """A W&B logger that keeps what it is handed instead of starting a run."""

    def __init__(self):
        Logger.__init__(self)
        self.images, self.metrics = [], []

    name = version = "offline"
    save_dir = experiment = None

    def log_hyperparams(self, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_image(self, **kwargs):
        self.images.append(kwargs)

    def finalize(self, status):
        pass

    def after_save_checkpoint(self, checkpoint_callback):
        pass


class PlainPoints(L.LightningDataModule):
    """A user's datamodule with no `kind`: points are assumed."""

    def __init__(self):
        super().__init__()
        self.inner = Toy2DDataModule(batch_size=64, n_train=256, n_val=64)

    def train_dataloader(self):
        return self.inner.train_dataloader()

    def val_dataloader(self):
        return self.inner.val_dataloader()

    def reference(self, n):
        return self.inner.reference(n)


@pytest.fixture
def drawn(monkeypatch):
    """Every scatter and image grid the callback draws (still drawn): [(kind, what, path, title)]."""
    calls = []
    real_scatter, real_grid = sampler_callback.scatter_grid, sampler_callback.image_grid

    def scatter(panels, path):
        calls.append(("scatter", dict(panels), path, None))
        return real_scatter(panels, path)

    def grid(x, path, title=None):
        calls.append(("grid", x, path, title))
        return real_grid(x, path, title=title)

    monkeypatch.setattr(sampler_callback, "scatter_grid", scatter)
    monkeypatch.setattr(sampler_callback, "image_grid", grid)
    return calls


@pytest.fixture
def info_log():
    """The messages Lightning's rank_zero_info emits (its logger does not propagate to pytest's capture)."""
    records = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def fit(root, callback, module=None, datamodule=None, loggers=False, val_every=2, steps=2):
    module = module or ScoreModule(net=MLP, shape=[2], sde=VP)
    trainer = L.Trainer(
        max_steps=steps,
        val_check_interval=val_every,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[callback],
        logger=loggers,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=root,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=datamodule or Toy2DDataModule(batch_size=64, n_train=256, n_val=64))
    return trainer, module


def test_points_rows_logs_pictures_record_and_table(tmp_path, drawn, info_log, one_thread):
    root = tmp_path / "runs" / "exp"  # not there yet: the callback makes its folders
    samplers = {"ddim": DDIM(steps=5), "heun": Heun(steps=3)}
    wandb = RecordingWandb()
    callback = SamplerCallback(samplers, n_samples=16, batch_size=6, first_seed=3, dtype="float64", metrics=["mmd"])
    trainer, module = fit(root, callback, loggers=[wandb])

    denoiser = module.denoiser.eval()
    reference = trainer.datamodule.reference(16)
    expected = {label: generate(s, denoiser, range(3, 19), 6, "cpu", torch.float64) for label, s in samplers.items()}
    for label, nfe in (("ddim", 5), ("heun", 6)):  # 3 batches of 6, 6, 4 samples: the NFE of one, never the sum
        row = callback.last_rows[label]
        assert set(row) == {"step", "sampler", "nfe", "wall_s", "n_samples", "n_distinct", "n_nonfinite", "mmd"}
        assert (row["step"], row["sampler"], row["nfe"], row["n_samples"], row["n_distinct"], row["n_nonfinite"]) == (
            2,
            label,
            nfe,
            16,
            16,
            0,
        )
        assert row["wall_s"] > 0
        assert row["mmd"] == pytest.approx(Scorer(reference, ("mmd",))(expected[label].x)["mmd"], rel=1e-9)
        for key in ("nfe", "wall_s", "n_samples", "n_distinct", "n_nonfinite", "mmd"):
            assert trainer.callback_metrics[f"val/{label}/{key}"].item() == pytest.approx(row[key])
    # the loggers get every value of the evaluation at its step, but flat lines: the configured sample count and the
    # noise floor's NFE and time (0)
    ((step, logged),) = [(step, m) for step, m in wandb.metrics if "val/ddim/nfe" in m]
    assert step == 2 and logged == {
        f"val/{label}/{key}": value
        for label, row in callback.last_rows.items()
        for key, value in row.items()
        if key not in ("step", "sampler", "n_samples") and not (label == "noise_floor" and key in ("nfe", "wall_s"))
    }
    assert {"val/ddim/n_distinct", "val/ddim/n_nonfinite", "val/noise_floor/mmd"} <= set(logged)

    # one scatter: the data and each sampler's samples (float64, the seeds' own), titled with the NFE
    scatter_path = root / "samples" / "scatter_step0000002.png"
    ((kind, panels, path, _),) = drawn
    assert kind == "scatter" and path == scatter_path and scatter_path.stat().st_size > 5_000
    assert list(panels) == ["data", "ddim (NFE 5)", "heun (NFE 6)"]
    assert torch.equal(panels["data"], reference)
    for label, title in (("ddim", "ddim (NFE 5)"), ("heun", "heun (NFE 6)")):
        assert panels[title].dtype == torch.float64
        torch.testing.assert_close(panels[title], expected[label].x, rtol=0, atol=1e-12)
    assert wandb.images == [{"key": "samples/scatter", "images": [str(scatter_path)], "step": 2}]

    lines = (root / "samples" / "sampler_metrics.csv").read_text().splitlines()
    assert lines[0] == "step,sampler,mmd,n_distinct,n_nonfinite,n_samples,nfe,wall_s"
    assert [line.split(",")[:2] for line in lines[1:]] == [["2", "noise_floor"], ["2", "ddim"], ["2", "heun"]]
    # the noise floor: 16 more real samples, scored as the samples are (float64), first
    floor = callback.last_rows["noise_floor"]
    floor_set = trainer.datamodule.floor_set(16).double()
    assert floor["mmd"] == pytest.approx(Scorer(reference, ("mmd",))(floor_set)["mmd"], rel=1e-9)
    assert (floor["nfe"], floor["n_samples"], floor["n_nonfinite"]) == (0, 16, 0)

    # and a table of the evaluation in the log: a line per sampler, the metrics asked for, not n_distinct
    (message,) = [m for m in info_log if m.startswith("sampler evaluation at step 2:")]
    header, rule, *lines = message.splitlines()[1:]
    assert header.split()[0] == "sampler" and set(header.split()) == {"sampler", "nfe", "wall_s", "mmd", "n_nonfinite"}
    assert [line.split()[0] for line in lines] == ["noise_floor", "ddim", "heun"] and set(rule) == {"-", " "}


def test_images_get_a_titled_grid_of_the_first_samples_handed_to_wandb(tmp_path, drawn, one_thread):
    root = tmp_path / "runs" / "digits"
    wandb = RecordingWandb()
    callback = SamplerCallback({"ddim": DDIM(steps=3)}, n_samples=20, batch_size=20, n_plot=4, metrics=["fid"])
    _, module = fit(
        root, callback, ScoreModule(net=UNET, shape=[1, 8, 8], sde=VP), DigitsDataModule(batch_size=64), loggers=[wandb]
    )
    samples = generate(DDIM(steps=3), module.denoiser.eval(), range(20), 20, "cpu")
    grid_path = root / "samples" / "ddim_step0000002.png"
    ((kind, x, path, title),) = drawn  # no scatter for images
    assert (kind, path, title) == ("grid", grid_path, "ddim, NFE 3")
    torch.testing.assert_close(x, samples.x[:4], rtol=0, atol=1e-6)
    assert grid_path.stat().st_size > 1_000 and not list((root / "samples").glob("scatter*"))
    assert wandb.images == [{"key": "samples/ddim", "images": [str(grid_path)], "step": 2}]
    assert set(callback.last_rows["ddim"]) == {
        "step",
        "sampler",
        "nfe",
        "wall_s",
        "n_samples",
        "n_distinct",
        "n_nonfinite",
        "fid",
    }


def test_non_finite_samples_are_reported_never_scored_or_drawn(tmp_path, drawn, one_thread):
    root = tmp_path / "runs" / "diverged"
    module = ScoreModule(net={"_target_": "helpers.nets.NaNWhenSampling"}, shape=[2], sde=VP)
    wandb = RecordingWandb()
    callback = SamplerCallback({"ddim": DDIM(steps=2)}, n_samples=8, batch_size=8, noise_floor=False)
    fit(root, callback, module, loggers=[wandb])
    row = callback.last_rows["ddim"]
    assert (row["n_nonfinite"], row["n_samples"], row["nfe"]) == (8, 8, 2)
    assert math.isnan(row["sliced_w2"]) and math.isnan(row["mmd"])
    assert callback._scorer is None  # the reference statistics were never even needed
    scatter_path = root / "samples" / "scatter_step0000002.png"
    assert [(kind, list(panels), path) for kind, panels, path, _ in drawn] == [("scatter", ["data"], scatter_path)]
    assert scatter_path.is_file()
    assert wandb.images == [{"key": "samples/scatter", "images": [str(scatter_path)], "step": 2}]
    with open(root / "samples" / "sampler_metrics.csv") as fh:
        (record,) = list(csv.DictReader(fh))
    assert record["sampler"] == "ddim" and record["mmd"] == "nan" and float(record["n_nonfinite"]) == 8


def test_a_datamodule_without_a_kind_is_treated_as_points(tmp_path, drawn, one_thread):
    callback = SamplerCallback({"ddim": DDIM(steps=2)}, n_samples=8, batch_size=8)
    fit(tmp_path, callback, datamodule=PlainPoints())
    assert callback.metrics == ("sliced_w2", "mmd")
    assert {"sliced_w2", "mmd"} <= set(callback.last_rows["ddim"])
    assert [(kind, list(panels)) for kind, panels, *_ in drawn] == [("scatter", ["data", "ddim (NFE 2)"])]


def test_metrics_that_do_not_fit_the_data_fail_at_setup_naming_the_callbacks_key(tmp_path):
    callback = SamplerCallback({"ddim": DDIM(steps=2)}, n_samples=8, batch_size=8, metrics=["fid"])
    with pytest.raises(ValueError) as err:
        fit(tmp_path, callback)
    assert str(err.value) == (
        "config callbacks.sampler.metrics: unknown or unusable metric(s) ['fid'] for points; allowed: "
        "['sliced_w2', 'mmd']"
    )
    assert not (tmp_path / "samples").exists()


def test_the_configured_feature_extractor_is_the_one_scoring(tmp_path):
    callback = SamplerCallback({"ddim": DDIM(steps=2)}, n_samples=8, metrics=["fid"], feature_extractor="nope")
    callback.setup(SimpleNamespace(datamodule=DigitsDataModule(), default_root_dir=tmp_path), None, "fit")
    with pytest.raises(ValueError, match="unknown feature extractor 'nope'"):
        callback.scorer("cpu")


def test_a_fit_without_an_evaluation_writes_and_prints_nothing(tmp_path, info_log):
    callback = SamplerCallback({"ddim": DDIM(steps=2)}, n_samples=8, batch_size=8, every_n_evals=2)
    fit(tmp_path, callback)  # one validation: evaluation 1 of every 2 is skipped
    assert callback.last_rows == {} and not (tmp_path / "samples").exists()
    assert not any(message.startswith("sampler evaluation") for message in info_log)


def write_record(path, rows):
    fields = ["step", "sampler", "nfe", "sliced_w2", "loglik"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows({f: r.get(f, "") for f in fields} for r in rows)


def test_the_best_values_come_from_every_evaluation_of_the_run_not_from_one_starts_summary(tmp_path):
    """A resumed offline run's W&B summary starts empty: best/ddim_50/sliced_w2 said 144.3 (its only evaluation)
    where the run's best was 0.68 at step 800, before the resume. The record of every start decides; loglik ranks
    by its closeness to the same evaluation's noise floor; NaN is never best."""
    record = tmp_path / "sampler_metrics.csv"
    write_record(record, [
        {"step": 400, "sampler": "ddim_50", "sliced_w2": 0.9, "loglik": -2.0},
        {"step": 400, "sampler": "noise_floor", "sliced_w2": 0.05, "loglik": -2.5},
        {"step": 800, "sampler": "ddim_50", "sliced_w2": 0.68, "loglik": -2.6},
        {"step": 800, "sampler": "noise_floor", "sliced_w2": 0.05, "loglik": -2.5},
        {"step": 800, "sampler": "em_100", "sliced_w2": "nan", "loglik": "nan"},
        {"step": 1000, "sampler": "ddim_50", "sliced_w2": 144.3, "loglik": -900.0},  # resumed: no floor row
    ])
    assert sampler_callback.best_values(record, ["sliced_w2", "loglik"]) == {
        "best/ddim_50/sliced_w2": (0.68, 800), "best/ddim_50/loglik": (-2.6, 800)}


def test_a_resumed_runs_wandb_summary_keeps_the_best_of_the_starts_before(tmp_path, monkeypatch):
    callback = SamplerCallback({"ddim_50": DDIM(50)}, n_samples=8, metrics=["sliced_w2"])
    callback.out_dir = tmp_path
    write_record(tmp_path / "sampler_metrics.csv", [{"step": 800, "sampler": "ddim_50", "sliced_w2": 0.68},
                                                    {"step": 1000, "sampler": "ddim_50", "sliced_w2": 144.3}])
    callback.last_rows = {"ddim_50": {"step": 1000, "sampler": "ddim_50", "nfe": 50, "wall_s": 1.0,
                                      "sliced_w2": 144.3}}
    run = SimpleNamespace(summary={}, log=lambda *args, **kwargs: None)  # a new offline start: nothing in it yet
    callback._wandb_charts(SimpleNamespace(experiment=run), 1000)
    assert run.summary == {"best/ddim_50/sliced_w2": 0.68, "best/ddim_50/sliced_w2/step": 800}
    # online, the server's summary may hold a best from an evaluation the resume trimmed from the record: replaced
    run.summary = {"best/ddim_50/sliced_w2": 0.5, "best/ddim_50/sliced_w2/step": 900}
    callback._wandb_charts(SimpleNamespace(experiment=run), 1000)
    assert run.summary == {"best/ddim_50/sliced_w2": 0.68, "best/ddim_50/sliced_w2/step": 800}


def test_a_backfilled_evaluation_gets_its_pictures_at_its_step(tmp_path):
    """After a kill before W&B wrote anything, the resumed run logged the lost evaluation's numbers from the CSV but
    not its pictures, which were on disk."""
    from lightning_sde.tracking import backfill_wandb

    (tmp_path / "csv" / "version_0").mkdir(parents=True)
    (tmp_path / "csv" / "version_0" / "metrics.csv").write_text(
        "step,train/loss,val/ddim_10/sliced_w2\n49,0.5,\n200,,0.7\n200,0.45,\n249,0.4,\n")
    (tmp_path / "samples").mkdir()
    for name in ("scatter_step0000200.png", "ddim_10_step0000200.png", "scatter_step0000400.png"):
        (tmp_path / "samples" / name).write_bytes(b"png")
    wandb_dir = tmp_path / "wandb" / "offline-run-2-r"
    wandb_dir.mkdir(parents=True)
    calls = []
    logger = SimpleNamespace(
        experiment=SimpleNamespace(offline=True, dir=str(wandb_dir / "files"), id="r"),
        log_metrics=lambda metrics, step: calls.append(("metrics", step, sorted(metrics))),
        log_image=lambda key, images, step: calls.append(("image", step, key)))
    assert backfill_wandb(logger, tmp_path, 300) == 4
    assert calls == [("metrics", 49, ["train/loss"]), ("metrics", 200, ["val/ddim_10/sliced_w2"]),
                     ("image", 200, "samples/ddim_10"), ("image", 200, "samples/scatter"),  # once a step
                     ("metrics", 200, ["train/loss"]), ("metrics", 249, ["train/loss"])]


def test_a_resume_with_other_metrics_keeps_every_value_in_its_column(tmp_path):
    """Rows of a resumed run with other metrics were appended under the first run's header: best/ddim/sliced_w2 then
    read a wall time."""
    callback = SamplerCallback({"ddim": DDIM(2)}, n_samples=8, metrics=["mmd"])
    callback.out_dir = tmp_path

    def evaluation(step, **metrics):
        callback.last_rows = {"ddim": {"step": step, "sampler": "ddim", "nfe": 2, "wall_s": 0.5, **metrics}}
        callback._append_rows()

    evaluation(100, mmd=0.3, sliced_w2=0.2)
    evaluation(200, sliced_w2=0.1)  # fewer metrics: the file's header, blanks where none
    evaluation(300, kid=0.05, sliced_w2=0.09)  # a metric the file has no column for: rewritten under both
    with open(tmp_path / "sampler_metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], r["mmd"], r["sliced_w2"], r["kid"], r["wall_s"]) for r in rows] == [
        ("100", "0.3", "0.2", "", "0.5"), ("200", "", "0.1", "", "0.5"), ("300", "", "0.09", "0.05", "0.5")]
    assert sampler_callback.best_values(tmp_path / "sampler_metrics.csv", ["sliced_w2"]) == {
        "best/ddim/sliced_w2": (0.09, 300)}


def test_a_tuned_samplers_row_records_its_choice_and_its_pilots_nfe(tmp_path, drawn, info_log, one_thread):
    """grid=select (the recommended preset) chose its configuration on a pilot at each evaluation, and the callback's
    table, sampler_metrics.csv and W&B kept only its NFE: which configuration an evaluation used was in a log line."""
    from lightning_sde.samplers import UniPC

    tuned = UniPC(steps=4, grid="select", pilot=32, select_over={"order": [1, 2]})
    wandb = RecordingWandb()
    callback = SamplerCallback({"rec": tuned, "ddim": DDIM(steps=4)}, n_samples=16, batch_size=16, metrics=["mmd"])
    fit(tmp_path, callback, loggers=[wandb])
    row = callback.last_rows["rec"]
    assert row["setup_nfe"] > 0 and row["selected"].startswith(("uniform", "logsnr", "quadratic", "trailing", "karras"))
    assert "order=" in row["selected"] and "setup_nfe" not in callback.last_rows["ddim"]
    with open(tmp_path / "samples" / "sampler_metrics.csv", newline="") as fh:
        written = {r["sampler"]: r for r in csv.DictReader(fh)}
    assert written["rec"]["selected"] == row["selected"] and float(written["rec"]["setup_nfe"]) == row["setup_nfe"]
    (message,) = [m for m in info_log if m.startswith("sampler evaluation at step 2:")]
    assert "selected" in message.splitlines()[1] and row["selected"].split(",")[0] in message
    assert not [k for _, m in wandb.metrics for k in m if k.endswith(("/selected", "/setup_nfe"))]  # no flat charts


def test_an_evaluations_rows_are_on_disk_in_the_csv_log_as_soon_as_it_is_logged(tmp_path, drawn, one_thread):
    """Lightning's CSVLogger held them until it next logged (log_every_n_steps): a kill after an evaluation at the
    step of a last.ckpt written before it (resumed from without redoing it) lost them for good, W&B backfill too."""
    from lightning.pytorch.loggers import CSVLogger

    class OnDisk(L.Callback):
        seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:  # after the evaluation at step 2, before anything else is logged
                with open(tmp_path / "csv" / "version_0" / "metrics.csv", newline="") as fh:
                    OnDisk.seen = [r for r in csv.DictReader(fh) if r.get("val/ddim/mmd")]

    callback = SamplerCallback({"ddim": DDIM(steps=3)}, n_samples=16, batch_size=16, metrics=["mmd"])
    trainer = L.Trainer(max_steps=4, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0,
                        callbacks=[callback, OnDisk()], logger=[CSVLogger(tmp_path, name="csv")], log_every_n_steps=50,
                        enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                        accelerator="cpu")
    trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=64, n_train=512,
                                                                                    n_val=64))
    assert [int(r["step"]) for r in OnDisk.seen] == [2]


def test_the_wandb_chart_plots_each_sampler_against_its_nfe_without_the_noise_floor(tmp_path):
    callback = SamplerCallback({"ddim_50": DDIM(50)}, n_samples=8, metrics=["sliced_w2"])
    callback.out_dir = tmp_path
    callback.last_rows = {"ddim_50": {"step": 10, "sampler": "ddim_50", "nfe": 50, "wall_s": 1.0, "sliced_w2": 0.3},
                          "noise_floor": {"step": 10, "sampler": "noise_floor", "nfe": 0.0, "wall_s": 0.0,
                                          "sliced_w2": 0.05}}
    logged = {}
    run = SimpleNamespace(summary={}, log=lambda values, step: logged.update(values, at=step))
    callback._wandb_charts(SimpleNamespace(experiment=run), 10)
    assert logged["val_vs_nfe/table"].data == [["ddim_50", 50, 1.0, 0.3]] and logged["at"] == 10
    assert logged["val_vs_nfe/sliced_w2"].spec.fields == {"x": "nfe", "y": "sliced_w2"}


@pytest.mark.parametrize(("every", "step", "rows", "missing"), [
    (2, 10, [], False), (2, 20, [], True), (2, 20, [20], False), (2, 25, [], False), (2, 0, [], False),
    (1, 10, [], True), (1, 10, [10], False)])
def test_a_resume_redoes_only_an_evaluation_that_was_due_at_its_step(tmp_path, every, step, rows, missing):
    """every_n_evals=2 with validations every 10 steps: an evaluation is due at 20, 40, ... only."""
    callback = SamplerCallback({"ddim": DDIM(2)}, n_samples=8, metrics=["mmd"], every_n_evals=every)
    if rows:
        write_record(tmp_path / "sampler_metrics.csv", [{"step": s, "sampler": "ddim", "mmd": 0.1} for s in rows])
    assert callback.evaluation_missing(step, 10, tmp_path) is missing
