"""lsde-bench as a user runs it: the CLI in a subprocess on the exact 8 Gaussians (and a tiny trained model),
offline W&B, resume after a crash, shards sharing one results file, and bad specs failing before any sampling."""

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from lightning_sde.bench.report import load
from lightning_sde.bench.results import ResultsStore
from lightning_sde.cli.train import CONFIG_DIR
from lightning_sde.wandb_offline import find_run, history, media

# One torch thread: on a shared 2-core machine, thread spin-waits make small CPU work 10-100x slower.
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
# DDIM and EM at NFE 3, 10, 50 on 300 seeds: 6 cells x 3 metrics (sliced_w2, mmd, loglik)
SMALL = ["~samplers", "+samplers={ddim: {name: ddim}, em: {name: euler_maruyama}}", "nfe=[3,10,50]",
         "seeds.count=300", "batch_size=128", "progress=false"]


def run_bench(tmp: Path, *overrides, check=True, timeout=300, wait=True):
    cmd = [sys.executable, "-m", "lightning_sde.cli.bench", f"results={tmp}/results.jsonl",
           f"hydra.run.dir={tmp}/hydra", *SMALL, *overrides]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, check=False)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def values(path) -> dict:
    return {r["key"]: r["value"] for r in load(path)}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """One unsharded sweep with W&B (offline): the reference the other tests compare with."""
    tmp = tmp_path_factory.mktemp("clean")
    proc = run_bench(tmp)
    return tmp, proc.stdout + proc.stderr


@pytest.mark.slow
def test_sweep_rows_views_and_wandb(clean):
    tmp, out = clean
    rows = load(tmp / "results.jsonl")
    assert len(rows) == 6 * 3 and out.count("computing cell") == 6
    by = {(r["sampler"], r["requested"], r["metric"]): r for r in rows}
    for r in rows:  # the Denoiser's count: 1 NFE a step for both, every batch (128, 128, 44)
        assert r["nfe"] == r["requested"] and r["nfe_per_batch"] == [r["requested"]] * 3
        assert r["n_samples"] == 300 and r["seed_start"] == 0 and r["wall_s"] > 0 and r["samples_per_s"] > 0
        assert r["peak_memory_mb"] > 0 and r["device"] == "cpu" and len(r["reference_sha256"]) == 64
        assert r["mixture"] == "eight_gaussians" and r["sde"] == "vp" and r["git_commit"]
    # More NFE is better. At 300 samples the sliced-W2 noise floor (~0.33) hides DDIM 10 vs 50 (0.336 vs 0.337), so
    # sliced W2 is compared from NFE 3, and the exact log-likelihood (no floor) from NFE 10.
    assert by["ddim", 50, "sliced_w2"]["value"] < by["ddim", 3, "sliced_w2"]["value"] - 0.1
    assert by["ddim", 50, "loglik"]["value"] > by["ddim", 10, "loglik"]["value"] + 0.1
    assert by["em", 50, "sliced_w2"]["value"] < by["em", 10, "sliced_w2"]["value"]
    # views
    assert (tmp / "results.png").stat().st_size > 10_000
    md = (tmp / "results.md").read_text()
    assert "### sliced_w2" in md and "| ddim |" in md and "nfe 50" in md
    assert len((tmp / "results.csv").read_text().splitlines()) == 1 + 18
    # the offline W&B run holds the table and the line charts
    run = find_run(tmp / "wandb")
    files = [p.name for p in media(run)]
    assert any(name.startswith("results_") and name.endswith(".table.json") for name in files), files
    logged = {k: v for row in history(run) for k, v in row.items()}
    # a wandb.plot.line chart is logged as its data table "<key>_table" plus a chart spec in the run config
    for key in ("results", "charts/sliced_w2_vs_nfe_table", "charts/loglik_vs_nfe_table", "charts/wall_s_vs_nfe_table"):
        assert logged.get(f"{key}/_type") == "table-file", sorted(logged)
    table = json.loads(next(p for p in media(run) if p.name.startswith("results_")).read_text())
    assert len(table["data"]) == 18 and "value" in table["columns"]
    # `lsde-bench report` redraws the views from the results file alone
    from lightning_sde.cli.bench import report_main

    report_main([str(tmp / "results.jsonl"), "--out", str(tmp / "view")])
    assert (tmp / "view" / "results.md").read_text() == md and (tmp / "view" / "results.png").exists()


@pytest.mark.slow
def test_resume_after_a_crash_recomputes_only_what_is_missing(clean, tmp_path):
    src, _ = clean
    lines = (src / "results.jsonl").read_text().splitlines(keepends=True)
    # a crash: the last cell lost entirely, the one before lost one row, and a torn half-written line
    (tmp_path / "results.jsonl").write_text("".join(lines[:-4]) + lines[-4][:40])
    kept = {r["key"]: r["time"] for r in ResultsStore(tmp_path / "results.jsonl").rows()[:-2]}  # 4 whole cells
    proc = run_bench(tmp_path, "wandb.enabled=false")
    assert (proc.stdout + proc.stderr).count("computing cell") == 2
    after = ResultsStore(tmp_path / "results.jsonl").latest()
    assert all(after[k]["time"] == t for k, t in kept.items()), "done cells must not be recomputed"
    assert values(tmp_path / "results.jsonl") == values(src / "results.jsonl")  # seeds fix every sample
    proc = run_bench(tmp_path, "wandb.enabled=false")  # nothing left to do
    assert "computing cell" not in proc.stdout + proc.stderr and "0 computed now" in proc.stdout


@pytest.mark.slow
def test_ddp_processes_split_each_cells_seeds_and_match_one_process(clean, tmp_path):
    src, _ = clean
    run_bench(tmp_path, "ddp.devices=2", "wandb.enabled=false")  # Lightning Fabric starts 2 gloo processes
    rows = load(tmp_path / "results.jsonl")
    assert len(rows) == 18 and values(tmp_path / "results.jsonl") == values(src / "results.jsonl")
    for r in rows:  # 150 seeds a process in batches of 128 + 22; every batch costs the requested NFE
        assert r["world_size"] == 2 and r["nfe_per_rank"] == [r["requested"]] * 2
        assert r["nfe_per_batch"] == [r["requested"]] * 4 and r["n_samples"] == 300


@pytest.mark.slow
def test_two_shards_share_one_file_and_match_the_unsharded_run(clean, tmp_path):
    src, _ = clean
    procs = [run_bench(tmp_path, f"shard.index={i}", "shard.count=2", "wandb.enabled=false", wait=False) for i in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert [o.count("computing cell") for o in outs] == [3, 3]
    assert values(tmp_path / "results.jsonl") == values(src / "results.jsonl")
    assert {r["shard"] for r in load(tmp_path / "results.jsonl")} == {"0/2", "1/2"}


def _append_many(path, tag):
    store = ResultsStore(path)
    for i in range(50):
        store.append([{"key": f"{tag}-{i}-{j}", "pad": "x" * 5000} for j in range(3)])


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "r.jsonl"
    procs = [multiprocessing.get_context("fork").Process(target=_append_many, args=(path, t)) for t in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = ResultsStore(path).rows()
    assert len(rows) == 300 and len({r["key"] for r in rows}) == 300


@pytest.mark.slow
def test_bench_a_trained_toy2d_checkpoint(tmp_path):
    run_dir = tmp_path / "train"
    cmd = [sys.executable, "-m", "lightning_sde.train", f"run_dir={run_dir}", "run_name=t", "experiment=toy2d",
           "logger=csv", "trainer.max_steps=100", "data.batch_size=128", "model.net.width=64", "trainer.val_check_interval=100", "callbacks.last.every_n_train_steps=100",
           "callbacks.sampler.n_samples=50", "~callbacks.sampler.samplers",
           "+callbacks.sampler.samplers={ddim_10: {name: ddim, steps: 10}}", "callbacks.best.monitor=val/ddim_10/sliced_w2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False,
                          env={k: v for k, v in ENV.items() if k != "LSDE_RUN_NAME"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    run_bench(tmp_path, f"checkpoint={ckpt}", "mixture=null", "data=toy2d", "nfe=[10]", "seeds.count=200",
              "wandb.enabled=false")
    rows = load(tmp_path / "results.jsonl")
    assert {(r["sampler"], r["metric"]) for r in rows} == {(s, m) for s in ("ddim", "em") for m in ("sliced_w2", "mmd")}
    for r in rows:
        assert r["checkpoint"] == str(ckpt.resolve()) and r["global_step"] == 100 and r["ema"] is True
        assert r["target"] == f"{ckpt.resolve()}@step100"  # retraining into last.ckpt makes a new target
        assert r["nfe"] == 10 and r["value"] == r["value"]  # not NaN


def _cfg(tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("bench", overrides=[f"results={tmp_path}/r.jsonl", *SMALL, *overrides])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["samplers.ddim.name=dddim"], "config samplers.ddim.name: unknown sampler 'dddim'; choose one of ["),
        (["nfe=[]"], "config nfe: empty"),
        (["nfe=[10,0]"], "config nfe[1]: must be an integer >= 1; got 0"),
        (["+samplers.ode={name: ode}", "tolerances=[1e-3,-1e-5]"], "config tolerances[1]: must be a number > 0"),
        (["checkpoint=/nonexistent.ckpt", "mixture=null", "data=toy2d"], "config checkpoint: no checkpoint file at '/nonexistent.ckpt'"),
        (["metrics=[sliced_w2,fidd]"], "config metrics: unknown or unusable metric(s) ['fidd'] for this points mixture target; allowed: ['sliced_w2', 'mmd', 'loglik']"),
        (["+samplers.ddim.steps=5"], "config samplers.ddim.steps: is set by the sweep"),
        (["shard.index=2", "shard.count=2"], "config shard.index: must be an integer in [0, 2)"),
        (["mixture.name=nine_gaussians"], "config mixture: unknown mixture problem 'nine_gaussians'"),
        (["ddp.devices=0"], "config ddp.devices: must be an integer >= 1; got 0"),
        (["reference_count=-5"], "config reference_count: must be an integer >= 1"),
    ],
)
def test_bad_spec_fails_fast_before_sampling(tmp_path, monkeypatch, overrides, message):
    from lightning_sde.bench import runner

    monkeypatch.setattr(runner, "sample", lambda *a, **k: pytest.fail("sampled before validating"))
    cfg = _cfg(tmp_path, *overrides)
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        runner.run_sweep(cfg)
    assert time.perf_counter() - start < 1.0
    assert message in str(err.value)
    assert not (tmp_path / "r.jsonl").exists()


def test_bad_spec_on_the_command_line_names_the_key(tmp_path):
    proc = run_bench(tmp_path, "nfe=[0]", check=False, timeout=120)
    assert proc.returncode != 0 and "config nfe[0]: must be an integer >= 1" in proc.stderr
    assert not (tmp_path / "results.jsonl").exists()


def test_heun_skips_nfe_below_its_step_cost(tmp_path, caplog):
    from lightning_sde.bench.runner import prepare

    *_, cells, _ = prepare(_cfg(tmp_path, "+samplers.heun={name: heun}", "nfe=[1,10]"))
    heun = [c for c in cells if c.label == "heun"]
    assert [(c.requested, c.params["steps"]) for c in heun] == [(10, 5)]  # NFE 1 < 2 a step: skipped, with a note
    assert "skipping heun at nfe=1" in caplog.text


def test_fid_kid_on_digits_use_cached_reference_statistics(tmp_path):
    from omegaconf import OmegaConf

    from lightning_sde.bench.runner import Scorer, Target
    from lightning_sde.data import DigitsDataModule

    ref = DigitsDataModule().reference(300)
    target = Target("digits", None, "images", ref, {})
    cfg = OmegaConf.create({"feature_extractor": "digits"})
    first = Scorer(target, ("fid", "kid"), cfg, tmp_path, torch.device("cpu"))
    noise = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    on_noise, on_data = first(noise), first(ref.clone())
    assert on_data["fid"] < 1e-3 and on_noise["fid"] > 10 and on_data["kid"] < 0.01 < on_noise["kid"]
    assert first.protocol["feature_extractor"] == "digits" and len(first.protocol["feature_sha256"]) == 64
    caches = sorted(tmp_path.glob("reference-*.pt"))
    assert [p.name.rsplit("-", 1)[1] for p in caches] == ["fid.pt", "kid.pt"]
    mtimes = [p.stat().st_mtime_ns for p in caches]
    again = Scorer(target, ("fid", "kid"), cfg, tmp_path, torch.device("cpu"))  # from the cache
    assert again(noise) == on_noise and [p.stat().st_mtime_ns for p in caches] == mtimes


def test_lsde_prepare_caches_the_reference_statistics_the_bench_reads(tmp_path, caplog):
    from omegaconf import OmegaConf

    from lightning_sde.bench.runner import Scorer, Target
    from lightning_sde.data import DigitsDataModule
    from lightning_sde.data.prepare import main as prepare_main

    assert prepare_main(["digits", "--reference-stats", "300", "--features", "digits", "--cache", str(tmp_path)]) == 0
    caches = sorted(tmp_path.glob("reference-*.pt"))
    assert len(caches) == 2
    mtimes = [p.stat().st_mtime_ns for p in caches]
    # the bench's reference for data=digits, seeds.count=300: the same tensor, so the same cache entries
    target = Target("digits", None, "images", DigitsDataModule().reference(300), {})
    caplog.set_level("INFO")
    scorer = Scorer(target, ("fid", "kid"), OmegaConf.create({"feature_extractor": "digits"}), tmp_path, "cpu")
    assert sorted(tmp_path.glob("reference-*.pt")) == caches and [p.stat().st_mtime_ns for p in caches] == mtimes
    assert caplog.text.count("reference statistics from") == 2
    assert scorer.protocol["n_reference"] == 300 and scorer.protocol["reference_stats"] in caches[0].name


@pytest.mark.parametrize("argv, message", [
    ([], "nothing to do"),
    (["imagenet"], "unknown dataset(s) ['imagenet']"),
    (["cifar10"], "--root is needed to download ['cifar10']"),
    (["toy2d", "--reference-stats", "10"], "not an image dataset"),
])
def test_lsde_prepare_rejects_bad_requests(argv, message, capsys):
    from lightning_sde.data.prepare import main as prepare_main

    try:
        prepare_main(argv)
    except SystemExit:
        pass
    except ValueError as err:
        assert message in str(err)
        return
    assert message in capsys.readouterr().err
