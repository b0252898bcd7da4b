"""What a resume starts from: the checkpoint at the highest global step that reads back (never the file touched last),
a broken last.ckpt never rotated over the good one before it, a new optim.lr applied to the restored optimizer, and
weights that fit refused when they were trained with another SDE, network setting or parameterization."""

import os

import lightning as L
import pytest
import torch

from lightning_sde.callbacks.checkpoint_io import AtomicCheckpointIO
from lightning_sde.cli.train import check_resume_fits
from lightning_sde.loading import newest_loadable
from lightning_sde.module import ScoreModule

NET = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 2, "time_embed_dim": 8}
SDE = {"_target_": "lightning_sde.sde.VPSDE", "beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3}


def contents(step: int) -> dict:
    return {"state_dict": {"w": torch.full((2,), float(step))}, "global_step": step,
            "hyper_parameters": {"net": NET, "sde": SDE, "shape": [2]}, "optimizer_states": [{}], "loops": {}}


def write(path, step: int, mtime: float):
    torch.save(contents(step), path)
    os.utime(path, (mtime, mtime))
    return path


def test_the_highest_step_wins_whatever_the_modification_times(tmp_path):
    # as after `cp -r` of a run (times not kept), or a best-*.ckpt written just after last.ckpt at a lower step
    last = write(tmp_path / "last.ckpt", 60, mtime=1000)
    write(tmp_path / "last.prev.ckpt", 40, mtime=3000)
    write(tmp_path / "best-step=30.ckpt", 30, mtime=2000)
    assert newest_loadable(tmp_path) == (last, [])


def test_a_checkpoint_of_step_0_is_one_to_resume_from(tmp_path):
    """A run stopped before its first optimizer step (preempted while it started) resumes from its step-0 save."""
    last = write(tmp_path / "last.ckpt", 0, mtime=1000)
    assert newest_loadable(tmp_path) == (last, [])


def test_at_the_same_step_last_ckpt_wins(tmp_path):
    last = write(tmp_path / "last.ckpt", 60, mtime=1000)
    write(tmp_path / "best-step=60.ckpt", 60, mtime=2000)
    write(tmp_path / "last.prev.ckpt", 40, mtime=3000)
    assert newest_loadable(tmp_path) == (last, [])


def test_a_broken_newer_checkpoint_falls_back_to_the_best_readable_one(tmp_path):
    last = write(tmp_path / "last.ckpt", 60, mtime=3000)
    last.write_bytes(last.read_bytes()[:100])  # truncated
    previous = write(tmp_path / "last.prev.ckpt", 40, mtime=1000)
    write(tmp_path / "best-step=20.ckpt", 20, mtime=2000)
    path, problems = newest_loadable(tmp_path)
    assert path == previous
    assert len(problems) == 1 and problems[0].startswith(f"{last}: not a lightning-sde checkpoint")


@pytest.mark.parametrize("change, message", [
    ({"optimizer_states": []}, "no optimizer state or loop progress (a weights-only save)"),
    ({"loops": None}, "no optimizer state or loop progress"),  # Lightning would start again at step 0
    ({"state_dict": {"w": torch.tensor([0.0, float("nan")])}}, "its state_dict holds NaN or infinite values (w)"),
    ({"current_model_state": {"w": torch.tensor([float("inf"), 0.0])}}, "its current_model_state holds NaN"),
    ({"global_step": "80"}, "no global_step (got '80')"),  # an edited or foreign file: compared with others' steps
    ({"global_step": -1}, "no global_step (got -1)"),
])
def test_a_checkpoint_a_resume_cannot_continue_from_is_passed_over_saying_why(tmp_path, change, message):
    write(tmp_path / "last.prev.ckpt", 40, mtime=1000)
    torch.save({**contents(60), **change}, tmp_path / "last.ckpt")
    path, problems = newest_loadable(tmp_path)
    assert path == tmp_path / "last.prev.ckpt"
    assert problems == [f"{tmp_path / 'last.ckpt'}: not a checkpoint lsde-train can resume from: " + problems[0].split(
        "resume from: ", 1)[1]] and message in problems[0]


def test_a_broken_last_checkpoint_is_replaced_without_overwriting_the_previous_one(tmp_path):
    io = AtomicCheckpointIO()
    last, previous = tmp_path / "last.ckpt", tmp_path / "last.prev.ckpt"
    io.save_checkpoint(contents(20), last)
    io.save_checkpoint(contents(40), last)
    assert torch.load(previous, weights_only=True)["global_step"] == 20  # a good one is kept
    last.write_bytes(last.read_bytes()[:100])  # broken; a resume fell back to last.prev.ckpt (step 20)
    io.save_checkpoint(contents(60), last)
    assert torch.load(previous, weights_only=True)["global_step"] == 20, "the broken file replaced the good one"
    assert torch.load(last, weights_only=True)["global_step"] == 60
    assert not list(tmp_path.glob(".*.tmp"))


def _restored_optimizer(lr: float, warmup_steps: int, steps: int) -> dict:
    """The optimizer and scheduler states of a module trained `steps` steps at `lr`, as a checkpoint holds them."""
    module = ScoreModule(net=NET, sde=SDE, shape=[2], optim={"lr": lr, "warmup_steps": warmup_steps})
    config = module.configure_optimizers()
    opt, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    for _ in range(steps):
        opt.step()
        schedule.step()
    return {"optimizer_states": [opt.state_dict()], "lr_schedulers": [schedule.state_dict()]}


def _resumed_lrs(checkpoint: dict, lr: float, warmup_steps: int, steps: int) -> list[float]:
    """The lr of each of `steps` steps after a resume from `checkpoint` with optim.lr = `lr`, restored as Lightning
    does: on_load_checkpoint, then the optimizer's and the scheduler's states."""
    module = ScoreModule(net=NET, sde=SDE, shape=[2], optim={"lr": lr, "warmup_steps": warmup_steps})
    module.on_load_checkpoint(checkpoint)
    config = module.configure_optimizers()
    opt, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    opt.load_state_dict(checkpoint["optimizer_states"][0])
    schedule.load_state_dict(checkpoint["lr_schedulers"][0])
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return lrs


def test_a_lower_lr_on_resume_takes_effect_and_keeps_the_warmup():
    checkpoint = _restored_optimizer(1e-3, warmup_steps=10, steps=4)  # mid warm-up: factor (step + 1) / 10
    lrs = _resumed_lrs(checkpoint, 1e-4, warmup_steps=10, steps=8)
    assert lrs == pytest.approx([1e-4 * min(1.0, (step + 1) / 10) for step in range(4, 12)], rel=1e-12)
    assert checkpoint["lr_schedulers"][0]["base_lrs"] == [1e-4]


@pytest.mark.parametrize("lr, warmup_steps", [(1e-3, 100), (2e-3, 8), (1e-3, 0)])
def test_a_new_warmup_on_resume_takes_effect_from_the_first_step(lr, warmup_steps):
    """The first resumed step ran at the restored lr (the old warm-up's factor, 20x the new one's at step 4 of a
    warm-up stretched from 2 to 100 steps): the step the advice after a non-finite loss would repeat."""
    checkpoint = _restored_optimizer(1e-3, warmup_steps=2, steps=4)
    lrs = _resumed_lrs(checkpoint, lr, warmup_steps=warmup_steps, steps=4)
    assert lrs == pytest.approx([lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr
                                 for step in range(4, 8)], rel=1e-12)
    assert checkpoint["lr_schedulers"][0]["_last_lr"] == [lrs[0]]  # what lr-AdamW logs


def test_an_unchanged_lr_leaves_the_restored_state_untouched():
    checkpoint = _restored_optimizer(1e-3, warmup_steps=10, steps=4)
    before = repr(checkpoint)
    ScoreModule(net=NET, sde=SDE, shape=[2], optim={"lr": 1e-3, "warmup_steps": 10}).on_load_checkpoint(checkpoint)
    assert repr(checkpoint) == before


def test_a_new_weight_decay_and_betas_on_resume_take_effect():
    checkpoint = _restored_optimizer(1e-3, warmup_steps=10, steps=4)  # AdamW's defaults: 0.0, (0.9, 0.999)
    module = ScoreModule(net=NET, sde=SDE, shape=[2],
                         optim={"lr": 1e-3, "warmup_steps": 10, "weight_decay": 0.1, "betas": [0.5, 0.9]})
    module.on_load_checkpoint(checkpoint)
    opt = module.configure_optimizers()["optimizer"]
    opt.load_state_dict(checkpoint["optimizer_states"][0])
    assert opt.param_groups[0]["weight_decay"] == 0.1 and tuple(opt.param_groups[0]["betas"]) == (0.5, 0.9)


# --- a resume into another SDE or parameterization: the weights fit but mean something else ---------------------


def _checkpoint_of(tmp_path, **hparams) -> str:
    """A checkpoint (weights and hyperparameters, as lsde-train writes them) of a module built with `hparams`."""
    module = ScoreModule(**{"net": NET, "sde": SDE, "shape": [2], **hparams})
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "global_step": 7, "hyper_parameters": dict(module.hparams)}, path)
    return str(path)


@pytest.mark.parametrize("change, message", [
    ({"sde": {**SDE, "_target_": "lightning_sde.sde.SubVPSDE"}},
     "sde._target_: 'lightning_sde.sde.VPSDE' there, 'lightning_sde.sde.SubVPSDE' here"),
    ({"sde": {"_target_": "lightning_sde.sde.VESDE"}},
     "sde._target_: 'lightning_sde.sde.VPSDE' there, 'lightning_sde.sde.VESDE' here"),
    ({"sde": {**SDE, "beta_max": 10.0}}, "sde.beta_max: 20.0 there, 10.0 here"),
    ({"parameterization": "x0"}, "model.parameterization: 'eps' there, 'x0' here"),
    ({"sigma_data": 0.5}, "model.sigma_data: None there, 0.5 here"),
])
def test_a_resume_into_another_sde_or_parameterization_is_refused_naming_the_key(tmp_path, change, message):
    path = _checkpoint_of(tmp_path)
    with pytest.raises(ValueError) as err:
        check_resume_fits(path, ScoreModule(**{"net": NET, "sde": SDE, "shape": [2], **change}))
    text = str(err.value)
    group = message.split(".")[0]  # sde or model
    assert text.startswith(f"config {group}: the checkpoint {path} was trained with another forward process"), text
    assert message in text and "\n" not in text, text


@pytest.mark.parametrize("change", [
    {},  # unchanged
    {"sde": {"_target_": "lightning_sde.sde.VPSDE"}},  # the same SDE, its parameters left at their defaults
    {"sde": {**SDE, "eps": 1e-5}},  # only where training and sampling stop: x_t's law at every t is the same
    {"loss": {"weighting": "likelihood"}},  # the same minimiser (the true score), weighted otherwise
    {"optim": {"lr": 1e-4}},
])
def test_a_resume_with_the_same_sde_and_parameterization_goes_on(tmp_path, change):
    path = _checkpoint_of(tmp_path)
    assert check_resume_fits(path, ScoreModule(**{"net": NET, "sde": SDE, "shape": [2], **change})) == 7


def test_a_checkpoint_from_before_0_2_names_its_sde_by_name(tmp_path):
    path = _checkpoint_of(tmp_path, sde={"name": "vp"})
    assert check_resume_fits(path, ScoreModule(net=NET, sde=SDE, shape=[2])) == 7
    with pytest.raises(ValueError, match=r"sde._target_: 'lightning_sde.sde.VPSDE' there, 'lightning_sde.sde.VESDE'"):
        check_resume_fits(path, ScoreModule(net=NET, sde={"_target_": "lightning_sde.sde.VESDE"}, shape=[2]))


# --- a resume into another network: model.net's class and every setting, not only the ones that shape weights -----

UNET = {"_target_": "lightning_sde.models.unet.UNet", "in_channels": 1, "image_size": 8, "channels": 8,
        "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]}


def _unet_checkpoint(tmp_path, drop: tuple[str, ...] = (), **net) -> str:
    """A checkpoint of a small U-Net; `drop`: net keys its hyperparameters lack (as a checkpoint from before they
    existed, or from a config that left them at their defaults)."""
    path = _checkpoint_of(tmp_path, net={**UNET, **net}, shape=[1, 8, 8], sigma_data=0.5)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["net"] = {k: v for k, v in ckpt["hyper_parameters"]["net"].items() if k not in drop}
    torch.save(ckpt, path)
    return path


def _unet(**net) -> ScoreModule:
    return ScoreModule(net={**UNET, **net}, sde=SDE, shape=[1, 8, 8], sigma_data=0.5)


@pytest.mark.parametrize("ours, message", [
    # GroupNorm's groups: the same weights, another normalisation (the output differs), shapes unchanged
    ({"num_groups": 4}, "model.net.num_groups: 32 there, 4 here"),
    # the time embedding's frequencies: a buffer, so the checkpoint's would come back under a config that says 4.0
    ({"fourier_scale": 4.0}, "model.net.fourier_scale: 16.0 there, 4.0 here"),
    ({"num_groups": 4, "fourier_scale": 4.0},
     "model.net.fourier_scale: 16.0 there, 4.0 here; model.net.num_groups: 32 there, 4 here"),
])
def test_a_resume_into_another_network_setting_whose_weights_fit_is_refused_naming_each_key(tmp_path, ours, message):
    path = _unet_checkpoint(tmp_path)
    with pytest.raises(ValueError) as err:
        check_resume_fits(path, _unet(**ours))
    text = str(err.value)
    assert text.startswith(f"config model: the checkpoint {path} was trained with another forward process, network")
    assert f"({message})" in text and "\n" not in text, text


def test_a_resume_into_another_network_class_is_refused_as_one_change(tmp_path):
    # weights that fit, from a checkpoint whose network was of another class: its settings are another family's
    path = _checkpoint_of(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["net"] = {**UNET, "num_groups": 4}
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"\(model\.net\._target_: 'lightning_sde\.models\.unet\.UNet' there, "
                                         r"'lightning_sde\.models\.mlp\.MLP' here\)"):
        check_resume_fits(path, ScoreModule(net=NET, sde=SDE, shape=[2]))


@pytest.mark.parametrize("drop, ours", [
    ((), {}),  # unchanged
    ((), {"num_groups": 32, "fourier_scale": 16.0}),  # the defaults spelt out
    ((), {"channel_mult": (1, 2), "attn_resolutions": (4,)}),  # a tuple and a list of the same items
    ((), {"dropout": 0.3}),  # acts in training only: at evaluation the same weights compute the same function
    (("num_groups", "fourier_scale", "dropout"), {}),  # an older checkpoint, by the defaults: the same
])
def test_a_resume_with_the_same_network_goes_on(tmp_path, drop, ours):
    path = _unet_checkpoint(tmp_path, drop)
    assert check_resume_fits(path, _unet(**ours)) == 7


def test_an_older_checkpoint_without_a_network_setting_compares_by_its_default(tmp_path):
    path = _unet_checkpoint(tmp_path, drop=("num_groups", "fourier_scale"))  # built with the defaults, 32 and 16.0
    assert "num_groups" not in torch.load(path, weights_only=True)["hyper_parameters"]["net"]
    assert check_resume_fits(path, _unet(num_groups=32, fourier_scale=16.0)) == 7
    with pytest.raises(ValueError, match=r"\(model\.net\.num_groups: 32 there, 8 here\)"):
        check_resume_fits(path, _unet(num_groups=8))


def test_weights_that_do_not_fit_name_the_network_settings_that_differ(tmp_path):
    path = _checkpoint_of(tmp_path)
    with pytest.raises(ValueError) as err:
        check_resume_fits(path, ScoreModule(net={**NET, "width": 32}, sde=SDE, shape=[2]))
    text = str(err.value)
    assert text.startswith(f"config model: the checkpoint {path} does not fit this model config (denoiser.net."), text
    assert "; model.net.width: 16 there, 32 here)" in text and "\n" not in text, text


# --- a resume on other data: the weights would train on as a model of other data ---------------------------------

TOY = {"_target_": "lightning_sde.data.Toy2DDataModule", "name": "eight_gaussians", "batch_size": 512,
       "n_train": 100000}
MNIST = {"_target_": "lightning_sde.data.MNISTDataModule", "root": "data", "batch_size": 128}


def _module_on(data: dict) -> ScoreModule:
    module = ScoreModule(net=NET, sde=SDE, shape=[2])
    module.data_config = data
    module.trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                               enable_model_summary=False)  # not training: writes as after fit
    return module


def test_the_checkpoint_records_the_data_it_was_trained_on(tmp_path):
    checkpoint = {}
    _module_on(TOY).on_save_checkpoint(checkpoint)
    assert checkpoint["data_config"] == TOY


@pytest.mark.parametrize("ours, message", [
    ({**TOY, "name": "swiss_roll"}, "data.name: 'eight_gaussians' there, 'swiss_roll' here"),
    ({**TOY, "n_train": 1000}, "data.n_train: 100000 there, 1000 here"),
    ({"_target_": "lightning_sde.data.DigitsDataModule"},
     "data._target_: 'lightning_sde.data.toy.Toy2DDataModule' there, 'lightning_sde.data.digits.DigitsDataModule'"),
])
def test_a_resume_on_other_data_is_refused_naming_the_key(tmp_path, ours, message):
    path = _checkpoint_of(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    _module_on(TOY).on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises(ValueError) as err:
        check_resume_fits(path, _module_on(ours))
    assert str(err.value).startswith(f"config data: the checkpoint {path} was trained on other data") and \
        message in str(err.value)


@pytest.mark.parametrize("theirs, ours", [
    (TOY, {"_target_": "lightning_sde.data.Toy2DDataModule", "name": "eight_gaussians"}),  # defaults spelt out or not
    (TOY, {**TOY, "num_workers": 2}),
    (MNIST, {**MNIST, "root": "/scratch/data", "download": False}),  # a copy of the dataset elsewhere
    ({**TOY, "labels": True}, TOY),  # an unconditional network never read them (labelled data is refused it now)
])
def test_a_resume_on_the_same_data_read_otherwise_goes_on(tmp_path, theirs, ours):
    path = _checkpoint_of(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    _module_on(theirs).on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    assert check_resume_fits(path, _module_on(ours)) == 7
    assert check_resume_fits(_checkpoint_of(tmp_path), _module_on({**TOY, "name": "swiss_roll"})) == 7  # none held


class WeightsAtStart(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_an_ema_run_resumed_without_its_ema_trains_on_from_the_raw_weights(tmp_path):
    """The checkpoint's state_dict holds the average (what sampling loads), current_model_state the raw weights:
    without the EMA callback a resume took the average as the weights to train on."""
    from lightning.pytorch.utilities.seed import isolate_rng

    from lightning_sde.callbacks import EMA
    from lightning_sde.data import Toy2DDataModule

    common = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                  limit_val_batches=0, enable_checkpointing=False, default_root_dir=tmp_path)
    with isolate_rng():
        module = ScoreModule(net=NET, sde=SDE, shape=[2], optim={"lr": 1e-2})
        trainer = L.Trainer(max_steps=20, callbacks=[EMA(decay=0.9)], **common)
        trainer.fit(module, datamodule=Toy2DDataModule(batch_size=64, n_train=1024))
        trainer.save_checkpoint(tmp_path / "ema.ckpt")
        saved = torch.load(tmp_path / "ema.ckpt", weights_only=True)
        start = WeightsAtStart()
        L.Trainer(max_steps=21, callbacks=[start], **common).fit(
            ScoreModule(net=NET, sde=SDE, shape=[2], optim={"lr": 1e-2}),
            datamodule=Toy2DDataModule(batch_size=64, n_train=1024), ckpt_path=tmp_path / "ema.ckpt")
    raw, average = saved["current_model_state"], saved["state_dict"]
    assert max((raw[k] - average[k]).abs().max() for k in raw) > 1e-3  # the two differ: the test can tell them apart
    assert all(torch.equal(start.state[k], raw[k]) for k in raw)


def test_a_checkpoint_written_during_a_validation_keeps_the_average_and_the_raw_weights_apart(tmp_path):
    """The average is in the model's place during a validation; a checkpoint a signal or an error writes then held
    the two swapped (the raw weights where sampling loads the average)."""
    from lightning.pytorch.utilities.seed import isolate_rng

    from lightning_sde.callbacks import EMA
    from lightning_sde.data import Toy2DDataModule

    with isolate_rng():
        module, ema = ScoreModule(net=NET, sde=SDE, shape=[2], optim={"lr": 1e-2}), EMA(decay=0.9)
        trainer = L.Trainer(max_steps=20, callbacks=[ema], accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, enable_checkpointing=False,
                            default_root_dir=tmp_path)
        trainer.fit(module, datamodule=Toy2DDataModule(batch_size=64, n_train=1024))
    module.tied = next(module.parameters())  # a tensor under two names: state_dict holds both, named_parameters one
    ema.setup(trainer, module, "fit")  # as during fit (its end lets the average go)
    ema._average_model.module.load_state_dict({k: v + 1 for k, v in module.state_dict().items()})
    ema._average_model.n_averaged.fill_(1)  # an average that has been updated
    trainer.save_checkpoint(tmp_path / "outside.ckpt")
    ema.on_validation_epoch_start(trainer, module)
    trainer.save_checkpoint(tmp_path / "during.ckpt")
    ema.on_validation_epoch_end(trainer, module)
    outside, during = (torch.load(tmp_path / f"{name}.ckpt", weights_only=True) for name in ("outside", "during"))
    for key in ("state_dict", "current_model_state"):
        assert all(torch.equal(during[key][k], outside[key][k]) for k in outside[key])
    raw = module.state_dict()
    assert all(torch.equal(outside["current_model_state"][k], raw[k]) for k in raw)
    assert all(torch.equal(outside["state_dict"][k], raw[k] + 1) for k in raw)


def _fit_with_ema(tmp_path, ema, callbacks=(), **trainer_args):
    from lightning.pytorch.utilities.seed import isolate_rng

    from lightning_sde.data import Toy2DDataModule

    module = ScoreModule(net=NET, sde=SDE, shape=[2], optim={"lr": 1e-2})
    trainer = L.Trainer(callbacks=[ema, *callbacks], accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        **{"max_steps": 6, "limit_val_batches": 0, **trainer_args})
    with isolate_rng():
        trainer.fit(module, datamodule=Toy2DDataModule(batch_size=64, n_train=1024, n_val=64))
    return trainer, module


@pytest.mark.parametrize("validate", [True, False])
def test_before_its_first_update_the_average_is_the_raw_weights(tmp_path, validate):
    """update_starting_at_step beyond the steps run: validations scored, and checkpoints held as the model, the copy
    of the untrained network set-up made (also with no validation to bring the average up to date first)."""
    from lightning_sde.callbacks import EMA

    class Record(L.Callback):
        def __init__(self):
            self.raw, self.checks = None, []

        def on_train_batch_end(self, trainer, pl_module, *args):
            self.raw = {k: v.clone() for k, v in pl_module.state_dict().items()}

        def on_validation_epoch_start(self, trainer, pl_module):
            self.checks.append(all(torch.equal(v, self.raw[k]) for k, v in pl_module.state_dict().items()))

        def on_train_end(self, trainer, pl_module):
            trainer.save_checkpoint(tmp_path / "end.ckpt")

    record = Record()
    initial = ScoreModule(net=NET, sde=SDE, shape=[2]).state_dict()  # what isolate_rng's fit starts from
    _fit_with_ema(tmp_path, EMA(decay=0.9, update_starting_at_step=50), [record], val_check_interval=3,
                  limit_val_batches=int(validate), num_sanity_val_steps=0)
    assert record.checks == [True, True][: 2 * validate]
    saved = torch.load(tmp_path / "end.ckpt", weights_only=True)
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in saved["current_model_state"].items())
    assert any(not torch.equal(saved["state_dict"][k], v) for k, v in initial.items() if v.is_floating_point())


def test_a_validation_leaves_the_average_and_the_raw_weights_bitwise_in_another_precision(tmp_path):
    """The average is made before Lightning converts the model: swapping the two through each other's dtype rounded
    the raw weights to fp32 (64-true) or the average to bf16 (bf16-true) at every validation."""
    from lightning_sde.callbacks import EMA

    ema = EMA(decay=0.9)
    trainer, module = _fit_with_ema(tmp_path, ema)
    ema.setup(trainer, module, "fit")  # as during fit (its end lets the average go)
    ema._average_model.update_parameters(module)
    module.to(torch.bfloat16)  # as bf16-true converts it
    with torch.no_grad():
        for p in ema._average_model.module.parameters():
            p.add_(1e-3)  # an average bf16 cannot hold
    raw, average = ({k: v.clone() for k, v in m.state_dict().items()} for m in (module, ema._average_model.module))
    ema.on_validation_epoch_start(trainer, module)
    assert all(torch.equal(v, average[k].to(v.dtype)) for k, v in module.state_dict().items())
    ema.on_validation_epoch_end(trainer, module)
    assert all(torch.equal(v, raw[k]) for k, v in module.state_dict().items())
    assert all(torch.equal(v, average[k]) for k, v in ema._average_model.module.state_dict().items())

    class SaveAtEnd(L.Callback):
        def on_train_end(self, trainer, pl_module):
            trainer.save_checkpoint(tmp_path / "64.ckpt")

    _fit_with_ema(tmp_path, EMA(decay=0.9), [SaveAtEnd()], precision="64-true", max_steps=4, val_check_interval=2,
                  limit_val_batches=1, num_sanity_val_steps=0)
    saved = torch.load(tmp_path / "64.ckpt", weights_only=True)
    for part in ("state_dict", "current_model_state"):  # the average of fp64 weights in fp64, after validations
        assert {v.dtype for v in saved[part].values() if v.is_floating_point()} == {torch.float64}, part


def test_a_resume_with_another_gradient_accumulation_is_refused(tmp_path):
    """The data position and each batch's seed count batches: a checkpoint trained with 3 batches a step resumes
    only with 3 (one without the key, written before accumulation existed, had 1)."""
    path = _checkpoint_of(tmp_path)
    assert check_resume_fits(path, ScoreModule(net=NET, sde=SDE, shape=[2]), 1) == 7
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "accumulate_grad_batches": 3}, path)
    with pytest.raises(ValueError, match="accumulate_grad_batches: the checkpoint .* was trained with 3 batches a "
                                         "step, this config has 1"):
        check_resume_fits(path, ScoreModule(net=NET, sde=SDE, shape=[2]), 1)
    assert check_resume_fits(path, ScoreModule(net=NET, sde=SDE, shape=[2]), 3) == 7


def test_a_resume_with_another_batch_size_is_refused(tmp_path):
    """The data position counts batches: at another size a resume skipped (or repeated) part of the epoch. The size a
    checkpoint trained with is recorded; older ones hold it in their data config."""
    path = _checkpoint_of(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "data_config": TOY}, path)
    module = ScoreModule(net=NET, sde=SDE, shape=[2])
    with pytest.raises(ValueError, match=r"^config data.batch_size: the checkpoint .* was trained on batches of 512, "
                                         r"this config has 64; a resume keeps it .* \(another run_name, "
                                         r"init_from=<checkpoint>\)$"):
        check_resume_fits(path, module, 1, 64)
    assert check_resume_fits(path, module, 1, 512) == 7
    torch.save({**ckpt, "data_config": TOY, "batch_size": 64}, path)
    assert check_resume_fits(path, module, 1, 64) == 7
    with pytest.raises(ValueError, match="trained on batches of 64, this config has 512"):
        check_resume_fits(path, module, 1, 512)


def test_a_requeued_job_started_afresh_resumes_its_own_checkpoint(tmp_path, monkeypatch):
    """ckpt_path=null under SLURM: the requeued job (SLURM_RESTART_COUNT >= 1) started from step 0 again, each time
    (a job longer than its time limit never ended). Where the checkpoints are not the job's own (a first start, an
    earlier job of the run_name) it is refused: starting afresh wrote over a finished run's checkpoints."""
    from omegaconf import OmegaConf

    from lightning_sde.cli.train import resume_point

    (tmp_path / "checkpoints").mkdir()
    torch.save({**contents(60), "slurm_job": "77"}, tmp_path / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.create({"ckpt_path": None, "run_dir": str(tmp_path)})
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    refused = r"^config ckpt_path=null: the run .* holds checkpoints \(last.ckpt, ...\): starting it afresh would"
    with pytest.raises(ValueError, match=refused):  # a first start over a run's checkpoints
        resume_point(cfg)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    with pytest.raises(ValueError, match=refused):
        resume_point(cfg)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert resume_point(cfg) == str(tmp_path / "checkpoints" / "last.ckpt")
    monkeypatch.setenv("SLURM_JOB_ID", "78")  # another job's checkpoint (an earlier run's)
    with pytest.raises(ValueError, match=refused):
        resume_point(cfg)
    (tmp_path / "checkpoints" / "last.ckpt").unlink()
    assert resume_point(cfg) is None  # nothing to lose: afresh, as asked


def test_a_checkpoint_written_in_a_slurm_job_records_the_job(monkeypatch):
    from lightning.pytorch.trainer.states import TrainerFn

    module = _module_on(TOY)
    module.trainer.state.fn = TrainerFn.FITTING  # as during fit
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "70")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["slurm_job"] == "70_3" and checkpoint["world_size"] == 1 and checkpoint["slurm_restart"] == 2


def test_a_run_an_earlier_version_wrote_under_its_names_number_is_named_not_started_afresh(tmp_path):
    """Array task 27_0's run was in train/270 (Hydra read the name as a number); the name kept as given, its requeue
    would have started train/27_0 afresh beside the checkpoints."""
    from omegaconf import OmegaConf

    from lightning_sde.cli.train import resume_point

    (tmp_path / "270" / "checkpoints").mkdir(parents=True)
    torch.save(contents(60), tmp_path / "270" / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.create({"ckpt_path": "last", "run_dir": str(tmp_path / "27_0"), "run_name": "27_0"})
    with pytest.raises(ValueError, match=r"^config run_name: the run 27_0 was written to .*270 by an earlier version "
                                         r"\(which read the name as the number 270\); to go on with it, move it .*"
                                         r"or give run_name=270$"):
        resume_point(cfg)
    assert resume_point(OmegaConf.create({**cfg, "run_dir": str(tmp_path / "270"), "run_name": "270"})) is not None
    (tmp_path / "270").rename(tmp_path / "27_0")
    assert resume_point(cfg) == str(tmp_path / "27_0" / "checkpoints" / "last.ckpt")


def test_a_second_run_in_one_slurm_job_does_not_train_on_the_firsts_run_by_default(tmp_path, monkeypatch):
    """run_name defaults to the job's id, which a requeued job resumes by: a second lsde-train in the same job (a loop
    over lr in its script, or in an salloc shell) trained on the first's run silently, 0 steps at max_steps."""
    from omegaconf import OmegaConf

    from lightning_sde.cli.train import resume_point

    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({**contents(60), "slurm_job": "77", "slurm_restart": 0}, last)
    cfg = OmegaConf.create({"ckpt_path": "last", "run_dir": str(tmp_path), "run_name": "77"})
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_RESTART_COUNT", "LSDE_RUN_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    with pytest.raises(ValueError, match=r"^config run_name: by default this SLURM job's id \(77\), and this job "
                                         r"already trained that run \(.*last.ckpt, step 60\): give each lsde-train "
                                         r"of one job .* or run_name=77 to go on training this one$"):
        resume_point(cfg)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: its own run goes on
    assert resume_point(cfg) == str(last)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    monkeypatch.setenv("LSDE_RUN_NAME", "77")  # given (run_name=77 to slurm/train.sbatch): that run goes on
    monkeypatch.setenv("LSDE_RUN_NAME_IS_JOB_ID", "0")
    assert resume_point(cfg) == str(last)
    monkeypatch.setenv("LSDE_RUN_NAME_IS_JOB_ID", "1")  # the job id slurm/env.sh gave train.sbatch run twice
    with pytest.raises(ValueError, match=r"^config run_name: by default this SLURM job's id"):
        resume_point(cfg)
    monkeypatch.delenv("LSDE_RUN_NAME")
    monkeypatch.delenv("LSDE_RUN_NAME_IS_JOB_ID")
    import lightning_sde.cli.train as train_app

    monkeypatch.setattr(train_app, "multirun_job", lambda: ("sweep", 1))  # a second multirun in the job: run 77_1
    with pytest.raises(ValueError, match=r"^config run_name: by default this SLURM job's id \(77_1\)"):
        resume_point(OmegaConf.create({**cfg, "run_name": "77_1"}))
    monkeypatch.setattr(train_app, "multirun_job", lambda: None)
    torch.save({**contents(60), "slurm_job": "76", "slurm_restart": 0}, last)  # another job's: a resume
    assert resume_point(cfg) == str(last)


def test_a_run_that_went_on_from_a_checkpoint_resumes_its_own_when_that_one_is_gone(tmp_path):
    """The source (another run's best-*.ckpt, replaced by a better one) need not exist once the run has its own."""
    from omegaconf import OmegaConf

    from lightning_sde.cli.train import resume_point

    source = tmp_path / "other" / "best-step=40.ckpt"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({**contents(90), "resumed_from": str(source)}, tmp_path / "run" / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.create({"ckpt_path": str(source), "run_dir": str(tmp_path / "run")})
    assert resume_point(cfg) == str(tmp_path / "run" / "checkpoints" / "last.ckpt")


def test_a_run_that_went_on_from_a_checkpoint_resumes_its_own_after_the_project_was_moved(tmp_path):
    """A project moved whole (rsync, a renamed folder): the run's record names the source at its old path; the
    same command from the new place (ckpt_path relative, so now another absolute path) went back to the source."""
    from omegaconf import OmegaConf

    from lightning_sde.cli.train import resume_point

    old, new = tmp_path / "proj", tmp_path / "proj moved"
    saved = {"LastCheckpoint{}": {"dirpath": str(old / "r2" / "checkpoints")}}
    for root in (old, new):  # the old place: a copy of it stays; or none (moved)
        (root / "r2" / "checkpoints").mkdir(parents=True)
        (root / "r1" / "checkpoints").mkdir(parents=True)
        torch.save(contents(40), root / "r1" / "checkpoints" / "last.ckpt")
        torch.save({**contents(90), "resumed_from": str(old / "r1" / "checkpoints" / "last.ckpt"),
                    "callbacks": saved}, root / "r2" / "checkpoints" / "last.ckpt")
    cfg = OmegaConf.create({"ckpt_path": str(new / "r1" / "checkpoints" / "last.ckpt"), "run_dir": str(new / "r2")})
    assert resume_point(cfg) == str(new / "r2" / "checkpoints" / "last.ckpt")
    # another source at the new place is another start: it is resumed from (and refused further on, if it must be)
    torch.save(contents(30), new / "r1" / "checkpoints" / "other.ckpt")
    cfg.ckpt_path = str(new / "r1" / "checkpoints" / "other.ckpt")
    assert resume_point(cfg) == cfg.ckpt_path


def test_a_run_none_of_whose_checkpoints_reads_back_is_one_error_naming_each_reason_once(tmp_path, caplog):
    """A run trained with an untrusted class of the user's printed its trust error once a checkpoint as a warning and
    again, for each, in the error."""
    from omegaconf import OmegaConf

    from lightning_sde.cli.train import resume_point

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    untrusted = {**contents(60), "hyper_parameters": {**contents(60)["hyper_parameters"],
                                                      "net": {**NET, "_target_": "my_pkg.net.MyMLP"}}}
    for name in ("last.ckpt", "best-step=40.ckpt"):
        torch.save(untrusted, folder / name)
    (folder / "bad.ckpt").write_text("text")
    cfg = OmegaConf.create({"ckpt_path": "last", "run_dir": str(tmp_path)})
    with pytest.raises(ValueError) as refused:
        resume_point(cfg)
    message = str(refused.value)
    assert message.startswith(f"config ckpt_path=last: no checkpoint in {folder} can be read (bad.ckpt: not a "
                              f"lightning-sde checkpoint")
    assert "; best-step=40.ckpt, last.ckpt: its hyper_parameters names ['my_pkg.net.MyMLP']" in message
    assert message.count("my_pkg.net.MyMLP") == 1 and not caplog.records
    torch.save(contents(20), folder / "best-step=20.ckpt")  # one that reads back: taken, each other one warned of
    assert resume_point(cfg) == str(folder / "best-step=20.ckpt")
    assert len(caplog.records) == 4 and "resuming from" in caplog.records[-1].getMessage()


def test_an_explicit_ckpt_path_a_resume_cannot_continue_from_is_refused_naming_the_key(tmp_path):
    from omegaconf import OmegaConf

    from lightning_sde.cli.train import resume_point

    torch.save({k: v for k, v in contents(60).items() if k != "global_step"}, tmp_path / "minimal.ckpt")
    cfg = OmegaConf.create({"ckpt_path": str(tmp_path / "minimal.ckpt"), "run_dir": str(tmp_path)})
    with pytest.raises(ValueError, match=r"^config ckpt_path: .*minimal.ckpt: not a checkpoint lsde-train can resume "
                                         r"from: no global_step \(got None\)$"):
        resume_point(cfg)
    torch.save(contents(60), tmp_path / "good.ckpt")
    assert resume_point(OmegaConf.create({"ckpt_path": str(tmp_path / "good.ckpt"), "run_dir": str(tmp_path)})) \
        == str(tmp_path / "good.ckpt")


def test_after_a_non_finite_value_the_checkpoints_that_gave_it_are_set_aside(tmp_path):
    """A NaN at step 5: last.ckpt and best-step=5.ckpt were written at it (their weights give it again on resume,
    whatever the lr; a resumed run's own checkpoint too): moved out of the resume's way, which then takes the newest
    one before it; no other is touched."""
    from lightning_sde.loading import set_aside_from

    for name, step in (("last.ckpt", 5), ("last.prev.ckpt", 4), ("best-step=5.ckpt", 5), ("best-step=2.ckpt", 2)):
        write(tmp_path / name, step, mtime=1000)
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    moved, resume = set_aside_from(tmp_path, 5)
    assert moved == ["best-step=5.ckpt", "last.ckpt"] and resume == tmp_path / "last.prev.ckpt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best-step=2.ckpt", "best-step=5.ckpt.nonfinite",
                                                          "last.ckpt.nonfinite", "last.prev.ckpt", "notes.ckpt"]
    # a later checkpoint is another run's (this fit wrote none after the bad step): kept, and what a resume takes
    write(tmp_path / "best-step=30.ckpt", 30, mtime=1000)
    assert set_aside_from(tmp_path, 4) == (["last.prev.ckpt"], tmp_path / "best-step=30.ckpt")


def test_a_second_non_finite_stop_at_the_same_step_keeps_the_first_ones_files(tmp_path):
    """Resumed from step 4 and stopped at step 5 again: the checkpoints of the second stop are set aside beside the
    first's, none replaced."""
    from lightning_sde.loading import set_aside_from

    write(tmp_path / "last.ckpt", 5, mtime=1000)
    set_aside_from(tmp_path, 5)
    write(tmp_path / "last.ckpt", 5, mtime=2000)
    set_aside_from(tmp_path, 5)
    write(tmp_path / "last.ckpt", 5, mtime=3000)
    assert set_aside_from(tmp_path, 5) == (["last.ckpt"], None)
    kept = {p.name: p.stat().st_mtime for p in tmp_path.iterdir()}
    assert kept == {"last.ckpt.nonfinite": 1000, "last.ckpt.2.nonfinite": 2000, "last.ckpt.3.nonfinite": 3000}


def test_a_checkpoint_whose_data_moments_cannot_be_read_is_no_resume_point(tmp_path):
    """Caught when the resume is chosen, before the run directory and its W&B run exist (Lightning read them only as
    the fit started)."""
    from lightning_sde.loading import CheckpointError, resume_step

    torch.save({**contents(60), "data_moments": "garbage"}, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match=r"last.ckpt: not a checkpoint lsde-train can resume from: its "
                                              r"data_moments cannot be read \(ValueError\)"):
        resume_step(tmp_path / "last.ckpt")


def test_a_temporary_left_by_a_killed_writer_is_removed_at_the_next_save(tmp_path):
    """kill -9 between the write and the rename left a whole checkpoint in a hidden temporary that nothing removed;
    one whose writer still runs (pid 1 here) is not touched, nor are other files."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a pid that has exited
    stale, live = tmp_path / f".last.ckpt.{dead}.tmp", tmp_path / ".last.ckpt.1.tmp"
    other = tmp_path / f".best.ckpt.{dead}.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"x" * 100)
    AtomicCheckpointIO().save_checkpoint(contents(3), tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "last.ckpt"])


def test_a_temporary_of_any_atomic_write_left_by_a_killed_writer_is_removed_once_it_is_old(tmp_path):
    """kill -9 mid-write left `.scatter_step0000500.png.<pid>-<token>.tmp` (PNGs, sample chunks, CSVs) for good. A
    recent one is kept (its writer may run on another host sharing the folder), as is one whose writer runs here."""
    import os
    import subprocess
    import sys

    from lightning_sde.files import write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    old, recent, live = (tmp_path / f".v.md.{dead}-aa.tmp", tmp_path / f".v.md.{dead}-bb.tmp",
                         tmp_path / ".v.md.1-cc.tmp")
    for path in (old, recent, live):
        path.write_text("x")
    for path in (old, live):
        os.utime(path, (0, 0))  # written long ago
    write_text(tmp_path / "v.md", "table\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recent.name, live.name, "v.md"])


def test_an_ema_updated_once_an_epoch_is_accepted_and_one_never_updated_is_not():
    from lightning_sde.callbacks import EMA

    assert EMA(update_every_n_steps=0, update_starting_at_epoch=0).should_update(epoch_idx=1)  # Lightning's per epoch
    with pytest.raises(ValueError, match="EMA update_every_n_steps must be an integer >= 1; got 0"):
        EMA(update_every_n_steps=0)


def test_only_lightnings_exit_after_a_ctrl_c_counts_as_one():
    """SIGTERMException is a SystemExit: a SIGTERM before training (Lightning's own handler) exits 143, not 130."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lightning_sde.cli.train import left_on_ctrl_c

    def leaving(exit_, after=None):
        try:
            try:
                if after is not None:
                    raise after
            except BaseException:
                raise exit_ from None
            raise exit_
        except SystemExit as err:
            return err

    assert left_on_ctrl_c(leaving(SystemExit(1), KeyboardInterrupt()))  # Lightning's handler of a Ctrl-C
    assert not left_on_ctrl_c(leaving(SIGTERMException(), KeyboardInterrupt()))
    assert not left_on_ctrl_c(leaving(SIGTERMException()))
    assert not left_on_ctrl_c(leaving(SystemExit(1)))


def test_the_login_node_check_accepts_what_the_job_itself_would_resume(tmp_path, capsys):
    """`lsde-train check` (slurm/submit.sh) refused a resubmission whose ckpt_path had been replaced since (another
    run's best checkpoint) though the job resumes its own run's checkpoint; and an init_from the job no longer reads."""
    from lightning_sde.cli.train import check_main

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    source = tmp_path / "other" / "best40.ckpt"  # gone: its run kept a better one
    torch.save({**contents(90), "resumed_from": str(source)}, run / "checkpoints" / "last.ckpt")
    common = ["experiment=toy2d", f"run_dir={run}", "run_name=ft"]
    check_main([*common, f"ckpt_path={source}"])
    check_main([*common, f"init_from={tmp_path}/gone.ckpt"])  # the run resumes its own: init_from is not read
    assert capsys.readouterr().out.count("the training config is valid") == 2
    fresh = ["experiment=toy2d", f"run_dir={tmp_path}/new", "run_name=new"]
    for args, message in (([f"ckpt_path={source}"], "config ckpt_path: no checkpoint at"),
                          ([f"init_from={tmp_path}/gone.ckpt"], "config init_from: no checkpoint at")):
        with pytest.raises(SystemExit):
            check_main([*fresh, *args])
        assert message in capsys.readouterr().err
    check_main(["--planned", *fresh, f"init_from={tmp_path}/gone.ckpt"])  # a job still to run writes it
    check_main([*fresh, f"init_from={tmp_path}/gone.ckpt", "--planned"])  # the flag anywhere
    with pytest.raises(SystemExit):
        check_main(["--plan", *fresh])
    assert "lsde-train check: error: unknown option --plan: it takes --planned and" in capsys.readouterr().err


def test_ctrl_c_says_a_rerun_goes_on_from_a_checkpoint_only_when_there_is_one(tmp_path):
    """Ctrl-C in the first seconds said "goes on from its last checkpoint" where none had been written."""
    from omegaconf import OmegaConf

    from lightning_sde.cli.train import goes_on_after_ctrl_c

    cfg = OmegaConf.create({"run_dir": str(tmp_path / "run"), "run_name": "run"})
    assert goes_on_after_ctrl_c(cfg) == ("no checkpoint was written yet: lsde-train ... run_name=run starts the run "
                                         "again")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)  # the folder alone: no checkpoint yet
    assert goes_on_after_ctrl_c(cfg).startswith("no checkpoint was written yet")
    (tmp_path / "run" / "checkpoints" / "best-step=100.ckpt").write_bytes(b"")  # any checkpoint is resumed from
    assert goes_on_after_ctrl_c(cfg) == "lsde-train ... run_name=run goes on from its last checkpoint"


def test_lsde_train_says_that_after_a_ctrl_c(tmp_path, monkeypatch, capsys):
    """run_app's Ctrl-C line is goes_on_after_ctrl_c's (it said "goes on from its last checkpoint" before any)."""
    from omegaconf import OmegaConf

    import lightning_sde.cli.train as train_app

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_app, "train", interrupted)
    monkeypatch.setattr(train_app, "tell_offline_sync", lambda *args: None)
    monkeypatch.setattr(train_app, "finish_wandb", lambda *args: True)
    monkeypatch.setattr("lightning_sde.tracking.quiet_and_logged", lambda: None)
    cfg = OmegaConf.create({"run_dir": str(tmp_path / "run"), "run_name": "run"})
    with pytest.raises(SystemExit) as ended:
        train_app.run_app.__wrapped__(cfg)
    assert ended.value.code == 130
    assert capsys.readouterr().err.endswith("lsde-train: interrupted (Ctrl-C); what it wrote before stays on disk; no "
                                            "checkpoint was written yet: lsde-train ... run_name=run starts the run "
                                            "again\n")
