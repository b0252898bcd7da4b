"""The config tree: every app and every experiment composes and builds; an experiment states its whole sampler set;
a bad value fails at start-up naming its key. Configs are composed through the package (as an installed wheel
finds them), never through a path into the checkout."""

import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from lightning_sde.cli.train import build
from lightning_sde.configuration import CONFIG_PACKAGE, config_root
from lightning_sde.samplers import Sampler

ROOT = config_root()
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiment").glob("*.yaml"))
SAMPLER_SETS = sorted(p.stem for p in (ROOT / "samplers").glob("*.yaml"))
APPS = ("train", "bench", "compare", "likelihood", "figures")


def composed(app: str, overrides=()):
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        return compose(app, overrides=list(overrides))


def labels_stated_in(set_name: str) -> list[str]:
    """The sampler labels a sampler-set file states: `- /sampler@<label>: <sampler>` entries of its defaults."""
    defaults = yaml.safe_load((ROOT / "samplers" / f"{set_name}.yaml").read_text())["defaults"]
    return [next(iter(entry)).split("@", 1)[1] for entry in defaults if isinstance(entry, dict)]


def set_of(experiment: str) -> str:
    """The sampler set an experiment overrides, or the one of the experiment it builds on (e.g. toy2d_cond: toy2d)."""
    defaults = yaml.safe_load((ROOT / "experiment" / f"{experiment}.yaml").read_text())["defaults"]
    names = [entry["override /samplers"] for entry in defaults if isinstance(entry, dict) and "override /samplers"
             in entry]
    if names:
        (name,) = names
        return name
    (base,) = [entry for entry in defaults if isinstance(entry, str) and entry != "_self_"]
    return set_of(base)


def test_the_tree_is_found_through_the_package():
    assert (ROOT / "train.yaml").is_file() and EXPERIMENTS and SAMPLER_SETS
    assert Path(__file__).resolve().parents[2] / "configs" == ROOT.resolve()  # in a checkout: the top-level configs/


@pytest.mark.parametrize("app", APPS)
def test_every_app_composes(app, tmp_path):
    cfg = composed(app, [f"paths.root={tmp_path}"])
    assert cfg.output_dir.startswith(str(tmp_path)) or app == "figures" and str(tmp_path) in cfg.output_dir


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_builds_and_states_its_samplers(experiment, tmp_path):
    cfg = composed("train", [f"experiment={experiment}", f"run_dir={tmp_path}", "run_name=t"])
    assert cfg.trainer.max_steps > 0
    # the experiment's sampler set replaces the default one: exactly the labels its set file states
    assert list(cfg.samplers) == labels_stated_in(set_of(experiment))
    # Shrunk to run here: CPU trainer, no loggers; data is constructed but not read (nor downloaded).
    small = composed("train", [f"experiment={experiment}", f"run_dir={tmp_path}", "run_name=t", "trainer=cpu",
                               "trainer.max_steps=2", "logger=none"])
    run = build(small, read_data=False)
    datamodule, module, trainer = run.datamodule, run.module, run.trainer
    assert tuple(module.denoiser.shape) == tuple(datamodule.shape)
    assert trainer.max_steps == 2
    names = [type(c).__name__ for c in trainer.callbacks]
    assert names.index("SamplerCallback") < names.index("EMA")
    callback = next(c for c in trainer.callbacks if type(c).__name__ == "SamplerCallback")
    assert list(callback.samplers) == list(cfg.samplers)
    assert all(isinstance(s, Sampler) for s in callback.samplers.values())


@pytest.mark.parametrize("set_name", SAMPLER_SETS)
def test_every_sampler_set_builds(set_name):
    from hydra.utils import instantiate

    cfg = composed("bench", [f"samplers={set_name}"])
    assert list(cfg.samplers) == labels_stated_in(set_name)
    assert all(isinstance(instantiate(node), Sampler) for node in cfg.samplers.values())


def test_a_sampler_set_replaces_rather_than_merges():
    cfg = composed("train", ["experiment=cifar10_ve_ncsnpp"])
    assert set(cfg.samplers) == {"ddim_50", "dpmpp_2m_20"}  # the experiment's set, none of the default's
    cfg = composed("train", ["experiment=cifar10_ve_ncsnpp", "samplers=score_sde_ve"])
    assert set(cfg.samplers) == {"pc_1000", "ddim_50", "ode_dopri5"}


@pytest.mark.parametrize(
    "override, message",
    [
        ("+optimm.lr=1", "unknown top-level key(s) ['optimm']"),
        ("+model.net.widthh=3", "config model.net: TypeError"),  # a typo Hydra lets through with +
        ("+callbacks.lastt.every_n_train_steps=5", "config callbacks.lastt: names no class (_target_); a misspelling? "
                                                    "callbacks: ['best', 'ema', "),  # was handed to Lightning as a dict
        ("+logger.wandbb.project=x", "config logger.wandbb: names no class (_target_); a misspelling? logger: []"),
        ("samplers.em_1000.steps=0",
         "config samplers.em_1000: ValueError: euler_maruyama: steps must be an integer >= 1"),
        ("sde.beta_min=-1", "config sde: ValueError: beta_min must be > 0"),
        ("sde.beta_max=abc", "config sde: ValueError: VPSDE: beta_max must be a number; got 'abc'"),  # not a `>`
        ("sde.eps=abc", "config sde: ValueError: VPSDE: eps must be a number; got 'abc'"),
        ("data=image_folder", "config data.root: MissingMandatoryValue: Missing mandatory value: data.root"),
        ("model.net.dim=3", "config model.net: ValueError: MLP expects x of shape (B, 3) (its dim); got (2, 2) "
                            "(config data gives samples of shape (2,))"),  # the data may be what is to change
        ("ckpt_path=/nonexistent.ckpt", "no checkpoint at '/nonexistent.ckpt'"),
        # what fit would find wrong with the data, found before the loggers exist
        ("+model.net.num_classes=8", "config model.net.num_classes = 8 but the data has no labels"),
        ("data.labels=true", "config data.labels: the data gives labels (8 classes) but the network is "
                             "unconditional: set +model.net.num_classes=8"),  # trained without them, exit 0
        ("data.n_train=100", "config data.batch_size: ValueError: Toy2DDataModule: batch_size 512 exceeds the 100 "
                             "training samples of each of 1 process(es)"),
        ("callbacks.sampler.every_n_evals=2", "'auto' is logged once every 2 validations"),
        ("trainer.enable_progress_bar=sometimes", "config trainer.enable_progress_bar: must be true, false or auto"),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(tmp_path, override, message):
    cfg = composed("train", ["experiment=toy2d", f"run_dir={tmp_path}", "run_name=t", "logger=none", override])
    with pytest.raises(ValueError) as err:
        build(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)  # one line (OmegaConf's adds full_key, ...)


# The toy2d run of tests/integration/test_reliability.py (one DDIM-10 sampler, a monitor on it): each bad value
# fails in build(), naming its key; that test runs a few of them through lsde-train.
QUICK_TOY = ["experiment=toy2d", "samplers=quick", "callbacks.best.monitor=val/ddim_10/sliced_w2"]


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", "config optim.lr: must be a finite number > 0; got -1"),
    ("model.net.width=0", "config model.net: ValueError: MLP: width must be an integer >= 1; got 0"),
    ("sde.beta_max=0.01", "config sde: ValueError: beta_max must be > beta_min"),
    ("samplers.ddim_10.grid=trailing samplers.ddim_10.steps=1000",
     "config samplers.ddim_10: ValueError: ddim: the trailing grid needs start / steps > eps"),
    ("ckpt_path=123", "config ckpt_path: must be a checkpoint's path, 'last' or null; got 123"),
    ("trainer.val_check_interval=0", "config trainer.val_check_interval: must be a number of training steps >= 1"),
    ("run_name=exp:v2", "config run_name: may hold ASCII letters, digits and . _ - + @ only (it names the run "
                        "directory and the W&B run's id); got 'exp:v2'"),
    ("run_name=..", "config run_name: may hold ASCII letters"),
    ("run_name=null", "config run_name: must be a name (it names the run directory and the W&B run's id); got null: "
                      "leave run_name out for its default"),  # a folder named 'None', resumed by the next null
    ("seed=abc", "config seed: must be an integer in [0, 2**28); got 'abc'"),
    ("seed=-1", "config seed: must be an integer in [0, 2**28); got -1"),
    ("seed=268435456", "config seed: must be an integer in [0, 2**28); got 268435456"),  # 2**28: seed 0's streams
    ("trainer.max_steps=0", "config trainer.max_steps: must be an integer >= 1"),
    ("trainer.gradient_clip_val=-1",
     "config trainer.gradient_clip_val: must be a number >= 0 (0 or null: no clipping); got -1"),
    ("trainer.accumulate_grad_batches=0", "config trainer.accumulate_grad_batches: must be an integer >= 1"),
    ("trainer.val_check_interval=0.5", "config trainer.val_check_interval: a fraction of an epoch needs epochs to "
                                       "count (trainer.check_val_every_n_epoch=1)"),
    ("trainer.accumulate_grad_batches=2 trainer.val_check_interval=0.5 trainer.check_val_every_n_epoch=1",
     "config trainer.val_check_interval: a fraction of an epoch can fall within an optimizer step"),
    ("callbacks.best.monitor=val/ddim_50/sliced_w2", "config callbacks.best.monitor: 'val/ddim_50/sliced_w2' names "
     "sampler 'ddim_50', which is not in the sampler set; the set has ['ddim_10']"),
    ("callbacks.best.monitor=val/ddim_10/fid", "config callbacks.best.monitor: 'val/ddim_10/fid' names metric 'fid'"),
    # a misspelt module value would fail only at the first validation, after training to it
    ("callbacks.best.monitor=val/losss", "config callbacks.best.monitor: 'val/losss' is not logged; monitor one of "
                                         "['val/loss', 'train/loss', 'step', 'epoch'], val/<sampler>/<metric> or auto"),
    ("callbacks.best.monitor=trainloss callbacks.sampler=null",
     "config callbacks.best.monitor: 'trainloss' is not logged; monitor one of ['val/loss', 'train/loss', 'step', "
     "'epoch']"),
    ("model.sigma_data=inf", "sigma_data must be > 0 and finite"),  # c_in = 0: a network blind to its input
    ("trainer.check_val_every_n_epoch=0", "config trainer.check_val_every_n_epoch: must be an integer >= 1 or null"),
    ("callbacks.sampler.guidance=1.0", "config callbacks.sampler.guidance: the model is not class-conditional"),
    ("data.name=two_moons +data.noise=nan", "config data: ValueError: Toy2DDataModule: two_moons's noise must be "
                                            "finite; got nan"),
    ("trainer.num_sanity_val_steps=-5", "config trainer.num_sanity_val_steps: must be an integer >= 0 (-1: all)"),
    ("callbacks.progress.every_s=nan", "ProgressLog every_s must be a finite number >= 0; got nan"),
    ("data.name=random_mixture +data.n_components=0",  # was torch's "max(): Expected reduction dim"
     "config data: ValueError: random_mixture: n_components must be an integer >= 1; got 0"),
    ("data.name=checkerboard +data.cells=4.0", "checkerboard: cells must be an even integer >= 2; got 4.0"),
    ("trainer.log_every_n_steps=-3", "config trainer.log_every_n_steps: must be an integer >= 1 or null; got -3"),
    ("callbacks.preemption.requeue_signal=SIGKILL", "requeue_signal must be the name of a signal a process can catch"),
    ("callbacks.ema.decay=nan", "config callbacks.ema: ValueError: EMA decay must be a number in [0, 1) "),
    ("callbacks.ema.decay=1.0", "EMA decay must be a number in [0, 1) (1 keeps the first step's weights for ever)"),
    ("callbacks.sampler.feature_extractor=foo",  # on points too: a misspelling, not a choice the metrics ignore
     "config callbacks.sampler.feature_extractor: unknown feature extractor 'foo'"),
    ("callbacks.sampler.first_seed=-1", "SamplerCallback first_seed must be an integer >= 0; got -1"),  # at the end
    ("+callbacks.ema.update_every_n_steps=0", "EMA update_every_n_steps must be an integer >= 1; got 0"),  # never
    ("+callbacks.ema.update_starting_at_step=-1", "EMA update_starting_at_step must be an integer >= 0; got -1"),
    ("loss=likelihood loss.importance_sampling=no", "loss importance_sampling must be true or false; got 'no'"),
    ("loss=edm loss.p_std=0", "config loss: loss p_std must be a positive number; got 0"),
    ("+loss.min_snr_gamma=3", "config loss: loss min_snr_gamma belongs to weighting min_snr, not sigma2; drop it "
                              "(or set loss=min_snr)"),
    ("+loss.importance_sampling=true", "config loss: loss importance_sampling belongs to weighting likelihood"),
    ("callbacks.best.mode=max", "config callbacks.best.mode: 'max' keeps the worst val/ddim_10/sliced_w2 (sliced_w2: "
                                "lower is better); set callbacks.best.mode=min"),
])
def test_a_bad_value_of_a_toy2d_run_fails_in_build_naming_its_key(tmp_path, override, message):
    cfg = composed("train", [*QUICK_TOY, f"run_dir={tmp_path}", "run_name=t", "logger=none", *override.split()])
    with pytest.raises(ValueError) as err:
        build(cfg)
    assert message in str(err.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("loss, settings", [("min_snr", {"min_snr_gamma": 5.0}),
                                            ("edm", {"p_mean": -1.2, "p_std": 1.2, "sigma_data": 0.7}),
                                            ("edm model.sigma_data=null", {"p_mean": -1.2, "p_std": 1.2,
                                                                           "sigma_data": 0.5})])
def test_each_loss_config_builds_with_its_stated_settings(tmp_path, loss, settings):
    """EDM's sigma_data is the network's input scaling's (model.sigma_data), and EDM's 0.5 where that is null."""
    cfg = composed("train", [*QUICK_TOY, f"run_dir={tmp_path}", "run_name=t", "logger=none", "model.sigma_data=0.7",
                             *f"loss={loss}".split()])
    loss_fn = build(cfg, read_data=False).module.loss_fn
    assert loss_fn.weighting == loss.split()[0] and loss_fn.settings == settings


@pytest.mark.parametrize("monitor", ["val/loss", "train/loss", "step", "epoch", "auto", "val/ddim_10/sliced_w2"])
def test_every_value_a_checkpoint_callback_can_monitor_is_accepted(tmp_path, monitor):
    """`step` / `epoch` are ModelCheckpoint's own counters (keep the latest k checkpoints)."""
    cfg = composed("train", [*QUICK_TOY, f"run_dir={tmp_path}", "run_name=t", "logger=none",
                             f"callbacks.best.monitor={monitor}"])
    run = build(cfg, read_data=False)
    expected = "val/ddim_10/sliced_w2" if monitor == "auto" else monitor
    assert any(getattr(cb, "monitor", None) == expected for cb in run.trainer.callbacks)


def test_a_best_checkpoint_chosen_by_the_inception_score_keeps_the_highest(tmp_path):
    """IS is higher-is-better: its monitor with the default mode (min) would keep the worst evaluation."""
    digits = ["experiment=digits", "samplers=quick", f"run_dir={tmp_path}", "run_name=t", "logger=none",
              "callbacks.best.monitor=val/ddim_10/is"]
    with pytest.raises(ValueError, match=r"^config callbacks.best.mode: 'min' keeps the worst val/ddim_10/is \(is: "
                                         r"higher is better\); set callbacks.best.mode=max$"):
        build(composed("train", digits), read_data=False)
    run = build(composed("train", [*digits, "callbacks.best.mode=max"]), read_data=False)
    assert [cb.mode for cb in run.trainer.callbacks if getattr(cb, "monitor", None) == "val/ddim_10/is"] == ["max"]
    recall = [*digits[:-1], "callbacks.best.monitor=val/ddim_10/recall", "callbacks.sampler.metrics=[fid,recall]"]
    with pytest.raises(ValueError, match=r"'min' keeps the worst val/ddim_10/recall \(recall: higher is better\)"):
        build(composed("train", recall), read_data=False)
    for metrics in ("[is,fid]", "[kid,is,fid]", "[is,kid]"):  # auto: fid where scored, else a lower-is-better one
        run = build(composed("train", [*digits[:-1], f"callbacks.sampler.metrics={metrics}"]), read_data=False)
        assert any(getattr(cb, "monitor", None) == f"val/ddim_10/{'kid' if 'fid' not in metrics else 'fid'}"
                   for cb in run.trainer.callbacks)
    with pytest.raises(ValueError, match=r"'min' keeps the worst val/ddim_10/precision .*set callbacks.best.mode=max"):
        build(composed("train", [*digits[:-1], "callbacks.sampler.metrics=[precision,recall]"]), read_data=False)
    with pytest.raises(ValueError, match=r"'val/ddim_10/recall' names metric 'recall', which the evaluations do not "
                                         r"log for images data; they log \['fid', 'kid', 'is', "):  # not in auto
        build(composed("train", [*digits[:-1], "callbacks.best.monitor=val/ddim_10/recall"]), read_data=False)


@pytest.mark.parametrize("overrides, set_", [
    (["~problem"], False), (["problem=eight_gaussians"], True), ([], False), (["+problem.scale=2"], True),
    (["+problem@other=eight_gaussians"], False)])
def test_a_key_counts_as_set_by_the_command_line_unless_it_is_removed(overrides, set_):
    """`checkpoint=... ~problem` is a checkpoint target, not "both set" (targets.target_kind asks overridden); a group
    placed at another package (`+problem@other=...`) sets that package, not `problem`."""
    from hydra.core.hydra_config import HydraConfig

    from lightning_sde.configuration import overridden

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        HydraConfig.instance().set_config(compose("bench", overrides=overrides, return_hydra_config=True))
    try:
        assert overridden("problem") is set_
    finally:
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize("experiment, overrides, error, message", [
    ("mnist_subvp", ["data.download=false"], FileNotFoundError, "lsde-prepare mnist --root"),
    ("digits", ["callbacks.sampler.n_samples=5000"], ValueError, "config callbacks.sampler.n_samples: "),
    ("digits", ["callbacks.sampler.feature_extractor=inception"], FileNotFoundError,
     "config callbacks.sampler.feature_extractor: InceptionV3 weights not found"),
    ("digits", ["callbacks.sampler.feature_extractor=vgg"], ValueError, "unknown feature extractor 'vgg'"),
    ("digits", ["callbacks.sampler.stats_cache=${run_dir}/file"], ValueError,
     "config callbacks.sampler.stats_cache: .*/file is a file"),
])
def test_the_data_is_read_and_checked_before_the_loggers_exist(tmp_path, monkeypatch, experiment, overrides, error,
                                                                message):
    """A dataset that is not there (and may not be fetched), a reference larger than the training set, or FID
    features that cannot be built fail in build(), before the loggers create their files and W&B runs; not at the
    first evaluation, after training."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("LSDE_INCEPTION_WEIGHTS", raising=False)
    (tmp_path / "file").write_text("not a folder")
    cfg = composed("train", [f"experiment={experiment}", f"run_dir={tmp_path}", "run_name=t", "trainer=cpu",
                             f"data.root={tmp_path / 'data'}" if experiment == "mnist_subvp" else "seed=0", *overrides])
    with pytest.raises(error, match=message):
        build(cfg)
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "csv").exists()


def test_digits_features_on_colour_images_fail_at_start_up_not_at_the_first_evaluation(tmp_path):
    """FID's default features read the digits' 8x8 grayscale images: on other images the run trained up to its first
    evaluation, then stopped on the features' own shape error."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(40):
        (tmp_path / "images" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "images" / f"c{i % 2}"
                                                                               / f"{i}.png")
    common = [f"run_dir={tmp_path / 'run'}", "run_name=t", "trainer=cpu", "logger=none", "data=image_folder",
              f"data.root={tmp_path / 'images'}", "data.image_size=8", "data.batch_size=8", "model=unet_digits",
              "model.net.in_channels=3", "callbacks.sampler.n_samples=20"]
    with pytest.raises(ValueError, match=re.escape("config callbacks.sampler.feature_extractor: the digits features "
                                                   "take 8x8 grayscale images (the digits data); these images have "
                                                   "shape (3, 8, 8): use the inception features")):
        build(composed("train", common))
    assert not (tmp_path / "run").exists()
    build(composed("train", [*common, "data.channels=1", "model.net.in_channels=1"]), read_data=True)


def test_inception_weights_that_are_not_tensors_fail_at_start_up_not_at_the_first_evaluation(tmp_path, monkeypatch):
    (tmp_path / "weights.pth").write_text("not weights")
    monkeypatch.setenv("LSDE_INCEPTION_WEIGHTS", str(tmp_path / "weights.pth"))
    cfg = composed("train", ["experiment=digits", f"run_dir={tmp_path}", "run_name=t", "trainer=cpu",
                             "callbacks.sampler.feature_extractor=inception"])
    with pytest.raises(ValueError, match="^config callbacks.sampler.feature_extractor: InceptionV3 weights at .* are "
                                         "not a state_dict of tensors"):
        build(cfg)
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "csv").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without a GPU")
def test_a_gpu_trainer_on_a_machine_without_one_names_the_cpu_trainers(tmp_path):
    """The GPU experiments (trainer=gpu or ddp) failed on the CPU with Lightning's 'No supported gpu backend found!'."""
    cfg = composed("train", ["experiment=toy2d", f"run_dir={tmp_path}", "run_name=t", "logger=none", "trainer=ddp"])
    with pytest.raises(ValueError, match=r"^config trainer.accelerator: 'gpu', but torch sees no GPU here; on the CPU "
                                         r"use trainer=cpu \(one process\) or trainer=ddp_cpu"):
        build(cfg)


def test_a_gpu_trainer_is_accepted_where_torch_sees_cuda_or_apple_mps(monkeypatch):
    from lightning_sde.configuration import require_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    require_accelerator("gpu")  # Lightning's gpu runs on Apple's MPS
    require_accelerator("cpu")
    with pytest.raises(ValueError, match="'cuda', but torch sees no GPU here"):
        require_accelerator("cuda")  # which MPS is not
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'gpu', but torch sees no GPU here"):
        require_accelerator("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    require_accelerator("gpu")
    require_accelerator("cuda")


@pytest.mark.parametrize("guidance, use", [("2", "which guidance use"), ("null", "unconditional samples (null)")])
def test_guidance_in_training_evaluations_without_label_dropout_fails_at_start_up(tmp_path, guidance, use):
    """model.p_uncond=0 trains no unconditional prediction: the first evaluation failed, after its steps (guidance),
    or scored the untrained null label's samples at every evaluation, the best checkpoint chosen on them (null)."""
    cfg = composed("train", ["experiment=toy2d_cond", f"run_dir={tmp_path}", "run_name=t", "trainer=cpu",
                             "logger=none", "model.p_uncond=0", f"callbacks.sampler.guidance={guidance}"])
    with pytest.raises(ValueError, match=r"^config callbacks.sampler.guidance: model.p_uncond=0 trains no .*"
                                         + re.escape(use)):
        build(cfg)


def test_kid_on_fewer_than_4_samples_fails_at_start_up(tmp_path):
    cfg = composed("train", ["experiment=digits", f"run_dir={tmp_path}", "run_name=t", "trainer=cpu",
                             "callbacks.sampler.n_samples=3", "callbacks.sampler.metrics=[kid]"])
    with pytest.raises(ValueError, match="^config callbacks.sampler.n_samples: KID needs a reference of at least 4"):
        build(cfg)


def test_fid_of_one_sample_fails_at_start_up(tmp_path):
    """torchmetrics' FID of one sample failed at the first evaluation, after the steps before it, with no checkpoint."""
    cfg = composed("train", ["experiment=digits", f"run_dir={tmp_path}", "run_name=t", "trainer=cpu",
                             "callbacks.sampler.n_samples=1", "callbacks.sampler.metrics=[fid]"])
    with pytest.raises(ValueError, match="^config callbacks.sampler.n_samples: FID needs at least 2 images"):
        build(cfg)


def test_logger_none_trains_without_the_lr_monitor(tmp_path):
    """Lightning's LearningRateMonitor refuses to start without a logger: with logger=none it is left out."""
    cfg = composed("train", ["experiment=toy2d", f"run_dir={tmp_path}", "run_name=t", "trainer=cpu", "logger=none",
                             "trainer.max_steps=3", "callbacks.sampler=null", "callbacks.best=null",
                             "data.n_train=1024"])
    run = build(cfg)
    assert not any(type(c).__name__ == "LearningRateMonitor" for c in run.trainer.callbacks)
    run.trainer.fit(run.module, datamodule=run.datamodule)
    assert run.trainer.global_step == 3


def test_a_run_holds_its_directory_so_that_a_second_run_of_its_name_is_refused_and_leaves_it_alone(tmp_path,
                                                                                                   monkeypatch):
    """build() takes the run directory's lock in the first process (not in a worker its launcher numbered, nor for a
    config only inspected); a second run of the same name is refused before its loggers exist (a logger that fails
    gives the lock back), and its failed start removes nothing of the first's."""
    import gc

    from lightning_sde.cli.train import forget_failed_start
    from lightning_sde.files import FolderInUse, folder_in_use

    run_dir = tmp_path / "run"
    overrides = ["experiment=toy2d", f"run_dir={run_dir}", "run_name=t", "trainer=cpu", "logger=none",
                 "callbacks.sampler=null", "callbacks.best=null", "data.n_train=1024"]
    cfg = lambda: composed("train", overrides)  # noqa: E731
    assert build(cfg(), read_data=False).lock is None and not folder_in_use(run_dir)
    run = build(cfg())
    assert folder_in_use(run_dir)
    with pytest.raises(FolderInUse, match="another lsde-train run is using this folder now"):
        build(cfg())
    forget_failed_start(cfg())
    assert run_dir.is_dir()
    run.lock.release()
    assert not folder_in_use(run_dir)
    with pytest.raises(ValueError, match="config logger.csv"):  # a logger that fails gives the lock back
        build(composed("train", [*overrides, "logger=csv", "+logger.csv.bogus=1"]))
    assert not folder_in_use(run_dir)
    for launcher_rank in ("LOCAL_RANK", "NODE_RANK"):  # a worker Lightning started, a node after the first
        monkeypatch.setenv(launcher_rank, "1")
        assert build(cfg()).lock is None
        monkeypatch.delenv(launcher_rank)
    assert build(cfg()).lock is not None
    gc.collect()  # a Run dropped (and collected) gives its lock back
    assert not folder_in_use(run_dir)
    forget_failed_start(cfg())  # nothing but the lock file there, and no holder: a failed start's folder goes
    assert not run_dir.exists()
    # another start of the name made the folder and is building its run (no lock yet): its record stays
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig

    (run_dir / ".hydra" / "2026-01-01_00-00-00.000001").mkdir(parents=True)
    (run_dir / ".hydra" / "2026-01-01_00-00-00.000002").mkdir()
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(
        lambda: SimpleNamespace(output_subdir=".hydra/2026-01-01_00-00-00.000002")))  # this start's
    forget_failed_start(cfg())
    assert (run_dir / ".hydra" / "2026-01-01_00-00-00.000001").is_dir()
    (run_dir / ".hydra" / "2026-01-01_00-00-00.000001").rmdir()
    forget_failed_start(cfg())  # this start's record alone: the folder is this start's
    assert not run_dir.exists()


def test_a_sweeps_run_resumed_on_its_own_keeps_its_wandb_group(tmp_path, monkeypatch):
    """`lsde-train ... run_name=MR_1` (the resume a multirun's report prints) put MR_1 in group toy2d, out of its
    sweep's group MR."""
    import wandb

    from lightning_sde.cli import train

    cfg = composed("train", ["experiment=toy2d", "run_name=MR_1", f"run_dir={tmp_path / 'MR_1'}"])
    assert train.wandb_identity(cfg, None, [])["group"] == "Toy2DDataModule"  # a run of its own (no Hydra choices)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", dir=tmp_path / "MR_1", id="MR_1", group="MR", project="p")
    run.finish()
    wandb.teardown()  # the service flushes the run file as it exits (a full suite once read it before it was written)
    assert train.wandb_identity(cfg, None, [])["group"] == "MR"


def test_each_job_of_a_multirun_trains_under_its_own_name_even_with_a_run_name_in_the_environment(monkeypatch):
    """slurm/env.sh exports LSDE_RUN_NAME: the jobs of `lsde-train -m` must still not share (and resume) one run."""
    from lightning_sde.cli import train

    monkeypatch.setenv("LSDE_RUN_NAME", "foo")
    monkeypatch.setattr(train, "multirun_job", lambda: ("sweep", 1))
    cfg = composed("train", ["experiment=toy2d"])
    train.name_the_run(cfg)
    assert cfg.run_name == "foo_1" and cfg.run_dir.endswith("/train/foo_1")
    # grouped under the kept name: a resubmitted sweep (another sweep id) resumes its runs into the same group
    assert train.wandb_identity(cfg, ("sweep", 1), [])["group"] == "foo"
    monkeypatch.delenv("LSDE_RUN_NAME")
    monkeypatch.setenv("SLURM_JOB_ID", "5002")  # a submitit job's own id (another for each job): the sweep's group
    assert train.wandb_identity(cfg, ("sweep", 1), [])["group"] == "sweep"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "5001")  # a local multirun in one task of the user's own array: its
    cfg = composed("train", ["experiment=toy2d"])  # task's job id, not the array's (the tasks' runs would be one)
    train.name_the_run(cfg)
    assert cfg.run_name == "5002_1"
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # submitit's array: named as its log folder, 5001_1
    cfg = composed("train", ["experiment=toy2d"])
    train.name_the_run(cfg)
    assert cfg.run_name == "5001_1" and cfg.run_dir.endswith("/train/5001_1")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_training_and_the_bench_share_one_reference_statistics_cache(experiment, tmp_path, monkeypatch):
    """FID/KID statistics computed during fit are found by lsde-bench and lsde-prepare, wherever the run starts."""
    monkeypatch.setenv("LSDE_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.delenv("LSDE_CACHE", raising=False)
    train = composed("train", [f"experiment={experiment}", f"run_dir={tmp_path}", "run_name=t", "trainer=cpu",
                               "logger=none"])
    callback = next(cb for cb in build(train, read_data=False).trainer.callbacks if hasattr(cb, "stats_cache"))
    assert callback.stats_cache == composed("bench", []).stats_cache == f"{tmp_path}/outputs/cache/reference_stats"
    from lightning_sde.metrics.image import default_cache_dir

    assert str(default_cache_dir()) == callback.stats_cache  # lsde-prepare's: it wrote ./outputs/cache whatever root


def test_lsde_figures_writes_under_the_outputs_root(tmp_path, monkeypatch):
    """Run from any folder, it writes beside the other apps' outputs, not into ./docs/figures of that folder."""
    monkeypatch.setenv("LSDE_OUTPUTS", str(tmp_path / "outputs"))
    figures = composed("figures", [])
    assert figures.out == figures.output_dir.rsplit("/", 1)[0] == f"{tmp_path}/outputs/figures"


def test_the_run_seed_reaches_the_data(tmp_path):
    """Replicates over `seed` differ in their data (toy sets drawn, splits, order), not only in the step seeds."""
    firsts = []
    for seed in (0, 1):
        cfg = composed("train", ["experiment=toy2d", f"run_dir={tmp_path}", "run_name=t", "logger=none",
                                 f"seed={seed}", "data.n_train=1024"])
        assert cfg.data.seed == seed
        firsts.append(build(cfg, read_data=False).datamodule.train_set[0])
    assert not torch.equal(*firsts)


def test_the_site_file_reads_as_bash_does_and_reaches_submitit_jobs(tmp_path, monkeypatch):
    from lightning_sde.configuration import _site_setup, site_settings

    site = tmp_path / "site.env"
    site.write_text("export LSDE_ACCOUNT=acct  # as bash sources it\nTORCH_HOME='/shared/my torch'\nLSDE_QOS=\n"
                    "LSDE_SETUP='module load cuda'\n")
    monkeypatch.setenv("LSDE_SITE_ENV", str(site))
    for key in [k for k in os.environ if k.startswith("LSDE_") and k != "LSDE_SITE_ENV"]:  # a user's own too
        monkeypatch.delenv(key)
    assert {k: v for k, v in site_settings().items() if k != "LSDE_SITE_ENV"} == {
        "LSDE_ACCOUNT": "acct", "TORCH_HOME": "/shared/my torch", "LSDE_SETUP": "module load cuda"}
    setup = _site_setup("echo ours")
    assert setup[0] == "echo ours" and setup[-1] == "module load cuda"
    assert "export TORCH_HOME='/shared/my torch'" in setup and "export LSDE_ACCOUNT=acct" in setup


def test_devices_as_a_trainer_takes_them_build(tmp_path):
    """trainer.devices=auto (or a list of GPU indices) failed in the multirun check, int('auto'), even on a single
    run; now Lightning judges them (a list on the CPU: its one line)."""
    common = ["experiment=toy2d", f"run_dir={tmp_path}", "run_name=d", "logger=none", "trainer.accelerator=cpu"]
    build(composed("train", [*common, "trainer.devices=auto"]), read_data=False)
    with pytest.raises(ValueError, match=r"^config trainer: TypeError: `devices` selected with `CPUAccelerator`"):
        build(composed("train", [*common, "trainer.devices=[0]"]), read_data=False)


@pytest.mark.parametrize("app, overrides, layout", [
    ("train", ["experiment=cifar10_vp_ddpmpp", "trainer.devices=4", "trainer.num_nodes=2"], (2, 4, 4)),
    ("train", ["trainer.devices=2", "trainer.accelerator=auto"], (1, 2, 2)),
    ("train", ["trainer.devices=2"], (1, 2, 0)),
    ("sample", ["ddp.devices=2", "device=cuda:0"], (1, 2, 2)), ("sample", ["ddp.devices=2"], (1, 2, 0)),
    ("bench", ["ddp.num_nodes=3", "device=cuda"], (3, 1, 1)), ("likelihood", [], (1, 1, 0)),
    ("compare", [], (1, 1, 0)), ("figures", [], (1, 1, 0)),
])
def test_the_submitit_launcher_sizes_each_apps_jobs_from_its_own_keys(app, overrides, layout, monkeypatch):
    """It read trainer.* alone: every other app's hydra/launcher=slurm ended in an 81-line InterpolationKeyError. A
    run on the CPU (the apps' default device, lsde-figures) asked for a GPU per task, and waited for a GPU node."""
    monkeypatch.delenv("LSDE_SITE_ENV", raising=False)
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose(app, overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == layout


def test_the_slurm_launcher_adds_the_sites_sbatch_options_under_the_command_lines(tmp_path, monkeypatch):
    """additional_parameters was the site's (an interpolation): `+hydra.launcher.additional_parameters.comment=x` ended
    in OmegaConf's AssertionError."""
    from lightning_sde.cli.launcher import SlurmLauncher

    (tmp_path / "site.env").write_text("LSDE_MEM=300M\nLSDE_MAIL_TYPE=FAIL\n")
    monkeypatch.setenv("LSDE_SITE_ENV", str(tmp_path / "site.env"))
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("figures", overrides=["hydra/launcher=slurm", "+hydra.launcher.additional_parameters.comment=x",
                                            "+hydra.launcher.additional_parameters.mem=1G"], return_hydra_config=True)
    launcher = SlurmLauncher(**{k: v for k, v in cfg.hydra.launcher.items() if k != "_target_"})
    assert launcher.params["additional_parameters"] == {"mem": "1G", "mail_type": "FAIL", "comment": "x"}


def test_the_slurm_launchers_failed_run_fails_its_job_and_the_sweep_in_one_line(monkeypatch):
    """On the node a failed run raises (SLURM records FAILED, exit 1); where the sweep waits, submitit's error (the
    node's traceback) becomes the run's one line and its log. The real SLURM round trip: tests/integration/
    test_slurm.py."""
    from hydra.core.utils import JobReturn, JobStatus
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
    from submitit.core.utils import FailedJobError

    from lightning_sde.cli.errors import JobFailed
    from lightning_sde.cli.launcher import RunFailed, SlurmLauncher

    failed, bug = JobReturn(), JobReturn()
    failed.status, failed._return_value = JobStatus.FAILED, JobFailed("lsde-train: error: config optim.lr: bad")
    bug.status, bug._return_value = JobStatus.FAILED, ZeroDivisionError("division by zero")
    for ret, said in ((failed, "lsde-train: error: config optim.lr: bad"),
                      (bug, "ZeroDivisionError: division by zero")):
        monkeypatch.setattr(submitit_launcher.SlurmLauncher, "__call__", lambda self, *a, **k: ret)
        with pytest.raises(RunFailed, match=f"^{re.escape(said)}$") as err:
            SlurmLauncher()()
        assert err.value.__cause__ is ret._return_value  # a bug's own traceback in the job's log
    trace = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent call "
             "last):\n  File \"x.py\", line 1\nlightning_sde.cli.launcher.RunFailed: lsde-train: error: config "
             "optim.lr: bad\n\n----------------------\nYou can check full logs with 'job.stderr(0)' and "
             "'job.stdout(0)'or at paths:\n  - /m/.submitit/7_0/7_0_0_log.err\n  - /m/.submitit/7_0/7_0_0_log.out\n")

    def fails(self, *args):
        raise FailedJobError(trace)

    monkeypatch.setattr(submitit_launcher.SlurmLauncher, "launch", fails)
    with pytest.raises(JobFailed) as err:
        SlurmLauncher().launch([["optim.lr=-1"]], 0)
    assert str(err.value) == "lsde-train: error: config optim.lr: bad (its log: /m/.submitit/7_0/7_0_0_log.out)"

    def no_slurm(self, *args):  # submitit's executor, where no srun is on the PATH (a laptop): a 30-line traceback
        raise RuntimeError('Could not detect "srun", are you indeed on a slurm cluster?')

    monkeypatch.setattr(submitit_launcher.SlurmLauncher, "launch", no_slurm)
    with pytest.raises(JobFailed, match=r'^hydra/launcher=slurm: Could not detect "srun".*submitit_local runs'):
        SlurmLauncher().launch([["optim.lr=-1"]], 0)


def test_an_installed_package_finds_the_site_file_of_the_folder_it_runs_in(tmp_path, monkeypatch, caplog):
    """`pip install .` puts the configs in site-packages, whose parent has no slurm/site.env: the launcher's jobs went
    without the site's account, partition and set-up, silently."""
    from lightning_sde import configuration

    monkeypatch.delenv("LSDE_SITE_ENV", raising=False)
    monkeypatch.delenv("LSDE_ACCOUNT", raising=False)
    monkeypatch.setattr(configuration, "config_root", lambda: tmp_path / "site-packages" / "lightning_sde" / "configs")
    monkeypatch.chdir(tmp_path)
    assert configuration.site_file() is None
    monkeypatch.setattr(configuration, "_NO_SITE_FILE_SAID", [])  # said once a process
    configuration._site_setup("echo ours")
    assert "no site file" in caplog.text
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "site.env").write_text("LSDE_ACCOUNT=acct\n")
    assert configuration.site_file() == tmp_path / "slurm" / "site.env"
    assert configuration._site_value("LSDE_ACCOUNT") == "acct"


def test_the_site_files_values_are_the_ones_bash_gives_its_jobs(tmp_path, monkeypatch):
    """References to settings above and to the environment, ~, quotes and comments: the submitit launcher exported
    `$SHARED/torch` and `~/logs` as they were written, where the templates' jobs (bash) got the paths."""
    import subprocess

    from lightning_sde.configuration import site_file_settings

    site = tmp_path / "site.env"
    site.write_text("SHARED=/x/shared\nTORCH_HOME=$SHARED/torch\nLSDE_CACHE=${SHARED}/lsde-cache  # a comment\n"
                    "LSDE_LOGS=~/lsde-logs\nexport LSDE_QUOTED=\"$SHARED/a b\"'/$SHARED'\n"
                    "LSDE_FROM_ENV=$SITE_TEST_ROOT/x\n"
                    "LSDE_UNSET=${SITE_TEST_NOT_SET}end\nLSDE_ESCAPED=\\$SHARED\\ x\nLSDE_TILDE_INSIDE=a~b\n"
                    "LSDE_PATHS=~/a:~/b\nLSDE_POSITIONAL=$1x\n"
                    "LSDE_SETUP=\"module load cuda/12.4 && source /shared/$SHARED/activate\"\n")
    monkeypatch.setenv("LSDE_SITE_ENV", str(site))
    monkeypatch.setenv("SITE_TEST_ROOT", "/root of env")
    monkeypatch.delenv("SITE_TEST_NOT_SET", raising=False)
    ours = site_file_settings()
    names = list(ours)
    script = f"set -a; source {site}; set +a; " + "; ".join(f'printf "%s\\0" "${name}"' for name in names)
    theirs = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
    assert ours == dict(zip(names, theirs, strict=True))
    assert ours["TORCH_HOME"] == "/x/shared/torch" and ours["LSDE_QUOTED"] == "/x/shared/a b/$SHARED"
    site.write_text("LSDE_LOGS='unclosed\n")
    with pytest.raises(ValueError, match=r"site.env, line 1: an unmatched ' in"):
        site_file_settings()
    for computed in ("${SCRATCH:-/tmp}/cache", "$(hostname)", "a;b", "`id`"):  # bash would compute or run these
        site.write_text(f"LSDE_CACHE={computed}\n")
        with pytest.raises(ValueError, match=r"site.env, line 1: .* only plain values and \$NAME"):
            site_file_settings()


@pytest.mark.parametrize("overrides, start, warned", [
    ({"max_steps": 1000, "val_check_interval": 2000}, 0, "trainer.val_check_interval=2000 steps, and this fit runs "
                                                         "steps 1..1000"),
    ({"max_steps": 2500, "val_check_interval": 2000}, 2000, "steps 2001..2500"),  # resumed past the only one
    ({"max_steps": 2000, "val_check_interval": 2000}, 1999, None),
    ({"max_steps": 1000, "val_check_interval": 2000}, 1000, None),  # a finished run started again
    ({"max_steps": 10, "val_check_interval": 0.5, "check_val_every_n_epoch": 1}, 0, None),  # counted in epochs
])
def test_a_fit_in_which_no_evaluation_runs_says_so_at_start_up(caplog, overrides, start, warned):
    from omegaconf import OmegaConf

    from lightning_sde.cli.train import warn_if_nothing_is_evaluated

    warn_if_nothing_is_evaluated(OmegaConf.create({"check_val_every_n_epoch": None, **overrides}), 1.0, start)
    assert (warned in caplog.text) if warned else "no evaluation runs" not in caplog.text
    warn_if_nothing_is_evaluated(OmegaConf.create({"check_val_every_n_epoch": None, **overrides}), 0, start)
    unfinished = start < overrides["max_steps"]
    assert ("no evaluation runs in this fit (trainer.limit_val_batches=0)" in caplog.text) == unfinished


@pytest.mark.parametrize("terminal", [True, False])
def test_the_progress_bar_is_on_for_a_terminal_and_off_for_a_log_file(tmp_path, monkeypatch, terminal):
    """enable_progress_bar=auto: a bar redirected to a file wrote its frames (carriage returns and escapes) between
    the log lines; there, ProgressLog writes lines instead. true and false are taken as they are."""
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal)  # where Lightning draws the bar
    base = ["experiment=toy2d", f"run_dir={tmp_path}", "run_name=t", "logger=none", "trainer=cpu"]
    assert (build(composed("train", base), read_data=False).trainer.progress_bar_callback is not None) == terminal
    for given in (True, False):
        cfg = composed("train", [*base, f"trainer.enable_progress_bar={given}"])
        assert (build(cfg, read_data=False).trainer.progress_bar_callback is not None) == given


@pytest.mark.parametrize("override, message", [
    ("paths_per_figure=abc", "config paths_per_figure: must be an integer >= 1; got 'abc'"),
    ("paths_per_figure=0", "config paths_per_figure: must be an integer >= 1; got 0"),
    ("seed=-1", "config seed: must be an integer >= 0; got -1"),
    ("interpolation.n=abc", "config interpolation: needs two seeds (integers >= 0) and n >= 2"),
    ("interpolation.seeds=[a,b]", "config interpolation: needs two seeds (integers >= 0) and n >= 2"),
    ("interpolation.seeds=[0,7,9]", "config interpolation: needs two seeds (integers >= 0) and n >= 2"),
    ("interpolation.n=1", "config interpolation: needs two seeds (integers >= 0) and n >= 2"),
    ("figures=[]", "config figures: empty; choose from"),
    ("formats=[]", "config formats: empty; choose from png, pdf, svg"),
    ("figures=schedules", "config figures: must be a list, e.g. figures=[schedules]; got the string 'schedules'"),
    ("formats=svg", "config formats: must be a list, e.g. formats=[svg]"),  # read as ['s', 'v', 'g']
    ("guidance=3.0", "config guidance: needs a class-conditional checkpoint"),
])
def test_lsde_figures_names_a_bad_value_before_drawing_anything(override, message):
    """Each of these failed mid-way (a traceback after the first figures were written) or drew nothing and exited 0."""
    from lightning_sde.cli.figures import check_values

    with pytest.raises(ValueError, match=re.escape(message)):
        check_values(composed("figures", [override]))
    check_values(composed("figures", []))  # the defaults pass
    check_values(composed("figures", ["formats=[png,pdf,svg]", "interpolation.n=2"]))


@pytest.mark.parametrize("overrides", [
    ["experiment=digits", "data.n_val=50"], ["experiment=toy2d", "data.n_val=100"],
    ["experiment=digits", "callbacks.sampler.metrics=[fid]", "callbacks.sampler.first_seed=7",
     "callbacks.sampler.n_plot=16", "callbacks.sampler.dtype=float64"],
    ["experiment=toy2d", "callbacks.sampler.feature_extractor=inception"],
    ["experiment=digits", "model.net.num_groups=8", "model.net.fourier_scale=4.0"],
    ["experiment=mnist_subvp", "data.download_timeout=5", "data.n_val=10", "data.download=false"],
])
def test_the_settings_the_docs_name_are_keys_of_their_configs(overrides):
    """Each failed with "Could not override" (the key was missing from its yaml: only `+key=` worked)."""
    cfg = composed("train", overrides)
    for override in overrides[1:]:
        key, value = override.split("=", 1)
        assert str(OmegaConf.select(cfg, key)).replace(" ", "").replace("'", "").lower() == value


def test_a_key_its_class_does_not_take_says_how_to_remove_it():
    """experiment=cifar10_ve_ncsnpp sde=vp: the experiment's sigma_min reached VPSDE, a TypeError with no way on."""
    from omegaconf import OmegaConf

    from lightning_sde.configuration import build as build_node

    with pytest.raises(ValueError, match=r"^config sde: TypeError: .*unexpected keyword argument 'sigma_min'; the "
                                         r"class takes no sigma_min: remove it \(~sde.sigma_min\) or pick its class$"):
        build_node(OmegaConf.create({"_target_": "lightning_sde.sde.VPSDE", "sigma_min": 0.01}), "sde")


def test_a_data_config_copied_from_training_names_its_key_not_omegaconfs_lines():
    """A user's data config with train.yaml's `seed: ${seed}`, used by lsde-bench (no top-level seed), ended with
    OmegaConf's three lines 'Interpolation key ...', 'full_key: data.seed', 'object_type=dict'."""
    from omegaconf import OmegaConf

    from lightning_sde.cli.errors import error_text

    cfg = OmegaConf.create({"seeds": {"start": 0}, "data": {"seed": "${seed}", "n": 3}})
    with pytest.raises(ValueError) as caught:
        OmegaConf.to_container(cfg.data, resolve=True)
    assert error_text(caught.value) == ("config data.seed: refers to ${seed}, a key this app's config does not have "
                                        "(a config written for another app?); give data.seed a value")
    assert error_text(ValueError("config x: y")) == "config x: y"


def test_lsde_compare_in_a_slurm_array_task_computes_every_cell(monkeypatch):
    """compare inherited bench's shards from SLURM_ARRAY_TASK_ID/COUNT: an array of comparisons computed a third of
    each (no noise floor either), in folders of their own that no other task would complete, exit 0."""
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    cfg = composed("compare", [])
    assert (cfg.shard.index, cfg.shard.count) == (0, 1)
    assert (composed("bench", []).shard.index, composed("bench", []).shard.count) == (1, 3)  # a sweep's task: a share
    # a submitit multirun's array: each job a whole sweep of its own (it ran a third of each, W&B off, silently)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert (composed("bench", []).shard.index, composed("bench", []).shard.count) == (0, 1)


def test_the_sync_line_of_a_failed_start_is_said_only_by_a_start_that_began_a_wandb_run(tmp_path, monkeypatch,
                                                                                          caplog):
    """A start refused beside a live run of its name began no W&B run: the live run's folders are not its record."""
    import logging
    import sys
    from types import SimpleNamespace

    from lightning_sde.cli.train import tell_offline_sync

    (tmp_path / "wandb" / "offline-run-20260101_000000-abc-t").mkdir(parents=True)
    cfg = OmegaConf.create({"run_dir": str(tmp_path), "run_name": "t"})
    caplog.set_level(logging.INFO)
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=None))
    tell_offline_sync(cfg)
    assert "sync the failed run's record" not in caplog.text
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(run=object()))  # this start's run
    tell_offline_sync(cfg)
    assert "sync the failed run's record with: wandb sync" in caplog.text


def test_a_resume_refuses_a_best_callback_that_would_start_afresh_beside_the_runs_and_allows_dropping_or_adding(
        tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import ModelCheckpoint

    import lightning_sde.cli.train as train_app

    def best(monitor, mode="min", folder=tmp_path):
        return ModelCheckpoint(dirpath=folder, monitor=monitor, mode=mode)

    def saved(*callbacks):
        return {cb.state_key: {"monitor": cb.monitor, "dirpath": str(cb.dirpath), "best_model_path": "best.ckpt"}
                for cb in callbacks}

    def check(before, now, resumed="last.ckpt"):
        monkeypatch.setattr(train_app, "read_checkpoint", lambda path: {"callbacks": saved(*before)})
        train_app.check_same_monitors(resumed, now)

    a, loss = best("val/ddim_50/sliced_w2"), best("val/loss")
    check([a, loss], [best("val/ddim_50/sliced_w2")])  # one of two dropped
    check([a], [best("val/ddim_50/sliced_w2"), best("val/loss")])  # one added
    check([a], [best("val/ddim_10/sliced_w2", folder=tmp_path / "elsewhere")])  # another folder (another run's)
    with pytest.raises(ValueError, match="chosen by val/ddim_50/sliced_w2, this config chooses by val/ddim_10/"):
        check([a], [best("val/ddim_10/sliced_w2")])
    with pytest.raises(ValueError, match="this config chooses by val/ddim_50/sliced_w2 with another mode or schedule"):
        check([a], [best("val/ddim_50/sliced_w2", mode="max")])
    moved = tmp_path / "moved"  # the run's folder moved: its own checkpoint is resumed from the new place
    with pytest.raises(ValueError, match="chosen by val/ddim_50/sliced_w2, this config chooses by val/ddim_10/"):
        check([a], [best("val/ddim_10/sliced_w2", folder=moved)], resumed=moved / "last.ckpt")


def test_a_resume_keeps_the_loss_that_chooses_the_best_checkpoint(monkeypatch):
    """With val/loss or train/loss choosing the best checkpoint, another weighting (or its settings, or t_min) would
    compare losses of other scales under one name: refused; with a sampler metric choosing, the loss may change."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    import lightning_sde.cli.train as train_app
    from lightning_sde.losses import DSMLoss
    from lightning_sde.sde import sde_from_config

    vp = {"_target_": "lightning_sde.sde.VPSDE", "beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3}
    saved = {"hyper_parameters": {"sde": vp, "loss": {"weighting": "sigma2", "t_min": None}}}
    monkeypatch.setattr(train_app, "read_checkpoint", lambda path: saved)

    def check(monitor, **loss):
        module = SimpleNamespace(loss_fn=DSMLoss(sde_from_config(vp), **loss))
        train_app.check_same_monitored_loss("last.ckpt", module, [ModelCheckpoint(monitor=monitor)])

    check("val/loss", weighting="sigma2")
    check("val/ddim_10/sliced_w2", weighting="edm")  # a sampler metric chooses
    for monitor in ("val/loss", "train/loss"):
        with pytest.raises(ValueError, match=rf"^config loss: the run's best checkpoint is chosen by {monitor}, and "
                                             r"the checkpoint last.ckpt was trained with loss sigma2 "
                                             r"\{'t_min': 0.001\}, this config has edm \{'p_mean': -1.2, 'p_std': 1.2, "
                                             r"'sigma_data': 0.5, 't_min': 0.001\}: the two losses are on different "
                                             r"scales"):
            check(monitor, weighting="edm")
    with pytest.raises(ValueError, match=r"this config has sigma2 \{'t_min': 1e-05\}"):
        check("val/loss", weighting="sigma2", t_min=1e-5)
    # sde.eps changed (allowed on resume) moves a null t_min: said so, with the setting that keeps the loss
    eps = {**vp, "eps": 1e-4}
    module = SimpleNamespace(loss_fn=DSMLoss(sde_from_config(eps), "sigma2"))
    with pytest.raises(ValueError, match=r"^config loss: the run's best checkpoint is chosen by val/loss, and its "
                                         r"loss's t_min is the SDE's eps \(loss.t_min null\): this config's sde.eps "
                                         r"moves it from 0.001 to 0.0001, .*; keep it with loss.t_min=0.001, or"):
        train_app.check_same_monitored_loss("last.ckpt", module, [ModelCheckpoint(monitor="val/loss")])
    train_app.check_same_monitored_loss("last.ckpt", SimpleNamespace(loss_fn=DSMLoss(sde_from_config(eps), "sigma2",
                                                                                     t_min=1e-3)),
                                        [ModelCheckpoint(monitor="val/loss")])  # the advice followed
    saved["hyper_parameters"]["loss"] = {"weighting": "sigma2", "t_min": 1e-3}  # set, not the SDE's: the loss moved
    with pytest.raises(ValueError, match=r"was trained with loss sigma2 \{'t_min': 0.001\}, this config has sigma2 "
                                         r"\{'t_min': 0.0001\}"):
        train_app.check_same_monitored_loss("last.ckpt", module, [ModelCheckpoint(monitor="val/loss")])
    for odd in ({"weighting": "sigma2", "reduce_mean": True}, "sigma2",  # a loss config this version cannot build
                {"weighting": "foo"}, {"weighting": "min_snr", "min_snr_gamma": 0.0}):  # TypeError, ValueError
        saved["hyper_parameters"]["loss"] = odd
        with pytest.raises(ValueError, match=r"^last.ckpt: its loss config .* does not build here"):
            check("val/loss", weighting="sigma2")
    saved["hyper_parameters"]["loss"] = {"weighting": "likelihood", "importance_sampling": True}
    check("val/loss", weighting="likelihood", importance_sampling=False)  # another estimator of the same loss
    saved["hyper_parameters"]["loss"] = {"weighting": "sigma2", "importance_sampling": True}  # ignored before
    check("val/loss", weighting="sigma2")
    saved["hyper_parameters"]["loss"] = {"weighting": "min_snr", "min_snr_gamma": 5.0}
    check("val/loss", weighting="min_snr")
    with pytest.raises(ValueError, match=r"trained with loss min_snr \{'min_snr_gamma': 5.0, 't_min': 0.001\}, this "
                                         r"config has min_snr \{'min_snr_gamma': 2.0"):
        check("val/loss", weighting="min_snr", min_snr_gamma=2.0)


def test_a_resume_refuses_evaluations_of_another_protocol_under_the_same_labels(monkeypatch):
    """n_samples or a sampler's steps changed on resume: one val/ curve (and the best checkpoint's choice) mixed two
    protocols without a word, as the guidance check already refused."""
    import lightning_sde.cli.train as train_app
    from lightning_sde.callbacks import SamplerCallback
    from lightning_sde.samplers import DDIM, UniPC

    def callback(n=64, steps=10, **more):
        return SamplerCallback({"ddim": DDIM(steps=steps), "unipc": UniPC(steps=10, grid="select", **more)},
                               n_samples=n, batch_size=64)

    def checkpoint(cb):
        return {"callbacks": {"SamplerCallback": torch.load(_saved(cb.state_dict()), weights_only=True)}}

    monkeypatch.setattr(train_app, "read_checkpoint", lambda path: saved)
    saved = checkpoint(callback())  # checkpointed before any evaluation: nothing to keep
    train_app.check_same_evaluations("last.ckpt", callback(n=32, steps=5))
    evaluated = callback()
    evaluated._evaluated = {"ddim": evaluated.sampled_as("ddim")}  # as after an evaluation of ddim alone
    saved = checkpoint(evaluated)
    train_app.check_same_evaluations("last.ckpt", callback())
    train_app.check_same_evaluations("last.ckpt", SamplerCallback({"ddim": DDIM(steps=10), "unipc": UniPC(steps=4)},
                                                                  64, 64))  # unipc never ran: it may change
    train_app.check_same_evaluations("last.ckpt", callback(pilot_batch=8))  # memory alone
    train_app.check_same_evaluations("last.ckpt", SamplerCallback({"ddim": DDIM(steps=10)}, 64, 64))  # one dropped
    with pytest.raises(ValueError, match=r"^config callbacks.sampler.n_samples: the run's evaluations so far used 64, "
                                         r"this config 32: their val/ curves"):
        train_app.check_same_evaluations("last.ckpt", callback(n=32))
    with pytest.raises(ValueError, match=r"^config samplers.ddim: the run's evaluations so far ran it as ddim "
                                         r".*'steps': 10.*, this config as ddim .*'steps': 5.*give this one another "
                                         r"label"):
        train_app.check_same_evaluations("last.ckpt", callback(steps=5))


def test_a_resume_refuses_evaluations_scored_against_another_reference_set(monkeypatch, tmp_path):
    """Images added to a folder change its first n_samples training images in the data's order, which the FID/KID
    reference is: the val/ curves before and after the resume compared two references without a word."""
    import numpy as np
    from PIL import Image

    import lightning_sde.cli.train as train_app
    from lightning_sde.callbacks import SamplerCallback
    from lightning_sde.data import ImageFolderDataModule
    from lightning_sde.metrics.image import tensor_sha256
    from lightning_sde.samplers import DDIM

    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"img{i:02d}.png")
    folder = lambda: ImageFolderDataModule(tmp_path, image_size=8, channels=1, n_val=4)  # noqa: E731
    evaluated = SamplerCallback({"ddim": DDIM(steps=10)}, n_samples=8, batch_size=8)
    evaluated._evaluated = {"ddim": evaluated.sampled_as("ddim")}
    evaluated.reference_sha256 = tensor_sha256(folder().reference(8))
    saved = {"callbacks": {"SamplerCallback": torch.load(_saved(evaluated.state_dict()), weights_only=True)}}
    monkeypatch.setattr(train_app, "read_checkpoint", lambda path: saved)
    fresh = SamplerCallback({"ddim": DDIM(steps=10)}, n_samples=8, batch_size=8)
    train_app.check_same_evaluations("last.ckpt", fresh)
    train_app.check_same_reference("last.ckpt", fresh, folder())  # the folder as it was
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "added.png")
    with pytest.raises(ValueError, match=r"^config data: the run's evaluations so far were scored against another "
                                         r"reference set \(the first 8 training samples in the data's order; the "
                                         rf"files under {re.escape(str(tmp_path))} changed\?\): their val/ curves"):
        train_app.check_same_reference("last.ckpt", fresh, folder())


def _saved(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_the_shipped_best_checkpoint_never_takes_a_non_finite_value_and_resumes_a_modelcheckpoints_choice(tmp_path):
    """callbacks.best is BestCheckpoint, whose state is saved under Lightning's ModelCheckpoint key: a run
    checkpointed before (with ModelCheckpoint) resumes its best choice, not a second best file beside it."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_sde.callbacks import BestCheckpoint

    node = composed("train", [f"run_dir={tmp_path}"]).callbacks.best
    best = instantiate(node, monitor="val/ddim_50/sliced_w2")
    assert type(best) is BestCheckpoint
    assert best.state_key == ModelCheckpoint(dirpath=tmp_path, monitor="val/ddim_50/sliced_w2").state_key
    assert not best.check_monitor_top_k(None, torch.tensor(float("nan")))
    assert not best.check_monitor_top_k(None, torch.tensor(float("inf")))
    assert best.check_monitor_top_k(None, torch.tensor(3.0))  # none saved yet


@pytest.mark.parametrize("app", ["train", "bench", "compare", "sample", "likelihood", "figures"])
def test_two_sweeps_started_in_one_second_log_to_two_folders(app):
    """The sweep folder was named to the second: two sweeps started together interleaved their jobs' logs in one
    folder, and its multirun.yaml kept the second's overrides."""
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose(app, return_hydra_config=True)
    assert re.search(r"/multirun/\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}\.\d{6}$", cfg.hydra.sweep.dir), cfg.hydra.sweep.dir


def test_a_checked_value_whose_message_starts_with_its_key_names_the_key_once():
    """lsde-sample labels=8 said "config labels: ValueError: labels must be 'cycle' or a class in 0..3; got 8"."""
    from lightning_sde.configuration import checked
    from lightning_sde.generation import seed_labels

    with pytest.raises(ValueError) as caught:
        checked("labels", seed_labels, [0], 8, 4)
    assert str(caught.value) == "config labels: must be 'cycle' or a class in 0..3; got 8"
    with pytest.raises(ValueError) as caught:
        checked("sde", lambda: (_ for _ in ()).throw(ValueError("beta_max must be > beta_min")))
    assert str(caught.value) == "config sde: ValueError: beta_max must be > beta_min"


# What a sampler's config sets apart from its class's defaults, on purpose (UniPC's config: its third order)
CONFIG_NOT_DEFAULT = {"unipc": {"order": 3}}


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "sampler").glob("*.yaml")
                                        if not p.stem.startswith("recommended")))
def test_a_sampler_config_builds_its_class_defaults(name):
    """`sampler=<name>` (lsde-sample, lsde-bench, the sets) is build_sampler(name): a knob's default moved in one
    place only (heun's s_churn: 1.0 would make every heun run EDM's stochastic sampler, its result key another)."""
    from hydra.utils import instantiate

    from lightning_sde.samplers import build_sampler

    configured = instantiate(OmegaConf.load(ROOT / "sampler" / f"{name}.yaml"))
    default = build_sampler(name, **CONFIG_NOT_DEFAULT.get(name, {}))
    assert configured.params() == default.params() and configured.stochastic == default.stochastic


def test_the_loss_check_reads_no_checkpoint_where_no_loss_chooses(monkeypatch):
    """A resume reads its checkpoint several times already: the loss check adds no read where a sampler metric
    chooses the best checkpoint (a CIFAR-10 checkpoint is hundreds of MB)."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    import lightning_sde.cli.train as train_app

    def unread(path):
        raise AssertionError("read")

    monkeypatch.setattr(train_app, "read_checkpoint", unread)
    train_app.check_same_monitored_loss("last.ckpt", SimpleNamespace(), [ModelCheckpoint(monitor="val/ddim_10/fid")])
