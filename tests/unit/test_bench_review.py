"""lsde-bench, as a review found it wanting: the noise floor's sample count, set-up cost, one reference per target,
duplicate grid values, and the W&B run across launches (lost cells, best/ and floor/ summaries). Small sweeps on
exact mixtures in-process; W&B through a stand-in run (what SweepRun logs and summarises) and real run files."""

import json
import math
import re
import struct
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from lightning_sde.bench import report as views
from lightning_sde.bench.dashboard import SweepRun, cell_id, write_sidecar
from lightning_sde.bench.results import ResultsStore, SamplePreviews, SweepPlans, cell_key_of
from lightning_sde.configuration import CONFIG_PACKAGE

TINY = ["~samplers", "+sampler@samplers.ddim=ddim", "nfe=[4]", "seeds.count=32", "batch_size=32", "progress=false",
        "metrics=[mmd]", "noise_floor=false", "wandb.enabled=false"]


def sweep(tmp_path: Path, *overrides) -> list[dict]:
    from lightning_sde.bench import runner

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("bench", overrides=[f"results={tmp_path}/results.jsonl", *TINY, *overrides])
    runner.run_sweep(cfg)
    return views.load(tmp_path / "results.jsonl")


# 1: the noise floor is a second set of seeds.count exact samples, whatever the reference's size

def test_the_noise_floor_scores_seeds_count_samples_against_a_larger_reference(tmp_path, monkeypatch):
    from lightning_sde.bench import runner

    scored = {}
    score = runner.score
    monkeypatch.setattr(runner, "score", lambda scorer, cell, samples, x: (
        scored.__setitem__(cell.grid, len(x)), score(scorer, cell, samples, x))[1])
    rows = sweep(tmp_path, "noise_floor=true", "reference_count=200")
    floor = next(r for r in rows if r["grid"] == "exact")
    assert scored == {"exact": 32, "nfe": 32}
    assert floor["n_samples"] == 32 and floor["n_reference"] == 200


# 4: set-up NFE (a grid selected on a pilot) reported apart from the sampling NFE; where the times were measured

def test_the_time_views_say_when_a_files_times_were_measured_under_differing_conditions(tmp_path, caplog):
    """An extended sweep's cells were timed in another launch, maybe at another batch size or thread count: one
    curve joined a 0.2 s point and a 33 s one without a word. Rows record where they were timed; the views say
    when the shown cells differ in it."""
    from lightning_sde.plotting.sweeps import metrics_figure

    (row,) = sweep(tmp_path, "batch_size=16")
    assert row["threads"] == torch.get_num_threads() and row["host"] and row["launch"]
    assert "differing" not in views.summary_table([row])
    later = {**row, "key": row["key"].replace('"nfe", 4', '"nfe", 8'), "requested": 8, "nfe": 8.0,
             "batch_size": 1, "threads": row["threads"] + 1, "launch": "2026-01-01T00:00:00+00:00"}
    for other, said in [({"batch_size": 1}, "batch sizes 1 / 16"), ({"threads": row["threads"] + 1}, "threads "),
                        ({"launch": "2026-01-01T00:00:00+00:00"}, "2 launches"),
                        ({"host": "elsewhere", "git_commit": "x"}, "hosts ")]:
        changed = {**row, "key": later["key"], "requested": 8, "nfe": 8.0, **other}
        assert f"timed under differing conditions, so compare times only where alike: {said}" in \
            views.summary_table([row, changed]), other
    results = tmp_path / "mixed.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in (row, later)))
    views.report(results, tmp_path / "views")
    assert "timed under differing conditions, so compare times only where alike (the CSV has each row's): batch " \
           "sizes 1 / 16; threads" in caplog.text
    caption = metrics_figure([row, later], [row, later]).get_supxlabel()
    assert "timed under differing conditions" in " ".join(caption.split())


def test_the_views_say_when_the_values_shown_were_computed_by_several_code_versions(tmp_path, caplog):
    """A sweep extended after an update joined one code version's values and another's on one curve without a word
    (a changed sampler's older budgets kept its old values); each row's git_commit said so in the CSV alone."""
    from lightning_sde.plotting.sweeps import metrics_figure

    (row,) = sweep(tmp_path, "batch_size=16")
    later = {**row, "key": row["key"].replace('"nfe", 4', '"nfe", 8'), "requested": 8, "nfe": 8.0}
    assert "code versions" not in views.summary_table([row, later])
    updated = {**later, "git_commit": "0123456789abcdef0123456789abcdef01234567", "time": "2999-01-01T00:00:00"}
    commit = row["git_commit"][:12] + row["git_commit"][40:]  # -dirty kept
    said = f"values from 2 code versions ({commit}: 1 cell; 0123456789ab: 1 cell)"  # the earliest first
    assert said in views.summary_table([row, updated])
    results = tmp_path / "mixed.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in (row, updated)))
    views.report(results, tmp_path / "views")
    assert "were computed by 2 code versions" in caplog.text
    assert said.capitalize() in " ".join(next((tmp_path / "views").glob("*.md")).read_text().split())
    assert said in " ".join(metrics_figure([row, updated], [row, updated]).get_supxlabel().split())
    # one metric of a cell computed again by other code: the cell counts for both
    other_metric = {**row, "metric": "sliced_w2", "git_commit": updated["git_commit"], "time": updated["time"]}
    assert f"values from 2 code versions ({commit}: 1 cell; 0123456789ab: 1 cell)" in \
        views.summary_table([row, other_metric])


def test_set_up_nfe_and_time_are_recorded_apart_from_the_sampling_nfe(tmp_path, monkeypatch, capsys):
    import lightning_sde.exact as exact
    from lightning_sde.samplers import schedule

    monkeypatch.setattr(schedule, "_tuned", OrderedDict())  # no grid tuned by an earlier test in this process
    calls = []
    forward = exact.ExactScore.forward
    monkeypatch.setattr(exact.ExactScore, "forward", lambda self, x, t, y=None: (calls.append(1),
                                                                                 forward(self, x, t, y))[1])
    rows = sweep(tmp_path, "samplers.ddim.grid=select", "+samplers.ddim.pilot=16", "batch_size=16")
    (row,) = rows
    assert row["nfe"] == 4 and row["nfe_per_batch"] == [4, 4]  # two batches: the second finds the grid tuned
    assert row["setup_nfe"] > 0 and row["setup_wall_s"] > 0
    assert len(calls) == row["setup_nfe"] + sum(row["nfe_per_batch"])  # every network call is counted once
    assert f"(4 + {row['setup_nfe']} set-up)" in views.markdown(rows)
    assert "setup_nfe" in views.summary_table(rows) and "setup_wall_s" in views.summary_table(rows)
    assert "setup_nfe" not in views.summary_table([{**row, "setup_nfe": 0, "setup_wall_s": 0}])
    assert "; [90% bootstrap interval]; wall time" in views.summary_table(rows)  # what the brackets hold
    # the time views say the set-up is left out of wall_s (a ranking by time would favour such a sampler)
    assert f"without a grid's set-up (up to {row['setup_wall_s']:.3g} s a cell" in views.summary_table(rows)
    # another sweep in this process (a Hydra multirun's next job) finds the grid selected: its rows still say what
    # the selection cost, though no network call is spent on it again
    calls.clear()
    (again,) = sweep(tmp_path / "again", "samplers.ddim.grid=select", "+samplers.ddim.pilot=16", "batch_size=16")
    assert len(calls) == sum(again["nfe_per_batch"])
    assert (again["setup_nfe"], again["setup_wall_s"]) == (row["setup_nfe"], row["setup_wall_s"])
    # and which configuration the selection ran (the row's samples are that one's)
    assert row["selected"] in ("trailing", "logsnr", "karras", "quadratic", "uniform")
    assert again["selected"] == row["selected"]
    assert f"- ddim at nfe 4: {row['selected']}" in views.markdown(rows) and "selected" in views.summary_table(rows)
    assert "selected" not in views.summary_table([{k: v for k, v in row.items() if k != "selected"}])


# 5: two targets in one results file: each its own reference

def test_each_target_in_one_results_file_keeps_its_own_reference(tmp_path):
    from lightning_sde.metrics.image import tensor_sha256

    sweep(tmp_path, "problem=eight_gaussians")
    rows = sweep(tmp_path, "problem=swiss_roll")
    previews = SamplePreviews(tmp_path / "samples")
    assert {r["problem"] for r in rows} == {"eight_gaussians", "swiss_roll"}
    for r in rows:  # the reference a cell was scored against (a preview of all 32 of them)
        assert tensor_sha256(views.reference(previews, r)) == r["reference_sha256"]
    assert views.sample_panels(rows, previews)[1] is None  # no one reference fits two targets
    one = [r for r in rows if r["problem"] == "swiss_roll"]
    assert tensor_sha256(views.sample_panels(one, previews)[1]) == one[0]["reference_sha256"]


def test_a_reference_saved_before_protocols_were_kept_apart_is_still_found(tmp_path):
    SamplePreviews(tmp_path, n=2).save_reference(torch.ones(2, 2))  # untagged: reference.pt
    assert torch.equal(SamplePreviews(tmp_path).load_reference("seeds0+32_abcd1234"), torch.ones(2, 2))


# 9: a grid value given twice

@pytest.mark.parametrize("override, message", [
    ("nfe=[10,10,10]", "config nfe: lists [10] more than once; give each value once"),
    ("tolerances=[1e-3,0.001]", "config tolerances: lists [0.001] more than once"),
])
def test_a_grid_value_given_twice_is_refused_naming_the_key(override, message):
    from lightning_sde.bench.runner import prepare

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("bench", overrides=[override])
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        prepare(cfg)


# 2, 3, 12: the sweep's W&B run across launches

class FakeRun:
    """What SweepRun uses of a W&B run: its history rows, summary and run folder."""

    project = "p"
    step = 0  # a fresh offline launch's; an online resume's is the run's last step + 1

    def __init__(self, folder: Path, run_id: str, offline: bool):
        self.dir, self.id, self.offline = str(folder / "files"), run_id, offline
        self.history, self.summary = [], {}

    def define_metric(self, *args, **kwargs):
        pass

    def log(self, row, step=None):
        self.history.append(row)


def launch(monkeypatch, results: Path, started: str, offline: bool = False) -> SweepRun:
    """A SweepRun as a (re)started sweep opens it, on a stand-in run in wandb/offline-run-<started>-<id>."""
    import wandb

    run_id = json.loads((results.with_name("results.wandb.json")).read_text())["id"]
    folder = results.parent / "wandb" / f"offline-run-{started}-{run_id}"
    monkeypatch.setattr(wandb, "init", lambda **kwargs: FakeRun(folder, kwargs["id"], offline))
    return SweepRun(results, "p", "bench-x", "x", {}, [])


def result_rows(sampler: str, nfe, value: float, grid: str = "nfe", metric: str = "mmd") -> list[dict]:
    key = json.dumps([sampler, grid, nfe, metric])
    return [{"key": key, "target": "mixture:eight|sde:vp", "sampler": sampler, "sampler_name": sampler,
             "metric": metric, "grid": grid, "requested": nfe, "nfe": nfe or 0, "value": value, "wall_s": 0.1,
             "seed_start": 0, "seed_count": 64, "problem": "eight_gaussians", "sde": "vp",
             "time": f"2026-01-01T00:00:{nfe or 0:02d}+00:00"}]


def test_two_later_targets_alike_in_short_name_keep_their_own_wandb_keys(tmp_path, monkeypatch):
    """VP first, then VE twice (another sigma_max): the two VE targets were told apart from the first only, and
    shared the key `mmd/ddim [eight_gaussians/ve]` and one best/ summary."""
    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1"})
    rows = [{**result_rows("ddim", 10, value)[0], "key": target, "target": target, "sde": sde} for target, sde, value
            in (("mixture:eight|sde:vp", "vp", 0.1), ("mixture:eight|sde:ve", "ve", 0.2),
                ("mixture:eight|sde:ve|sigma_max=20", "ve", 0.3))]
    ResultsStore(results).append(rows)
    run = launch(monkeypatch, results, "20260101")
    for r in rows:
        run.log_cell(cell_id([r]), [r])
    keys = [k for logged in run.run.history for k in logged if k.startswith("mmd/")]
    assert keys[0] == "mmd/ddim" and len(set(keys)) == 3
    assert {k: v for k, v in run.run.summary.items() if k.startswith("best/mmd/") and not k.endswith("/nfe")} == {
        "best/" + k: v for k, v in zip(keys, (0.1, 0.2, 0.3), strict=True)}


def test_a_label_rerun_with_other_parameters_is_a_curve_of_its_own_on_wandb(tmp_path, monkeypatch):
    """`samplers.ddim_10.denoise=true` rerun into the same results file: both configurations' points were logged as
    `mmd/ddim_10`, one W&B line through two samplers."""
    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1"})

    def rows(params, nfe, value):
        key = json.dumps(["mixture:eight|sde:vp", "ddim_10", "ddim", params, "nfe", nfe, 0, 64, "mmd", {}])
        return [{**result_rows("ddim_10", nfe, value)[0], "key": key, "params": params}]

    run = launch(monkeypatch, results, "20260101")
    plain, denoised = [({"steps": 5}, 5, 0.3), ({"steps": 9}, 10, 0.2)], [({"steps": 4, "denoise": True}, 5, 0.25),
                                                                          ({"steps": 8, "denoise": True}, 10, 0.1)]
    for params, nfe, value in plain + denoised:
        cell = rows(params, nfe, value)
        ResultsStore(results).append(cell)
        run.log_cell(cell_id(cell), cell)
    keys = [k for logged in run.run.history for k in logged if k.startswith("mmd/")]
    assert keys[:2] == ["mmd/ddim_10"] * 2 and keys[2] == keys[3] and keys[2].startswith("mmd/ddim_10 #")
    run.update_summaries()  # (a live sweep's: at most every SUMMARY_EVERY_S, and after its last cell)
    assert run.run.summary["best/" + keys[2]] == 0.1  # the views' variant: the last run
    again = launch(monkeypatch, results, "20260102")  # a later launch keeps each variant's key
    cell = rows({"steps": 8, "denoise": True}, 10, 0.1)
    assert again.label(cell[0]) == keys[2].removeprefix("mmd/")
    assert again.label(rows({"steps": 9}, 10, 0.2)[0]) == "ddim_10"
    # `report --wandb` on a copy, into a new run: every cell, each variant under the key the live sweep gave it
    from lightning_sde.bench.report import to_wandb
    from lightning_sde.bench.results import labelled, load

    copy = tmp_path / "copy" / "results.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(results.read_bytes())
    write_sidecar(copy, {"id": "run2"})
    monkeypatch.setattr(FakeRun, "finish", lambda self: None, raising=False)
    monkeypatch.setattr(FakeRun, "entity", "", raising=False)
    monkeypatch.setattr(FakeRun, "project", "p", raising=False)
    fresh = launch(monkeypatch, copy, "20260103", offline=True)
    to_wandb(labelled(load(copy)), copy, "p", run=fresh)
    assert sorted(k for logged in fresh.run.history for k in logged if k.startswith("mmd/")) == sorted(keys)


def test_data_without_a_checkpoint_is_refused_not_ignored(tmp_path):
    """`lsde-compare data=toy2d data.name=swiss_roll` compared the samplers on the default problem (8 Gaussians) and
    exited 0: the data group only names a checkpoint's data."""
    with pytest.raises(ValueError, match=r"^config data: goes with a checkpoint \(the data it was trained on\); the "
                                         r"target here is the exact problem eight_gaussians"):
        sweep(tmp_path, "data=toy2d", "data.name=swiss_roll")
    assert not (tmp_path / "results.jsonl").exists()


def test_a_tuned_cells_wandb_row_says_what_ran_and_what_tuning_it_cost(tmp_path, monkeypatch):
    """grid=select's cells showed only their configured parameters (order 3, no Gaussian start) on W&B, not the
    configuration chosen and run (the results file's `selected`)."""
    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1"})
    rows = [{**result_rows("rec", 10, 0.1)[0], "params": {"order": 3, "grid": "select"}, "setup_nfe": 409,
             "selected": "quadratic, order=2, gaussian_start=0.15"}]
    ResultsStore(results).append(rows)
    run = launch(monkeypatch, results, "20260101")
    run.log_cell(cell_id(rows), rows)
    logged = run.run.history[-1]
    assert logged["cell/selected"] == "quadratic, order=2, gaussian_start=0.15" and logged["cell/setup_nfe"] == 409
    assert json.loads(logged["cell/params"]) == {"order": 3, "grid": "select"}
    untuned = result_rows("ddim", 10, 0.2)
    ResultsStore(results).append(untuned)
    run.log_cell(cell_id(untuned), untuned)
    assert "cell/selected" not in run.run.history[-1] and "cell/setup_nfe" not in run.run.history[-1]


def test_a_cell_recomputed_with_more_metrics_is_the_cell_already_logged():
    """A rerun with more metrics recomputes the cell and logs it: its id was the hash of its smallest row key, which
    the new metric changed (the cell was logged twice)."""
    from lightning_sde.bench.runner import rows_of
    from lightning_sde.bench.spec import Cell
    from lightning_sde.generation import Samples

    def rows(metrics):
        cell = Cell("mix", "ddim", "ddim", {"steps": 5}, "nfe", 5, 0, 4, metrics)
        return rows_of(cell, Samples(torch.zeros(4, 2), [5], 0.1, None, 1), dict.fromkeys(metrics, 0.5), 4,
                       torch.device("cpu"), {})

    assert cell_id(rows(("sliced_w2",))) == cell_id(rows(("mmd", "sliced_w2")))
    assert cell_id(rows(("sliced_w2",))) != cell_id(rows_of(Cell("mix", "ddim", "ddim", {"steps": 6}, "nfe", 5, 0, 4, (
        "sliced_w2",)), Samples(torch.zeros(4, 2), [5], 0.1, None, 1), {"sliced_w2": 0.5}, 4, torch.device("cpu"),
        {}))


def test_a_cell_an_earlier_version_listed_as_logged_is_not_logged_again(tmp_path, monkeypatch):
    from lightning_sde.bench.dashboard import legacy_cell_id
    from lightning_sde.bench.runner import rows_of
    from lightning_sde.bench.spec import Cell
    from lightning_sde.generation import Samples

    results = tmp_path / "results.jsonl"
    cell = Cell("mixture:eight|sde:vp", "ddim", "ddim", {"steps": 10}, "nfe", 10, 0, 4, ("mmd", "sliced_w2"))
    rows = rows_of(cell, Samples(torch.zeros(4, 2), [10], 0.1, None, 1), {"mmd": 0.1, "sliced_w2": 0.2}, 4,
                   torch.device("cpu"), {"problem": "eight_gaussians", "sde": "vp"})
    write_sidecar(results, {"id": "run1", "logged": [legacy_cell_id(rows)]})
    ResultsStore(results).append(rows)
    run = launch(monkeypatch, results, "20260101")
    run.log_cell(cell_id(rows), rows)
    assert cell_id(rows) != legacy_cell_id(rows) and run.run.history == []


def test_best_summaries_after_a_resume_hold_every_launchs_best(tmp_path, monkeypatch):
    """Launch 1 logs DDIM at NFE 10 (the best); launch 2 logs NFE 5 only: best/mmd/ddim stays NFE 10's."""
    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1"})
    store = ResultsStore(results)
    for nfe, value in ((10, 0.1), (5, 0.5)):
        store.append(result_rows("ddim", nfe, value))
        run = launch(monkeypatch, results, f"2026010{nfe}")
        run.log_cell(cell_id(result_rows("ddim", nfe, value)), result_rows("ddim", nfe, value))
    assert [row["nfe"] for row in run.run.history] == [5]  # launch 2 logs only its cell
    assert run.run.summary == {"best/mmd/ddim": 0.1, "best/mmd/ddim/nfe": 10}


def test_a_guided_mixture_sweeps_floor_draws_each_seeds_class_as_its_samplers_do():
    """With labels=cycle seed i samples class i mod C: exactly balanced. The floor was drawn at random from the
    classes' equal mixture, its class counts varied, and it sat above a perfect sampler (sliced W2 0.49 against exact
    class-balanced samples' 0.28, 200 seeds)."""
    from lightning_sde.exact import eight_gaussians
    from lightning_sde.targets import Target, floor_samples, load_target, scored_distribution

    for overrides, cycled in ((["guidance=[0]"], True), (["guidance=[0]", "labels=1"], False), ([], False)):
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("bench", overrides=["+problem.labels=[0,0,1,1,2,2,3,3]", *overrides])
        assert load_target(cfg, "mixture", "t", "cpu").cycled == cycled

    mixture = scored_distribution(eight_gaussians(labels=[0, 0, 1, 1, 2, 2, 3, 3]), "cycle")
    x, _ = floor_samples(Target("t", "points", mixture=mixture, cycled=True), 40, 5, 400)
    classes = lambda x: mixture.labels[torch.cdist(x.double(), mixture.means).argmin(1)]  # noqa: E731
    assert torch.equal(classes(x), torch.arange(5, 45) % 4)  # each seed's class, as its samples'
    drawn, _ = floor_samples(Target("t", "points", mixture=mixture), 40, 5, 400)  # unguided: the mixture's draws
    assert not torch.equal(classes(drawn), torch.arange(5, 45) % 4)


def test_the_noise_floor_is_a_floor_summary_not_a_sampler(tmp_path, monkeypatch):
    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1"})
    floor = result_rows("exact (noise floor)", None, 0.05, grid="exact")
    ResultsStore(results).append(floor + result_rows("ddim", 10, 0.1))
    run = launch(monkeypatch, results, "20260101")
    run.log_cell(cell_id(floor), floor)
    assert run.run.history == [] and run.logged(cell_id(floor))  # no point at NFE 0 on a log axis
    assert run.run.summary == {"floor/mmd": 0.05, "best/mmd/ddim": 0.1, "best/mmd/ddim/nfe": 10}


def test_the_best_and_floor_summaries_carry_their_intervals(tmp_path, monkeypatch):
    """best/ and floor/ alone let a reviewer rank two values the sweep cannot tell apart."""
    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1"})
    rows = [{**r, "ci_low": value - 0.02, "ci_high": value + 0.03} for nfe, value in ((10, 0.1), (5, 0.5))
            for r in result_rows("ddim", nfe, value)]
    floor = [{**r, "ci_low": 0.04, "ci_high": 0.07} for r in result_rows("exact (noise floor)", None, 0.05, "exact")]
    ResultsStore(results).append(rows + floor)
    run = launch(monkeypatch, results, "20260101")
    assert run.summaries() == pytest.approx({
        "floor/mmd": 0.05, "floor/mmd/ci_low": 0.04, "floor/mmd/ci_high": 0.07, "best/mmd/ddim": 0.1,
        "best/mmd/ddim/nfe": 10, "best/mmd/ddim/ci_low": 0.08, "best/mmd/ddim/ci_high": 0.13})
    run.log_cell(cell_id(rows[:1]), rows[:1])
    assert run.run.summary["best/mmd/ddim/ci_low"] == 0.08
    assert run.run.history[-1]["mmd_ci/ddim"] == pytest.approx(0.025)  # W&B's error bar: half the interval's width
    run._summarized = math.inf  # the next cell comes within SUMMARY_EVERY_S (however slow this machine)
    better = result_rows("ddim", 20, 0.05)  # a better value without an interval (an older row): no stale one beside
    ResultsStore(results).append(better)
    run.log_cell(cell_id(better), better)
    assert run.run.summary["best/mmd/ddim"] == 0.1  # within SUMMARY_EVERY_S of the first: not recomputed yet
    run.update_summaries()  # as a report does after its last cell
    assert run.run.summary["best/mmd/ddim"] == 0.05 and "best/mmd/ddim/ci_low" not in run.run.summary
    assert run.run.summary["floor/mmd/ci_low"] == 0.04


def test_a_cell_of_a_second_target_logs_its_sample_picture(tmp_path, monkeypatch):
    """Two targets in one results file label their samplers `ddim [eight_gaussians/vp]`: the picture's file name
    must hold no slash."""
    import torch

    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1"})
    rows = [{**result_rows("ddim", 10, 0.1)[0], "key": target, "target": target, "sde": sde}
            for target, sde in (("mixture:eight|sde:vp", "vp"), ("mixture:eight|sde:ve", "ve"))]
    ResultsStore(results).append(rows)
    run = launch(monkeypatch, results, "20260101")
    run.log_cell(cell_id(rows[:1]), rows[:1])  # the run's first target: plain labels
    run.log_cell(cell_id(rows[1:]), rows[1:], torch.randn(16, 2), torch.randn(16, 2))
    logged = run.run.history[-1]
    (picture,) = [k for k in logged if k.startswith("samples/")]
    assert "/" in run.label(rows[1]) and picture == f"samples/{run.label(rows[1])}/nfe_00010"
    assert [p.name for p in (tmp_path / "wandb_media").iterdir()] == ["ddim_eight_gaussians_ve_637abf__nfe_00010.png"]


def test_the_best_log_likelihood_is_the_one_closest_to_exact_samples(tmp_path, monkeypatch):
    """A mode-seeking sampler's samples score a mean log-likelihood above exact samples': best/loglik is the value
    closest to the noise floor's (exact samples), not the highest; without a floor there is no best/loglik."""
    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1"})
    ResultsStore(results).append([row for nfe, value in ((10, -2.0), (20, -2.6), (50, -2.45)) for row in
                                  result_rows("ddim", nfe, value, metric="loglik")])
    run = launch(monkeypatch, results, "20260101")
    assert "best/loglik/ddim" not in run.summaries()
    ResultsStore(results).append(result_rows("exact (noise floor)", None, -2.5, grid="exact", metric="loglik"))
    run = launch(monkeypatch, results, "20260102")
    assert run.summaries() == {"floor/loglik": -2.5, "best/loglik/ddim": -2.45, "best/loglik/ddim/nfe": 50}


def write_run_file(folder: Path, run_id: str, rows: list[dict]) -> None:
    """An offline W&B run file holding `rows` as history records (a header alone: killed before W&B wrote any)."""
    from wandb.proto import wandb_internal_pb2

    data = b":W&B\xe1\xbe\x00"
    for row in rows:
        record = wandb_internal_pb2.Record()
        for k, v in row.items():
            item = record.history.item.add()
            item.key, item.value_json = k, json.dumps(v)
        payload = record.SerializeToString()
        data += struct.pack("<IHB", 0, len(payload), 1) + payload
    folder.mkdir(parents=True)
    (folder / f"run-{run_id}.wandb").write_bytes(data)


@pytest.mark.parametrize("earlier, kept", [
    ([], []),  # killed before W&B wrote a row: every listed cell is logged again
    ([{"nfe": 3, "cell/id": "a"}], ["a"]),  # b was listed, never written
    ([{"nfe": 3, "cell/sampler": "ddim"}], ["a", "b"]),  # written before cells carried cell/id: the sidecar's word
])
def test_cells_listed_as_logged_are_kept_only_when_an_earlier_run_file_holds_them(tmp_path, monkeypatch, earlier,
                                                                                   kept):
    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1", "logged": ["a", "b"]})
    write_run_file(tmp_path / "wandb" / "offline-run-20260101_000000-run1", "run1", earlier)
    run = launch(monkeypatch, results, "20260101_000100", offline=True)
    assert run.state["logged"] == kept
    assert json.loads(results.with_name("results.wandb.json").read_text())["logged"] == kept


def test_a_noise_floor_cell_has_no_history_row_and_is_never_taken_for_lost(tmp_path, monkeypatch, caplog):
    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1", "logged": ["a", "floor"], "summaries_only": ["floor"]})
    write_run_file(tmp_path / "wandb" / "offline-run-20260101_000000-run1", "run1", [{"nfe": 3, "cell/id": "a"}])
    run = launch(monkeypatch, results, "20260101_000100", offline=True)
    assert run.state["logged"] == ["a", "floor"] and "logged again" not in caplog.text


def test_a_new_name_for_a_results_file_with_a_run_says_it_is_not_used(tmp_path, monkeypatch, caplog):
    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1", "name": "first", "project": "p", "group": "x"})
    with caplog.at_level("WARNING"):
        launch(monkeypatch, results, "20260101")  # asks for name bench-x
    assert "name 'bench-x' not used: the run of" in caplog.text and "keeps its first name, 'first'" in caplog.text
    assert "project" not in caplog.text  # the same project: nothing said


def test_the_views_after_a_sweep_show_its_own_rows_of_a_sampler_rerun_with_other_parameters():
    """eta=0, then eta=1, then eta=0 again (nothing computed: its rows are there): the views of the third sweep show
    eta=0's value, not the last written eta=1's."""
    from lightning_sde.bench.report import for_views

    (eta0,), (eta1,) = result_rows("ddim", 10, 0.215), result_rows("ddim", 10, 0.207)
    eta0["key"], eta1["key"] = "ddim-eta0", "ddim-eta1"
    eta1["time"] = "2026-01-01T00:01:00+00:00"  # written later
    assert [r["value"] for r in for_views([eta0, eta1])[0]] == [0.207]  # no sweep named: the last written
    assert [r["value"] for r in for_views([eta0, eta1], preferred={"ddim-eta0"})[0]] == [0.215]


def test_each_cells_log_line_gives_its_values_with_intervals_and_its_sampling_and_whole_times(tmp_path, caplog):
    """The line gave the sampling time alone ("0.0195s" for a cell of 0.45 s with scoring and its bootstrap) and the
    values without the intervals the rows hold."""
    import logging

    caplog.set_level(logging.INFO, logger="lightning_sde.bench.runner")
    sweep(tmp_path)
    (line,) = [r.getMessage() for r in caplog.records if "done:" in r.getMessage()]
    assert re.search(r"^cell 1/1 done: ddim at NFE 4: \w+ [-\d.]+ \[[-\d.]+, [-\d.]+\].*; sampling [\d.e-]+ s, "
                     r"cell [\d.e-]+ s; ETA", line), line
    sampling, whole = (float(v) for v in re.findall(r"sampling ([\d.e-]+) s, cell ([\d.e-]+) s", line)[0])
    assert 0 < sampling <= whole


# the noise floor of a checkpoint's sweep: the data's training samples after the reference's

def _digits_checkpoint(tmp_path: Path, num_classes: int | None = None) -> Path:
    from lightning_sde.module import ScoreModule

    net = {"_target_": "lightning_sde.models.unet.UNet", "in_channels": 1, "image_size": 8, "channels": 8,
           "channel_mult": [1], "num_res_blocks": 1, "attn_resolutions": [], "num_classes": num_classes}
    sde = {"_target_": "lightning_sde.sde.VPSDE"}
    data = {"_target_": "lightning_sde.data.DigitsDataModule", "dequantize": False, "labels": num_classes is not None}
    path = tmp_path / "digits.ckpt"
    torch.save({"state_dict": ScoreModule(net=net, sde=sde, shape=[1, 8, 8]).state_dict(), "global_step": 1,
                "hyper_parameters": {"net": net, "sde": sde, "shape": [1, 8, 8]}, "data_config": data}, path)
    return path


def test_digits_features_on_a_checkpoints_colour_images_are_refused_naming_the_key_before_sampling(tmp_path):
    import numpy as np
    from PIL import Image

    from lightning_sde.module import ScoreModule

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    net = {"_target_": "lightning_sde.models.unet.UNet", "in_channels": 3, "image_size": 8, "channels": 8,
           "channel_mult": [1], "num_res_blocks": 1, "attn_resolutions": []}
    sde = {"_target_": "lightning_sde.sde.VPSDE"}
    data = {"_target_": "lightning_sde.data.ImageFolderDataModule", "root": str(tmp_path / "images"), "image_size": 8}
    torch.save({"state_dict": ScoreModule(net=net, sde=sde, shape=[3, 8, 8]).state_dict(), "global_step": 1,
                "hyper_parameters": {"net": net, "sde": sde, "shape": [3, 8, 8]}, "data_config": data},
               tmp_path / "colour.ckpt")
    with pytest.raises(ValueError, match=re.escape("config feature_extractor: the digits features take 8x8 grayscale "
                                                   "images (the digits data); these images have shape (3, 8, 8)")):
        sweep(tmp_path, f"checkpoint={tmp_path / 'colour.ckpt'}", "data=image_folder",
              f"data.root={tmp_path / 'images'}", "data.image_size=8", "metrics=[fid]", "reference_count=20",
              "noise_floor=false")
    assert not (tmp_path / "results.jsonl").exists()


def test_a_sweep_extended_after_its_images_changed_under_the_same_folder_is_refused_before_sampling(tmp_path):
    """The keys name the data by its folder: new pixels under the same file names made the extension's rows one curve
    with the old ones (FID tripling from NFE 10 to 20, all of it the reference's change)."""
    import numpy as np
    from PIL import Image

    def write(seed):
        rng = np.random.default_rng(seed)
        for i in range(40):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")

    from lightning_sde.module import ScoreModule

    (tmp_path / "images").mkdir()
    write(0)
    net = {"_target_": "lightning_sde.models.unet.UNet", "in_channels": 1, "image_size": 8, "channels": 8,
           "channel_mult": [1], "num_res_blocks": 1, "attn_resolutions": []}
    sde = {"_target_": "lightning_sde.sde.VPSDE"}
    data = {"_target_": "lightning_sde.data.ImageFolderDataModule", "root": str(tmp_path / "images"), "image_size": 8,
            "channels": 1}
    torch.save({"state_dict": ScoreModule(net=net, sde=sde, shape=[1, 8, 8]).state_dict(), "global_step": 1,
                "hyper_parameters": {"net": net, "sde": sde, "shape": [1, 8, 8]}, "data_config": data},
               tmp_path / "gray.ckpt")
    args = [f"checkpoint={tmp_path / 'gray.ckpt'}", "data=image_folder", f"data.root={tmp_path / 'images'}",
            "data.image_size=8", "data.channels=1", "metrics=[fid]", "reference_count=20", "seeds.count=16"]
    sweep(tmp_path, *args)
    assert [r["requested"] for r in sweep(tmp_path, *args, "nfe=[4,5]")] == [4, 5]  # the same images: extended
    previews = {p: p.read_bytes() for p in (tmp_path / "samples").glob("reference*.pt")}
    assert len(previews) == 1
    write(1)
    with pytest.raises(ValueError, match=r"results '.*results.jsonl': its rows of this target and seeds were scored "
                                         r"against another reference data .*: reference_sha256 [0-9a-f]{12}\.\.\., "
                                         r"now [0-9a-f]{12}\.\.\.\. Give this sweep its own results"):
        sweep(tmp_path, *args, "nfe=[4,5,6]")
    assert [r["requested"] for r in views.load(tmp_path / "results.jsonl")] == [4, 5]
    assert {p: p.read_bytes() for p in (tmp_path / "samples").glob("reference*.pt")} == previews  # still theirs


def test_a_checkpoint_sweep_scores_the_training_samples_after_the_reference_as_its_noise_floor(tmp_path):
    from lightning_sde.data import DigitsDataModule
    from lightning_sde.data.base import STREAM_FLOOR
    from lightning_sde.metrics.scorer import Scorer

    ckpt = _digits_checkpoint(tmp_path)
    rows = sweep(tmp_path, f"checkpoint={ckpt}", "data=digits", "metrics=[fid]", "noise_floor=true",
                 "reference_count=300", "nfe=[2]")
    floor, ddim = (next(r for r in rows if r["grid"] == grid) for grid in ("exact", "nfe"))
    assert (floor["nfe"], floor["n_samples"], floor["n_reference"]) == (0, 32, 300)
    data = DigitsDataModule()
    reference, real = data.reference(300), data.real_samples(300, 32, STREAM_FLOOR)
    assert not (real[:, None] == reference[None]).flatten(2).all(-1).any()  # no floor image among the reference's
    assert floor["value"] == pytest.approx(Scorer(reference, ("fid",))(real)["fid"], rel=1e-9)
    assert floor["value"] < ddim["value"]  # an untrained model's samples are noise
    from lightning_sde.bench.dashboard import sweep_config

    assert {r["sde"] for r in rows} == {"vp"} and "sde:vp" in sweep_config("x", rows)[1]  # the W&B run's tag
    config, tags = sweep_config("x", rows)  # the data too: a checkpoint's target id holds only its hash
    assert {r["data"] for r in rows} == {"digits"} and config["data"] == "digits" and "data:digits" in tags


def test_a_digits_sweep_scores_is_precision_and_recall_with_intervals_higher_is_better(tmp_path):
    """IS needs no reference: the floor's real digits score it as the classifier sees them, an untrained model's
    samples lower, and its noise is neither realistic nor covers the digits; fewer images than IS's 10 splits are
    refused before sampling."""
    from lightning_sde.bench.report import markdown
    from lightning_sde.data import DigitsDataModule
    from lightning_sde.data.base import STREAM_FLOOR
    from lightning_sde.metrics.features import build_feature_extractor
    from lightning_sde.metrics.image import inception_score

    ckpt = _digits_checkpoint(tmp_path)
    rows = sweep(tmp_path, f"checkpoint={ckpt}", "data=digits", "metrics=[is,precision,recall]", "noise_floor=true",
                 "reference_count=300", "nfe=[2]", "seeds.count=100", "batch_size=100")
    row = lambda grid, metric: next(r for r in rows if r["grid"] == grid and r["metric"] == metric)  # noqa: E731
    for metric in ("precision", "recall"):
        real, model = row("exact", metric), row("nfe", metric)
        assert model["value"] < real["value"] - 0.5 and 0 <= model["ci_low"] <= model["value"] <= model["ci_high"] <= 1
    floor, ddim = row("exact", "is"), row("nfe", "is")
    real = DigitsDataModule().real_samples(300, 100, STREAM_FLOOR)
    with torch.no_grad():
        logits = build_feature_extractor("digits", output="logits")((real + 1) / 2)
    assert floor["metric"] == "is" and floor["value"] == pytest.approx(inception_score(logits), rel=1e-9)
    assert ddim["value"] < floor["value"] and ddim["ci_low"] <= ddim["value"] <= ddim["ci_high"]
    assert "### is (higher is better" in markdown(rows)
    with pytest.raises(ValueError, match="^config seeds.count: IS needs at least 20 images .*; got 19$"):
        sweep(tmp_path / "few", f"checkpoint={ckpt}", "data=digits", "metrics=[is]", "seeds.count=19")
    # IS reads no reference: a reference of 8 (FID/KID's least is 2/4) is no reason to refuse it
    from lightning_sde.bench.runner import prepare

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        prepare(compose("bench", overrides=[f"results={tmp_path}/small.jsonl", *TINY, f"checkpoint={ckpt}",
                                            "data=digits", "metrics=[is,fid]", "reference_count=8", "seeds.count=20"]))


def test_a_checkpoints_sweep_of_one_class_is_scored_against_that_classs_training_images(tmp_path):
    """labels=3 draws every seed as a 3: its reference and noise floor are class 3's training images (they were every
    class's, and a perfect model's FID of one class sat far above that floor)."""
    from lightning_sde.data import DigitsDataModule
    from lightning_sde.metrics.scorer import Scorer

    ckpt = _digits_checkpoint(tmp_path, num_classes=10)
    args = (f"checkpoint={ckpt}", "data=digits", "metrics=[fid]", "noise_floor=true", "reference_count=100",
            "nfe=[2]", "guidance=[0]", "labels=3")
    with pytest.raises(ValueError, match="config data.labels: a sweep of class 3 .* set data.labels=true"):
        sweep(tmp_path / "plain", *args)
    rows = sweep(tmp_path, *args, "data.labels=true")
    floor, ddim = (next(r for r in rows if r["grid"] == grid) for grid in ("exact", "nfe"))
    assert "|scored_on_labels=3" in floor["target"] and ddim["sampler"] == "ddim@w0"
    data = DigitsDataModule(labels=True)
    reference, real = data.reference(100, label=3), data.floor_set(32, 100, label=3)
    assert floor["value"] == pytest.approx(Scorer(reference, ("fid",))(real)["fid"], rel=1e-9)
    every_class = Scorer(data.reference(100), ("fid",))(real)["fid"]
    assert every_class > 2 * floor["value"], (every_class, floor["value"])  # what the old reference gave a perfect 3


def test_a_datamodule_whose_floor_set_takes_only_n_keeps_its_training_floor_and_has_none_in_a_bench():
    from lightning_sde.data.base import floor_or_reason

    class Own:
        def floor_set(self, n):
            return torch.zeros(n, 2)

    assert floor_or_reason(Own(), 5)[0].shape == (5, 2)  # training asks for n only, as before `after`
    x, why = floor_or_reason(Own(), 5, after=10)
    assert x is None and why == "the datamodule's floor_set(n) takes no `after` (the reference's size) to start after"


def test_a_checkpoint_sweep_whose_data_is_too_small_for_a_floor_says_so_and_gives_it_no_value(tmp_path, caplog):
    from lightning_sde.data import DigitsDataModule

    data = DigitsDataModule()
    data.setup("fit")
    available = len(data.train_set)
    rows = sweep(tmp_path, f"checkpoint={_digits_checkpoint(tmp_path)}", "data=digits", "metrics=[fid]",
                 "noise_floor=true", f"reference_count={available - 31}", "nfe=[2]")
    floor = next(r for r in rows if r["grid"] == "exact")
    assert floor["value"] is None and floor["ci_low"] is None
    assert (f"the noise floor has no value: the training set holds fewer than {available - 31} reference + 32 floor "
            f"samples (seeds.count=32, reference_count={available - 31})") in caplog.text
    assert next(r for r in rows if r["grid"] == "nfe")["value"] is not None


def test_a_planned_checkpoints_cell_count_is_the_one_its_sweep_has(tmp_path):
    """The pipeline sizes the bench array before training has written the checkpoint: its count left the noise floor
    out ('4 cells' for a sweep of 5)."""
    from lightning_sde.bench.runner import count_cells, prepare

    ckpt = _digits_checkpoint(tmp_path)
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = lambda path: compose("bench", overrides=[f"results={tmp_path}/r.jsonl", *TINY, "noise_floor=true",  # noqa: E731
                                                       f"checkpoint={path}", "data=digits", "metrics=[fid]"])
        planned, made = count_cells(cfg(tmp_path / "later.ckpt")), len(prepare(cfg(ckpt)).cells)
    assert planned == made == 2  # ddim at one NFE, and the floor


@pytest.mark.parametrize("labels, classes", [("1", "[0,0,1,1,2,2,3,3]"), ("cycle", "[0,0,0,0,0,0,0,1]")])
def test_guided_samples_of_an_exact_problem_are_scored_against_their_labels_distribution(tmp_path, labels, classes):
    """At w = 0 the samples are exact draws of p(x | y) (class 1; or, cycling, the two classes in equal parts where
    p(y) is 7/8, 1/8): scored against p(x) they were 4-13x the floor's MMD; against their labels' distribution they
    sit at the floor, which is drawn from it too."""
    rows = sweep(tmp_path, f"+problem.labels={classes}", "guidance=[0]", f"labels={labels}", "nfe=[60]",
                 "seeds.count=400", "batch_size=400", "noise_floor=true")
    floor, ddim = (next(r for r in rows if r["grid"] == grid) for grid in ("exact", "nfe"))
    assert ddim["sampler"] == "ddim@w0" and ddim["value"] < 2 * floor["value"] + 0.01, (ddim["value"], floor["value"])
    assert f"|scored_on_labels={labels}" in ddim["target"]


@pytest.mark.parametrize("count, message", [
    ("seeds.count=3", "KID needs a reference of at least 4 images"),
    ("reference_count=3", "KID needs a reference of at least 4 images"),
    ("seeds.count=null", "must be an integer >= 1; got None"),  # the count's own check, not a TypeError of KID's
    ("seeds.count=2.5", "must be an integer >= 1; got 2.5"),
])
def test_kid_on_a_reference_of_3_is_refused_naming_the_key_before_sampling(tmp_path, count, message):
    """Subsets of 1 image: KID was NaN, as if the sampler had diverged."""
    from lightning_sde.bench.runner import prepare

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("bench", overrides=[f"results={tmp_path}/r.jsonl", *TINY, count,
                                          f"checkpoint={_digits_checkpoint(tmp_path)}", "data=digits", "metrics=[kid]"])
    with pytest.raises(ValueError, match=f"^config {count.split('=')[0]}: {re.escape(message)}"):
        prepare(cfg)


@pytest.mark.parametrize("count", ["seeds.count=1", "reference_count=1"])
def test_fid_of_one_image_is_refused_naming_the_key_before_sampling(tmp_path, count):
    """torchmetrics' FID of one sample raised a 40-line RuntimeError after the reference and the first cell."""
    from lightning_sde.bench.runner import prepare

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("bench", overrides=[f"results={tmp_path}/r.jsonl", *TINY, count,
                                          f"checkpoint={_digits_checkpoint(tmp_path)}", "data=digits", "metrics=[fid]"])
    with pytest.raises(ValueError, match=f"^config {count.split('=')[0]}: FID needs at least 2 images .*; got 1$"):
        prepare(cfg)


@pytest.mark.parametrize("count, message", [
    ("seeds.count=2000", "seeds.count: DigitsDataModule: reference(2000)"),
    ("reference_count=1700", "reference_count: DigitsDataModule: reference(1700)"),
])
def test_a_reference_larger_than_the_training_set_is_refused_naming_the_key(tmp_path, count, message):
    """The docs' digits sweep (2000 seeds, reference_count following them) failed naming `data`, not the count."""
    with pytest.raises(ValueError, match=f"^config {re.escape(message)} asks for more than the 1617 training samples"):
        sweep(tmp_path, count, f"checkpoint={_digits_checkpoint(tmp_path)}", "data=digits", "metrics=[fid]")
    assert not (tmp_path / "results.jsonl").exists()


def test_guidance_on_a_checkpoint_trained_without_label_dropout_is_refused_before_sampling(tmp_path):
    from lightning_sde.bench.runner import prepare

    path = _digits_checkpoint(tmp_path, num_classes=10)
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "p_uncond": 0.0}}, path)
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = lambda *more: compose("bench", overrides=[f"results={tmp_path}/r.jsonl", *TINY, f"checkpoint={path}",  # noqa: E731
                                                        "data=digits", "data.labels=true", "metrics=[fid]", *more])
        with pytest.raises(ValueError, match=r"^config guidance: the checkpoint was trained with model.p_uncond=0.*; "
                                             r"sweep it at guidance=\[0\] \(seed i"):  # its own key: a list
            prepare(cfg("guidance=[0,2]"))
        with pytest.raises(ValueError, match=r"^config guidance: .* unconditional samples \(guidance=null\) use"):
            prepare(cfg())
        assert prepare(cfg("guidance=[0]")).cells


def test_the_printed_wandb_sync_command_pastes_as_one_path_whatever_spaces_it_holds():
    """`wandb sync /tmp/a b/outputs/.../offline-run-*` split into two arguments in the shell."""
    import shlex

    from lightning_sde.tracking import sync_command

    command = sync_command(Path("/tmp/a b/wandb"), "x1")
    assert shlex.split(command) == ["wandb", "sync", "/tmp/a b/wandb/offline-run-*-x1"]
    assert sync_command(Path("/plain/wandb")) == "wandb sync /plain/wandb/offline-run-*"  # as before, unquoted


def test_shards_of_two_lists_of_cells_are_refused_and_the_report_names_the_cells_not_computed(tmp_path, caplog):
    """Shards split the cell list by position: a shard launched with one budget fewer than the others would take
    cells its siblings already hold and leave its own out, and the report would draw the partial curve."""
    shard = lambda i: (f"shard.index={i}", "shard.count=2")  # noqa: E731
    assert [r["requested"] for r in sweep(tmp_path, "nfe=[4,8]", *shard(0))] == [4]
    with pytest.raises(ValueError, match=r"a launch as shard 0/2 \(.*\) listed other cells of this sweep \(2 cells; "
                                         r"this one: 1\) and 1 of them are not computed yet \(e\.g\. ddim nfe=8"):
        sweep(tmp_path, "nfe=[4]", *shard(1))
    views.report(tmp_path / "results.jsonl")
    assert "1 planned cell(s) have no rows" in caplog.text and "ddim nfe=8 seeds 0+32" in caplog.text
    assert (tmp_path / "results.md").read_text().count("**Incomplete:** 1 planned cell(s)") == 1
    assert [r["requested"] for r in sweep(tmp_path, "nfe=[4,8]", *shard(1))] == [4, 8]
    caplog.clear()
    views.report(tmp_path / "results.jsonl")
    assert "planned cell" not in caplog.text and "Incomplete" not in (tmp_path / "results.md").read_text()
    assert len(sweep(tmp_path, "nfe=[4]", *shard(1))) == 2  # that list is done: another list may follow
    # a multirun over seeds.count into one file: lists without a common cell are other sweeps, not refused
    assert len(sweep(tmp_path, "nfe=[4,8]", "seeds.count=16", *shard(0))) == 3
    # a launch its start-up checks refuse records no plan: its corrected relaunch is not refused for it
    with pytest.raises(ValueError, match="samplers.ddim"):
        sweep(tmp_path, "nfe=[4,2000]", "samplers.ddim.grid=trailing", *shard(1))
    assert len(sweep(tmp_path, "nfe=[4,8]", "seeds.count=16", *shard(1))) == 4
    assert SweepPlans(tmp_path / "results.jsonl").missing({cell_key_of(r["key"]) for r in
                                                           views.load(tmp_path / "results.jsonl")}) == []
    # with the noise floor (the default) every list of a target and seeds holds its cell: not a common sweep's
    floor = tmp_path / "floor"
    floor.mkdir()
    sweep(floor, "nfe=[4,8]", "noise_floor=true", *shard(0))
    assert len(sweep(floor, "nfe=[16]", "noise_floor=true", *shard(0))) == 2  # the floor (its 1 metric), ddim@8


def test_a_shard_with_no_cells_before_any_row_is_written_succeeds(tmp_path, capsys):
    """An array of more tasks than cells: the idle task's report found no results file and failed the array."""
    from lightning_sde.cli.bench import views as shard_views

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("bench", overrides=[f"results={tmp_path}/results.jsonl", *TINY, "shard.index=2",
                                          "shard.count=3"])
    shard_views(cfg, {"cells": 1, "shard_cells": 0, "computed": 0, "keys": set()})
    assert "no rows in" in capsys.readouterr().out and not (tmp_path / "results.jsonl").exists()


def test_a_curve_never_joins_budgets_run_with_other_sampler_parameters(tmp_path, caplog):
    """DDIM eta=0 at NFE 4 and 8, then eta=1 at NFE 8 alone: one 'ddim' curve drew eta=0's NFE 4 point beside
    eta=1's NFE 8 (a stochastic and a deterministic sampler as one line)."""
    first = {r["requested"]: r["value"] for r in sweep(tmp_path, "nfe=[4,8]")}
    rows = sweep(tmp_path, "nfe=[8]", "samplers.ddim.eta=1.0")
    eta1 = next(r["value"] for r in rows if r["requested"] == 8 and r["value"] != first[8])
    shown, hidden = views.for_views(rows)
    assert [(r["requested"], r["value"]) for r in shown] == [(8, eta1)] and hidden == 2
    views.report(tmp_path / "results.jsonl")
    assert "2 row(s) not in the views: a sampler's curve shows the rows run as its latest ones were" in caplog.text
    assert [(r["requested"], r["value"]) for r in views.for_views(rows, preferred={rows[0]["key"]})[0]] == \
        [(4, first[4]), (8, first[8])]  # the first sweep's views: its own variant, both budgets


def test_a_gaussian_start_the_data_never_reaches_fails_before_any_cell(tmp_path):
    """It failed when that sampler first sampled, after the cells before it (hours of an FID sweep), naming no key."""
    with pytest.raises(ValueError, match=r"^config samplers.late: ValueError: gaussian_start_kl=50.0 is reached only "
                                         r"after eps = 0.001"):
        sweep(tmp_path, "noise_floor=true", "+sampler@samplers.late=ddim", "samplers.late.gaussian_start_kl=50")
    assert not (tmp_path / "results.jsonl").exists() or not views.load(tmp_path / "results.jsonl")


def test_a_wandb_mode_wandb_refuses_is_named(tmp_path, monkeypatch, caplog):
    """W&B's own error, cut to its first line, was "ValidationError: 1 validation error for Settings"."""
    monkeypatch.setenv("WANDB_MODE", "bogus")
    with caplog.at_level("WARNING"):
        sweep(tmp_path, "wandb.enabled=true")
    assert "W&B: no live run (ValueError: WANDB_MODE='bogus' is not one of W&B's modes (online, offline, " \
           "disabled): set one, or unset it)" in caplog.text
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lightning_sde.tracking import check_wandb_mode

    check_wandb_mode()


def test_counts_whose_intervals_claim_more_than_they_hold_are_warned_of(caplog):
    from lightning_sde.bench.runner import FEWEST_FOR_INTERVALS, warn_small_counts

    warn_small_counts(FEWEST_FOR_INTERVALS, None)
    warn_small_counts(200, 200)
    assert caplog.text == ""
    warn_small_counts(FEWEST_FOR_INTERVALS - 1, None)
    assert f"seeds.count={FEWEST_FOR_INTERVALS - 1}: below {FEWEST_FOR_INTERVALS} samples" in caplog.text
    warn_small_counts(200, 10)
    assert "reference_count=10 is below seeds.count=200: the intervals hold the reference fixed" in caplog.text


def test_a_sweep_resumed_by_a_newer_version_computes_again_the_cells_of_older_definitions(tmp_path, caplog):
    """An older version computed some numbers otherwise (an NFE varying by batch averaged over batches, not samples):
    its rows were kept as done, and one curve mixed the two. The rows a change of definitions touches are computed
    again, the old rows kept in the file; rows it does not touch stay done."""
    from lightning_sde.bench.results import DEFINITIONS, ResultsStore, of_older_definitions

    rows = sweep(tmp_path, "nfe=[4,8]")
    assert len(rows) == 2 and {r["definitions"] for r in rows} == {DEFINITIONS}
    path = tmp_path / "results.jsonl"
    old = [{k: v for k, v in r.items() if k != "definitions"} for r in ResultsStore(path).rows()]  # before the field
    old[0] |= {"nfe_per_batch": [3, 5], "nfe": 1234}  # an NFE that varied by batch: the change touches it
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    again = sweep(tmp_path, "nfe=[4,8]")
    assert "1 row(s) of this sweep's cells were computed by an older version" in caplog.text
    assert len(ResultsStore(path).rows()) == 3  # the old rows stay; the untouched one was not computed again
    assert [(r["nfe"], r.get("definitions")) for r in again] == [(4, DEFINITIONS), (8, None)]  # the views: the new
    caplog.clear()
    sweep(tmp_path, "nfe=[4,8]")
    assert "older version" not in caplog.text and len(ResultsStore(path).rows()) == 3  # all done now
    sliced = {"metric": "sliced_w2", "n_samples": 100, "n_reference": 100, "nfe_per_batch": [4]}
    assert not of_older_definitions(sliced) and of_older_definitions(sliced | {"n_reference": 400})
    assert not of_older_definitions(sliced | {"n_reference": 400, "definitions": DEFINITIONS})
    assert of_older_definitions(sliced | {"definitions": "1"})  # not a version: computed again
    floor = {"grid": "exact", "metric": "mmd", "nfe_per_batch": [], "definitions": 1}
    assert of_older_definitions(floor | {"target": "mixture:x|scored_on_labels=cycle"})  # drawn at random then
    assert not of_older_definitions(floor | {"target": "mixture:x|scored_on_labels=3"})
    assert not of_older_definitions(floor | {"target": "mixture:x|scored_on_labels=cycle", "definitions": 2})
    from lightning_sde.bench.dashboard import sweep_config

    assert "definitions" not in sweep_config("s", again)[0]  # a cell's field: report --wandb's config is a live run's
    # shards of an older version, done: an extension of their list is not refused for "cells not computed yet"
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in (0, 1):
        sweep(shards, "nfe=[4,8]", f"shard.index={i}", "shard.count=2")
    path = shards / "results.jsonl"
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "definitions"} | {"nfe_per_batch": [3, 5]})
                            + "\n" for r in ResultsStore(path).rows()))  # rows the change touches
    assert [r["requested"] for r in sweep(shards, "nfe=[4,8,16]", "shard.index=0", "shard.count=2")] == [4, 8, 16]


def test_after_a_sweep_the_terminal_shows_its_own_cells_and_says_where_the_others_are():
    """Each job of a 6-job multirun into one file printed every earlier job's rows again (4247 lines)."""
    from lightning_sde.bench.report import summary_table, terminal_table

    rows = [r for nfe in (5, 10, 20) for r in result_rows("ddim", nfe, 0.1 * nfe)]
    assert terminal_table(rows, frozenset()) == summary_table(rows)  # lsde-bench report: every row
    assert terminal_table(rows, {r["key"] for r in rows}) == summary_table(rows)
    mine = terminal_table(rows, {rows[2]["key"]})
    assert mine == summary_table(rows[2:]) + ("\n(this sweep's 1 cell(s); with the 2 others the results file holds, in "
                                              "results.md and results.png)")


# what mutation testing of the runner found unguarded

def test_a_metric_added_to_a_sweep_is_computed_for_its_cells_and_the_others_are_kept(tmp_path, caplog):
    """A cell with some of its metrics in the file is sampled again for the rest (not taken as done), from the same
    seeds: the metric it had keeps its value."""
    (first,) = sweep(tmp_path, "metrics=[mmd]")
    rows = sweep(tmp_path, "metrics=[mmd,sliced_w2]")
    assert sorted(r["metric"] for r in rows) == ["mmd", "sliced_w2"] and all(r["value"] is not None for r in rows)
    assert next(r for r in rows if r["metric"] == "mmd")["value"] == first["value"]


def test_a_sweeps_samples_come_from_its_own_seeds_and_one_sample_has_a_value_without_an_interval(tmp_path,
                                                                                              monkeypatch):
    """seeds.start moves the sampled seeds (sample i from seed start + i), not only the recorded seed_start; one
    sample is scored, without a bootstrap interval."""
    from lightning_sde.bench import runner

    drawn, score = [], runner.score
    monkeypatch.setattr(runner, "score", lambda scorer, cell, samples, x: (drawn.append(x), score(scorer, cell,
                                                                                                   samples, x))[1])
    sweep(tmp_path / "a", "metrics=[sliced_w2]")
    (row,) = sweep(tmp_path / "b", "metrics=[sliced_w2]", "seeds.start=16")
    assert row["seed_start"] == 16 and torch.equal(drawn[1][:16], drawn[0][16:])
    (one,) = sweep(tmp_path / "c", "metrics=[sliced_w2]", "seeds.count=1", "batch_size=1")
    assert one["n_samples"] == 1 and one["value"] is not None and one["ci_low"] is None and one["ci_high"] is None


def test_the_workspace_has_a_log_axis_where_values_span_decades_and_a_column_per_budget():
    from lightning_sde.bench.dashboard import workspace

    rows = [r for nfe, value in ((5, 30.0), (10, 2.0), (20, 0.5)) for r in result_rows("ddim", nfe, value)]
    rows += [r for nfe, value in ((5, 0.4), (10, 0.3)) for r in result_rows("em", nfe, value, metric="sw")]
    rows += result_rows("ddim", 10, 0.35, metric="sw")
    sections = {s.name: s.panels for s in workspace(rows, "me", "p", "x").sections}
    assert [sections[f"{m} vs NFE"][0].log_y for m in ("mmd", "sw")] == [True, False]  # 60x; 1.3x
    assert {p.title: p.num_columns for p in sections["samples (same seeds)"]} == {"ddim": 3, "em": 2}


@pytest.mark.parametrize("state", [{"id": "../../etc"}, {"id": "a b"}])
def test_a_sidecar_naming_no_wandb_run_id_is_refused(tmp_path, state):
    from lightning_sde.bench.dashboard import read_sidecar

    results = tmp_path / "results.jsonl"
    write_sidecar(results, state)
    with pytest.raises(ValueError, match=r"not a readable W&B sidecar \(ValueError: id .* is not a W&B run id\)"):
        read_sidecar(results)


def test_a_sidecar_missing_a_name_or_group_is_completed_and_its_own_values_kept(tmp_path):
    from lightning_sde.bench.dashboard import read_sidecar, remember_sweep

    results = tmp_path / "results.jsonl"
    write_sidecar(results, {"id": "run1", "project": "theirs"})
    assert remember_sweep(results, "p", "bench-x", "x") == read_sidecar(results) == {
        "id": "run1", "project": "theirs", "name": "bench-x", "group": "x"}
