"""The bench's record on disk, row by row: what a cell's rows hold once written and read back (what resume and the
report look up), the store's file (canonical lines, blank lines, fresh folders, permissions) and the previews'
files (names, fresh folders, loading without running code)."""

import os
from hashlib import sha1

import torch

from lightning_sde.bench.results import ResultsStore, SamplePreviews
from lightning_sde.bench.runner import rows_of
from lightning_sde.bench.spec import NOISE_FLOOR, Cell
from lightning_sde.generation import Samples

METRICS = ("sliced_w2", "mmd")
SETTINGS = {"dtype": "float32", "device": "cpu"}


def test_a_cells_rows_are_written_and_read_back_under_its_keys(tmp_path):
    cell = Cell("mix", "ddim", "ddim", {"steps": 4, "eta": 0.0}, "nfe", 4, 10, 6, METRICS, SETTINGS)
    floor = Cell("mix", NOISE_FLOOR, "exact", {}, "exact", None, 10, 6, METRICS)
    samples = Samples(torch.zeros(6, 2), [4, 4], 0.5, 12.0, 1)  # two batches of 4 NFE each
    store = ResultsStore(tmp_path / "r.jsonl")
    protocol = {"dtype": "float32", "shard": "0/1"}
    store.append(rows_of(cell, samples, {"sliced_w2": 0.25, "mmd": 0.125}, 3, torch.device("cpu"), protocol))
    store.append(rows_of(floor, None, {"sliced_w2": 0.5, "mmd": 0.0625}, 3, torch.device("cpu"), protocol))

    latest = store.latest()
    assert store.keys() == {c.key(m) for c in (cell, floor) for m in METRICS}  # what a rerun skips
    row = latest[cell.key("mmd")]
    assert (row["metric"], row["value"], row["sampler"], row["sampler_name"], row["target"]) == (
        "mmd",
        0.125,
        "ddim",
        "ddim",
        "mix",
    )
    assert (row["params"], row["grid"], row["requested"]) == ({"steps": 4, "eta": 0.0}, "nfe", 4)
    assert (row["seed_start"], row["seed_count"], row["n_samples"], row["batch_size"]) == (10, 6, 6, 3)
    assert (row["nfe"], row["nfe_per_batch"], row["wall_s"], row["samples_per_s"]) == (4, [4, 4], 0.5, 12.0)
    assert (row["n_nonfinite"], row["world_size"], row["device"], row["dtype"], row["shard"]) == (
        0,
        1,
        "cpu",
        "float32",
        "0/1",
    )
    assert latest[cell.key("sliced_w2")]["value"] == 0.25
    floor_row = latest[floor.key("sliced_w2")]
    assert (floor_row["sampler"], floor_row["grid"], floor_row["requested"], floor_row["nfe"]) == (
        NOISE_FLOOR,
        "exact",
        None,
        0,
    )
    assert floor_row["value"] == 0.5 and floor_row["params"] == {}


def test_rows_are_canonical_json_lines(tmp_path):
    """The same row gives the same line, whatever order its fields were gathered in."""
    path = tmp_path / "r.jsonl"
    store = ResultsStore(path)
    store.append([{"value": 1.5, "key": "a", "params": {"steps": 3, "eta": 0.0}}])
    store.append([{"params": {"eta": 0.0, "steps": 3}, "key": "a", "value": 1.5}])
    first, second = path.read_text().splitlines()
    assert first == second == '{"key": "a", "params": {"eta": 0.0, "steps": 3}, "value": 1.5}'


def test_a_blank_line_in_the_middle_does_not_hide_the_rows_after_it(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"key": "a", "value": 1}\n\n   \n{"key": "b", "value": 2}\n')
    assert ResultsStore(path).rows() == [{"key": "a", "value": 1}, {"key": "b", "value": 2}]


def test_the_first_append_makes_every_missing_folder(tmp_path):
    store = ResultsStore(tmp_path / "outputs" / "bench" / "default" / "results.jsonl")
    store.append([{"key": "a", "value": 1}])
    assert store.rows() == [{"key": "a", "value": 1}]


def test_the_results_file_is_readable_by_all_and_not_executable(tmp_path):
    umask = os.umask(0o022)
    try:
        ResultsStore(tmp_path / "r.jsonl").append([{"key": "a"}])
    finally:
        os.umask(umask)
    assert (tmp_path / "r.jsonl").stat().st_mode & 0o777 == 0o644


def test_previews_keep_letters_of_either_case_in_their_names(tmp_path):
    assert SamplePreviews.name("DDIM (Eta 1)", "nfe", 10) == "DDIM_Eta_1__nfe10"
    previews = SamplePreviews(tmp_path, n=2)
    cell = Cell("mix", "DDIM", "ddim", {}, "nfe", 10, 0, 4, METRICS)
    previews.save(cell, torch.ones(4, 2))
    assert [p.name for p in tmp_path.iterdir()] == [f"DDIM_nfe10_{sha1(cell.cell_key().encode()).hexdigest()[:8]}.pt"]
    assert torch.equal(previews.load("DDIM", "nfe", 10, cell=cell.cell_key()), torch.ones(2, 2))


def test_the_first_preview_makes_every_missing_folder(tmp_path):
    """The reference preview is written before any row, so its folder's parents may not exist yet."""
    previews = SamplePreviews(tmp_path / "outputs" / "bench" / "default" / "samples", n=3)
    previews.save_reference(torch.arange(8.0).reshape(4, 2))
    assert torch.equal(previews.load("reference", None, None), torch.arange(6.0).reshape(3, 2))


class _RunsCode:
    """An object whose unpickling would call a function: what a crafted preview file could smuggle in."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_loading_a_preview_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save(_RunsCode(marker), tmp_path / "ddim_nfe10.pt")
    assert SamplePreviews(tmp_path).load("ddim", "nfe", 10) is None  # refused by the weights-only load: left out
    assert not marker.exists()


def test_an_adaptive_samplers_nfe_is_the_mean_over_samples_not_over_batches():
    """Every sample of a batch costs the batch's NFE (the solver's steps are the batch's): 200 samples at one NFE and
    a last batch of one at another were recorded at the plain mean of the two."""
    from lightning_sde.exact import eight_gaussians
    from lightning_sde.generation import generate
    from lightning_sde.samplers import build_sampler
    from lightning_sde.sde import VPSDE

    denoiser = eight_gaussians().denoiser(VPSDE())
    samples = generate(build_sampler("ode", rtol=1e-3, atol=1e-3), denoiser, range(201), 200, "cpu")
    (big, small), sizes = samples.nfe_per_batch, samples.batch_sizes
    assert sizes == [200, 1] and big != small  # the test can tell the two means apart
    assert samples.nfe == (200 * big + small) / 201
