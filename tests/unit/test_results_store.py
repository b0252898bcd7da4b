"""The bench's record: the JSONL results store (append, read back, torn lines, duplicates) and the sample previews
the views draw from."""

import json

import torch

from lightning_sde.bench.results import DEFINITIONS, ResultsStore, SamplePreviews


def test_rows_come_back_in_order_and_the_last_of_a_key_wins(tmp_path):
    store = ResultsStore(tmp_path / "sub" / "r.jsonl")  # the folder is made on the first append
    assert store.rows() == [] and store.keys() == set()
    store.append([{"key": "a", "value": 1}, {"key": "b", "value": 2}])
    store.append([])  # nothing to write: no empty line either
    store.append([{"key": "a", "value": 3}])
    assert [r["value"] for r in store.rows()] == [1, 2, 3]
    assert store.latest() == {"a": {"key": "a", "value": 3}, "b": {"key": "b", "value": 2}}
    lines = (tmp_path / "sub" / "r.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line) for line in lines)
    assert lines[0] == json.dumps({"key": "a", "value": 1}, sort_keys=True)  # one JSON object per line, sorted keys


def test_a_cell_is_done_once_its_row_is_one_the_views_can_read(tmp_path):
    """A row edited by hand ("value": "abc", or the key alone) counted its cell as done: the cell stayed empty in the
    views for good."""
    row = {"key": "a", "target": "t", "sampler": "ddim", "sampler_name": "ddim", "metric": "mmd", "grid": "nfe",
           "requested": 10, "nfe": 10, "value": 0.5, "wall_s": 1.0, "seed_start": 0, "seed_count": 8,
           "definitions": DEFINITIONS}
    store = ResultsStore(tmp_path / "r.jsonl")
    store.append([row, {**row, "key": "b", "value": "abc"}, {"key": "c"}, {**row, "key": "d", "value": None}])
    assert store.keys() == {"a", "d"}  # None: a diverged cell's value, recorded and done
    store.append([{**row, "key": "a", "nfe": -1}])  # the last row of a key decides
    assert store.keys() == {"d"}


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_a_fresh_line(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"key": "a", "value": 1}) + "\n" + '{"key": "b", "val')  # a crash mid-write
    store = ResultsStore(path)
    assert [r["key"] for r in store.rows()] == ["a"] and "r.jsonl:2: skipping a torn or invalid line" in caplog.text
    store.append([{"key": "c", "value": 3}])
    assert [r["key"] for r in store.rows()] == ["a", "c"]
    assert path.read_text().splitlines()[-1] == json.dumps({"key": "c", "value": 3}, sort_keys=True)
    path.write_text(path.read_text() + "\n\n")  # blank lines are nothing
    assert len(store.rows()) == 2


def test_previews_round_trip_each_cell_and_the_reference(tmp_path):
    from hashlib import sha1

    from lightning_sde.bench.spec import Cell

    previews = SamplePreviews(tmp_path / "samples", n=3)
    cell = Cell("mix", "ddim (eta 1)", "ddim", {"steps": 10, "eta": 1.0}, "nfe", 10, 0, 5, ("mmd",))
    x = torch.arange(10.0).reshape(5, 2)
    previews.save(cell, x)
    previews.save_reference(x + 100)
    assert SamplePreviews.name("ddim (eta 1)", "nfe", 10) == "ddim_eta_1__nfe10"
    assert SamplePreviews.name("dopri5", "tol", 1e-05) == "dopri5_tol1e-05"
    assert SamplePreviews.name("em_1000", "configured", None) == "em_1000"
    assert torch.equal(previews.load("ddim (eta 1)", "nfe", 10, cell=cell.cell_key()), x[:3])  # the first n only
    assert torch.equal(previews.load("reference", None, None), x[:3] + 100)
    assert previews.load("ddim (eta 1)", "nfe", 20, cell=cell.cell_key()) is None
    tag = sha1(cell.cell_key().encode()).hexdigest()[:8]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [f"ddim_eta_1__nfe10_{tag}.pt", "reference.pt"]


def test_previews_are_plain_tensors_that_load_without_running_code(tmp_path):
    previews = SamplePreviews(tmp_path, n=2)
    previews.save_reference(torch.ones(4, 2))
    assert torch.load(tmp_path / "reference.pt", weights_only=True).shape == (2, 2)
    (tmp_path / "x_nfe1.pt").write_text("not a tensor")
    assert previews.load("x", "nfe", 1) is None


def test_the_file_is_made_with_its_folders_readable_by_all_with_sorted_keys(tmp_path):
    """Nested folders are made; the file is rw-r--r-- (shards of other users on a shared cluster read it); each line
    has its keys sorted, so two runs' files diff line by line."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        store = ResultsStore(tmp_path / "a" / "b" / "c" / "r.jsonl")
        store.append([{"z": 1, "key": "k", "a": 2}])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o644
    assert store.path.read_text() == '{"a": 2, "key": "k", "z": 1}\n'


def test_a_results_path_that_is_a_device_or_a_pipe_is_refused_not_read(tmp_path):
    """A results.jsonl linked to /dev/zero-like devices was read without end (22 GB, then the OOM killer)."""
    import os

    import pytest

    os.mkfifo(tmp_path / "pipe.jsonl")
    (tmp_path / "dev.jsonl").symlink_to("/dev/null")
    from lightning_sde.bench.runner import check_results_file

    for name in ("pipe.jsonl", "dev.jsonl"):
        with pytest.raises(ValueError, match=f"{name}' is not a regular file"):
            ResultsStore(tmp_path / name).rows()
        with pytest.raises(ValueError, match=f"^config results: .*{name}' is not a regular file"):
            check_results_file(tmp_path / name)  # at start-up, before any process waits on another
