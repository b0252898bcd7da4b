"""Small pieces the apps rest on, each against what a user sees: the scored distribution of a guided sweep, the
reference seeds, the data's name, the seed limit, a worker's error, the exit status, the help text, the sample
figure's order."""

from __future__ import annotations

import pytest
import torch

from lightning_sde.exact import eight_gaussians


def test_a_cycled_guided_sweep_is_scored_against_its_classes_in_equal_parts():
    """Seed i is drawn for class i mod C: with classes of unequal mass (6 of 8 modes class 0) the reference is still
    the classes half and half, not p(y)."""
    from lightning_sde.targets import scored_distribution

    mixture = eight_gaussians(labels=[0, 0, 0, 0, 0, 0, 1, 1])
    assert torch.allclose(mixture.class_weights(), torch.tensor([0.75, 0.25], dtype=mixture.means.dtype))
    assert torch.allclose(scored_distribution(mixture, "cycle").class_weights(),
                          torch.tensor([0.5, 0.5], dtype=mixture.means.dtype))


def test_each_seed_range_gets_its_own_reference_samples_and_the_data_its_own_name():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from lightning_sde.targets import data_name, reference_samples

    target = SimpleNamespace(mixture=eight_gaussians())
    first, again, later = (reference_samples(target, 16, start) for start in (0, 0, 16))
    assert torch.equal(first, again) and not torch.equal(first, later)
    toy = OmegaConf.create({"_target_": "lightning_sde.data.Toy2DDataModule", "name": "swiss_roll"})
    assert data_name(toy) == "toy2d/swiss_roll"


def test_the_seed_range_may_end_at_the_limit_not_past_it():
    from lightning_sde.generation import check_seed_range

    check_seed_range(2**32 - 8, 8)  # seeds up to 2**32 - 1
    with pytest.raises(ValueError, match=r"at most 2\*\*32 .*; got 4294967297$"):
        check_seed_range(2**32 - 8, 9)


def test_a_workers_chained_error_is_its_last_one_on_one_line():
    from lightning_sde.cli.errors import from_worker

    message = ("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "a.py", line 1, in f\nValueError: first\n\nDuring handling of the above exception, another '
               'exception occurred:\n\nTraceback (most recent call last):\n  File "b.py", line 2, in g\n'
               "ValueError: image 3.png is truncated\n")
    assert from_worker(message) == "image 3.png is truncated (in DataLoader worker process 0)"


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (2, 2), ("a message", 1)])
def test_the_exit_status_of_a_system_exit_is_its_own(code, status):
    from lightning_sde.cli.train import exit_status

    assert exit_status(SystemExit(code)) == status and exit_status(ValueError()) == 1


def test_the_help_marks_defaults_names_groups_without_one_and_answers_h(capsys):
    from lightning_sde.cli.help import print_help_if_asked

    assert print_help_if_asked("bench", ["-h"]) and not print_help_if_asked("bench", ["nfe=[10]"])
    text = capsys.readouterr().out
    groups = {line.split()[0]: line for line in text.split("Config groups")[1].split("Keys users")[0].splitlines()[1:]
              if line.strip()}
    assert "vp*" in groups["sde"] and groups["data"].endswith("(none by default)") and "paths" not in groups


def test_the_sample_figure_puts_the_noise_floor_first_and_tolerances_loosest_first():
    import matplotlib

    matplotlib.use("Agg")
    from lightning_sde.plotting.sweeps import samples_figure

    x = torch.randn(16, 2)
    fig = samples_figure({"ode": {"tol 1e-05": x, "tol 0.001": x}, "floor": {"exact": x}})
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["floor\nexact", "ode\ntol 0.001", "ode\ntol 1e-05"], titles


def test_hydras_complaint_is_one_line_without_its_search_path():
    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException

    from lightning_sde.cli.apps import one_line
    from lightning_sde.configuration import CONFIG_PACKAGE

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"), pytest.raises(
            ConfigCompositionException) as caught:
        compose("bench", overrides=["problem=bogus"])
    text = one_line(caught.value)
    assert "bogus" in text and "\n" not in text and "provider=" not in text and "search path" not in text, text


def test_output_whose_reader_went_away_goes_to_dev_null_and_the_run_goes_on():
    """`lsde-bench ... | head -1`: every later line was a BrokenPipeError (a traceback per log line, the views never
    drawn, exit 1). Now the stream is pointed at /dev/null, said once on stderr, and writing goes on."""
    import io
    import os

    from lightning_sde.cli.apps import ReaderGoneGuard

    read_end, write_end = os.pipe()
    os.close(read_end)
    said = io.StringIO()
    guard = ReaderGoneGuard(open(write_end, "w"), "bench", other=said)
    for _ in range(3):
        guard.write("a result line\n" * 1000)
        guard.flush()
    assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull))
    assert said.getvalue().count("\n") == 1 and "lsde-bench: the reader of its" in said.getvalue()

    class Unpointable(io.StringIO):  # no file descriptor to point elsewhere: its writes keep failing, said once
        def write(self, text):
            raise BrokenPipeError

    said = io.StringIO()
    guard = ReaderGoneGuard(Unpointable(), "sample", other=said)
    opened = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        guard.write("a line\n")
    assert said.getvalue().count("\n") == 1 and len(os.listdir("/proc/self/fd")) == opened  # nor a descriptor each


def test_an_app_and_prepare_printing_into_a_closed_pipe_end_as_they_would_have(monkeypatch, capsys):
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "lightning_sde.cli.train", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the child writes: `| head -0`
    err = proc.stderr.read()
    assert proc.wait() == 0 and "Traceback" not in err and err.count("\n") == 1, err
    closed = subprocess.run(f"{sys.executable} -m lightning_sde.cli.sample --help >&-", shell=True, text=True,
                            capture_output=True)  # no stdout at all: Python's is None, and stays so
    assert closed.returncode == 0 and not closed.stderr, closed.stderr
    for args, status in (("--help", 0), ("bogus_key=1", 1)):  # no stderr: its exit status as with one (not 120)
        closed = subprocess.run(f"{sys.executable} -m lightning_sde.cli.sample {args} 2>&-", shell=True, text=True,
                                capture_output=True)
        assert closed.returncode == status, closed.returncode

    from lightning_sde.cli.apps import prepare

    read_end, write_end = os.pipe()
    os.close(read_end)
    monkeypatch.setattr(sys, "stdout", open(write_end, "w"))
    with pytest.raises(SystemExit) as ended:
        prepare(lambda: print("toy2d: nothing to fetch", flush=True) or 0)
    assert ended.value.code == 0 and "lsde-prepare: the reader of its" in capsys.readouterr().err

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as ended:
        prepare(interrupted)
    assert ended.value.code == 130 and capsys.readouterr().err == "lsde-prepare: interrupted (Ctrl-C)\n"


def test_streams_that_cannot_be_written_are_pointed_at_dev_null_without_a_descriptor_left_open(monkeypatch):
    """At exit (quiet_broken_streams): stdout None (closed at start) is left alone, a stderr whose flush fails (a
    closed pipe) writes into /dev/null from then on, and the /dev/null descriptor opened to point it is closed."""
    import os
    import sys

    from lightning_sde.cli.errors import quiet_broken_streams

    read_end, write_end = os.pipe()
    os.close(read_end)
    broken = open(write_end, "w")
    broken.write("held in the buffer\n")
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", broken)
    opened = len(os.listdir("/proc/self/fd"))
    quiet_broken_streams()
    assert len(os.listdir("/proc/self/fd")) == opened
    broken.write("after\n")
    broken.flush()  # into /dev/null: no BrokenPipeError
    assert os.path.samefile(f"/proc/self/fd/{write_end}", os.devnull)
    broken.close()
