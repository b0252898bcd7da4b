"""init_from: a new run that starts from a checkpoint's weights (fine-tuning, or training on after the data changed),
with a fresh optimizer and step count, refusing weights that would mean another model and anything that is not a
finite lightning-sde checkpoint; the run's own checkpoint, once it has one, is resumed instead."""

import re
from pathlib import Path

import pytest
import torch
from test_configs import composed

from lightning_sde.cli.train import build

TOY = ["experiment=toy2d", "samplers=quick", "callbacks.best.monitor=val/ddim_10/sliced_w2", "logger=none"]


def toy(tmp_path, name: str, *overrides):
    return composed("train", [*TOY, f"run_dir={tmp_path / name}", f"run_name={name}", *overrides])


def trained_checkpoint(tmp_path, *overrides, step: int = 50) -> tuple[str, dict]:
    """A checkpoint as lsde-train writes it (weights, hyperparameters, step, optimizer and loop state) of the toy2d
    model, its weights moved away from any fresh initialisation."""
    module = build(toy(tmp_path, "source", *overrides), read_data=False).module
    gen = torch.Generator().manual_seed(3)
    weights = {k: v + torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
               for k, v in module.state_dict().items()}
    path = tmp_path / "source.ckpt"
    torch.save({"state_dict": weights, "global_step": step, "hyper_parameters": dict(module.hparams),
                "optimizer_states": [{}], "loops": {}}, path)
    return str(path), weights


def same_weights(module, weights: dict) -> bool:
    return all(torch.equal(module.state_dict()[k], v) for k, v in weights.items())


def test_a_new_run_starts_from_the_checkpoints_weights_at_step_0_with_its_own_data_and_optim(tmp_path):
    path, weights = trained_checkpoint(tmp_path)
    run = build(toy(tmp_path, "finetune", f"init_from={path}", "data.name=swiss_roll", "optim.lr=1e-5"),
                read_data=False)
    assert same_weights(run.module, weights)
    assert run.resume is None and run.resumed_at is None and run.init_from == (path, 50)  # a fresh fit: step 0
    assert run.module.init_from == str(Path(path).resolve())  # what its checkpoints record
    assert run.module.denoiser.data_moments is None  # measured on this run's data when fit starts
    fresh = build(toy(tmp_path, "fresh", "data.name=swiss_roll"), read_data=False)
    assert not same_weights(fresh.module, weights) and fresh.init_from is None


@pytest.mark.parametrize("override, message", [
    ("sde=ve", "config sde: the checkpoint {path} was trained with another forward process, network or network "
               "parameterization (sde._target_: 'lightning_sde.sde.VPSDE' there, 'lightning_sde.sde.VESDE' here"),
    ("sde.beta_max=10", "(sde.beta_max: 20.0 there, 10 here)"),
    ("model.net.width=32", "config model: the checkpoint {path} does not fit this model config"),
])
def test_weights_that_would_mean_another_model_are_refused_naming_the_key(tmp_path, override, message):
    path, _ = trained_checkpoint(tmp_path)
    with pytest.raises(ValueError) as err:
        build(toy(tmp_path, "finetune", f"init_from={path}", override), read_data=False)
    text = str(err.value)
    assert message.format(path=path) in text and "init_from keeps the checkpoint's network, SDE" in text, text


@pytest.mark.parametrize("weights, message", [
    (None, "its state_dict is not a mapping of names to tensors"),
    ({"denoiser.net.w": 3}, "its state_dict is not a mapping of names to tensors"),
    ("int", "is torch.int64 there, torch.float32 here"),
])
def test_weights_of_the_wrong_kind_are_refused_in_one_line(tmp_path, weights, message):
    path, good = trained_checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = {k: v.long() for k, v in good.items()} if weights == "int" else weights
    torch.save(ckpt, path)
    with pytest.raises(ValueError) as err:
        build(toy(tmp_path, "finetune", f"init_from={path}"), read_data=False)
    assert message in str(err.value) and "\n" not in str(err.value), err.value


def test_a_file_that_is_not_a_checkpoint_or_holds_nan_weights_is_refused(tmp_path):
    text_file = tmp_path / "notes.ckpt"
    text_file.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"^config init_from: .*notes.ckpt: not a lightning-sde checkpoint"):
        build(toy(tmp_path, "a", f"init_from={text_file}"), read_data=False)
    with pytest.raises(ValueError, match=r"^config init_from: no checkpoint file at .*missing.ckpt"):
        build(toy(tmp_path, "b", f"init_from={tmp_path / 'missing.ckpt'}"), read_data=False)
    path, weights = trained_checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    first = next(k for k, v in weights.items() if v.is_floating_point())
    ckpt["state_dict"][first][0] = float("nan")
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=rf"^config init_from: .*source.ckpt: its weights hold NaN or infinite "
                                         rf"values \({first}"):
        build(toy(tmp_path, "c", f"init_from={path}"), read_data=False)


def test_a_weights_only_save_is_a_start_point(tmp_path):
    path, weights = trained_checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    torch.save({k: ckpt[k] for k in ("state_dict", "hyper_parameters")}, path)  # no step, optimizer or loops
    assert same_weights(build(toy(tmp_path, "finetune", f"init_from={path}"), read_data=False).module, weights)


def test_the_runs_own_checkpoint_is_resumed_and_an_explicit_ckpt_path_with_init_from_is_refused(tmp_path):
    path, weights = trained_checkpoint(tmp_path)
    (tmp_path / "run").mkdir()
    trained_checkpoint(tmp_path / "run", step=70)  # the fine-tune's own, as after a requeue
    own = tmp_path / "finetune" / "checkpoints" / "last.ckpt"
    own.parent.mkdir(parents=True)
    ckpt = torch.load(tmp_path / "run" / "source.ckpt", weights_only=True)
    torch.save({**ckpt, "init_from": str(Path(path).resolve())}, own)  # as the fine-tune's checkpoints record it
    run = build(toy(tmp_path, "finetune", f"init_from={path}"), read_data=False)
    assert run.resume == str(own) and run.resumed_at == 70 and run.init_from is None
    assert not same_weights(run.module, weights)  # fit loads the run's own: init_from's are not put in
    assert build(toy(tmp_path, "finetune"), read_data=False).resume == str(own)  # init_from dropped: a resume
    # a run that started from another checkpoint, or afresh, is not resumed as if it had started from this one
    for record, began in ((str(tmp_path / "other.ckpt"), f"started from {tmp_path / 'other.ckpt'}"),
                          (None, "started afresh (no init_from)")):
        torch.save({**ckpt, **({"init_from": record} if record else {})}, own)
        with pytest.raises(ValueError, match=rf"^config init_from: the run finetune {re.escape(began)} and has "
                                             r"checkpoints .*: it resumes from them, not from "):
            build(toy(tmp_path, "finetune", f"init_from={path}"), read_data=False)
    # the project moved whole: the record names the source at its old path, the same place relative to the run
    moved = {"init_from": str(tmp_path / "old" / "source.ckpt"),
             "callbacks": {"LastCheckpoint{}": {"dirpath": str(tmp_path / "old" / "finetune" / "checkpoints")}}}
    torch.save({**ckpt, **moved}, own)
    run = build(toy(tmp_path, "finetune", f"init_from={path}"), read_data=False)
    assert run.resume == str(own) and run.module.init_from == str(Path(path).resolve())  # later saves: the new place
    # so with ckpt_path=<another run's> (its record: resumed_from), once the project moved
    gone = {"resumed_from": str(tmp_path / "old" / "source.ckpt"), "callbacks": moved["callbacks"]}
    torch.save({**ckpt, **gone}, own)
    run = build(toy(tmp_path, "finetune", f"ckpt_path={path}"), read_data=False)
    assert run.resume == str(own) and run.module.resumed_from == str(Path(path).resolve())
    with pytest.raises(ValueError, match=r"^config init_from: starts a new run from a checkpoint's weights .*and "
                                         r"ckpt_path resumes another's whole state"):
        build(toy(tmp_path, "other", f"init_from={path}", f"ckpt_path={own}"), read_data=False)
    with pytest.raises(ValueError, match=r"^config init_from: must be a checkpoint's path or null; got 123"):
        build(toy(tmp_path, "other", "init_from=123"), read_data=False)


def test_a_resume_with_another_loss_is_refused_where_the_loss_chooses_the_best_checkpoint(tmp_path):
    """The run's own checkpoint (a sigma2 run), resumed with loss=edm: refused at start-up while val/loss chooses the
    best checkpoint (the choice would compare two scales), allowed where a sampler metric does."""
    (tmp_path / "run").mkdir()
    trained_checkpoint(tmp_path / "run")
    own = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    own.parent.mkdir(parents=True)
    own.write_bytes((tmp_path / "run" / "source.ckpt").read_bytes())
    with pytest.raises(ValueError, match=r"^config loss: the run's best checkpoint is chosen by val/loss, and the "
                                         r"checkpoint .*last.ckpt was trained with loss sigma2"):
        build(toy(tmp_path, "resumed", "loss=edm", "callbacks.best.monitor=val/loss"), read_data=False)
    assert build(toy(tmp_path, "resumed", "loss=edm"), read_data=False).resume == str(own)
    assert build(toy(tmp_path, "resumed", "callbacks.best.monitor=val/loss"), read_data=False).resume == str(own)


@pytest.mark.parametrize("parameterization, warned", [("eps", True), ("score", True), ("v", False), ("x0", False)])
def test_edms_weighting_on_an_eps_network_is_warned_of_at_start_up(tmp_path, caplog, parameterization, warned):
    build(toy(tmp_path, "edm", "loss=edm", f"model.parameterization={parameterization}"), read_data=False)
    assert (f"loss=edm with model.parameterization={parameterization}: EDM's weight" in caplog.text) == warned
    caplog.clear()
    for other in ("sigma2", "min_snr"):
        build(toy(tmp_path, other, f"loss={other}", f"model.parameterization={parameterization}"), read_data=False)
    assert "loss=edm" not in caplog.text
