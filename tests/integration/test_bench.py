"""lsde-bench as a user runs it: the CLI in a subprocess on the exact 8 Gaussians (and a tiny trained model),
offline W&B, resume after a crash, shards sharing one results file, and bad specs failing before any sampling."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.launch import run_app
from helpers.wandb_offline import history, media, run_info
from lightning_sde.bench.report import load
from lightning_sde.bench.results import ResultsStore

# One torch thread: on a shared 2-core machine, thread spin-waits make small CPU work 10-100x slower.
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
# DDIM and EM at NFE 3, 10, 50 on 300 seeds, and the exact-sample noise floor: 7 cells x 3 metrics (sliced_w2,
# mmd, loglik)
SMALL = ["~samplers", "+sampler@samplers.ddim=ddim", "+sampler@samplers.em=euler_maruyama", "nfe=[3,10,50]",
         "seeds.count=300", "batch_size=128", "progress=false"]
CELLS, ROWS = 7, 21


def run_bench(tmp: Path, *overrides, check=True, timeout=300, wait=True):
    cmd = [sys.executable, "-m", "lightning_sde.cli.bench", f"results={tmp}/results.jsonl",
           f"output_dir={tmp}/hydra", *SMALL, *overrides]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    proc = run_app(*cmd[2:], env=ENV, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def report_wandb(results: Path) -> None:
    """`lsde-bench report <results> --wandb` in its own process: the W&B service has written the run when it exits
    (read in-process right after finish(), the offline file could still lack its last records under load)."""
    proc = run_app("lightning_sde.cli.bench", "report", str(results), "--wandb", timeout=180,
                   env={**ENV, "WANDB_DIR": str(results.parent)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def sweep_runs(tmp: Path) -> list[Path]:
    return sorted((tmp / "wandb").glob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)


def check_sweep_run(tmp: Path, cells: int, floors: int = 0) -> dict:
    """The sweep's W&B run(s) (one id, one offline file per launch): one history row per sampler cell with its values
    keyed <metric>/<sampler> against `nfe`, its image, its protocol in the config; the noise floor as floor/<metric>
    summaries, no history row and no best/; the id kept with the results."""
    sidecar = json.loads((tmp / "results.wandb.json").read_text())
    runs = sweep_runs(tmp)
    infos = [run_info(r) for r in runs]
    assert {i["id"] for i in infos} == {sidecar["id"]} and len(sidecar["logged"]) == cells
    info = infos[0]
    assert info["job_type"] == "bench" and info["group"] == "default" and info["name"] == "bench-default"
    assert {"sde:vp", "target:points", "sampler:ddim"} <= set(info["tags"]), info["tags"]
    config = {k for rec in info["config_records"] for k in rec}
    assert {"sweep", "problem", "sde", "seeds.start", "seeds.count", "metrics", "reference_sha256", "dtype"} <= config
    assert info["metrics"]["sliced_w2/*"] == "nfe" and info["metrics"]["wall_s/*"] == "nfe"
    rows = [row for run in runs for row in history(run) if "cell/sampler" in row]
    assert len(rows) == cells - floors  # each sampler cell once, across launches
    summary = {k: v for i in infos for k, v in i["summary"].items()}
    assert not [k for k in summary if k.startswith("best/") and "exact" in k]
    for label in {row["cell/sampler"] for row in rows}:  # after the last cell, whatever the throttle skipped
        values = [row[f"sliced_w2/{label}"] for row in rows if row["cell/sampler"] == label]
        assert summary[f"best/sliced_w2/{label}"] == min(values), (label, values, summary)
    if floors:
        assert {"floor/sliced_w2", "floor/mmd", "floor/loglik"} <= set(summary)
    for row in rows:
        label = row["cell/sampler"]
        assert {f"sliced_w2/{label}", f"mmd/{label}", f"loglik/{label}", f"wall_s/{label}", "nfe"} <= set(row)
        if row["nfe"]:
            key = f"samples/{label}/nfe_{int(row['nfe']):05d}"  # the same seeds' samples, every cell
            assert row[f"{key}/_type"] == "image-file" and row[f"{key}/caption"] == f"{label}, NFE {row['nfe']:g}"
    images = [p for run in runs for p in media(run) if p.suffix == ".png"]
    assert len(images) == sum(1 for row in rows if row["nfe"]), images
    return sidecar


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
    assert len(rows) == ROWS and out.count("computing cell") == CELLS
    by = {(r["sampler"], r["requested"], r["metric"]): r for r in rows}
    floor = [r for r in rows if r["grid"] == "exact"]
    assert {r["sampler"] for r in floor} == {"exact (noise floor)"} and all(r["nfe"] == 0 for r in floor)
    for r in rows:
        assert r["problem"] == "eight_gaussians" and r["sde"] == "vp" and r["git_commit"] and r["dtype"] == "float32"
        assert r["n_samples"] == 300 and r["seed_start"] == 0 and len(r["reference_sha256"]) == 64
    for r in (r for r in rows if r["grid"] == "nfe"):  # the Denoiser's count: 1 NFE a step, every batch (128, 128, 44)
        assert r["nfe"] == r["requested"] and r["nfe_per_batch"] == [r["requested"]] * 3
        assert r["wall_s"] > 0 and r["samples_per_s"] > 0 and r["peak_memory_mb"] is None and r["device"] == "cpu"
        assert r["n_nonfinite"] == 0 and r["batch_size"] == 128
    for r in rows:  # every value with its 90% bootstrap interval
        assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["ci_high"] > r["ci_low"] and r["ci_level"] == 0.9
    # More NFE is better. At 300 samples the sliced-W2 noise floor (~0.33) hides DDIM 10 vs 50 (0.336 vs 0.337), so
    # sliced W2 is compared from NFE 3, and the exact log-likelihood (no floor) from NFE 10.
    assert by["ddim", 50, "sliced_w2"]["value"] < by["ddim", 3, "sliced_w2"]["value"] - 0.1
    assert by["ddim", 50, "loglik"]["value"] > by["ddim", 10, "loglik"]["value"] + 0.1
    assert by["em", 50, "sliced_w2"]["value"] < by["em", 10, "sliced_w2"]["value"]
    # views
    assert (tmp / "results.png").stat().st_size > 10_000
    md = (tmp / "results.md").read_text()
    assert "### sliced_w2" in md and "| ddim |" in md and "nfe 50" in md and "| exact (noise floor) |" in md
    assert len((tmp / "results.csv").read_text().splitlines()) == 1 + ROWS
    assert (tmp / "samples.png").stat().st_size > 10_000 and len(list((tmp / "samples").glob("*.pt"))) == CELLS + 1
    # one offline W&B run for the sweep, logged cell by cell: values against NFE, sample images per (sampler, NFE)
    check_sweep_run(tmp, cells=CELLS, floors=1)
    # `lsde-bench report` redraws the views from the results file alone
    from lightning_sde.cli.bench import report_main

    report_main([str(tmp / "results.jsonl"), "--out", str(tmp / "view")])
    assert (tmp / "view" / "results.md").read_text() == md and (tmp / "view" / "results.png").exists()


@pytest.mark.slow
def test_a_resumed_sweep_continues_its_wandb_run_and_report_updates_it(tmp_path):
    """One W&B run per results file: a rerun that adds cells logs only those, into the same run id; `report --wandb`
    adds the results table and the workspace definition to it rather than making another run."""
    one = ["seeds.count=100", "batch_size=100"]  # SMALL's DDIM and EM, and the noise floor (no history row)
    run_bench(tmp_path, *one, "nfe=[3]")
    first = json.loads((tmp_path / "results.wandb.json").read_text())
    rerun = run_bench(tmp_path, "seeds.count=100", "batch_size=50", "nfe=[10]")  # at another batch size
    sidecar = json.loads((tmp_path / "results.wandb.json").read_text())
    assert sidecar["id"] == first["id"] and len(sidecar["logged"]) == 5 and len(sweep_runs(tmp_path)) == 2
    logged = [[r.get("nfe") for r in history(run) if "cell/sampler" in r] for run in sweep_runs(tmp_path)]
    assert logged == [[3, 3], [10, 10]]  # the rerun logs only its new cells
    report = report_wandb(tmp_path / "results.jsonl")
    assert "logged again" not in rerun.stdout + rerun.stderr + report.stdout + report.stderr  # nothing was lost
    runs = sweep_runs(tmp_path)
    assert {run_info(r)["id"] for r in runs} == {first["id"]} and len(runs) == 3
    assert not [r for r in history(runs[-1]) if "cell/sampler" in r]  # nothing logged twice
    assert any(p.name.startswith("results_") for p in media(runs[-1]))  # the table
    workspace = json.loads((tmp_path / "results.workspace.json").read_text())
    panels = {p["title"]: p for section in workspace["sections"] for p in section["panels"]}
    sliced = panels["sliced_w2 (lower is better)"]
    assert sliced["x"] == "nfe" and sorted(sliced["y"]) == ["sliced_w2/ddim", "sliced_w2/em"] and sliced["log_x"]
    assert sorted(panels["wall time [s] (lower is better)"]["y"]) == ["wall_s/ddim", "wall_s/em"]
    assert panels["ddim"]["media_keys"] == ["samples/ddim/nfe_00003", "samples/ddim/nfe_00010"]
    # the sweep's runs by their W&B group (a name search for its group would also take `<group>2`'s runs)
    assert workspace["runset_settings"]["query"] == "" and workspace["runset_settings"]["filters"] == \
        f"Metric(\"Group\") == '{sidecar['group']}'"
    # W&B keeps one row per step: each launch goes on from the last one's step, never from 0 again
    steps = [r["_step"] for run in runs for r in history(run)]
    assert steps == list(range(len(steps))), steps
    assert run_info(runs[1])["config"]["nfe"] == [3, 10]  # an extended sweep's config lists every budget
    # and no one batch size, as report --wandb's config (of every row) says: launches at 100 and 50
    assert run_info(runs[1])["config"]["batch_size"] is None and run_info(runs[-1])["config"]["batch_size"] is None


@pytest.mark.slow
def test_cells_the_sidecar_lists_but_the_offline_run_lost_are_logged_again(tmp_path):
    """kill -9 right after a cell was logged can leave it out of the offline run file while the sidecar lists it:
    the next start of the run (here `report --wandb`) logs it again, and only it; one killed after W&B wrote it but
    before the sidecar listed it is not logged twice."""
    from collections import defaultdict

    from lightning_sde.bench.dashboard import cell_id

    one = ["seeds.count=100", "batch_size=100", "noise_floor=false"]
    run_bench(tmp_path, *one, "nfe=[3]")
    run_bench(tmp_path, *one, "nfe=[3,10]", "wandb.enabled=false")  # the NFE 10 cells: in the results, not on W&B
    cells = defaultdict(list)
    for r in load(tmp_path / "results.jsonl"):
        cells[r["nfe"]].append(r)
    by_sampler = defaultdict(list)
    for r in cells[10]:
        by_sampler[r["sampler"]].append(r)
    sidecar_path = tmp_path / "results.wandb.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["logged"] += [cell_id(rows) for rows in by_sampler.values()]  # listed as logged, never written
    del sidecar["logged"][0]  # and one written by W&B before a kill, never listed
    sidecar["step"] = 0  # its step too: the next launch goes on from the run files' last step
    sidecar_path.write_text(json.dumps(sidecar))
    report_wandb(tmp_path / "results.jsonl")
    runs = sweep_runs(tmp_path)
    logged = sorted(r["nfe"] for run in runs for r in history(run) if "cell/sampler" in r)
    assert logged == [3, 3, 10, 10]  # the lost cells once, the others not again
    steps = [r["_step"] for run in runs for r in history(run)]
    assert steps == sorted(set(steps)), steps  # no step used twice across the launches
    assert len(json.loads(sidecar_path.read_text())["logged"]) == 4


@pytest.mark.slow
def test_a_multirun_over_seed_counts_keeps_each_protocols_curves_apart_on_wandb(tmp_path):
    """`-m seeds.count=60,40` into one results file, one W&B run: the first protocol's cells keep the plain keys
    (`sliced_w2/ddim`), the second's carry the report's label (`sliced_w2/ddim [seeds 0+40]`), each with its own
    value; `report --wandb` on the same file, in a fresh run, logs the very same keys and values (the first written
    protocol stays plain, though its label sorts after the other's)."""
    cmd = [sys.executable, "-m", "lightning_sde.cli.bench", "-m", "seeds.count=60,40",
           f"results={tmp_path}/results.jsonl", f"hydra.sweep.dir={tmp_path}/multirun", "~samplers",
           "+sampler@samplers.ddim=ddim", "+sampler@samplers.em=euler_maruyama", "nfe=[3,10]", "metrics=[sliced_w2]",
           "noise_floor=false", "batch_size=64", "progress=false"]
    proc = run_app(*cmd[2:], env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    value = {(r["sampler"], r["seed_count"], r["nfe"]): r["value"] for r in load(tmp_path / "results.jsonl")}
    assert len(value) == 8  # 2 samplers x 2 NFE x 2 seed counts
    label = {60: "{}", 40: "{} [seeds 0+40]"}
    expected = {(label[n].format(s), nfe, v) for (s, n, nfe), v in value.items()}

    def logged(runs) -> set:
        rows = [row for run in runs for row in history(run) if "cell/sampler" in row]
        return {(row["cell/sampler"], row["nfe"], row[f"sliced_w2/{row['cell/sampler']}"]) for row in rows}

    sidecar = json.loads((tmp_path / "results.wandb.json").read_text())
    assert sidecar["protocol"]["seed_count"] == 60 and len(sidecar["logged"]) == 8
    live = sweep_runs(tmp_path)
    assert {run_info(r)["id"] for r in live} == {sidecar["id"]} and len(live) == 2  # one run, resumed by job 2
    assert logged(live) == expected
    # the config describes the plain keys' protocol: job 2's seeds do not overwrite it
    assert [run_info(r)["config"]["seeds.count"] for r in live] == [60, 60]
    workspace = json.loads((tmp_path / "results.workspace.json").read_text())
    panels = {p["title"]: p for section in workspace["sections"] for p in section["panels"]}
    assert sorted(panels["sliced_w2 (lower is better)"]["y"]) == sorted(
        f"sliced_w2/{label[n].format(s)}" for s in ("ddim", "em") for n in (60, 40))
    # the finished file alone, logged later by `report --wandb` into a run of its own: the same keys and values
    later = tmp_path / "later"
    later.mkdir()
    (later / "results.jsonl").write_text((tmp_path / "results.jsonl").read_text())
    report_wandb(later / "results.jsonl")
    assert logged(sweep_runs(later)) == expected
    assert run_info(sweep_runs(later)[0])["config"]["seeds.count"] == 60


def test_a_sweep_whose_wandb_run_cannot_start_succeeds_and_report_says_why_in_one_line(tmp_path):
    """The results file is the record, W&B a view: a sweep whose W&B run cannot start (its folder is a file here; a
    server out of reach fails alike) computes and writes everything, warns once and exits 0, so `&&` chains and
    SLURM's afterok go on; `report --wandb`, asked for that run alone, fails in one line."""
    (tmp_path / "wandb").write_text("not a folder")
    proc = run_bench(tmp_path, "nfe=[3]", "seeds.count=50", "noise_floor=false", "metrics=[sliced_w2]")
    out = proc.stdout + proc.stderr
    assert "W&B: no live run (NotADirectoryError" in out and "Traceback" not in out, out[-3000:]
    assert out.count("Not a directory") == 1  # the report does not try again what the sweep saw fail
    assert len(load(tmp_path / "results.jsonl")) == 2 and (tmp_path / "results.png").is_file()
    # run again with every cell done: no live run was tried, the report's W&B run fails the same way, still exit 0
    again = run_bench(tmp_path, "nfe=[3]", "seeds.count=50", "noise_floor=false", "metrics=[sliced_w2]")
    assert "W&B: no run logged (NotADirectoryError" in again.stdout + again.stderr
    report = run_app("lightning_sde.cli.bench", "report", str(tmp_path / "results.jsonl"), "--wandb", env=ENV,
                     timeout=180)
    assert report.returncode == 1 and "Traceback" not in report.stderr, report.stderr[-3000:]
    assert report.stderr.strip().splitlines()[-1].startswith("lsde-bench report: error: W&B: no run logged (")
    assert "--wandb --project lightning-sde-bench` logs them once W&B works" in report.stderr
    # the sweep's name and project, kept before W&B was tried: the run made later is the sweep's
    sidecar = json.loads((tmp_path / "results.wandb.json").read_text())
    kept = (sidecar["group"], sidecar["name"], sidecar["project"])
    assert kept == ("default", "bench-default", "lightning-sde-bench")


def test_a_sweep_names_its_wandb_group_wherever_its_results_are_and_wandb_mode_disabled_makes_no_run(tmp_path):
    """results= outside outputs/bench/<name>: the run's group, its config's `sweep` and the workspace's filter are the
    sweep's name, also when `report --wandb` (which sees only the file) logs into the run later; WANDB_MODE=disabled
    logs no W&B run, not even offline files."""
    folder = tmp_path / "custom"
    folder.mkdir()
    one = ["nfe=[3]", "seeds.count=50", "noise_floor=false", "metrics=[sliced_w2]"]
    cmd = [sys.executable, "-m", "lightning_sde.cli.bench", "name=foo", f"results={folder}/res.jsonl",
           f"output_dir={tmp_path}/hydra", *SMALL, *one]
    proc = run_app(*cmd[2:], env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report_wandb(folder / "res.jsonl")
    workspace = json.loads((folder / "res.workspace.json").read_text())
    assert "foo" in json.dumps(workspace) and '"custom"' not in json.dumps(workspace)
    infos = [run_info(r) for r in sweep_runs(folder)]
    assert len(infos) == 2 and {(i["group"], i["config"]["sweep"]) for i in infos} == {("foo", "foo")}
    off = tmp_path / "off"
    proc = run_app("lightning_sde.cli.bench", f"results={off}/res.jsonl", f"output_dir={off}/hydra", *SMALL, *one,
                   env={**ENV, "WANDB_MODE": "disabled"}, timeout=300)
    assert proc.returncode == 0 and not (off / "wandb").exists() and (off / "res.png").is_file(), proc.stderr[-3000:]


@pytest.mark.slow
def test_a_run_report_makes_later_has_the_live_runs_config_and_tags(clean, tmp_path):
    """A sharded sweep's W&B run is made by `report --wandb`; a runs table filters and groups both kinds on the same
    keys (it had the rows' constant fields: no seeds.count or samplers.*, and peak_memory_mb, setup_nfe, ...)."""
    src, _ = clean
    (tmp_path / src.name).mkdir()  # report names a sweep by its results' folder
    (tmp_path / src.name / "results.jsonl").write_text((src / "results.jsonl").read_text())
    report_wandb(tmp_path / src.name / "results.jsonl")
    live, later = (run_info(sweep_runs(folder)[0]) for folder in (src, tmp_path / src.name))
    assert later["config"].pop("sweep") == src.name and live["config"].pop("sweep") == "default"  # results= elsewhere
    assert later["config"] == live["config"] and sorted(later["tags"]) == sorted(live["tags"])
    assert live["config"]["seeds.count"] == 300 and live["config"]["samplers.ddim"] == "ddim", live["config"]
    assert "peak_memory_mb" not in live["config"] and "shard" not in live["config"]


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
    assert len(rows) == ROWS and values(tmp_path / "results.jsonl") == values(src / "results.jsonl")
    for r in (r for r in rows if r["grid"] == "nfe"):  # 150 seeds a process in batches of 128 + 22
        assert r["world_size"] == 2 and r["nfe_per_batch"] == [r["requested"]] * 4 and r["n_samples"] == 300
    from lightning_sde.cli.bench import report_main

    report_main([str(tmp_path / "results.jsonl")])  # the views alone (no --wandb; the sweep had none): no W&B run
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "results.png").is_file()
    assert not (tmp_path / "results.wandb.json").exists() and not (tmp_path / "wandb").exists()


@pytest.mark.slow
def test_two_shards_share_one_file_and_match_the_unsharded_run(clean, tmp_path):
    src, _ = clean
    procs = [run_bench(tmp_path, f"shard.index={i}", "shard.count=2", "wandb.enabled=false", wait=False)
             for i in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert [o.count("computing cell") for o in outs] == [4, 3]  # 7 cells: 0, 2, 4, 6 and 1, 3, 5
    assert values(tmp_path / "results.jsonl") == values(src / "results.jsonl")
    assert {r["shard"] for r in load(tmp_path / "results.jsonl")} == {"0/2", "1/2"}


@pytest.mark.slow
def test_bench_a_trained_toy2d_checkpoint(tmp_path):
    run_dir = tmp_path / "train"
    cmd = [sys.executable, "-m", "lightning_sde.cli.train", f"run_dir={run_dir}", "run_name=t", "experiment=toy2d",
           "logger=csv", "trainer.max_steps=100", "data.batch_size=128", "model.net.width=64",
           "trainer.val_check_interval=100", "callbacks.last.every_n_train_steps=100", "callbacks.sampler.n_samples=50",
           "samplers=quick", "callbacks.best.monitor=val/ddim_10/sliced_w2"]
    proc = run_app(*cmd[2:], env={k: v for k, v in ENV.items() if k != "LSDE_RUN_NAME"})
    assert proc.returncode == 0, proc.stderr[-5000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    run_bench(tmp_path, f"checkpoint={ckpt}", "data=toy2d", "nfe=[10]", "seeds.count=200",
              "wandb.enabled=false")
    rows = load(tmp_path / "results.jsonl")
    assert {(r["sampler"], r["metric"]) for r in rows} == {
        (s, m) for s in ("exact (noise floor)", "ddim", "em") for m in ("sliced_w2", "mmd")}
    for r in rows:
        assert r["checkpoint"] == str(ckpt.resolve()) and r["global_step"] == 100 and r["ema"] is True
        assert r["target"].startswith(f"{ckpt.resolve()}@step100#")  # retraining into last.ckpt: a new target
        assert r["nfe"] == (0 if r["grid"] == "exact" else 10) and r["value"] == r["value"]  # not NaN
    floor = {r["metric"]: r["value"] for r in rows if r["grid"] == "exact"}
    assert all(floor[r["metric"]] < r["value"] for r in rows if r["grid"] != "exact")  # 100 steps: above the floor


def test_bad_spec_on_the_command_line_names_the_key(tmp_path):
    proc = run_bench(tmp_path, "nfe=[0]", check=False, timeout=120)
    assert proc.returncode != 0 and "config nfe[0]: must be an integer >= 1" in proc.stderr
    assert not (tmp_path / "results.jsonl").exists()




def test_a_cuda_device_this_machine_lacks_fails_at_start_before_any_work(tmp_path):
    proc = run_bench(tmp_path, "device=cuda:99", check=False, timeout=120)
    assert proc.returncode == 1 and "config device: 'cuda:99', but" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "results.jsonl").exists()
    assert not list(tmp_path.rglob("wandb"))
