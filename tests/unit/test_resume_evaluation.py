"""A run stopped during an evaluation redoes it when resumed, and one stopped after it does not: the evaluation record
(rows, best checkpoint, every_n_evals phase) of a resumed run is the uninterrupted run's. Lightning writes a step's
checkpoint before that step's validation and, resuming from it, goes past the validation."""

import csv
import os
import signal

import lightning as L
import pytest
import torch

from lightning_sde.callbacks import EMA, LastCheckpoint, SamplerCallback
from lightning_sde.callbacks.checkpoint_io import AtomicCheckpointIO
from lightning_sde.callbacks.preemption import Preemption
from lightning_sde.data import Toy2DDataModule
from lightning_sde.module import ScoreModule
from lightning_sde.samplers import DDIM

MLP = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 1}
VP = {"_target_": "lightning_sde.sde.VPSDE"}


class Stopped(Exception):
    pass


class StopAt(L.Callback):
    """Stops the fit at a step: in its evaluation (as `kill -9` there would) or after its training step."""

    def __init__(self, step: int, during_evaluation: bool):
        self.step, self.during_evaluation = step, during_evaluation

    def on_validation_epoch_end(self, trainer, pl_module):
        if self.during_evaluation and trainer.global_step == self.step:
            raise Stopped

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.during_evaluation and trainer.global_step == self.step:
            raise Stopped


class SignalAt(L.Callback):
    """SLURM's requeue signal, as it comes during the evaluation at a step."""

    def __init__(self, step: int):
        self.step = step

    def on_validation_epoch_start(self, trainer, pl_module):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


class ValLoss(L.Callback):
    """val/loss at each validation's end, by step."""

    def __init__(self):
        self.by_step = {}

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.by_step[trainer.global_step] = float(trainer.callback_metrics["val/loss"])


def fit(root, stop: L.Callback | None = None, resume: bool = False, val_every=10, every_n_evals=1, accumulation=1,
        preemption=None, best_on_loss=False, val_batches=1, csv_log=False, watch: L.Callback | None = None,
        best_top_k=-1, max_steps=20, last: L.Callback | None = None, after: L.Callback | None = None):
    torch.manual_seed(0)
    checkpoints = root / "checkpoints"
    callbacks = [
        *([preemption] if preemption else []),
        *([stop] if stop else []),  # first: it stops the evaluation before the sampler callback writes rows
        *([watch] if watch else []),
        SamplerCallback({"ddim": DDIM(steps=3)}, n_samples=64, batch_size=64, every_n_evals=every_n_evals),
        EMA(decay=0.9),
        *([last] if last else []),  # after EMA's update, as lsde-train orders its callbacks
        *([after] if after else []),
    ]
    if every_n_evals == 1:  # a best checkpoint needs its metric at every validation
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=checkpoints, filename="best-{step}",
                                                             monitor="val/ddim/sliced_w2", mode="min",
                                                             save_top_k=best_top_k))
    if best_on_loss:  # a checkpoint on a value every validation logs
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=checkpoints, filename="loss-{step}",
                                                             monitor="val/loss", mode="min", save_top_k=1))
    callbacks.append(LastCheckpoint(dirpath=checkpoints, save_last=True, save_top_k=0, every_n_train_steps=10,
                                    enable_version_counter=False))  # after them: it records their choices
    # val_every steps are val_every x accumulation of Lightning's batches (as lsde-train converts them)
    trainer = L.Trainer(max_steps=max_steps, val_check_interval=val_every * accumulation, check_val_every_n_epoch=None,
                        accumulate_grad_batches=accumulation,
                        limit_val_batches=val_batches, num_sanity_val_steps=0, enable_progress_bar=False,
                        logger=L.pytorch.loggers.CSVLogger(root, name="csv") if csv_log else False, log_every_n_steps=1,
                        enable_model_summary=False, default_root_dir=root, accelerator="cpu", callbacks=callbacks,
                        plugins=[AtomicCheckpointIO()])
    module = ScoreModule(net=MLP, shape=[2], sde=VP)
    try:
        trainer.fit(module, datamodule=Toy2DDataModule(batch_size=32, n_train=4096, n_val=64),
                    ckpt_path=checkpoints / "last.ckpt" if resume else None)
    except Stopped:
        pass
    return module


def record(root):
    path = root / "samples" / "sampler_metrics.csv"
    rows = []
    if path.exists():
        with open(path, newline="") as fh:
            rows = [{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(fh)]
    return rows, sorted(p.name for p in (root / "checkpoints").glob("best-*.ckpt"))


def evaluated_steps(root) -> list[int]:
    """The steps of the sampler rows (each evaluation also has its noise_floor row, compared with the rest)."""
    return [int(r["step"]) for r in record(root)[0] if r["sampler"] != "noise_floor"]


@pytest.mark.parametrize("during_evaluation, stop_step, accumulation", [(True, 10, 1), (False, 13, 1), (True, 10, 2),
                                                                       (False, 13, 2)])
def test_a_resumed_run_has_the_uninterrupted_runs_evaluations(tmp_path, during_evaluation, stop_step, accumulation):
    whole = fit(tmp_path / "whole", accumulation=accumulation)
    fit(tmp_path / "stopped", StopAt(stop_step, during_evaluation), accumulation=accumulation)
    assert evaluated_steps(tmp_path / "stopped") == ([] if during_evaluation else [10])
    resumed = fit(tmp_path / "stopped", resume=True, accumulation=accumulation)
    # the evaluation at 10 is done once: redone when it had not finished, not repeated when it had
    assert record(tmp_path / "stopped") == record(tmp_path / "whole")
    assert evaluated_steps(tmp_path / "whole") == [10, 20]
    assert record(tmp_path / "whole")[1] == ["best-step=10.ckpt", "best-step=20.ckpt"]
    for a, b in zip(resumed.parameters(), whole.parameters(), strict=True):  # training itself is untouched
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_resumed_run_keeps_one_best_checkpoint_chosen_over_every_evaluation(tmp_path):
    """save_top_k=1, last.ckpt and the evaluations both at 10: last.ckpt was written before the evaluation at 10, so
    the run resumed from it (stopped at 13, or a finished run extended) had forgotten it: the evaluation at 20 became
    the best whatever its value, and best-step=10.ckpt stayed beside it. Written again after the evaluation, the
    resumed run keeps the uninterrupted run's one best checkpoint."""
    fit(tmp_path / "whole", best_top_k=1)
    fit(tmp_path / "stopped", StopAt(13, during_evaluation=False), best_top_k=1)
    fit(tmp_path / "stopped", resume=True, best_top_k=1)
    rows, best = record(tmp_path / "whole")
    values = {r["step"]: float(r["sliced_w2"]) for r in rows if r["sampler"] == "ddim"}
    assert best == [f"best-step={min(values, key=values.get)}.ckpt"] and len(values) == 2
    assert record(tmp_path / "stopped") == record(tmp_path / "whole")
    states = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    (state,) = [state for key, state in states.items() if "sliced_w2" in key]
    assert [os.path.basename(p) for p in state["best_k_models"]] == best


@pytest.mark.parametrize("val_every", [5, 1])
def test_a_redone_evaluation_validates_every_batch_and_logs_its_loss_once(tmp_path, val_every):
    """The checkpoint at 10 restores the validation loop as it finished before: the redone validation ran one of its
    2 batches (a wrong val/loss). And the stopped run had logged its val/loss (at step 9) before the signal ended it:
    that row stayed beside the redone one in the CSV history. Validating every step, step 9 also holds the sampler
    rows of the evaluation at 9, which stay."""
    whole, resumed = ValLoss(), ValLoss()
    common = dict(val_every=val_every, val_batches=2, csv_log=True)
    fit(tmp_path / "whole", watch=whole, **common)
    fit(tmp_path / "stopped", SignalAt(10), preemption=Preemption("SIGUSR1"), **common)
    fit(tmp_path / "stopped", resume=True, watch=resumed, **common)
    assert resumed.by_step == {k: v for k, v in whole.by_step.items() if k >= 10}
    assert len(whole.by_step) == 20 // val_every

    def val_rows(root):
        rows = [row for path in sorted(root.glob("csv/version_*/metrics.csv")) for row in csv.DictReader(open(path))]
        return sorted((row["step"], key, value) for row in rows for key, value in row.items()
                      if key.startswith("val/") and value and "wall_s" not in key)

    assert val_rows(tmp_path / "stopped") == val_rows(tmp_path / "whole")
    assert len([r for r in val_rows(tmp_path / "whole") if r[1] == "val/loss"]) == 20 // val_every


@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_finished_run_extended_logs_each_value_at_the_uninterrupted_runs_step_and_epoch(tmp_path, accumulation):
    """13 steps, then extended to 20: last.ckpt written when the fit ended held the epoch (and, with lsde-train's
    logging, the logged step count) one ahead: Lightning counts them on after the last batch. The extension logged
    its values in epoch 1, a step late."""
    def logged(root):
        rows = [row for path in sorted(root.glob("csv/version_*/metrics.csv")) for row in csv.DictReader(open(path))]
        return sorted((row["step"], row.get("epoch"), key, value) for row in rows for key, value in row.items()
                      if key in ("train/loss", "val/loss") and value and int(row["step"]) >= 13)

    fit(tmp_path / "whole", csv_log=True, accumulation=accumulation)
    fit(tmp_path / "extended", csv_log=True, accumulation=accumulation, max_steps=13)
    fit(tmp_path / "extended", resume=True, csv_log=True, accumulation=accumulation)
    assert len(logged(tmp_path / "whole")) == 8  # train/loss at 13..19, val/loss at 19
    assert logged(tmp_path / "extended") == logged(tmp_path / "whole")


def test_the_last_checkpoint_of_a_fit_holds_its_final_evaluation(tmp_path):
    """Saved at the last step's end, last.ckpt was written before the validation at that step: without a monitored
    checkpoint to write it again, the sampler's count of evaluations in it was one short."""
    fit(tmp_path, every_n_evals=2)  # no best checkpoint; validations at 10 and 20
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 20
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("SamplerCallback"))
    assert state["evals"] == 2 and state["guidance"] is None and list(state["samplers"]) == ["ddim"]


def test_a_per_epoch_average_extended_from_an_epochs_last_step_equals_the_uninterrupted_one(tmp_path):
    """update_every_n_steps=0: Lightning updates the average at the epoch's end, after last.ckpt of the epoch's last
    step was written: the checkpoint missed that epoch's update, and the extended run went on without it."""
    def run(root, max_steps, resume=False):
        torch.manual_seed(0)
        trainer = L.Trainer(max_steps=max_steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                            accelerator="cpu", plugins=[AtomicCheckpointIO()],
                            callbacks=[EMA(decay=0.5, update_every_n_steps=0, update_starting_at_epoch=0),
                                       LastCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0,
                                                      every_n_train_steps=3, enable_version_counter=False)])
        trainer.fit(ScoreModule(net=MLP, shape=[2], sde=VP), datamodule=Toy2DDataModule(batch_size=32, n_train=128),
                    ckpt_path=root / "checkpoints" / "last.ckpt" if resume else None)
        return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)

    whole = run(tmp_path / "whole", 8)  # 4 steps an epoch: updates at steps 4 and 8
    first = run(tmp_path / "extended", 4)
    assert int(first["averaging_state"]["n_averaged"]) == 1
    extended = run(tmp_path / "extended", 8, resume=True)
    assert int(whole["averaging_state"]["n_averaged"]) == int(extended["averaging_state"]["n_averaged"]) == 2
    for part in ("state_dict", "current_model_state"):
        assert all(torch.equal(whole[part][k], extended[part][k]) for k in whole[part]), part


def test_a_resumed_run_keeps_the_every_n_evals_phase_of_the_schedule(tmp_path):
    """Validations at 5, 10, 15, 20, evaluations at 10 and 20: stopped at 13, the run resumes from the checkpoint at
    10, written before the validation at 10 (its count is one short)."""
    fit(tmp_path / "whole", val_every=5, every_n_evals=2)
    fit(tmp_path / "stopped", StopAt(13, during_evaluation=False), val_every=5, every_n_evals=2)
    fit(tmp_path / "stopped", resume=True, val_every=5, every_n_evals=2)
    assert evaluated_steps(tmp_path / "stopped") == [10, 20]
    assert record(tmp_path / "stopped")[0] == record(tmp_path / "whole")[0]


def test_a_requeue_signal_during_an_evaluation_stops_it_and_the_fit_at_that_step(tmp_path):
    """The signal's lead (train.sbatch: 300 s) can be shorter than an evaluation (10 000 samples at 1250 NFE): the
    evaluation stopped only at its end and the fit one step later, so SLURM killed the job before any checkpoint or
    requeue. Now the evaluation stops at once (no rows), the fit checkpoints at its step and asks for the requeue, and
    the resumed run does the evaluation: its record and weights are the uninterrupted run's."""
    whole = fit(tmp_path / "whole")
    preemption = Preemption("SIGUSR1")
    stopped = fit(tmp_path / "stopped", SignalAt(10), preemption=preemption)
    assert preemption.requeue_requested and preemption.saved_at == 10
    assert torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
    assert record(tmp_path / "stopped")[0] == []
    del stopped
    resumed = fit(tmp_path / "stopped", resume=True)
    assert record(tmp_path / "stopped") == record(tmp_path / "whole")
    for a, b in zip(resumed.parameters(), whole.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_requeue_signal_during_a_validation_without_an_evaluation_waits_for_the_checkpoint_callbacks(tmp_path):
    """Validations at 5, 10, ..., evaluations at 10, 20: the signal during the validation at 5 (nothing to stop) is
    acted on at the end of step 6, after the checkpoint callbacks (which run last) recorded the validation at 5. Acted
    on at the validation's end, last.ckpt recorded the best checkpoint before it, which that callback then deleted."""
    preemption = Preemption("SIGUSR1")
    fit(tmp_path, SignalAt(5), val_every=5, every_n_evals=2, preemption=preemption, best_on_loss=True)
    assert preemption.requeue_requested and preemption.saved_at == 6
    states = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    (best,) = [state for key, state in states.items() if "val/loss" in key]
    assert best["best_model_path"].endswith("loss-step=5.ckpt") and os.path.exists(best["best_model_path"])


def test_a_last_checkpoint_before_another_checkpoint_callback_is_refused_at_start(tmp_path):
    """Before the best checkpoint's callback, last.ckpt written again after an evaluation would hold its choice from
    before that evaluation: refused before any step (lsde-train puts it last)."""
    last = LastCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=10)
    best = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, monitor="val/loss")
    trainer = L.Trainer(max_steps=2, callbacks=[last, best], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    module = ScoreModule(net=MLP, shape=[2], sde=VP)
    with pytest.raises(ValueError, match="LastCheckpoint must come after the other ModelCheckpoints"):
        trainer.fit(module, datamodule=Toy2DDataModule(batch_size=32, n_train=256, n_val=64))
    assert module.global_step == 0 and not list(tmp_path.glob("*.ckpt"))


@pytest.fixture
def terminal_sigint():
    """SIGINT as a terminal's Ctrl-C gives it (pytest-xdist's workers ignore it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


class CtrlCInStep(L.Callback):
    """Ctrl-C as a terminal gives it, inside the optimizer step of a step (the backward pass done, no weight moved)."""

    def __init__(self, step: int, times: int = 1):
        self.step, self.times = step, times

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_within_a_step_stops_at_its_end_and_the_resume_equals_the_uninterrupted_run(tmp_path, terminal_sigint):
    """Ctrl-C raised KeyboardInterrupt wherever it landed, and last.ckpt was saved there: inside the optimizer step it
    held part of AdamW's step and a batch counted as begun, and the resumed run differed from an uninterrupted one
    (weights 7e-3 apart at step 600) and evaluated one step early (199, 399, 599)."""
    whole = fit(tmp_path / "whole")
    preemption = Preemption("SIGUSR1")
    fit(tmp_path / "stopped", CtrlCInStep(12), last=preemption)
    assert preemption.stopped_by_ctrl_c and not preemption.requeue_requested
    ckpt = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 13  # the end of the step it came in
    assert {float(state["step"]) for state in ckpt["optimizer_states"][0]["state"].values()} == {13.0}
    assert signal.getsignal(signal.SIGINT) is not preemption._on_sigint  # given back when the fit ended
    resumed = fit(tmp_path / "stopped", resume=True)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()))
    assert record(tmp_path / "stopped") == record(tmp_path / "whole")


class CtrlCAfterStep(CtrlCInStep):
    """Ctrl-C between batches (after Preemption's end-of-batch check)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("where", [CtrlCInStep, CtrlCAfterStep])
def test_a_second_ctrl_c_stops_at_once_and_leaves_the_last_periodic_checkpoint(tmp_path, caplog, where,
                                                                              terminal_sigint):
    """Within a step its state is part-applied; between steps a second Ctrl-C was saved for (a long save the user
    would interrupt again): no checkpoint either way, the periodic one at step 10 stands. A requeue signal after it
    reaches the handler from before the fit (it went to the finished callback: a notebook's SIGUSR1 was swallowed)."""
    received = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        with pytest.raises(SystemExit), caplog.at_level("WARNING"):
            fit(tmp_path, last=Preemption("SIGUSR1"), watch=None, stop=None, after=where(12, times=2))
        assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
        assert "stopped by a second Ctrl-C: no checkpoint written" in caplog.text
        os.kill(os.getpid(), signal.SIGUSR1)
        assert received == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_callback_used_again_after_a_failed_fit_forgets_its_stop_and_gives_the_signal_back(tmp_path,
                                                                                            terminal_sigint):
    """A notebook's second fit with the same callback: the first fit's Ctrl-C stopped it at its first step, and the
    callback took its own handler (put back by Lightning) for the one before, so SIGUSR1 went nowhere after it."""
    received = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
    try:
        preemption = Preemption("SIGUSR1")
        with pytest.raises(SystemExit):
            fit(tmp_path / "a", last=preemption, after=CtrlCInStep(12, times=2))
        fit(tmp_path / "b", last=preemption)
        assert torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
        assert not preemption.ctrl_c and not preemption.stopped_by_ctrl_c
        os.kill(os.getpid(), signal.SIGUSR1)
        assert received == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_run_that_ignores_ctrl_c_keeps_ignoring_it_and_one_in_a_thread_trains(tmp_path):
    """A job started in the background by a script ignores SIGINT (SIG_IGN): the terminal's Ctrl-C then stopped it.
    And a fit in another thread failed at once: only the main thread may set a signal handler."""
    import threading

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        preemption = Preemption("SIGUSR1")
        fit(tmp_path / "ignored", CtrlCInStep(12), last=preemption)
        assert not preemption.ctrl_c and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert torch.load(tmp_path / "ignored" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 20
    errors = []
    thread = threading.Thread(target=lambda: errors.append(fit(tmp_path / "thread", last=Preemption("SIGUSR1"))))
    thread.start()
    thread.join(timeout=300)
    assert [type(e) for e in errors] == [ScoreModule]


def test_an_evaluation_stopped_by_a_signal_says_whether_the_resume_redoes_it(tmp_path):
    """A resume redoes an evaluation stopped by a signal, but not the one at trainer.max_steps (no step is left to
    train, so no hook runs): the stop's warning said it would redo it."""

    class Signalled(L.Callback):  # as Preemption after SIGTERM, which the sampler callback asks between batches
        def stop_requested(self) -> bool:
            return True

    module = ScoreModule(net=MLP, shape=[2], sde=VP)
    callback = SamplerCallback({"ddim": DDIM(steps=2)}, n_samples=20, batch_size=10)
    trainer = L.Trainer(max_steps=4, val_check_interval=2, limit_val_batches=1, num_sanity_val_steps=0,
                        callbacks=[callback, Signalled()], logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, default_root_dir=tmp_path, accelerator="cpu")
    with pytest.warns(UserWarning) as record:
        trainer.fit(module, datamodule=Toy2DDataModule(batch_size=64, n_train=256, n_val=64))
    said = [str(w.message) for w in record if "stopped by a signal" in str(w.message)]
    assert said == ["the evaluation at step 2 was stopped by a signal: no rows; the resumed run does it again",
                    "the evaluation at step 4 was stopped by a signal: no rows; this fit has no step left to train "
                    "(trainer.max_steps=4), so a resume does not redo it: resume with a higher trainer.max_steps, or "
                    "score the checkpoint with lsde-bench"], said
    assert callback.evaluation_stopped_at == 4 and "ddim" not in callback.last_rows
