"""lsde-likelihood's start-up checks: a bad value fails before any model or data is loaded, naming its key."""

import math

import pytest
from hydra import compose, initialize_config_module

from lightning_sde.cli.likelihood import validate
from lightning_sde.configuration import CONFIG_PACKAGE


@pytest.mark.parametrize("override, message", [
    ("device=nodev", "config device: Expected one of cpu"),
    ("dtype=float16", "config dtype: 'float16' is not one of"),
    ("n=0", "config n: must be an integer >= 1"),
    ("divergence=nosuch", "config divergence: 'nosuch' is not one of"),
    ("seed=abc", "config seed: must be an integer >= 0; got 'abc'"),  # a traceback from manual_seed, at sampling
    ("seed=-1", "config seed: must be an integer >= 0; got -1"),
    ("ddp.devices=0", "config ddp.devices: must be an integer >= 1; got 0"),  # Fabric's message, without the key
    ("ddp.num_nodes=0", "config ddp.num_nodes: must be an integer >= 1; got 0"),
    ("ode.method=euler ode.rtol=0.5", "config ode: ODEOptions: rtol=0.5 would be ignored"),  # ran with it unused
    ("ode.steps=3", "config ode: ODEOptions: method 'dopri5' is adaptive and takes rtol/atol, not steps"),
    ("eps=2", r"config eps: ValueError: VPSDE: eps must lie in \(0, T = 1\); got 2"),
    ("eps=0", r"config eps: ValueError: VPSDE: eps must lie in \(0, T = 1\); got 0"),
    # the folder's name, as the other apps': was written outside the outputs root, beside the runs, or in 'None'
    ("name='../../esc'", "config name: may hold ASCII letters, digits and . _ - \\+ @ = , only"),
    ("name=''", "config name: may hold ASCII letters"),
    ("name=null", "config name: must be a name"),
    ("name='é'", "config name: may hold ASCII letters"),
])
def test_a_bad_value_is_refused_at_start_up_naming_its_key(override, message, tmp_path):
    from lightning_sde.cli.likelihood import run

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("likelihood", overrides=[*override.split(), f"out={tmp_path}/out"])
    with pytest.raises(ValueError, match=message):
        validate(cfg)
    with pytest.raises(ValueError, match=message):
        run(cfg)
    assert not (tmp_path / "out").exists()  # nor its lock: a multirun's failed job leaves no empty folder


def test_a_result_of_other_settings_in_the_output_folder_is_not_replaced(tmp_path):
    """Two targets under the default name=default: the second run replaced the first's summary and samples without a
    word. Refused at start-up; a rerun of the same settings replaces its own; a summary of an older version (no
    settings recorded) or a torn one is not taken for this run's."""
    import json

    from lightning_sde.cli.likelihood import settings

    def cfg(*overrides):
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            return compose("likelihood", overrides=[f"out={tmp_path}", "n=20", *overrides])

    validate(cfg())  # nothing there yet
    _, _, target_id = validate(cfg())
    older = {**settings(cfg(), target_id), "ode": {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5, "steps": 100,
                                                   "error_norm": "worst_sample"}}
    (tmp_path / "summary.json").write_text(json.dumps({"settings": older}))
    validate(cfg())  # a record from before the unused ODE settings were refused: the same settings
    (tmp_path / "summary.json").write_text(json.dumps({"settings": settings(cfg("ode.method=rk4"), target_id)}))
    validate(cfg("ode.method=rk4", "ode.steps=100"))  # null steps are 100: the same computation
    (tmp_path / "summary.json").write_text(json.dumps({"settings": settings(cfg(), target_id)}))
    validate(cfg())  # the same settings: a rerun
    for other in (["sde=ve"], ["n=10"], ["seed=1"], ["ode.rtol=1e-4"], ["problem=swiss_roll"]):
        with pytest.raises(ValueError, match=rf"^config name: {tmp_path}/summary.json holds the result of other "
                                             r"settings .*give another name= \(or out=\) to keep both, or delete it$"):
            validate(cfg(*other))
    for content in ('{"target": "mixture:eight_gaussians"}', "{torn"):
        (tmp_path / "summary.json").write_text(content)
        with pytest.raises(ValueError, match="holds the result of other settings"):
            validate(cfg())
    (tmp_path / "summary.json").unlink()
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "settings.json").write_text(json.dumps({"settings": settings(cfg(), target_id)}))
    validate(cfg())  # its own partial rows: it goes on from them
    with pytest.raises(ValueError, match=r"partial/settings.json holds a partial result of other settings"):
        validate(cfg("seed=2"))


def test_a_killed_run_goes_on_from_the_rows_it_had_written(tmp_path, monkeypatch, caplog):
    """Each batch's rows are appended as they are done; a rerun of the same settings computes only the samples left
    (each sample's numbers depend on its index alone, so the result equals one uninterrupted run's), then removes
    the partial rows. A line torn by the kill, or edited, is computed again."""
    import json

    from lightning_sde.cli import likelihood

    def cfg(out):
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            return compose("likelihood", overrides=[f"out={out}", "n=40", "batch_size=10", "ode.rtol=1e-3",
                                                    "ode.atol=1e-3"])

    whole = likelihood.run(cfg(tmp_path / "whole"))
    real, calls = likelihood.log_likelihood, []

    def killed_in_the_third_batch(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(likelihood, "log_likelihood", killed_in_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        likelihood.run(cfg(tmp_path / "out"))
    (record,) = (tmp_path / "out" / "partial").glob("rows-*.jsonl")
    lines = record.read_text().splitlines()
    edited = [json.loads(lines[0]) | {"logp": float("nan")}, json.loads(lines[1]) | {"index": 99},
              {k: v for k, v in json.loads(lines[2]).items() if k != "true_logp"}]
    # rows edited by hand (a NaN log p, an index beyond n, no true_logp) were taken as computed, NaN in the mean
    record.write_text("\n".join([*map(json.dumps, edited), *lines[3:], "garbage", '{"index": 39, "logp": ']))
    calls.clear()
    monkeypatch.setattr(likelihood, "log_likelihood", lambda *a, **k: (calls.append(len(a[1])), real(*a, **k))[1])
    with caplog.at_level("WARNING"):
        resumed = likelihood.run(cfg(tmp_path / "out"))
    assert "5 line(s) of" in caplog.text  # the three edited rows, the garbage and the line torn by the kill
    assert calls == [10, 10, 3]  # the two batches never written, and the three edited rows
    assert not (tmp_path / "out" / "partial").exists()
    # the edited rows' samples were solved in other batches than the whole run's: equal to the solver's tolerance
    assert resumed["n"] == whole["n"] and resumed["mean_logp"] == pytest.approx(whole["mean_logp"], abs=2e-3)
    assert (resumed["n_from_earlier_runs"], whole["n_from_earlier_runs"]) == (40 - 23, 0)  # under its own world size
    assert resumed["bpd"] == pytest.approx(whole["bpd"], abs=2e-3)
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(40))
    # the latent's log-density under the prior (VP: a standard normal in 2-D, at most -log(2 pi)), not log p again
    assert all(r["prior_logp"] <= -math.log(2 * math.pi) and r["prior_logp"] != r["logp"] for r in rows)
    validate(cfg(tmp_path / "out"))  # the summary write() left records its settings: a rerun is not refused


def test_an_exact_divergence_asked_for_many_dimensions_is_warned_about(tmp_path, caplog):
    """divergence=exact runs one backward pass per dimension at every ODE evaluation: on a 3x32x32 image, 3072; asked
    for explicitly above exact_max_dim, it says what it costs (auto takes Hutchinson's estimate there)."""
    from lightning_sde.cli import likelihood

    def cfg(*overrides):
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            return compose("likelihood", overrides=[f"out={tmp_path}", "n=4", "ode.rtol=1e-3", "ode.atol=1e-3",
                                                    "exact_max_dim=1", *overrides])

    likelihood.run(cfg("divergence=exact", "name=exact"))
    assert "divergence=exact on 2 dimensions: one backward pass per dimension" in caplog.text
    caplog.clear()
    likelihood.run(cfg("divergence=auto", f"out={tmp_path / 'auto'}"))
    assert "divergence=exact on" not in caplog.text


def test_a_full_disk_while_rows_are_recorded_is_one_named_error_and_the_rerun_equals_a_whole_run(tmp_path,
                                                                                                 monkeypatch):
    """A short write kept part of a batch: the rerun's batches were not the whole run's (log p off by 4e-4 nats,
    where docs/likelihood.md promises the same result). A batch's rows are now appended all or none."""
    import os

    from lightning_sde.cli import likelihood
    from lightning_sde.errors import WriteError

    def cfg(out):
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            return compose("likelihood", overrides=[f"out={out}", "n=12", "batch_size=4", "ode.rtol=1e-3",
                                                    "ode.atol=1e-3"])

    likelihood.run(cfg(tmp_path / "whole"))
    real_write, writes = os.write, []

    def fills_up(fd, data):  # the disk fills during the second batch's rows: half of them fit
        if "rows-" not in os.readlink(f"/proc/self/fd/{fd}"):
            return real_write(fd, data)
        writes.append(len(data))
        return real_write(fd, data[: len(data) // 2] if len(writes) == 2 else data)

    monkeypatch.setattr(os, "write", fills_up)
    with pytest.raises(WriteError, match=r"could not write .*partial/rows-0-\d+\.jsonl: No space left on device"):
        likelihood.run(cfg(tmp_path / "out"))
    monkeypatch.undo()
    (record,) = (tmp_path / "out" / "partial").glob("rows-*.jsonl")
    assert len(writes) == 2 and len(record.read_text().splitlines()) == 4  # the first batch alone
    likelihood.run(cfg(tmp_path / "out"))
    assert (tmp_path / "out" / "samples.jsonl").read_text() == (tmp_path / "whole" / "samples.jsonl").read_text()


def digits_checkpoint(tmp_path):
    import torch

    from lightning_sde.module import ScoreModule

    net = {"_target_": "lightning_sde.models.unet.UNet", "in_channels": 1, "image_size": 8, "channels": 8,
           "channel_mult": [1], "num_res_blocks": 1, "attn_resolutions": []}
    sde = {"_target_": "lightning_sde.sde.VPSDE"}
    path = tmp_path / "digits.ckpt"
    torch.save({"state_dict": ScoreModule(net=net, sde=sde, shape=[1, 8, 8]).state_dict(), "global_step": 1,
                "hyper_parameters": {"net": net, "sde": sde, "shape": [1, 8, 8]},
                "data_config": {"_target_": "lightning_sde.data.DigitsDataModule"}}, path)
    return path


def test_a_checkpoint_without_its_data_config_is_told_which_data_it_was_trained_on(tmp_path):
    import torch

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("likelihood", overrides=[f"out={tmp_path}/out", f"checkpoint={digits_checkpoint(tmp_path)}"])
    with pytest.raises(ValueError, match=r"^config data: a checkpoint needs the config of its data, as it was "
                                         r"trained: data=digits$"):
        validate(cfg)
    path = tmp_path / "digits.ckpt"  # its settings that differ from the config's (followed, the hint is enough)
    torch.save({**torch.load(path, weights_only=True), "data_config": {
        "_target_": "lightning_sde.data.DigitsDataModule", "dequantize": True, "num_workers": 3}}, path)
    with pytest.raises(ValueError, match=r"trained: data=digits data.dequantize=true$"):
        validate(cfg)
    for seed, hint in ((0, ""), (1, " \\+data.seed=1")):  # not a key of the shipped config: added, where not 0
        torch.save({**torch.load(path, weights_only=True), "data_config": {
            "_target_": "lightning_sde.data.DigitsDataModule", "seed": seed}}, path)
        with pytest.raises(ValueError, match=f"trained: data=digits{hint}$"):
            validate(cfg)


def test_more_samples_than_the_validation_set_holds_is_refused_before_any_integration(tmp_path, monkeypatch):
    """n=10000 on a validation set of 1000 (the docstring's CIFAR-10 command) warned, scored 1000 and exited 0."""
    import torch

    from lightning_sde.cli import likelihood

    path = digits_checkpoint(tmp_path)
    monkeypatch.setattr(likelihood, "log_likelihood", lambda *a, **k: pytest.fail("integrated before refusing"))
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("likelihood", overrides=[f"out={tmp_path}/out", f"checkpoint={path}", "data=digits",
                                               "data.n_val=4", "n=6"])
    monkeypatch.setattr(likelihood, "overridden", lambda key: key == "n")  # n=6 given on the command line
    with pytest.raises(ValueError, match=r"^config n: the validation set has 4 samples, fewer than n = 6; set n=4$"):
        likelihood.run(cfg)
    assert not list((tmp_path / "out").glob("*.jsonl"))
    monkeypatch.undo()  # the default n (500 > digits' 180 validation images, the documented command): all of them
    monkeypatch.setattr(likelihood, "log_likelihood", lambda den, x, *a, **k: {
        "logp": torch.zeros(len(x)), "logp_se": torch.zeros(len(x)), "prior_logp": torch.zeros(len(x)), "nfe": 1})
    assert likelihood.run(cfg)["n"] == 4


def test_only_the_checkpoints_held_out_images_are_scored(tmp_path, monkeypatch):
    """Digits and image folders validate on images held out of the training data: data=digits (split seed 0) scored a
    seed-3 run on images it mostly trained on, and a larger data.n_val (which the n message advised) added training
    images, both reported as held-out bits/dim."""
    import torch

    from lightning_sde.cli import likelihood

    path = digits_checkpoint(tmp_path)
    torch.save({**torch.load(path, weights_only=True), "data_config": {
        "_target_": "lightning_sde.data.DigitsDataModule", "n_val": 100, "seed": 3}}, path)

    runs = []

    def run(*overrides):
        runs.append(overrides)  # a folder each
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("likelihood", overrides=[f"out={tmp_path}/{len(runs)}", f"checkpoint={path}",
                                                   "data=digits", "n=8", *overrides])
        return likelihood.run(cfg)

    monkeypatch.setattr(likelihood, "log_likelihood", lambda *a, **k: pytest.fail("integrated before refusing"))
    with pytest.raises(ValueError, match=r"^config data.seed: the checkpoint .* split its data with seed 3 .*the "
                                         r"validation images of seed 0 are mostly images it trained on: set "
                                         r"\+data.seed=3$"):
        run()
    with pytest.raises(ValueError, match=r"validation images of seed 5 are mostly images it trained on: set "
                                         r"\+\+data.seed=3$"):  # the seed already set: +data.seed is refused
        run("+data.seed=5")
    with pytest.raises(ValueError, match=r"^config data.n_val: the checkpoint .* held out 100 validation images; "
                                         r"data.n_val=101 adds 1 it trained on: set data.n_val=100 or fewer"):
        run("+data.seed=3", "data.n_val=101")
    monkeypatch.setattr(likelihood, "log_likelihood", lambda den, x, *a, **k: {
        "logp": torch.zeros(len(x)), "logp_se": torch.zeros(len(x)), "prior_logp": torch.zeros(len(x)), "nfe": 1})
    assert run("+data.seed=3", "data.n_val=50")["n"] == 8  # the first 50 of its 100
    assert run("+data.seed=3", "data.n_val=100", "data.dequantize=false")["n"] == 8
    assert run("+data.seed=5", "++data.seed=3", "data.n_val=100")["n"] == 8  # the mend of a seed already set


def test_the_flow_starts_at_the_eps_asked_for_and_the_summary_says_which(tmp_path):
    """score_sde reports bits/dim from t = 1e-5; a model trained from 1e-3 could only be scored from 1e-3, and the
    summary did not say from where."""
    from lightning_sde.cli.likelihood import run

    def summary(*overrides):
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("likelihood", overrides=[f"out={tmp_path}/{len(overrides)}", "n=20", *overrides])
        return run(cfg)

    model, low = summary(), summary("eps=1e-5")
    assert model["eps"] == 1e-3 and low["eps"] == 1e-5 and low["settings"]["eps"] == 1e-5
    assert "eps" not in model["settings"]  # a result from before the option is of the same settings
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        validate(compose("likelihood", overrides=[f"out={tmp_path}/0", "n=20", "eps=1e-3"]))  # the model's own eps:
        # the same settings as the result there (was: refused as "the result of other settings")
        import json

        summary_path = tmp_path / "0" / "summary.json"  # a result of the version that recorded the model's own eps
        summary_path.write_text(json.dumps({"settings": {**model["settings"], "eps": 1e-3}}))
        validate(compose("likelihood", overrides=[f"out={tmp_path}/0", "n=20"]))
    assert low["mean_true_logp"] != model["mean_true_logp"]  # p_eps itself changes with eps
    assert low["max_abs_error"] < 5e-3 and model["max_abs_error"] < 5e-3  # each against the truth at its own eps


def test_the_summary_records_the_ode_settings_the_solve_used(tmp_path):
    """With ode.method=rk4 the summary's ode held dopri5's rtol/atol/error_norm and steps: null (100 were taken)."""
    from lightning_sde.cli.likelihood import run

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("likelihood", overrides=[f"out={tmp_path}/out", "n=4", "ode.method=rk4", "~ode.rtol",
                                               "~ode.atol", "~ode.error_norm"])
    summary = run(cfg)
    assert summary["ode"] == summary["settings"]["ode"] == {"method": "rk4", "steps": 100}


def test_an_adaptive_solves_batch_is_a_setting_and_the_summary_names_the_code(tmp_path):
    """A rerun at another batch_size replaced the result with other values (an adaptive solve's steps are its batch's:
    0.02 nats apart) under identical settings, and the summary named no code version."""
    import json

    from lightning_sde.cli.likelihood import run

    def config(out, *overrides):
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            return compose("likelihood", overrides=[f"out={tmp_path}/{out}", "n=12", *overrides])

    first = run(config("a", "batch_size=12"))
    assert first["settings"]["batch_size"] == 12 and first["settings"]["world_size"] == 1
    assert first["batch_size"] == 12 and first["git_commit"] and first["device"] == "cpu"
    smaller = run(config("b", "batch_size=5"))
    assert smaller["mean_logp"] != first["mean_logp"]  # what made the batch a setting
    with pytest.raises(ValueError, match=r"holds the result of other settings \(batch_size differ: an adaptive "
                                         r"solve's steps are its batch's\); give another name="):
        validate(config("a", "batch_size=5"))
    validate(config("a", "batch_size=500"))  # n=12 in one batch either way: the same numbers, not refused
    summary_path = tmp_path / "a" / "summary.json"  # a result from before the batch was recorded: this run's
    old = {k: v for k, v in first["settings"].items() if k not in ("batch_size", "world_size")}
    summary_path.write_text(json.dumps({"settings": old}))
    validate(config("a", "batch_size=5"))
    fixed = ["ode.method=rk4", "ode.steps=20", "~ode.rtol", "~ode.atol", "~ode.error_norm"]
    rk4 = run(config("c", "batch_size=12", *fixed))  # fixed steps: each sample's value its own, whatever the batch
    assert "batch_size" not in rk4["settings"]
    validate(config("c", "batch_size=5", *fixed))
    # the same to rounding (the network's matmuls block by batch: one run in several differed in the last digit)
    assert run(config("d", "batch_size=5", *fixed))["mean_logp"] == pytest.approx(rk4["mean_logp"], rel=1e-12, abs=0)
