"""The sampler callback on a real Trainer (one process, CPU, seconds): what it builds and rejects, what it logs per
sampler, the CSV record, the pictures, and that its numbers are the shared sample-and-score path's."""

import csv
import math

import lightning as L
import pytest
import torch

from lightning_sde.callbacks import SamplerCallback
from lightning_sde.data import DigitsDataModule, Toy2DDataModule
from lightning_sde.data.base import BaseDataModule
from lightning_sde.generation import generate
from lightning_sde.metrics.scorer import Scorer
from lightning_sde.module import ScoreModule
from lightning_sde.samplers import DDIM, EulerMaruyama

MLP = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 1}
VP = {"_target_": "lightning_sde.sde.VPSDE"}


def fit(tmp_path, callback, module=None, datamodule=None, steps=2):
    module = module or ScoreModule(net=MLP, shape=[2], sde=VP)
    trainer = L.Trainer(max_steps=steps, val_check_interval=steps, limit_val_batches=1, num_sanity_val_steps=0,
                        callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, datamodule=datamodule or Toy2DDataModule(batch_size=64, n_train=256, n_val=64))
    return trainer, module


@pytest.mark.parametrize("kwargs, message", [
    ({"samplers": {}}, "SamplerCallback needs at least one sampler: pick a set (samplers=default) or add one"),
    ({"n_samples": 0}, "SamplerCallback n_samples must be an integer >= 1; got 0"),
    ({"every_n_evals": True}, "SamplerCallback every_n_evals must be an integer >= 1; got True"),
    ({"batch_size": 2.5}, "SamplerCallback batch_size must be an integer >= 1; got 2.5"),
    ({"n_plot": -1}, "SamplerCallback n_plot must be an integer >= 1; got -1"),
    ({"metrics": ["fid", "fidd"]}, "SamplerCallback metrics: unknown ['fid', 'fidd']; choose from ['sliced_w2', "
                                   "'mmd', 'loglik', 'fid', 'kid', 'is', 'precision', 'recall']"),
    ({"metrics": "fid"}, "SamplerCallback metrics: unknown 'fid'"),
    ({"dtype": "float16"}, "config callbacks.sampler.dtype: 'float16' is not one of ['float32', 'float64']"),
    ({"guidance": -1}, "config callbacks.sampler.guidance: must be a number >= 0 (0: the conditional model) or null; "
                       "got -1"),  # w = -1 is the unconditional model: every evaluation scored it
    ({"samplers": {"a": {"_target_": "lightning_sde.samplers.DDIM", "steps": 0}}},
     "config samplers.a: ValueError: ddim: steps must be an integer >= 1; got 0"),
])
def test_bad_settings_fail_when_the_callback_is_built(kwargs, message):
    with pytest.raises(ValueError) as err:
        SamplerCallback(**{"samplers": {"ddim": DDIM(steps=3)}, **kwargs})
    assert message in str(err.value)


def test_samplers_come_as_objects_or_config_nodes_and_keep_their_labels():
    callback = SamplerCallback({"a": DDIM(steps=3), "b": {"_target_": "lightning_sde.samplers.EulerMaruyama",
                                                          "steps": 4}})
    assert list(callback.samplers) == ["a", "b"]
    assert callback.samplers["a"] == DDIM(steps=3) and callback.samplers["b"] == EulerMaruyama(steps=4)
    assert callback.seeds == range(0, 1024) and callback.dtype == torch.float32 and callback.n_plot == 64
    assert SamplerCallback({"a": DDIM()}, n_samples=5, first_seed=7, dtype="float64").seeds == range(7, 12)


def test_each_evaluation_logs_the_shared_paths_numbers_and_keeps_a_record(tmp_path):
    samplers = {"ddim_5": DDIM(steps=5), "em_8": EulerMaruyama(steps=8)}
    callback = SamplerCallback(samplers, n_samples=30, batch_size=30, first_seed=3, every_n_evals=1)
    trainer, module = fit(tmp_path, callback)
    denoiser = module.denoiser.eval()
    reference = trainer.datamodule.reference(30)
    for label, sampler in samplers.items():
        row = callback.last_rows[label]
        samples = generate(sampler, denoiser, range(3, 33), 30, "cpu")
        expected = Scorer(reference, ("sliced_w2", "mmd"))(samples.x)
        assert row["sliced_w2"] == pytest.approx(expected["sliced_w2"], rel=1e-9)
        assert row["mmd"] == pytest.approx(expected["mmd"], rel=1e-9)
        assert row["nfe"] == sampler.steps and row["step"] == 2 and row["sampler"] == label
        assert row["n_samples"] == 30 and row["n_distinct"] == 30 and row["n_nonfinite"] == 0
        assert trainer.callback_metrics[f"val/{label}/sliced_w2"] == pytest.approx(row["sliced_w2"])
    with open(tmp_path / "samples" / "sampler_metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["sampler"] for r in rows] == ["noise_floor", "ddim_5", "em_8"]
    assert list(rows[0])[:2] == ["step", "sampler"]
    assert float(rows[2]["nfe"]) == 8 and int(rows[2]["step"]) == 2
    assert (tmp_path / "samples" / "scatter_step0000002.png").stat().st_size > 5_000


def test_one_dimensional_points_are_scored_without_a_scatter(tmp_path):
    """A 1-D toy model's first evaluation failed drawing a scatter of two coordinates."""
    callback = SamplerCallback({"ddim_5": DDIM(steps=5)}, n_samples=30, batch_size=30)
    module = ScoreModule(net={**MLP, "dim": 1}, shape=[1], sde=VP)
    fit(tmp_path, callback, module, Toy2DDataModule("random_mixture", batch_size=64, n_train=256, n_val=64, dim=1))
    assert math.isfinite(callback.last_rows["ddim_5"]["sliced_w2"])
    assert not list((tmp_path / "samples").glob("scatter_*.png"))


def test_every_n_evals_skips_evaluations_and_rows_append_across_them(tmp_path):
    callback = SamplerCallback({"ddim": DDIM(steps=2)}, n_samples=8, batch_size=8, every_n_evals=2)
    module = ScoreModule(net=MLP, shape=[2], sde=VP)
    trainer = L.Trainer(max_steps=4, val_check_interval=1, limit_val_batches=1, num_sanity_val_steps=0,
                        callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(module, datamodule=Toy2DDataModule(batch_size=64, n_train=256, n_val=64))
    with open(tmp_path / "samples" / "sampler_metrics.csv") as fh:
        assert [(int(r["step"]), r["sampler"]) for r in csv.DictReader(fh)] == [  # evaluations 2 and 4 of 4
            (2, "noise_floor"), (2, "ddim"), (4, "noise_floor"), (4, "ddim")]


def test_images_get_fid_kid_is_and_a_sample_grid(tmp_path):
    net = {"_target_": "lightning_sde.models.unet.UNet", "in_channels": 1, "image_size": 8, "channels": 8,
           "channel_mult": [1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    module = ScoreModule(net=net, shape=[1, 8, 8], sde=VP)
    callback = SamplerCallback({"ddim": DDIM(steps=3)}, n_samples=40, batch_size=40, n_plot=16,
                               stats_cache=str(tmp_path / "stats"))
    trainer, _ = fit(tmp_path, callback, module, DigitsDataModule(batch_size=64))
    row = callback.last_rows["ddim"]
    assert set(callback.metrics) == {"fid", "kid", "is"} and math.isfinite(row["fid"]) and row["fid"] > 1
    assert 1 <= row["is"] <= 10  # the digits classifier's 10 classes
    assert (tmp_path / "samples" / "ddim_step0000002.png").stat().st_size > 1_000
    assert len(list((tmp_path / "stats").glob("reference-*.pt"))) == 2  # the reference statistics were cached


def test_precision_and_recall_asked_for_are_logged_beside_the_real_digits_floor(tmp_path):
    net = {"_target_": "lightning_sde.models.unet.UNet", "in_channels": 1, "image_size": 8, "channels": 8,
           "channel_mult": [1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    callback = SamplerCallback({"ddim": DDIM(steps=3)}, n_samples=200, batch_size=200, metrics=["precision", "recall"],
                               stats_cache=str(tmp_path / "stats"))
    fit(tmp_path, callback, ScoreModule(net=net, shape=[1, 8, 8], sde=VP), DigitsDataModule(batch_size=64))
    row, floor = callback.last_rows["ddim"], callback.last_rows["noise_floor"]
    assert all(0 <= r[m] <= 1 for r in (row, floor) for m in ("precision", "recall")) and "fid" not in row
    assert floor["precision"] > row["precision"] + 0.3, (floor, row)  # real digits against an untrained model's noise


def test_the_noise_floor_is_a_disjoint_real_set_scored_once_as_samples_are(tmp_path, monkeypatch):
    """Toy data: n more draws (another stream); scored once per process, logged at every evaluation."""
    callback = SamplerCallback({"ddim": DDIM(steps=2)}, n_samples=50, batch_size=50)
    scored = []
    real_scorer = callback.scorer
    monkeypatch.setattr(callback, "scorer", lambda device: (lambda x: scored.append(x) or real_scorer(device)(x)))
    module = ScoreModule(net=MLP, shape=[2], sde=VP)
    trainer = L.Trainer(max_steps=4, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0,
                        callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, accelerator="cpu")
    datamodule = Toy2DDataModule(batch_size=64, n_train=256, n_val=64)
    trainer.fit(module, datamodule=datamodule)
    reference, floor_set = datamodule.reference(50), datamodule.floor_set(50)
    assert not (floor_set[:, None] == reference[None]).all(-1).any()
    assert len(scored) == 3 and torch.equal(scored[0], floor_set)  # the floor once, then ddim at steps 2 and 4
    floor = callback.last_rows["noise_floor"]
    assert floor["sliced_w2"] == pytest.approx(Scorer(reference, ("sliced_w2", "mmd"))(floor_set)["sliced_w2"])
    assert floor["step"] == 4 and list(callback.last_rows) == ["noise_floor", "ddim"]


def test_no_noise_floor_when_switched_off_or_the_data_has_none(tmp_path, caplog):
    small = Toy2DDataModule(batch_size=64, n_train=256, n_val=64)
    off = SamplerCallback({"ddim": DDIM(steps=2)}, n_samples=8, batch_size=8, noise_floor=False)
    fit(tmp_path / "off", off, datamodule=small)
    assert list(off.last_rows) == ["ddim"]
    digits = DigitsDataModule(batch_size=64)  # 1617 training digits: two disjoint sets of 808 at most
    assert digits.floor_set(808) is not None and digits.floor_set(809) is None
    first, second = digits.reference(800), digits.floor_set(800)
    assert not (first.flatten(1)[:, None] == second.flatten(1)[None]).all(-1).any()
    class ReferenceOnly(Toy2DDataModule):  # a user's BaseDataModule written before real_samples existed
        real_samples = BaseDataModule.real_samples

        def reference(self, n):
            return self.sample(n, torch.Generator().manual_seed(5))

    theirs = SamplerCallback({"ddim": DDIM(steps=2)}, n_samples=8, batch_size=8)
    fit(tmp_path / "theirs", theirs, datamodule=ReferenceOnly(batch_size=64, n_train=256, n_val=64))
    assert list(theirs.last_rows) == ["ddim"] and "real_samples(start, n, stream)" in caplog.text
    with pytest.raises(ValueError, match="label is the noise floor's row"):
        SamplerCallback({"noise_floor": DDIM(steps=2)})
    with pytest.raises(ValueError, match="noise_floor must be true or false"):
        SamplerCallback({"ddim": DDIM(steps=2)}, noise_floor="yes")


def test_the_every_n_evals_phase_is_kept_in_the_checkpoint():
    """A run stopped after its 3rd validation and resumed evaluates at the 4th (every_n_evals=2), as one that never
    stopped would: the count is the callback's checkpointed state."""
    from lightning_sde.samplers import build_sampler

    before = SamplerCallback({"ddim": build_sampler("ddim", steps=2)}, every_n_evals=2)
    before._evals = 3
    after = SamplerCallback({"ddim": build_sampler("ddim", steps=2)}, every_n_evals=2)
    after.load_state_dict(before.state_dict())
    assert after._evals == 3
