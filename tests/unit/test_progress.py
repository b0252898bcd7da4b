"""Progress in a log file: lines at a fixed rate with the fraction, ETA and what the work reports, one last line at
the end of long work, nothing for short work; the training progress line of a batch job."""

import logging
import os
from types import SimpleNamespace

import pytest

from lightning_sde.callbacks.progress import ProgressLog
from lightning_sde.tracking import Progress, duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "lightning_sde.tracking"]


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (0.4, 12, 59.6, 60, 185, 3599, 3600, 7620, -3)] == [
        "0s", "12s", "1m00s", "1m00s", "3m05s", "59m59s", "1h00m", "2h07m", "0s"]


def test_a_log_file_gets_a_line_every_interval_and_the_last_state_once(caplog):
    caplog.set_level(logging.INFO)
    progress = Progress(1000, "sampling em", every_s=10, terminal=False)
    progress._clock = clock = Clock()
    progress._start = progress._last = 0.0
    for t, done in [(4, 100), (10, 250), (15, 400), (21, 750), (25, 1000)]:
        clock.now = t
        progress.update(done, nfe=done)
    assert lines(caplog) == ["sampling em: 25% (250/1000), 10s elapsed, ETA 30s, nfe 250",
                             "sampling em: 75% (750/1000), 21s elapsed, ETA 7s, nfe 750"]
    progress.close()
    assert lines(caplog)[-1] == "sampling em: 100% (1000/1000), 25s elapsed, nfe 1000"
    progress.close()
    assert len(lines(caplog)) == 3  # the last state once


def test_a_set_up_is_left_out_of_the_rate_and_the_batchs_nfe(caplog, monkeypatch):
    """A grid tuned on a pilot inside the first batch: the first line said 2m59s elapsed, ETA 50m30s and the pilot's
    543 evaluations as the batch's NFE, half a second before the run ended at NFE 10."""
    from lightning_sde.exact import eight_gaussians
    from lightning_sde.generation import generate
    from lightning_sde.samplers import UniPC, schedule
    from lightning_sde.sde import VPSDE

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("LSDE_PROGRESS_EVERY_S", "0")
    monkeypatch.setattr(schedule, "_tuned", {})  # tuned here, not found from an earlier test
    sampler = UniPC(steps=6, grid="select", pilot=32)
    out = generate(sampler, eight_gaussians().denoiser(VPSDE()), range(16), 16, "cpu", progress=True)
    assert out.setup_nfe > 6
    said = [line for line in lines(caplog) if "batch_nfe" in line]
    assert said and all(float(line.rsplit("batch_nfe ", 1)[1]) <= 6 for line in said), said
    assert all("set-up)" in line for line in said), said
    progress = Progress(10, "x", every_s=0, terminal=False)
    progress._clock = clock = Clock()
    progress._start = progress._last = 0.0
    clock.now = 100.0
    progress.set_aside(90.0)
    progress.update(5)
    assert lines(caplog)[-1] == "x: 50% (5/10), 10s elapsed (+1m30s set-up), ETA 10s"


def test_a_pilot_runs_within_the_batch_size_and_chooses_as_in_one_call(monkeypatch):
    """lsde-sample batch_size=16 with the default sampler still called the network on the pilot's 512 rows at once
    (past 5 GB at 64x64): a batch size lowered to fit memory now bounds the pilot too, with the same choice."""
    import lightning_sde.exact as exact
    from lightning_sde.exact import eight_gaussians
    from lightning_sde.generation import generate
    from lightning_sde.samplers import UniPC, schedule
    from lightning_sde.sde import VPSDE

    rows = []
    forward = exact.ExactScore.forward
    monkeypatch.setattr(exact.ExactScore, "forward", lambda self, x, t, y=None: (rows.append(len(x)),
                                                                                 forward(self, x, t, y))[1])
    chosen = []
    for batch_size in (8, 64):
        monkeypatch.setattr(schedule, "_tuned", {})
        rows.clear()
        out = generate(UniPC(steps=6, grid="select", pilot=32), eight_gaussians().denoiser(VPSDE()), range(8),
                       batch_size, "cpu")
        chosen.append(out.selected)
        assert max(rows) == min(batch_size, 32)
    assert chosen[0] == chosen[1]


def test_short_or_disabled_work_writes_nothing(caplog):
    caplog.set_level(logging.INFO)
    with Progress(10, "quick", every_s=30, terminal=False) as progress:
        progress.update(10)
    with Progress(10, "off", every_s=0, terminal=False, enabled=False) as progress:
        progress.update(5)
    assert lines(caplog) == []


def test_a_terminal_gets_a_bar_instead_of_lines(caplog):
    caplog.set_level(logging.INFO)
    with Progress(10, "bar", every_s=0, terminal=True) as progress:
        progress.update(5, nfe=3)
        assert progress._bar is not None and progress._bar.n == 5
        started = progress._bar.start_t
        progress.set_aside(100.0)  # the bar's rate and ETA leave the set-up out too
        assert progress._bar.start_t == started + 100.0
    assert lines(caplog) == []


def trainer(step, loss=0.5, bar=None, max_steps=1000):
    return SimpleNamespace(global_step=step, callback_metrics={"train/loss": loss}, max_steps=max_steps,
                           progress_bar_callback=bar, is_global_zero=True)


def test_training_progress_lines_come_every_n_steps_with_rate_and_eta(caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    clock = Clock()
    monkeypatch.setattr("lightning_sde.callbacks.progress.time.monotonic", clock)
    callback = ProgressLog(every_n_steps=50, every_s=0)
    callback.on_train_start(trainer(0), None)
    for step in range(1, 201):
        clock.now = step * 0.1  # 10 steps/s
        callback.on_train_batch_end(trainer(step), None, None, None, step)
    got = [r.getMessage() for r in caplog.records if r.name == "lightning_sde.callbacks.progress"]
    assert got[0] == "step 50/1000 (5%) | loss 0.5 | 10 steps/s | ETA 1m35s" and len(got) == 4
    caplog.clear()
    callback.on_train_batch_end(trainer(300, bar=object()), None, None, None, 300)  # the bar shows it instead
    callback.on_train_batch_end(SimpleNamespace(**{**vars(trainer(300)), "is_global_zero": False}), None, None, None,
                                300)  # another DDP process: rank 0 says it
    assert not caplog.records
    resumed = ProgressLog(every_n_steps=50, every_s=0)  # a resume at step 1000 of 2000: the rate is this launch's
    clock.now = 100.0
    resumed.on_train_start(trainer(1000, max_steps=2000), None)
    for step in range(1001, 1051):
        clock.now = 100.0 + (step - 1000) * 0.1
        resumed.on_train_batch_end(trainer(step, max_steps=2000), None, None, None, step)
    unbounded = ProgressLog(every_n_steps=50, every_s=0)  # max_steps=-1: by epochs, no total
    unbounded.on_train_start(trainer(0, max_steps=-1), None)
    clock.now += 5.0
    unbounded.on_train_batch_end(trainer(50, max_steps=-1), None, None, None, 50)
    assert [r.getMessage() for r in caplog.records] == ["step 1050/2000 (52%) | loss 0.5 | 10 steps/s | ETA 1m35s",
                                                        "step 50 | loss 0.5 | 10 steps/s"]


@pytest.mark.parametrize("kwargs", [{"every_n_steps": 0}, {"every_n_steps": True}, {"every_s": -1}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="ProgressLog"):
        ProgressLog(**kwargs)


def test_lightnings_messages_reach_the_console_once_through_the_apps_handlers(monkeypatch):
    """Lightning's loggers carry a console handler of their own: its messages came twice or three times."""
    from lightning_sde.tracking import quiet_and_logged

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        source = logging.getLogger(name)
        monkeypatch.setattr(source, "handlers", [logging.StreamHandler(), logging.FileHandler(os.devnull)])
        monkeypatch.setattr(source, "propagate", False)
    quiet_and_logged()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        source = logging.getLogger(name)
        assert source.propagate and [type(h) for h in source.handlers] == [logging.FileHandler], name
