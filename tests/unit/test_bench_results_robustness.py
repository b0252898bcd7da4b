"""lsde-bench's results file as found on disk: lines that are not result rows, rows of another schema, rows of
several protocols in one file, files that are no results file at all; and the one-line errors of `report`, `cells`
and a `results=` folder. The documented commands compose."""

import json
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from lightning_sde.bench import report as views
from lightning_sde.bench.results import DEFINITIONS, ResultsStore, SamplePreviews
from lightning_sde.cli.bench import cells_main, report_main
from lightning_sde.configuration import CONFIG_PACKAGE

REPO = Path(__file__).resolve().parents[2]
TARGET = "mixture:eight|sde:vp"


def row(sampler="ddim", requested=10, metric="sliced_w2", value=1.0, seed_count=100, target=TARGET, **extra):
    """A result row as the runner writes it (the fields the views read, and the protocol)."""
    key = json.dumps([target, sampler, requested, seed_count, metric, extra.pop("params", {})])
    return {"key": key, "target": target, "sampler": sampler, "sampler_name": sampler, "metric": metric,
            "grid": "nfe", "requested": requested, "nfe": requested, "value": value, "wall_s": 0.5,
            "seed_start": 0, "seed_count": seed_count, "n_samples": seed_count, "ci_low": None, "ci_high": None,
            "ci_level": None, "problem": "eight_gaussians", "sde": "vp", "time": "2026-01-01T00:00:00+00:00",
            "definitions": DEFINITIONS, **extra}


def write(path: Path, *lines) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# D3: valid JSON that is no result row

@pytest.mark.parametrize("line", ["42", '{"foo": 1}', "[1, 2]", '"text"', '{"key": 5}', "null"])
def test_a_json_line_that_is_not_a_result_row_is_skipped_with_a_warning(tmp_path, caplog, line):
    path = write(tmp_path / "r.jsonl", row(), line, row(requested=20))
    store = ResultsStore(path)
    assert len(store.latest()) == 2 and len(store.keys()) == 2
    assert "r.jsonl:2: skipping a line that is not a result row" in caplog.text
    store.rows()
    assert caplog.text.count("skipping") == 1  # once, not at every read


def test_bytes_that_are_not_utf8_are_an_invalid_line(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage\n" + json.dumps(row()).encode() + b"\n")
    assert len(ResultsStore(path).rows()) == 1 and "r.jsonl:1: skipping a torn or invalid line" in caplog.text


# D4: rows of another schema

@pytest.mark.parametrize("foreign", [
    {"key": "x", "target": "t", "sampler": "s", "metric": "fid", "grid": "nfe", "requested": 5},  # no nfe
    {**row(), "key": "y", "nfe": "ten"},
    {**row(), "key": "z", "seed_start": None},
    {**row(), "key": "w", "ci_low": "low"},
    {**row(), "key": "v", "nfe": -5},  # report failed: "math domain error", naming no file or row
    {**row(), "key": "u", "wall_s": float("inf")},
])
def test_rows_without_the_fields_the_views_read_are_skipped_and_the_views_are_drawn(tmp_path, caplog, capsys,
                                                                                    foreign):
    path = write(tmp_path / "r.jsonl", foreign, row(), row(requested=20, value=0.5))
    rows = views.load(path)
    assert [r["requested"] for r in rows] == [10, 20]
    assert "skipping 1 row(s) the views cannot read" in caplog.text
    paths = views.report(path)
    assert Path(paths["markdown"]).is_file() and "| ddim |" in Path(paths["markdown"]).read_text()


def test_a_sweep_resumed_into_a_file_with_foreign_rows_and_garbage_finishes_its_views(tmp_path, caplog, capsys):
    from lightning_sde.cli.bench import run

    results = write(tmp_path / "r.jsonl", "42", '{"foo": 1}',
                    {"key": "x", "target": "t", "sampler": "s", "metric": "fid", "grid": "nfe", "requested": 5})
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("bench", overrides=[f"results={results}", "~samplers", "+sampler@samplers.ddim=ddim",
                                          "nfe=[2]", "seeds.count=16", "batch_size=16", "noise_floor=false",
                                          "progress=false", "wandb.enabled=false", "metrics=[sliced_w2]"])
    run(cfg)
    assert "| ddim |" in (tmp_path / "r.md").read_text()  # the views are named after the results file
    assert "skipping 1 row(s) the views cannot read (no 'sampler_name', 'nfe', 'value'" in caplog.text


# D2: several protocols in one file

def test_rows_of_two_seed_counts_are_kept_apart_in_every_view(tmp_path):
    """A multirun `-m seeds.count=32,64` into one file: both protocols shown, each line with its own numbers."""
    rows = [row(seed_count=32, value=1.0), row(seed_count=32, metric="mmd", value=0.1),
            row(seed_count=64, value=2.0), row(seed_count=64, metric="mmd", value=0.2)]
    md = views.markdown(rows)
    assert "| ddim [seeds 0+32] | 1 (10) |" in md and "| ddim [seeds 0+64] | 2 (10) |" in md
    lines = [line.split() for line in views.summary_table(rows).splitlines()[2:-1]]
    assert [(line[2], line[-2], line[-1]) for line in lines] == [("0+32]", "0.1", "1"), ("0+64]", "0.2", "2")]
    view, hidden = views.for_views(rows)
    assert hidden == 0 and {r["sampler"] for r in view} == {"ddim [seeds 0+32]", "ddim [seeds 0+64]"}
    assert views.for_views(view)[0] == view  # the labels are not suffixed twice


def test_one_protocol_keeps_plain_labels_and_two_targets_are_named():
    assert {r["sampler"] for r in views.for_views([row(), row(requested=20)])[0]} == {"ddim"}
    other = row(target="ckpt:/runs/a/last.ckpt@step100", checkpoint="/runs/a/last.ckpt", global_step=100)
    labels = {r["sampler"] for r in views.for_views([row(), other])[0]}
    assert labels == {"ddim [eight_gaussians/vp]", "ddim [last.ckpt@step100]"}
    same_name = row(target="mixture:eight(scale 2)|sde:vp")  # two targets with one short name: told apart by a hash
    labels = {r["sampler"] for r in views.for_views([row(), same_name])[0]}
    assert len(labels) == 2 and all(re.fullmatch(r"ddim \[eight_gaussians/vp #[0-9a-f]{6}\]", s) for s in labels)


def test_rows_alike_but_for_their_key_show_the_last_written(tmp_path, caplog, capsys):
    old = row(value=1.0, params={"eta": 0.0})
    new = row(value=3.0, params={"eta": 1.0}, time="2026-01-02T00:00:00+00:00")
    view, hidden = views.for_views([new, old])
    assert hidden == 1 and [r["value"] for r in view] == [3.0]
    views.report(write(tmp_path / "results.jsonl", old, new))
    assert "1 row(s) not in the views" in caplog.text
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 3  # the CSV has both


def test_each_protocol_shows_its_own_sample_preview(tmp_path):
    previews = SamplePreviews(tmp_path / "samples", n=4)

    class Cell:
        label, grid, requested = "ddim", "nfe", 10

        def cell_key(self):
            return None  # a preview named as before cells were kept apart

    for count in (32, 64):
        previews.save(Cell(), torch.full((4, 2), float(count)), SamplePreviews.protocol(TARGET, 0, count))
    panels, _ = views.sample_panels(views.for_views([row(seed_count=32), row(seed_count=64)])[0], previews)
    assert {label: float(x[0, 0]) for label, budgets in panels.items() for x in budgets.values()} == {
        "ddim [seeds 0+32]": 32.0, "ddim [seeds 0+64]": 64.0}


def test_each_cell_shows_its_own_preview_beside_a_cell_alike_but_for_its_parameters(tmp_path):
    """Previews were named by label, budget and protocol: after sweeps of DDIM at eta 0, then 1, then 0 again (nothing
    to compute), the views showed eta 0's row beside eta 1's samples."""
    from lightning_sde.bench.runner import rows_of
    from lightning_sde.bench.spec import Cell
    from lightning_sde.generation import Samples

    previews = SamplePreviews(tmp_path / "samples", n=4)
    protocol = SamplePreviews.protocol(TARGET, 0, 4)
    rows = {}
    for eta in (0.0, 1.0):
        cell = Cell(TARGET, "ddim", "ddim", {"steps": 10, "eta": eta}, "nfe", 10, 0, 4, ("sliced_w2",))
        previews.save(cell, torch.full((4, 2), eta), protocol)
        (rows[eta],) = rows_of(cell, Samples(torch.zeros(4, 2), [10], 0.1, None, 1), {"sliced_w2": eta}, 4,
                               torch.device("cpu"), {"problem": "eight_gaussians", "sde": "vp"})
    for eta in (0.0, 1.0):  # the views show the row the sweep just made: its own samples beside it
        shown, _ = views.for_views(list(rows.values()), preferred={rows[eta]["key"]})
        panels, _ = views.sample_panels(shown, previews)
        assert [float(x[0, 0]) for x in panels["ddim"].values()] == [eta]


def test_a_preview_written_before_protocols_were_kept_apart_is_still_found(tmp_path):
    previews = SamplePreviews(tmp_path, n=2)
    torch.save(torch.ones(2, 2), tmp_path / "ddim_nfe10.pt")
    assert torch.equal(previews.load("ddim", "nfe", 10, SamplePreviews.protocol(TARGET, 0, 32)), torch.ones(2, 2))


def test_a_torn_or_foreign_preview_is_left_out_of_the_views_with_a_warning(tmp_path, caplog):
    """An empty file (a power cut before the rename reached the disk), a text file, a pickle of another object:
    `report` drew its views without that panel instead of failing with a traceback."""
    previews = SamplePreviews(tmp_path / "samples", n=2)
    protocol = SamplePreviews.protocol(TARGET, 0, 32)
    path = tmp_path / "samples" / f"{SamplePreviews.name('ddim', 'nfe', 10, protocol)}.pt"
    path.parent.mkdir()
    for content in (b"", b"not a tensor file"):
        path.write_bytes(content)
        assert previews.load("ddim", "nfe", 10, protocol) is None
    torch.save({"x": 1}, path)
    assert previews.load("ddim", "nfe", 10, protocol) is None
    assert caplog.text.count(f"sample preview {path}") == 3
    torch.save(torch.ones(2, 2), path)
    assert torch.equal(previews.load("ddim", "nfe", 10, protocol), torch.ones(2, 2))
    path.write_bytes(b"")
    views.report(write(tmp_path / "results.jsonl", row(seed_count=32)))  # the views are drawn without it
    assert (tmp_path / "results.png").exists()


@pytest.mark.parametrize("other", [torch.ones(4, 3), torch.ones(4), torch.ones(4, 2, 2), torch.ones(0, 2)])
def test_a_preview_of_other_samples_is_left_out_of_the_pictures(tmp_path, caplog, other):
    """A preview whose samples are not the first one's shape (1-D, 3-D, images) or holds none: `report` failed with
    an IndexError, or drew it beside the others. The picture keeps the rest; the reference too, unless it is the
    odd one."""
    from types import SimpleNamespace

    from lightning_sde.bench.dashboard import SweepRun

    previews = SamplePreviews(tmp_path / "samples", n=4)
    protocol = SamplePreviews.protocol(TARGET, 0, 32)
    for requested, x in ((10, torch.ones(4, 2)), (20, other)):
        previews.save(SimpleNamespace(label="ddim", grid="nfe", requested=requested, cell_key=lambda: None), x,
                      protocol)
    previews.save_reference(torch.zeros(4, 2), protocol)
    rows = [row(seed_count=32), row(seed_count=32, requested=20)]
    panels, ref = views.sample_panels(rows, previews)
    assert list(panels["ddim"]) == ["nfe 10"] and torch.equal(ref, torch.zeros(4, 2))
    assert "the sample preview of ddim at 20" in caplog.text
    previews.save_reference(other, protocol)
    assert views.sample_panels(rows, previews)[1] is None
    views.report(write(tmp_path / "results.jsonl", *rows))
    assert (tmp_path / "samples.png").exists()
    media = SimpleNamespace(media_dir=tmp_path / "media")
    assert SweepRun._picture(media, "ddim", 20, other, None) is None or other.shape == (4, 3)
    assert SweepRun._picture(media, "ddim", 10, torch.ones(4, 2), other).exists()


# D7, D8, results=<folder>: one line, exit status 1

@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text(""), "no result rows in"),
    (lambda p: p.write_text("some notes\nnot json\n"), "no result rows in"),
    (lambda p: p.write_text('{"key": "x", "target": "t"}\n'), "no result rows in"),
    (lambda p: None, "no results file at"),
    (lambda p: p.mkdir(), "is a folder; give a .jsonl file"),
])
def test_report_of_what_is_no_results_file_is_one_line_and_exit_1(tmp_path, capsys, make, message):
    path = tmp_path / "r.jsonl"
    make(path)
    with pytest.raises(SystemExit) as exit_:
        report_main([str(path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("lsde-bench report: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_report_into_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "out").touch()
    with pytest.raises(SystemExit):
        report_main([str(write(tmp_path / "r.jsonl", row())), "--out", str(tmp_path / "out")])
    assert capsys.readouterr().err == f"lsde-bench report: error: output folder '{tmp_path / 'out'}' is a file; " \
                                      "give a folder\n"


@pytest.mark.parametrize("override, message", [
    ("bogus=1", "Could not override 'bogus'. To append to your config use +bogus=1"),
    ("problem=nothere", "Could not find 'problem/nothere' Available options in 'problem': eight_gaussians, "),
    ("nfe=[1", "no viable alternative at input '[1'"),
    ("nfe=${nothere}", "Interpolation key 'nothere' not found"),
    ("seeds.count=0", "config seeds.count: must be an integer >= 1; got 0"),
    # what the sweep refuses, for a checkpoint training has not written yet (a pipeline sizes its array first)
    ("checkpoint=later.ckpt data=toy2d sde=ve", "config checkpoint/sde: both set"),
    ("checkpoint=later.ckpt data=toy2d dtype=bogus", "config dtype: 'bogus' is not one of"),
    ("checkpoint=later.ckpt data=toy2d +bogus=1", "bogus: lsde-bench's config has no such key"),
    ("checkpoint=later.ckpt data=toy2d labels=3", "config labels: labels=3 draws class 3 under guidance"),
    ("checkpoint=later.ckpt data=toy2d guidance=[1] labels=3", "config data.labels: a sweep of class 3 is scored"),
    ("checkpoint=later.ckpt data=toy2d feature_extractor=inception", "config feature_extractor: it applies to the "),
    ("checkpoint=later.ckpt --existing", "config checkpoint: no checkpoint file at"),  # the flag anywhere
    ("--exists checkpoint=later.ckpt", "unknown option --exists: it takes --existing and config overrides"),
    ("-m checkpoint=later.ckpt", "unknown option -m: it takes --existing and config overrides"),  # Hydra's lexer's
])
def test_cells_with_a_bad_override_is_one_line_and_exit_1(capsys, override, message):
    with pytest.raises(SystemExit) as exit_:
        cells_main(override.split())
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("lsde-bench cells: error: ") and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("where", ["file", "inside"])
def test_a_statistics_folder_that_is_a_file_fails_before_any_work(capsys, tmp_path, where):
    """FID's reference statistics in a file's place: refused at start-up (it failed at the first cell, after the
    sweep's folder was made)."""
    (tmp_path / "stats").write_text("not a folder")
    cache = tmp_path / "stats" if where == "file" else tmp_path / "stats" / "reference_stats"
    with pytest.raises(SystemExit) as exit_:
        cells_main(["checkpoint=later.ckpt", "data=digits", "metrics=[fid]", f"stats_cache={cache}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "config stats_cache: " in err and err.count("\n") == 1
    assert ("is a file" if where == "file" else f"inside the file {tmp_path / 'stats'}") in err


@pytest.mark.parametrize("override, message", [
    ("wandb.enabled=no", "config wandb.enabled: must be true or false; got 'no'"),  # a string is true in Python
    ("noise_floor=maybe", "config noise_floor: must be true or false; got 'maybe'"),
    ("progress=1", "config progress: must be true or false; got 1"),
    ("metrics=[sliced_w2,mmd,sliced_w2]", "config metrics: ['sliced_w2'] given more than once"),  # rows twice
    ("name=../../elsewhere", "config name: may hold ASCII letters, digits and . _ - + @ = , only"),  # out of the root
    ("problem=swiss_roll problem.n_components=-1", "config problem: ValueError: swiss_roll: n_components must be an "
                                                    "integer >= 1; got -1"),  # was torch's linspace message
    ("problem=eight_gaussians +problem.radius=inf", "eight_gaussians: radius must be a finite number > 0; got inf"),
])
def test_a_bad_switch_or_name_fails_before_any_work(override, message):
    from lightning_sde.bench.runner import prepare

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("bench", overrides=override.split())
    with pytest.raises(ValueError, match=re.escape(message)):
        prepare(cfg)


def test_results_naming_a_folder_fails_before_any_work(tmp_path):
    from lightning_sde.bench.runner import prepare

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("bench", overrides=[f"results={tmp_path}"])
    with pytest.raises(ValueError, match=r"config results: '.*' is a folder; give a \.jsonl file, e\.g\. results="):
        prepare(cfg)


# D5: the documented commands compose

def documented(app: str, text: str) -> list[list[str]]:
    """The overrides of each `lsde-<app> ...` example line (subcommands and flags left out)."""
    commands = []
    for line in text.splitlines():
        match = re.search(rf"lsde-{app}((?: +[^ #]+)*)", line)
        if match and " report " not in match.group(0) + " " and " cells " not in match.group(0) + " ":
            placeholders_filled = re.sub(r"<[^>]*>", "X", match.group(1))  # outputs/train/<run>/...
            commands.append([arg.strip("'") for arg in placeholders_filled.split() if "=" in arg])
    return commands


@pytest.mark.parametrize("app, files", [
    ("bench", ["lightning_sde/cli/bench.py", "configs/bench.yaml", "docs/benchmarking.md"]),
    ("likelihood", ["lightning_sde/cli/likelihood.py", "configs/likelihood.yaml"]),
])
def test_every_documented_command_composes(app, files):
    commands = [c for f in files for c in documented(app, (REPO / f).read_text())]
    assert len(commands) >= 3 and any(any(a.startswith("checkpoint=") for a in c) for c in commands)
    for overrides in commands:
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            compose(app, overrides=overrides)  # `problem=null` raised "Config group override must be a string"


def test_the_tables_show_each_value_with_its_interval_the_noise_floor_first_and_labels_in_number_order():
    """The terminal table showed values only (an em_1000 0.40 'worst' whose interval [0.25, 0.57] overlapped every
    other sampler's), results.md listed samplers alphabetically (the floor among them, ddim_100 before ddim_50)
    with the floor's '(0)' NFE, and printed four significant digits of each bound (0.1124 [0.09319, 0.138])."""
    from lightning_sde.bench import report

    ci = {"ci_low": 0.09319, "ci_high": 0.138, "ci_level": 0.95}
    rows = [row("ddim_100", 100, value=0.1124, **ci), row("ddim_50", 50, value=0.2, ci_low=0.15, ci_high=0.26),
            row("exact (noise floor)", None, value=0.1, ci_low=0.08, ci_high=0.12, grid="exact", nfe=0),
            row("heun_50", 50, value=0.3)]
    md = report.markdown(rows)
    body = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines()
            if line.startswith("| ") and "---" not in line]
    assert body[1:] == ["exact (noise floor)", "ddim_50", "ddim_100", "heun_50"]
    assert "0.112 [0.093, 0.138] (100)" in md and "0.100 [0.080, 0.120] |" in md and "(0)" not in md
    table = report.summary_table(rows)
    assert "0.112 [0.093, 0.138]" in table and "0.20 [0.15, 0.26]" in table and " 0.3 " in table
    assert table.splitlines()[2].startswith("exact (noise floor)")


def test_the_views_name_what_was_measured():
    """results.md and the plot's caption open with the target, the dtype and (for FID/KID only) the feature network,
    so that a plot of a 16-D mixture is not taken for one of 8 Gaussians, nor a digits-feature FID for Inception's."""
    from lightning_sde.bench.results import subject

    points = [row(dtype="float32", feature_extractor="inception"), row(requested=20, dtype="float32")]
    assert subject(points) == "eight_gaussians/vp · float32"
    images = [row(metric="fid", target="ckpt", problem=None, checkpoint="/runs/a/digits.ckpt", global_step=4000,
                  dtype="float32", feature_extractor="digits")]
    assert subject(images) == "digits.ckpt@step4000 · float32 · features: digits"
    for metric in ("is", "recall"):  # the classifier's IS or the features' recall: digits' or Inception's
        assert subject([{**images[0], "metric": metric, "feature_extractor": "inception"}]).endswith("inception")


def test_the_csv_and_the_wandb_table_keep_each_interval_beside_its_value(tmp_path):
    """The intervals were among the sorted extra columns (ci_high before ci_low, far from value), and the W&B results
    table, which takes COLUMNS only, had none of them, nor n_nonfinite or dtype."""
    import csv

    from lightning_sde.bench.report import COLUMNS, write_rows_csv

    assert COLUMNS[COLUMNS.index("value"):][:4] == ["value", "ci_low", "ci_high", "ci_level"]
    assert {"n_nonfinite", "dtype"} <= set(COLUMNS)
    write_rows_csv([row(ci_low=0.9, ci_high=1.1, ci_level=0.9)], tmp_path / "r.csv")
    with open(tmp_path / "r.csv") as fh:
        (first,) = csv.DictReader(fh)
    assert list(first)[6:9] == ["value", "ci_low", "ci_high"] and first["ci_low"] == "0.9"


def test_a_samplers_wandb_tag_is_its_registered_name():
    from lightning_sde.bench.dashboard import sampler_family
    from lightning_sde.samplers import SAMPLERS

    assert {sampler_family(name) for name in SAMPLERS} == set(SAMPLERS)  # one tag per sampler, none merged
    assert sampler_family("sde_dpmpp") == "sde_dpmpp" and sampler_family("dpmpp") == "dpmpp"


def test_a_results_path_that_is_not_a_results_jsonl_is_refused_before_any_work(tmp_path):
    """results=<view>.csv was overwritten by its own view after the sweep (a rerun then recomputed every cell), and a
    checkpoint given as results= had rows appended to it."""
    from lightning_sde.bench import runner

    checkpoint = tmp_path / "copy.jsonl"
    checkpoint.write_bytes(b"PK\x03\x04 not rows\n\x00\x01")
    before = checkpoint.read_bytes()
    for results, message in ((tmp_path / "results.csv", "must be a .jsonl file (its views are written beside it as "
                                                          "results.csv, .md and .png)"),
                             (checkpoint, "holds no result rows")):
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("bench", overrides=[f"results={results}"])
        with pytest.raises(ValueError, match=re.escape(message)):
            runner.prepare(cfg)
    assert checkpoint.read_bytes() == before


def test_two_results_files_in_one_folder_keep_their_own_views_and_previews(tmp_path):
    from lightning_sde.bench.report import report
    from lightning_sde.bench.results import views_of

    assert views_of(tmp_path / "results.jsonl") == {
        "csv": tmp_path / "results.csv", "markdown": tmp_path / "results.md", "png": tmp_path / "results.png",
        "samples": tmp_path / "samples.png"}
    assert SamplePreviews.of(tmp_path / "results.jsonl").folder == tmp_path / "samples"
    assert SamplePreviews.of(tmp_path / "a.jsonl").folder == tmp_path / "a.samples"
    from lightning_sde.cli.bench import run

    for name, eta in (("a", 0.0), ("b", 1.0)):
        overrides = [f"results={tmp_path / name}.jsonl", "~samplers", "+sampler@samplers.ddim=ddim",
                     f"samplers.ddim.eta={eta}", "nfe=[2]", "seeds.count=16", "batch_size=16", "noise_floor=false",
                     "progress=false", "wandb.enabled=false", "metrics=[sliced_w2]"]
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            run(compose("bench", overrides=overrides))
    written = {name: report(tmp_path / f"{name}.jsonl") for name in ("a", "b")}
    assert written["a"]["csv"] == tmp_path / "a.csv" and written["b"]["csv"] == tmp_path / "b.csv"
    assert written["a"]["samples"] == tmp_path / "a.samples.png"
    assert (tmp_path / "a.csv").read_text() != (tmp_path / "b.csv").read_text()
    assert {p.name for p in (tmp_path / "a.samples").iterdir()} and not (tmp_path / "samples").exists()


def test_a_report_beside_a_writer_of_the_views_waits_its_turn_and_reads_the_rows_then(tmp_path):
    """Views read from rows, then written over seconds (the pictures): a report that read early and finished late
    overwrote a sweep's newer views with older ones. The read and the writes take one turn of the folder's lock."""
    import threading

    from lightning_sde.files import taking_turns

    results = write(tmp_path / "results.jsonl", row(requested=10))
    with taking_turns(tmp_path / views.VIEWS_LOCK):  # another process drawing the views now
        reporting = threading.Thread(target=views.report, args=(results,))
        reporting.start()
        reporting.join(timeout=3)
        assert reporting.is_alive()  # waiting for its turn, nothing read yet
        with open(results, "a") as fh:  # the writer's newer row
            fh.write(json.dumps(row(requested=20)) + "\n")
    reporting.join(timeout=120)
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 3  # both rows: read in its turn


def test_the_sample_picture_shows_at_most_its_panels_with_the_floor_first_and_says_what_is_left_out(tmp_path):
    """1056 cells made samples.png 3445 x 37392 pixels in 200 s (a redraw at each job of a multirun)."""
    import torch

    from lightning_sde.bench.report import panels_within
    from lightning_sde.plotting.sweeps import plot_samples

    x = torch.randn(50, 2)
    panels = {f"s{i:02d}": {f"NFE {n}": x for n in (5, 10, 20)} for i in range(40)}
    panels["exact (noise floor)"] = {"exact": x}
    assert panels_within(panels, 200) == (panels, "")
    shown, note = panels_within(panels, 12)
    assert list(shown) == ["exact (noise floor)", "s00", "s01", "s02"]  # 1 + 3 x 3 panels; the next would be 13
    assert note == ("\n4 of 41 samplers shown (10 of 121 cells; at most 12 panels): every cell's preview is under "
                    "samples/")
    plot_samples(shown, tmp_path / "samples.png", note=note)
    from PIL import Image

    assert Image.open(tmp_path / "samples.png").size[1] < 2000


def test_the_views_order_budgets_loosest_first_and_lines_by_nfe():
    """Tolerances across from the loosest (fewest NFE) to the tightest, as NFE budgets go from the fewest; the
    terminal's lines by NFE, then by name."""
    tols = [row(sampler="dopri5", requested=tol, grid="tol", nfe=nfe) for tol, nfe in ((1e-5, 80), (1e-3, 20))]
    assert "| sampler | tol 0.001 | tol 1e-05 |" in views.markdown(tols)
    lines = views.summary_table([row("heun", 20), row("em", 100), row("ddim", 10), row("abc", 20)]).splitlines()
    assert [line.split()[0] for line in lines[2:6]] == ["ddim", "abc", "heun", "em"]


def test_a_diverging_samplers_large_values_are_written_in_exponent_form():
    values = [views.with_interval({"value": v, "ci_low": lo, "ci_high": hi})
              for v, lo, hi in ((5.123e6, 4.1e6, 6.2e6), (999_999.0, 999_990.0, 1.0e6 + 5), (0.31, 0.3, 0.32))]
    assert values == ["5.12e+06 [4.10e+06, 6.20e+06]", "1.00e+06 [1.00e+06, 1.00e+06]", "0.310 [0.300, 0.320]"]


@pytest.mark.parametrize(("most", "shown"), [(10, 4), (9, 3), (7, 3), (6, 2), (3, 1), (1, 1)])
def test_the_sample_figure_shows_whole_samplers_up_to_its_panel_limit(most, shown):
    """Samplers of 1, 3, 3 and 3 panels (the noise floor's one first)."""
    panels = {"ddim": dict.fromkeys("abc"), "em": dict.fromkeys("abc"), "floor": {"exact": 0},
              "heun": dict.fromkeys("abc")}
    kept, note = views.panels_within(panels, most)
    assert (kept, note) == (panels, "") if shown == 4 else list(kept) == ["floor", "ddim", "em", "heun"][:shown]
    if shown < 4:
        count = sum(map(len, kept.values()))
        assert f"{shown} of 4 samplers shown ({count} of 10 cells; at most {most} panels)" in note


def test_a_statistics_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path, monkeypatch):
    """Root may write anywhere, so the refusal is shown with os.access saying what it says to other users."""
    import os

    from lightning_sde.metrics.image import check_stats_cache

    check_stats_cache("bench.cache_dir", tmp_path / "new" / "stats")  # a folder it may make: fine
    monkeypatch.setattr(os, "access", lambda path, mode: os.fspath(path) != os.fspath(tmp_path))
    with pytest.raises(ValueError, match=rf"config bench.cache_dir: .*new/stats does not exist and cannot be made "
                                         rf"\({tmp_path} is not writable\)"):
        check_stats_cache("bench.cache_dir", tmp_path / "new" / "stats")
    (tmp_path / "made").mkdir()
    check_stats_cache("bench.cache_dir", tmp_path / "made")  # there already: read, not made
