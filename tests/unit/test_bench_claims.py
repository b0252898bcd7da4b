"""Two sweeps on one results file never compute the same cell, nor log its W&B run, at once: the second is refused
before any sampling, sweeps of other cells go on beside it, and a killed sweep leaves no stale claim."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from lightning_sde.bench import runner
from lightning_sde.bench.results import WANDB_RUN_KEY, ResultsStore
from lightning_sde.configuration import CONFIG_PACKAGE

TINY = ["~samplers", "+sampler@samplers.ddim=ddim", "nfe=[4]", "seeds.count=16", "batch_size=16", "progress=false",
        "metrics=[mmd]", "noise_floor=false"]
HOLD = """
import json, sys, time
from lightning_sde.bench.results import Claim
Claim(sys.argv[1], json.loads(open(sys.argv[2]).read()))
print("held", flush=True)
time.sleep(600)
"""


def config(tmp_path: Path, *overrides):
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        return compose("bench", overrides=[f"results={tmp_path}/results.jsonl", "wandb.enabled=false", *TINY,
                                           *overrides])


def hold(tmp_path: Path, keys: list[str]) -> subprocess.Popen:
    """Another process (another lsde-bench) holding these keys' claims until killed."""
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "results.jsonl"), str(tmp_path / "keys.json")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def keys_of(cfg) -> list[str]:
    return [c.key(m) for c in runner.prepare(cfg).cells for m in c.metrics]


def test_a_sweep_whose_cells_another_computes_is_refused_before_sampling(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    holder = hold(tmp_path, keys_of(cfg))
    try:
        monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("sampled a claimed cell"))
        with pytest.raises(ValueError, match=r"another lsde-bench is writing 1 of its 1 result rows \(its locks: "
                                             r"results.jsonl.lock\); wait for it to end"):
            runner.run_sweep(cfg)
        with pytest.raises(ValueError, match="writing 1 of its 1 result rows "):  # the W&B run is free: not counted
            runner.run_sweep(config(tmp_path, "wandb.enabled=true"))
        assert ResultsStore(tmp_path / "results.jsonl").rows() == []
        monkeypatch.undo()
        other = runner.run_sweep(config(tmp_path, "nfe=[5]"))  # other cells of the same file go on beside it
        other["claim"].release()
        assert [r["requested"] for r in ResultsStore(tmp_path / "results.jsonl").rows()] == [5]
    finally:
        holder.send_signal(signal.SIGKILL)  # as kill -9: the system drops its claims
        holder.wait()
    runner.run_sweep(cfg)["claim"].release()
    assert sorted(r["requested"] for r in ResultsStore(tmp_path / "results.jsonl").rows()) == [4, 5]


def test_the_w_and_b_run_has_one_writer(tmp_path, monkeypatch):
    holder = hold(tmp_path, [WANDB_RUN_KEY])
    try:
        monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("sampled"))
        with pytest.raises(ValueError, match="another lsde-bench is writing the W&B run "):
            runner.run_sweep(config(tmp_path, "wandb.enabled=true"))
        monkeypatch.undo()
        runner.run_sweep(config(tmp_path, "wandb.enabled=true", "shard.count=2"))["claim"].release()  # shards: no run
        report = subprocess.run([sys.executable, "-m", "lightning_sde.cli.bench", "report",
                                 str(tmp_path / "results.jsonl"), "--wandb"], capture_output=True, text=True,
                                timeout=120, check=False)
        assert report.returncode == 1 and "another lsde-bench is writing the W&B run" in report.stderr, report.stderr
        # WANDB_MODE=disabled makes no run, so it claims none: another cell, and the report, go on beside the writer
        monkeypatch.setenv("WANDB_MODE", "disabled")
        runner.run_sweep(config(tmp_path, "wandb.enabled=true", "nfe=[5]"))["claim"].release()
        report = subprocess.run([sys.executable, "-m", "lightning_sde.cli.bench", "report",
                                 str(tmp_path / "results.jsonl"), "--wandb"], capture_output=True, text=True,
                                timeout=120, check=False)
        assert report.returncode == 0, report.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()


def test_a_lock_file_that_cannot_be_written_is_a_one_line_error_before_sampling(tmp_path, monkeypatch):
    def read_only(self, results, keys):
        raise PermissionError(13, "Permission denied", f"{results}.lock")

    monkeypatch.setattr(runner.Claim, "__init__", read_only)
    monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("sampled"))
    with pytest.raises(ValueError, match=r"its lock file cannot be used \(PermissionError: \[Errno 13\] Permission "
                                         r"denied: '.*results.jsonl.lock'\)"):
        runner.run_sweep(config(tmp_path))


def test_a_file_system_without_locks_is_said_as_such(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    with pytest.raises(ValueError, match=r"its lock file cannot be used \(OSError: \[Errno 37\] No locks available\)"):
        runner.run_sweep(config(tmp_path))


def test_cells_another_sweep_finished_while_this_one_waited_for_their_claims_are_not_computed_again(tmp_path,
                                                                                                    monkeypatch):
    """The finished cells are read again once the claims are held: a sweep that held them and finished meanwhile
    (its rows appended between this sweep's first read and its claim) leaves nothing to do."""
    first = runner.run_sweep(config(tmp_path))
    first["claim"].release()
    rows = ResultsStore(tmp_path / "results.jsonl").rows()
    (tmp_path / "results.jsonl").unlink()
    claim = runner.Claim

    def finished_meanwhile(results, keys):
        with open(results, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return claim(results, keys)

    monkeypatch.setattr(runner, "Claim", finished_meanwhile)
    monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("computed a finished cell again"))
    runner.run_sweep(config(tmp_path))["claim"].release()
    assert len(ResultsStore(tmp_path / "results.jsonl").rows()) == len(rows)


@pytest.mark.parametrize("content", ["{not json", '{"id": "../x"}', '{"protocol": 5}', '["a list"]', "FOLDER",
                                     '{"protocol": {"x": 1}}', '{"protocol": {"target": "t", "seed_start": "0"}}'])
def test_a_broken_w_and_b_sidecar_stops_the_sweep_before_sampling(tmp_path, monkeypatch, content):
    """It was read when the W&B run opened (a warning), and stopped the sweep only after every cell was computed."""
    sidecar = tmp_path / "results.wandb.json"
    if content == "FOLDER":
        sidecar.mkdir()
    else:
        sidecar.write_text(content)
    monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("sampled"))
    with pytest.raises(ValueError, match=r"results.wandb.json: not a readable W&B sidecar \(.*\); delete it to start "
                                         r"a new W&B run"):
        runner.run_sweep(config(tmp_path, "wandb.enabled=true"))
    with pytest.raises(pytest.fail.Exception, match="sampled"):
        runner.run_sweep(config(tmp_path))  # without W&B the sidecar is not read: the sweep samples


def test_a_results_file_that_cannot_be_appended_to_is_refused_before_sampling(tmp_path, monkeypatch):
    """An immutable or read-only results file (chattr +i; chmod is no bar to root) failed after the first cell."""
    results = tmp_path / "results.jsonl"
    results.write_text("")
    opened = Path.open

    def immutable(self, mode="r", *args, **kwargs):
        if self == results and "a" in mode:
            raise PermissionError(1, "Operation not permitted", str(self))
        return opened(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", immutable)
    monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("sampled"))
    with pytest.raises(ValueError, match=r"results.jsonl': cannot be appended to \(PermissionError: \[Errno 1\] "
                                         r"Operation not permitted"):
        runner.run_sweep(config(tmp_path))
