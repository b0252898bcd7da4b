"""The lsde-* apps as a user runs them: subprocesses with Hydra overrides; bad configs fail fast, naming the key."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.launch import run_app

ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home()),
       **{k: os.environ[k] for k in ("LSDE_CACHE", "WANDB_CACHE_DIR")},  # tests/conftest.py's
       "LSDE_OUTPUTS": str(Path(os.environ["LSDE_CACHE"]).parent / "outputs")}  # an app's logs, where a test names none


def _cli(module, *args, timeout=300, python_options=()):
    return run_app(module, *args, env=ENV, timeout=timeout, python_options=python_options)


def run_compare(tmp_path, *overrides, python_options=()):
    return _cli("lightning_sde.cli.compare", f"output_dir={tmp_path}", "progress=false", *overrides,
                python_options=python_options)


def imported(stderr: str) -> set[str]:
    """The modules a process run with `python -X importtime` imported (one stderr line each)."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def test_compare_writes_table_csv_and_plot_without_importing_lightning(tmp_path):
    proc = run_compare(
        tmp_path,
        "seeds.count=300",
        "samplers.em_1000.steps=100",
        "samplers.pc_1000.steps=50",
        "~samplers.ddim_100",
        python_options=("-X", "importtime"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = imported(proc.stderr)
    assert "lightning_sde.bench.runner" in modules  # the import record is there, and it holds the sweep
    assert not {"lightning", "torchmetrics"} & modules  # an exact mixture needs neither: seconds of start-up
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    nfe = {r["sampler"]: float(r["nfe"]) for r in rows}
    assert nfe == {"exact (noise floor)": 0, "em_1000": 100, "pc_1000": 100, "ddim_50": 50, "heun_50": 100,
                   "ode_dopri5": nfe["ode_dopri5"]}
    assert nfe["ode_dopri5"] > 20
    assert {r["metric"] for r in rows} == {"sliced_w2", "mmd", "loglik"}
    assert (tmp_path / "samples.png").stat().st_size > 10_000
    assert "exact (noise floor)" in proc.stdout and "ode_dopri5" in proc.stdout


# A sampler that refuses its value and one that does not exist: what lsde-compare's command line does with a bad
# config (the messages of more bad values: tests/unit/test_bench_spec.py).
@pytest.mark.parametrize(
    "override, message",
    [
        ("samplers.ode_dopri5.rtol=-1", "config samplers.ode_dopri5: ValueError: ode: rtol must be a number in (0, 1)"),
        ("samplers.heun_50._target_=lightning_sde.samplers.Heunn", "config samplers.heun_50: ImportError"),
    ],
)
def test_bad_config_fails_fast_naming_the_key(tmp_path, override, message):
    proc = run_compare(tmp_path, override)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "results.jsonl").exists() and not (tmp_path / "samples.png").exists()


@pytest.mark.slow
def test_lsde_figures_writes_every_figure_as_png_and_pdf(tmp_path):
    proc = _cli("lightning_sde.cli.figures", f"out={tmp_path}", "paths_per_figure=4", "interpolation.n=9",
                f"output_dir={tmp_path}/hydra", python_options=("-X", "importtime"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = imported(proc.stderr)  # the figures of an exact mixture need no Lightning (seconds of start-up)
    assert "lightning_sde.plotting.chapter" in modules and not {"lightning", "torchmetrics"} & modules
    names = {"schematic_vp_gaussians_1d", "trajectories_vp_gaussians_1d", "noise_schedules",
             "interpolation_vp_gaussians_1d"}
    for name in names:
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000 and (tmp_path / f"{name}.pdf").exists()
    bad = _cli("lightning_sde.cli.figures", "figures=[schematic,heatmap]", f"out={tmp_path}/bad",
               f"output_dir={tmp_path}/hydra")
    assert bad.returncode != 0 and "config figures: unknown ['heatmap']" in bad.stderr
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    for name, said in (("none.ckpt", "no checkpoint file at"), ("text.ckpt", "not a lightning-sde checkpoint")):
        proc = _cli("lightning_sde.cli.figures", f"checkpoint={tmp_path}/{name}", f"out={tmp_path}/out_{name}",
                    f"output_dir={tmp_path}/hydra")
        assert proc.returncode == 1 and "lsde-figures: error: config checkpoint: " in proc.stderr and said in \
            proc.stderr, proc.stderr
    both = _cli("lightning_sde.cli.figures", f"checkpoint={tmp_path}/x.ckpt", "sde=ve", f"out={tmp_path}/both",
                f"output_dir={tmp_path}/hydra")  # the checkpoint's own SDE would be used: refused, not ignored
    assert both.returncode == 1 and "config checkpoint/sde: both set" in both.stderr
    for args, message in ((["label=3"], "config label: label=3 draws class 3 under guidance; set guidance=<w> too"),
                          (["label=nan"], "config label: must be a class index; got nan"),  # 'draws class nan'
                          (["guidance=-5"], "config guidance: must be a number >= 0")):  # drawn, unguided or w = -5
        proc = _cli("lightning_sde.cli.figures", *args, f"out={tmp_path}/lab", f"output_dir={tmp_path}/hydra")
        assert proc.returncode == 1 and message in proc.stderr and not (tmp_path / "lab").exists(), proc.stderr


def test_figures_of_a_checkpoint_draw_its_own_datas_density_and_refuse_another_problem(tmp_path):
    """A model of 8 Gaussians drawn over problem=swiss_roll (same dimension) showed its paths on a swiss roll, under
    the checkpoint's name, and exited 0."""
    import torch

    from lightning_sde.cli.figures import trained_distribution
    from lightning_sde.exact import eight_gaussians, random_mixture
    from lightning_sde.module import ScoreModule

    def checkpoint(name, data, dim=2):
        net = {"_target_": "lightning_sde.models.mlp.MLP", "dim": dim, "width": 16, "depth": 2}
        sde = {"_target_": "lightning_sde.sde.VPSDE"}
        torch.save({"state_dict": ScoreModule(net=net, sde=sde, shape=[dim]).state_dict(), "global_step": 1,
                    "hyper_parameters": {"net": net, "sde": sde, "shape": [dim]}, "data_config": data},
                   tmp_path / name)
        return str(tmp_path / name)

    toy = "lightning_sde.data.Toy2DDataModule"
    # as lsde-train writes it: the data's own parameters (its labels flag too) beside the problem's
    eight = checkpoint("eight.ckpt", {"_target_": toy, "name": "eight_gaussians", "batch_size": 8, "labels": False,
                                      "n_train": 100000, "seed": 0})
    name, mixture = trained_distribution(eight)
    assert name == "eight_gaussians" and torch.equal(mixture.means, eight_gaussians().means)
    rm = checkpoint("rm.ckpt", {"_target_": toy, "name": "random_mixture", "dim": 3, "n_components": 4,
                                "labels": False}, dim=3)
    name, mixture = trained_distribution(rm)
    assert name == "random_mixture" and torch.equal(mixture.means, random_mixture(dim=3, n_components=4).means)
    assert trained_distribution(checkpoint("cb.ckpt", {"_target_": toy, "name": "checkerboard"})) == \
        ("checkerboard", None)
    assert trained_distribution(checkpoint("none.ckpt", None)) == (None, None)
    # data of a user's own module: its name, no mixture (the problem is refused, not drawn as 8 Gaussians)
    assert trained_distribution(checkpoint("own.ckpt", {"_target_": "mypkg.data.PointsDataModule", "n": 5})) == \
        ("PointsDataModule", None)
    assert trained_distribution(checkpoint("untyped.ckpt", {"name": "eight_gaussians"})) == (None, None)

    common = [f"checkpoint={eight}", "figures=[schematic]", "formats=[png]", f"output_dir={tmp_path}/hydra"]
    proc = _cli("lightning_sde.cli.figures", *common, "problem=swiss_roll", f"out={tmp_path}/other")
    assert proc.returncode == 1 and "config problem: the checkpoint was trained on eight_gaussians, not swiss_roll" \
        in proc.stderr and not (tmp_path / "other").exists(), proc.stderr[-2000:]
    proc = _cli("lightning_sde.cli.figures", *common, f"out={tmp_path}/own")  # the default problem is 1-D
    own = list((tmp_path / "own").glob("schematic_vp_*eight.png"))
    assert proc.returncode == 0 and len(own) == 1, proc.stderr[-2000:]
    proc = _cli("lightning_sde.cli.figures", *common[1:], "problem=eight_gaussians", f"out={tmp_path}/exact")
    exact = tmp_path / "exact" / "schematic_vp_eight_gaussians.png"
    from PIL import Image

    with Image.open(own[0]) as a, Image.open(exact) as b:
        assert a.tobytes() == b.tobytes(), proc.stderr[-2000:]
        # what each was drawn from: last.ckpt is overwritten as training goes on, its step and content say which
        from lightning_sde.loading import file_sha256

        assert a.info["Description"] == f"{Path(eight).resolve()} (step 1, sha256 {file_sha256(eight)[:16]})"
        assert b.info["Description"] == "the exact eight_gaussians under the vp SDE (beta_min=0.1, beta_max=20.0, " \
            "eps=0.001)"
    proc = _cli("lightning_sde.cli.figures", f"checkpoint={rm}", *common[1:], f"out={tmp_path}/rm")  # 3-D: no density
    assert "schematic needs the exact mixture: skipped" in proc.stdout, proc.stderr[-2000:]
    assert proc.returncode == 1 and "config figures: none of ['schematic'] can be drawn for this target: schematic " \
        "needs the exact mixture" in proc.stderr and not (tmp_path / "rm").exists()  # exit 0 with nothing drawn


CHANGES_WHILE_READ = """
import sys, torch
import lightning_sde.cli.figures as app
load = app.load_denoiser
def load_then_overwrite(path, **kw):  # a training run saving last.ckpt between the figures' reads
    out = load(path, **kw)
    contents = torch.load(path, weights_only=False)
    torch.save({**contents, "global_step": 2}, path)
    return out
app.load_denoiser = load_then_overwrite
sys.argv = ["lsde-figures", *sys.argv[1:]]
app.main()
"""


def test_figures_refuse_a_checkpoint_that_changes_while_they_read_it(tmp_path):
    """Their metadata would name a step and content hash other than the weights drawn."""
    import torch

    from lightning_sde.module import ScoreModule

    net = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 2}
    sde = {"_target_": "lightning_sde.sde.VPSDE"}
    torch.save({"state_dict": ScoreModule(net=net, sde=sde, shape=[2]).state_dict(), "global_step": 1,
                "hyper_parameters": {"net": net, "sde": sde, "shape": [2]}}, tmp_path / "last.ckpt")
    args = [f"checkpoint={tmp_path}/last.ckpt", "figures=[schedules]", "formats=[png]", f"out={tmp_path}/f",
            f"output_dir={tmp_path}/hydra"]
    proc = subprocess.run([sys.executable, "-c", CHANGES_WHILE_READ, *args], capture_output=True, text=True,
                          timeout=300, env=ENV, check=False)
    assert proc.returncode == 1 and f"config checkpoint: {tmp_path}/last.ckpt changed while it was read" in \
        proc.stderr and not list(tmp_path.glob("f/*.png")), proc.stderr[-2000:]


@pytest.mark.slow
def test_lsde_likelihood_on_the_mixture_matches_the_truth_and_two_processes_agree(tmp_path):

    common = ["n=40", "batch_size=16", "ode.rtol=1e-8", "ode.atol=1e-8"]
    one = _cli("lightning_sde.cli.likelihood", *common, f"out={tmp_path}/one", f"output_dir={tmp_path}/h1")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli("lightning_sde.cli.likelihood", *common, "ddp.devices=2", f"out={tmp_path}/two",
               f"output_dir={tmp_path}/h2")
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["n"] == 40 and summary["divergence"] == "exact" and summary["max_abs_error"] < 1e-3
    rows = [[json.loads(line) for line in (tmp_path / d / "samples.jsonl").read_text().splitlines()]
            for d in ("one", "two")]
    assert [r["index"] for r in rows[1]] == list(range(40))  # shards merged in order, none lost or repeated
    assert max(abs(a["logp"] - b["logp"]) for a, b in zip(*rows)) < 1e-5  # batches differ, the answer does not
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size_this_run"] == 2


def test_hutchinson_likelihoods_of_a_sample_do_not_depend_on_its_batch(tmp_path):
    """Each sample's probes come from its own seed: batch sizes 8 and 3 give it the same estimate (they gave 1 nat
    apart), and one probe's missing standard error is written as null, not NaN."""
    rows = {}
    for batch_size in (8, 3):
        proc = _cli("lightning_sde.cli.likelihood", "n=8", f"batch_size={batch_size}", "divergence=hutchinson",
                    "probes=1", f"out={tmp_path}/{batch_size}", f"output_dir={tmp_path}/h{batch_size}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        text = (tmp_path / str(batch_size) / "samples.jsonl").read_text()
        assert "NaN" not in text
        rows[batch_size] = [json.loads(line) for line in text.splitlines()]
    assert all(r["logp_se"] is None for r in rows[8])
    assert max(abs(a["logp"] - b["logp"]) for a, b in zip(rows[8], rows[3])) < 1e-3


@pytest.mark.parametrize(("app", "own"), [("train", ["experiment", "trainer.max_steps"]),
                                          ("bench", ["lsde-bench report", "nfe=", "checkpoint="]),
                                          ("compare", ["problem", "seeds.count"]),
                                          ("likelihood", ["divergence=", "checkpoint="]),
                                          ("sample", ["nfe=", "checkpoint=", "seeds.count"]),
                                          ("figures", []), ("prepare", ["--inception"])])
def test_each_apps_help_says_what_it_does_and_what_to_change(app, own):
    script = Path(sys.executable).with_name(f"lsde-{app}")  # the console script, as a user calls it
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120, env=ENV, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = proc.stdout.splitlines()[0]
    assert f"lsde-{app}" in first, first
    assert all(key in proc.stdout for key in own), proc.stdout
    if app not in ("train", "prepare"):  # training's groups are its own
        assert "loss " not in proc.stdout and "callbacks " not in proc.stdout


def apps_in_a_fresh_python(body: str):
    """Run `body` (python using `apps` and `sys`, leaving its result in `out`) in a fresh interpreter: (out, the heavy
    packages it imported)."""
    code = ("import contextlib, io, json, sys\n"
            "from lightning_sde.cli import apps\n" + body +
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'torchmetrics'})\n"
            "print(json.dumps([out, heavy]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_help_imports_neither_torch_nor_lightning():
    out, heavy = apps_in_a_fresh_python(
        "sys.argv = ['lsde', '--help']\n"
        "with contextlib.redirect_stdout(io.StringIO()) as text:\n"
        "    for app in ('train', 'bench', 'compare', 'likelihood', 'sample', 'figures'):\n"
        "        apps.run(app)\n"
        "    try:\n"
        "        from lightning_sde.cli import prepare\n"
        "        prepare.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "out = text.getvalue().count('Usage:') + text.getvalue().count('usage: lsde-prepare')\n")
    assert (out, heavy) == (7, [])


def test_a_misspelt_key_or_option_fails_before_torch_is_imported():
    """A single run's overrides are composed against the app's config before the app (and torch) is imported: a
    typo fails in a fraction of a second with Hydra's message, exit status 1."""
    errors, heavy = apps_in_a_fresh_python(
        "out = []\n"
        "for app, argv in [('train', ['experiment=toy2d', 'trainer.max_stepz=3']), ('bench', ['samplers=fastt']),\n"
        "                  ('compare', ['seeds.cont=3']), ('likelihood', ['checkpoint=x', 'nosuch=1']),\n"
        "                  ('bench', ['+nfes=[20]']), ('figures', ['+interpolation.steps=5']),\n"
        "                  ('compare', ['samplers=nosuch']), ('compare', ['nfe=5', 'dpmpp']), ('train', ['chek']),\n"
        "                  ('train', ['hydra/launcher=slurm', 'experiment=toy2d'])]:\n"
        "    sys.argv = ['lsde'] + argv\n"
        "    try:\n"
        "        apps.run(app)\n"
        "    except SystemExit as stop:\n"
        "        out.append(str(stop.code))\n")
    assert heavy == [], heavy
    assert len(errors) == 10 and errors[0].startswith("lsde-train: error: Could not override 'trainer.max_stepz'")
    assert errors[1].startswith("lsde-bench: error: Could not find 'samplers/fastt'"), errors[1]
    assert errors[6].startswith("lsde-compare: error: Could not find 'samplers/nosuch'"), errors[6]  # not "In 'bench'"
    assert errors[7] == "lsde-compare: error: 'dpmpp' is not an override: give it as key=value; see lsde-compare --help"
    assert errors[8].startswith("lsde-train: error: 'chek' is not an override: give it as key=value; or a subcommand: "
                                "check;"), errors[8]
    assert errors[9] == ("lsde-train: error: hydra/launcher=slurm launches the runs of a multirun only: add -m (one "
                         "job per run), or leave it out to run here")  # it trained on the login node
    assert "Could not override 'seeds.cont'" in errors[2] and "Could not override 'nosuch'" in errors[3]
    # a key added with + that the app never reads (Hydra lets it through): refused, not ignored
    assert errors[4].startswith("lsde-bench: error: nfes: lsde-bench's config has no such key"), errors[4]
    assert errors[5].startswith("lsde-figures: error: interpolation.steps: lsde-figures's config has no such key")


@pytest.mark.parametrize("app", ["bench", "compare", "likelihood", "sample", "figures", "train"])
def test_python_dash_m_refuses_a_misspelt_key_as_the_console_script_does(app, tmp_path):
    """The SLURM templates run `python -m lightning_sde.cli.<app>`: that route makes the console script's checks."""
    proc = _cli(f"lightning_sde.cli.{app}", "+nosuch_key=1", f"paths.root={tmp_path}")
    assert proc.returncode == 1 and f"lsde-{app}: error: nosuch_key: lsde-{app}'s config has no such key" in \
        proc.stderr, proc.stderr[-2000:]
    assert not any(tmp_path.iterdir())


def test_a_second_lsde_likelihood_of_the_same_name_is_refused_while_the_first_runs(tmp_path):
    """Two runs under one name would mix their partial rows and replace each other's result: the second is refused
    while the first holds the folder, which is free again once the first has ended (here: killed)."""
    from lightning_sde.files import folder_in_use

    args = ["n=4000", "batch_size=50", "ode.rtol=1e-9", "ode.atol=1e-9", f"paths.root={tmp_path}"]
    first = subprocess.Popen([sys.executable, "-m", "lightning_sde.cli.likelihood", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV)
    partial = tmp_path / "likelihood" / "default" / "partial"
    try:
        deadline = time.monotonic() + 120
        while not list(partial.glob("rows-*.jsonl")) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended before the second could start"
        second = _cli("lightning_sde.cli.likelihood", *args)
        assert second.returncode == 1, second.stderr[-2000:]
        assert f"{tmp_path}/likelihood/default: another lsde-likelihood is using this folder now" in second.stderr
    finally:
        first.kill()
        first.wait(timeout=30)
    assert not folder_in_use(tmp_path / "likelihood" / "default")


@pytest.mark.parametrize("app, argv", [
    ("train", ["experiment=digits", "trainer=ddp_cpu", "trainer.devices=2", "hydra.run.dir=/tmp/lsde-chk/x",
               "ckpt_path=last"]),
    ("train", ["+sampler@samplers.u=unipc_adaptive", "samplers.u.pcoeff=0.4", "optim.lr=1e-3", "logger=csv"]),
    ("bench", ["samplers=fast", "nfe=[5,10,20]", "problem=random_mixture", "tolerances=[1e-3,1e-5]"]),
    ("bench", ["name=digits", "checkpoint=outputs/train/r/checkpoints/last.ckpt", "data=digits"]),
    ("compare", ["+samplers.heun_50.order=3", "output_dir=/tmp/c"]),
    ("likelihood", ["checkpoint=x.ckpt", "divergence=hutchinson"]),
    ("train", ["experiment=toy2d", "++seed=3", "++run_name=x"]),  # ++ on an existing key sets it
    ("bench", ["++seeds.count=8", "++nfe=[5]", "+problem.scale=2"]),
])
def test_the_early_override_check_lets_every_valid_run_through(app, argv):
    """The check only composes: values are the app's to validate (and `+samplers.heun_50.order=3` composes, then fails
    in the app naming the sampler, as test_bad_config_fails_fast_naming_the_key shows)."""
    from lightning_sde.cli.apps import (
        added_key_error,
        hydra_modes_error,
        launcher_without_multirun,
        override_error,
        stray_argument,
    )

    assert override_error(app, argv) is None and added_key_error(app, argv) is None
    assert override_error(app, ["-m", "sde=vp,ve"]) is None and override_error(app, ["report", "x.jsonl"]) is None
    assert override_error(app, ["hydra.mode=MULTIRUN", "sde=vp,ve"]) is None  # as -m (was: "Ambiguous value")
    assert added_key_error(app, ["hydra.mode=MULTIRUN", "+x=1,2"]) == added_key_error(app, ["-m", "+x=1,2"])
    assert override_error(app, ["-m", *argv]) is None  # a multirun composes its first job
    assert override_error(app, ["-m", *argv, "+x=glob(*)"]) is None  # a glob cannot be listed here: the app's
    assert stray_argument(app, argv) is None and stray_argument(app, ["-m", *argv]) is None
    assert stray_argument(app, ["-m", *argv, "bogus"]).startswith("'bogus' is not an override")  # (Hydra's 6 lines)
    assert stray_argument("bench", ["report", "x.jsonl"]) is None and stray_argument("train", ["check", *argv]) is None
    assert launcher_without_multirun(["hydra.mode=MULTIRUN", "hydra/launcher=slurm", *argv]) is None  # as -m
    assert launcher_without_multirun(["hydra/launcher=basic", *argv]) is None  # the default, where runs run here
    assert launcher_without_multirun(["hydra/launcher=slurm", "--cfg", "hydra", *argv]) is None  # a look at it
    assert hydra_modes_error(["-m", *argv]) is None and hydra_modes_error(["--cfg", "job", *argv]) is None
    assert hydra_modes_error(["-m", "--multirun", *argv]) is None  # one mode, two spellings
    assert hydra_modes_error(["-m", *argv, "--cfg", "job"]) == ("-m and --cfg cannot be given together: give one of "
                                                                 "-m, --cfg, --info")  # Hydra's ValueError, traced


@pytest.mark.parametrize("app, argv, message", [
    ("bench", ["samplers=quick", "+sampler.denoise=true"], "sampler.denoise: lsde-bench has no single sampler: set it "
                                                          "on each of samplers.<label> (samplers.ddim_10.denoise=...)"),
    ("train", ["+sampler.denoise=true"], "sampler.denoise: lsde-train has no single sampler"),
    ("compare", ["+samplers.ddim.denoise=true"], "samplers.ddim.denoise: this run has no sampler labelled 'ddim' (its "
                                                 "samplers: em_1000, pc_1000, ddim_50, "),
    ("likelihood", ["+sampler.denoise=true"], "sampler.denoise: lsde-likelihood's config has no such key"),
    ("figures", ["+samplers.x.denoise=true"], "samplers.x.denoise: lsde-figures's config has no such key"),
])
def test_an_added_key_under_a_sampler_node_the_run_lacks_is_refused(app, argv, message):
    """`+sampler.denoise=true` (Hydra's advice for lsde-sample's `sampler.denoise=true` under lsde-bench) made a node
    nothing reads: the sweep ran without denoising and exited 0."""
    from lightning_sde.cli.apps import added_key_error

    assert added_key_error(app, argv).startswith(message)
    # a sampler added key by key is built, and refuses what it does not take itself
    assert added_key_error("bench", ["+samplers.my._target_=lightning_sde.samplers.DDIM", "+samplers.my.steps=5"]) \
        is None


def test_a_multiruns_typo_is_one_line_before_any_job():
    """-m trainer.max_step=5,6: Hydra's multi-line complaint after a sweep folder was made."""
    from lightning_sde.cli.apps import override_error

    assert override_error("train", ["-m", "trainer.max_step=5,6"]) == \
        "Could not override 'trainer.max_step'. Did you mean 'trainer.max_steps'? To add it as a new key use " \
        "+trainer.max_step=5,6"  # the sweep
    assert "experiment" in override_error("train", ["--multirun", "experiment=nonexistent,toy2d", "seed=1,2"])
    # a later job's group option: one line before any job (it was Hydra's multi-line error after the first jobs)
    assert override_error("train", ["-m", "experiment=toy2d", "sde=vp,bogus", "seed=1,2"]).startswith(
        "sde=bogus (a job of the sweep): Could not find 'sde/bogus' Available options in 'sde': subvp, ve, vp")
    assert override_error("train", ["-m", "experiment=toy2d", "sde=vp,ve", "optim.lr=1e-3,2e-3"]) is None


def test_a_failed_job_of_a_multirun_does_not_stop_the_sweep_and_the_sweep_fails(tmp_path):
    """-m over two jobs, the first refused at start-up: its one-line error, the second job's rows written, exit 1."""
    proc = _cli("lightning_sde.cli.bench", "-m", "seeds.count=-5,50", f"results={tmp_path}/r.jsonl",
                f"hydra.sweep.dir={tmp_path}/multirun", f"output_dir={tmp_path}/out", "~samplers",
                "+sampler@samplers.ddim=ddim", "nfe=[3]", "progress=false", "wandb.enabled=false")
    assert proc.returncode == 1
    # the job's one line; after the sweep, which job failed and the same line again, no traceback
    lines = proc.stderr.splitlines()
    assert lines[0] == "lsde-bench: error: config seeds.count: must be an integer >= 1; got -5"
    assert lines[1].startswith("Error executing job with overrides: ['seeds.count=-5', ")
    assert lines[2] == ("lsde-bench: error: the sweep failed; its first failure: config seeds.count: must be an "
                        "integer >= 1; got -5")
    assert "Traceback" not in proc.stderr and "[ERROR]" not in proc.stderr
    rows = [json.loads(line) for line in open(tmp_path / "r.jsonl")]
    assert {r["sampler"] for r in rows} == {"exact (noise floor)", "ddim"} and {r["seed_count"] for r in rows} == {50}


@pytest.mark.parametrize("app, args", [
    ("sample", ["sampler=ddim,heun", "nfe=4", "seeds.count=4", "ddp.devices=2"]),
    ("likelihood", ["sde=vp,ve", "n=4", "ddp.devices=2"]),
    ("bench", ["seeds.count=4,8", "nfe=[4]", "ddp.devices=2", "wandb.enabled=false"]),
    ("train", ["experiment=toy2d", "sde=vp,ve", "trainer=ddp_cpu", "trainer.devices=2", "logger=csv"]),
])
def test_local_ddp_in_a_multirun_is_refused_before_any_job_runs_it(tmp_path, app, args):
    """Its DDP worker re-ran the command line, `-m` included: a second sweep of every job, joining another job's
    processes (lsde-sample wrote half of one sampler's samples under another's name)."""
    proc = _cli(f"lightning_sde.cli.{app}", "-m", *args, f"paths.root={tmp_path}", f"hydra.sweep.dir={tmp_path}/mr",
                *{"train": ["trainer.max_steps=2"], "likelihood": []}.get(app, ["progress=false"]))
    key = "trainer" if app == "train" else "ddp"
    assert proc.returncode == 1 and f"lsde-{app}: error: config {key}: a multirun (-m) with local DDP would restart " \
        "the whole sweep" in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.count("Launching 2 jobs locally") == 1 and "Traceback" not in proc.stderr


def test_each_job_of_a_likelihood_multirun_keeps_its_results(tmp_path):
    proc = _cli("lightning_sde.cli.likelihood", "-m", "seed=0,1", "n=2", "batch_size=2", f"paths.root={tmp_path}",
                f"hydra.sweep.dir={tmp_path}/multirun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads((tmp_path / "likelihood" / f"default_{job}" / "summary.json").read_text())
                 for job in (0, 1)]
    assert [s["seed"] for s in summaries] == [0, 1]
    given = _cli("lightning_sde.cli.likelihood", "-m", "seed=0,1", "n=2", "batch_size=2", f"out={tmp_path}/lk",
                 f"hydra.sweep.dir={tmp_path}/multirun2")  # a given out: <out>_<job> (the second job was refused)
    assert given.returncode == 0, given.stderr[-3000:]
    assert [json.loads((tmp_path / f"lk_{job}" / "summary.json").read_text())["seed"] for job in (0, 1)] == [0, 1]


def test_a_likelihood_of_one_sample_prints_no_standard_error(tmp_path):
    """The summary's bpd_se of one sample is null; the printed line said ± 0.0000."""
    proc = _cli("lightning_sde.cli.likelihood", "n=1", "batch_size=1", f"paths.root={tmp_path}")
    assert proc.returncode == 0 and "bits/dim" in proc.stdout, proc.stderr[-2000:]
    assert "± n/a (one sample) bits/dim" in proc.stdout and "± 0.0000" not in proc.stdout
    assert json.loads((tmp_path / "likelihood" / "default" / "summary.json").read_text())["bpd_se"] is None


def test_each_job_of_a_figures_multirun_keeps_its_figures(tmp_path):
    """Two jobs of one SDE class and problem wrote one file name: the second job's replaced the first's."""
    proc = _cli("lightning_sde.cli.figures", "-m", "sde.beta_max=10,20", "figures=[trajectories]", "formats=[png]",
                f"out={tmp_path}/fig", "paths_per_figure=4", f"hydra.sweep.dir={tmp_path}/multirun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = ((tmp_path / f"fig_{job}").glob("trajectories_*.png") for job in (0, 1))
    first, second = list(first), list(second)
    assert len(first) == len(second) == 1 and first[0].read_bytes() != second[0].read_bytes()


def test_each_job_of_a_compare_multirun_keeps_its_results_and_views(tmp_path):
    """Both jobs wrote one folder: the views showed the second job's DDIM (eta 1) only, the first's hidden."""
    proc = _cli("lightning_sde.cli.compare", "-m", "samplers.ddim_10.eta=0.0,1.0", "samplers=quick", "seeds.count=64",
                "batch_size=64", "progress=false", f"paths.root={tmp_path}", f"hydra.sweep.dir={tmp_path}/multirun")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = sorted((tmp_path / "compare").iterdir())
    assert [f.name[-2:] for f in folders] == ["_0", "_1"], folders
    etas = [{json.loads(line)["params"].get("eta") for line in (f / "results.jsonl").read_text().splitlines()
             if json.loads(line)["sampler"] == "ddim_10"} for f in folders]
    assert etas == [{0.0}, {1.0}] and all((f / "results.md").exists() for f in folders)


def test_a_feature_extractor_for_a_sweep_without_image_metrics_is_refused(tmp_path):
    """It was accepted and ignored on a points target (an exact mixture, a toy checkpoint)."""
    proc = _cli("lightning_sde.cli.bench", "feature_extractor=inception", "nfe=[5]", f"results={tmp_path}/r.jsonl",
                "wandb.enabled=false")
    assert proc.returncode == 1 and "config feature_extractor: it applies to the image metrics" in proc.stderr, \
        proc.stderr[-2000:]
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("args, message", [
    (["probe=gaussian"], "config probe: divergence=auto on 2 dimensions (<= exact_max_dim 16) computes the divergence "
                         "exactly; probe and probes apply to divergence=hutchinson"),
    (["divergence=exact", "probes=8"], "config probes: divergence=exact computes the divergence exactly"),
])
def test_likelihood_probes_where_the_divergence_is_exact_are_refused(tmp_path, args, message):
    """They were ignored: the result was the exact one, with the unused probe recorded among its settings."""
    proc = _cli("lightning_sde.cli.likelihood", "n=4", *args, f"paths.root={tmp_path}")
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not list((tmp_path / "likelihood").rglob("*.json*"))


def test_a_folder_inside_a_file_is_refused_before_hydra_makes_it(tmp_path, monkeypatch):
    """Hydra creates the output folders before the app runs: a file in the way was Hydra's traceback."""
    from lightning_sde.cli.apps import override_error

    file = tmp_path / "file"
    file.touch()
    assert override_error("likelihood", [f"out={file}/x"]) == (
        f"config out: {file}/x would be a folder inside the file {file}; give a folder")
    assert override_error("train", [f"paths.root={file}"]).startswith("config paths.root: ")
    assert override_error("compare", [f"output_dir={file}"]).startswith("config output_dir: ")
    assert override_error("figures", [f"out={tmp_path}/new", f"output_dir={tmp_path}/logs"]) is None
    assert override_error("likelihood", ["out=/proc/xx"]).startswith("config out: /proc/xx cannot be made (")
    assert override_error("likelihood", ["out=/proc/xx/yy"]).startswith("config out: /proc/xx/yy cannot be made (")
    assert list(tmp_path.iterdir()) == [file]  # nothing made, not even the probe (srun's tasks make the folders)
    # an existing run folder that cannot be written (a resume there was Hydra's traceback on train.log): a read-only
    # mount, as os.access sees it (nothing is made in it: an srun's other tasks check its contents)
    import os

    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) != str(tmp_path) and access(path, mode))
    assert override_error("likelihood", [f"out={tmp_path}"]) == (
        f"config out: {tmp_path} cannot be written to (read-only, or not yours)")
    assert override_error("compare", [f"paths.root={tmp_path}", f"output_dir={tmp_path}/c"]) is None  # what is in it
    monkeypatch.undo()
    (tmp_path / "scratch").symlink_to(tmp_path / "purged")  # Hydra's FileExistsError on a dangling link
    assert override_error("compare", [f"paths.root={tmp_path}/scratch"]) == (
        f"config paths.root: {tmp_path}/scratch: {tmp_path}/scratch is a link to {tmp_path}/purged, which does not "
        "resolve (missing, or a loop)")
    # a root that cannot be made, where nothing is written under it: out elsewhere
    assert override_error("sample", ["paths.root=/proc/new", f"out={tmp_path}/s"]) is None
    assert override_error("sample", ["paths.root=/proc/new"]).startswith("config out: /proc/new/samples/default cannot")
    # a name the app refuses, before Hydra makes its folders (a/b left train/a/ behind)
    assert override_error("train", [f"paths.root={tmp_path}", "run_name=a/b"]).startswith(
        "config run_name: may hold ASCII letters, digits and . _ - + @ only")
    assert override_error("compare", [f"paths.root={tmp_path}", "name=null"]).startswith(
        "config name: must be a name (it names the sweep's folder under the outputs root); got null")
    assert override_error("sample", ["out=5"]) == "config out: must be a path; got 5"  # Path's TypeError in the app
    assert override_error("train", ["paths.root=[a,b]"]) == "config paths.root: must be a path; got ['a', 'b']"
    assert override_error("compare", ["output_dir='~/c'"]).startswith(  # a folder named '~' made in the cwd
        "config output_dir: ~/c starts with '~', which is not expanded here")


def test_a_deletion_does_not_turn_off_the_checks_of_the_other_overrides():
    """`~samplers.pc_1000` (the docs' own example) made every other override unchecked: +bogus=1 was ignored."""
    from lightning_sde.cli.apps import added_key_error, override_error

    assert added_key_error("compare", ["~samplers.pc_1000", "+bogus=1"]).startswith(
        "bogus: lsde-compare's config has no such key")
    assert override_error("compare", ["~samplers.pc_1000", "samplers.ddim_50.bogus=1"]).startswith(
        "Could not override 'samplers.ddim_50.bogus'")
    assert override_error("compare", ["~samplers.pc_1000", "seeds.count=50"]) is None


def test_a_folder_name_hydra_would_read_as_a_number_of_another_spelling_is_kept_as_given():
    """A SLURM array task's run_name=27_0 named the folder 270 (Python's digit separator), plain job 270's folder."""
    from lightning_sde.cli.apps import names_as_given

    assert names_as_given("train", ["run_name=27_0", "trainer.max_steps=1_000", "+run_name=1e3"]) == [
        "run_name='27_0'", "trainer.max_steps=1_000", "+run_name='1e3'"]
    same = ["run_name=270", "run_name=007", "run_name=a_1", "run_name='3_1'", "run_name=${oc.env:X}", "name=1_0"]
    assert names_as_given("train", same) == same
    assert names_as_given("bench", ["name=2_5", "-m"]) == ["name='2_5'", "-m"]
    assert names_as_given("likelihood", ["name=2_5"]) == ["name='2_5'"]
    assert names_as_given("sample", ["-m", "name=27_0,ab,1e3"]) == ["-m", "name='27_0',ab,'1e3'"]  # a sweep's
    assert names_as_given("compare", ["name=range(1,3)"]) == ["name=range(1,3)"]


def test_a_multirun_switch_among_the_overrides_is_taken_wherever_it_is(tmp_path):
    """`lsde-bench nfe=[10] -m seeds.start=0,32`: Hydra's parser said "unrecognized arguments: seeds.start=0,32"."""
    from lightning_sde.cli.apps import multirun_first

    assert multirun_first("bench", ["nfe=[10]", "-m", "seeds.start=0,32"]) == ["-m", "nfe=[10]", "seeds.start=0,32"]
    assert multirun_first("bench", ["a=1", "--multirun"]) == ["--multirun", "a=1"]
    assert multirun_first("bench", ["a=1", "b=2"]) == ["a=1", "b=2"]
    assert multirun_first("bench", ["cells", "nfe=[10]", "-m"]) == ["cells", "nfe=[10]", "-m"]  # its own refusal
    proc = run_app("lightning_sde.cli.compare", "seeds.count=0", "-m", "name=a,b", env=ENV, cwd=tmp_path)
    assert proc.returncode == 1 and "unrecognized arguments" not in proc.stderr, proc.stderr[-2000:]
    assert "lsde-compare: error: config seeds.count: must be an integer >= 1; got 0" in proc.stderr  # each job's


def test_a_misspelt_key_names_its_nearest_sibling_and_an_added_paths_key_is_refused():
    """Hydra's advice alone (`+trainer.max_stesp=5`) led to the Trainer's TypeError; `+paths.rot=...` was ignored and
    the outputs went to the default root."""
    from lightning_sde.cli.apps import added_key_error, override_error

    assert override_error("train", ["trainer.max_stesp=5"]).startswith(
        "Could not override 'trainer.max_stesp'. Did you mean 'trainer.max_steps'? To add it as a new key use ")
    assert "Did you mean 'samplers.ddim.steps'?" in override_error("bench", ["samplers.ddim.stepz=3"])
    assert "Did you mean 'nfe'?" in override_error("bench", ["nfee=3", "seeds.count=5"])
    assert "Did you mean" not in override_error("train", ["trainer.qqqqq=1"])  # nothing near: Hydra's advice alone
    # one app's name for a checkpoint used with another
    assert "Did you mean 'checkpoint'?" in override_error("sample", ["ckpt_path=/x.ckpt"])
    assert "Did you mean 'ckpt_path'?" in override_error("train", ["checkpoint=/x.ckpt"])
    # a best checkpoint's name holds '=': Hydra's parse error alone named neither the argument nor the quoting
    assert override_error("bench", ["checkpoint=/runs/x/best-step=300.ckpt", "data=toy2d"]).endswith(
        "mismatched input '=' expecting <EOF>; quote a value that holds '=': \"checkpoint='/runs/x/best-step=300.ckpt'"
        "\" (the double quotes for the shell)")
    assert "quote a value" not in override_error("bench", ["nfe=[1,2", "data=a=b"])  # another parse error
    assert override_error("sample", ["checkpoint=/d/Dropbox (Personal)/x.ckpt"]) == (  # a synced folder's name
        "config checkpoint: mismatched input ' (' expecting <EOF>; quote a value that holds '(': "
        "\"checkpoint='/d/Dropbox (Personal)/x.ckpt'\" (the double quotes for the shell)")
    assert override_error("sample", ["-m", "checkpoint=/d/Dropbox (Personal)/x.ckpt", "nfe=10,20"]) == (  # a multirun
        "config checkpoint: mismatched input ' (' expecting <EOF>; quote a value that holds '(': "
        "\"checkpoint='/d/Dropbox (Personal)/x.ckpt'\" (the double quotes for the shell)")
    assert override_error("bench", ["-m", "checkpoint=/x/best-step=3.ckpt", "nfe=10,20"]).endswith(
        "quote a value that holds '=': \"checkpoint='/x/best-step=3.ckpt'\" (the double quotes for the shell)")
    assert "quote a value" not in override_error("bench", ["nfe=[10,20]]"])  # a list mistyped: not to be a string
    assert override_error("sample", ["seed=int(3)", "checkpoint=/d/f(1).ckpt"]).startswith(  # the one Hydra failed on
        "config checkpoint: mismatched input '(' expecting <EOF>; quote a value that holds '(': \"checkpoint=")
    assert override_error("compare", ["seeds.count=5", "paths.root=/tmp/ünï"]).endswith(  # Hydra's lexer, no hint
        "LexerNoViableAltException: paths.root=/tmp/ünï ^; quote the value: \"paths.root='/tmp/ünï'\" (the double "
        "quotes for the shell)")
    # quoting mends neither a folder name the app refuses anyway nor a key: each is told what would do
    assert override_error("train", ["run_name=rün"]) == (
        "config run_name: may hold ASCII letters, digits and . _ - + @ only (it names the run directory and the W&B "
        "run's id); got 'rün'")
    assert override_error("train", ["++run_name=rün"]) == override_error("train", ["run_name=rün"])  # forced: the same
    assert override_error("bench", ["name=größe"]).startswith("config name: may hold ASCII letters, digits")
    assert override_error("train", ["run_name=it's"]).startswith("config run_name: may hold ASCII letters, digits")
    assert override_error("sample", ["+sampler@samplers.größe=ddim"]).endswith(
        "; a key's names are ASCII letters, digits and _: '+sampler@samplers.größe' holds 'ö'")
    assert override_error("sample", ["checkpoint=/d/it's/x.ckpt"]) == (  # an apostrophe: single quotes cannot hold it
        "config checkpoint: LexerNoViableAltException: checkpoint=/d/it's/x.ckpt ^; quote a value that holds \"'\" "
        "with double quotes: \"checkpoint=\\\"/d/it's/x.ckpt\\\"\" (the outer double quotes for the shell)")
    assert override_error("sample", ["checkpoint=/d/a=b/it's"]).endswith(  # '=' and an apostrophe
        "quote a value that holds '=': \"checkpoint=\\\"/d/a=b/it's\\\"\" (the outer double quotes for the shell)")
    assert override_error("sample", ["out=~/it's"]).endswith(  # quoted, '~' stays unexpanded: the home written out
        f"give an absolute path, and double quotes around a value that holds \"'\": \"out=\\\"{Path.home()}/it's\\\"\" "
        "(the outer double quotes for the shell)")
    # a multirun over paths: each value quoted alone (the whole quoted made the sweep one joined path)
    assert override_error("sample", ["-m", "checkpoint=/d/it's/x.ckpt,/d/b.ckpt"]).endswith(
        "\"checkpoint=\\\"/d/it's/x.ckpt\\\",/d/b.ckpt\" (the outer double quotes for the shell)")
    assert override_error("sample", ["-m", "checkpoint=/d/best=3.ckpt,/d/b.ckpt"]).endswith(
        "\"checkpoint='/d/best=3.ckpt',/d/b.ckpt\" (the double quotes for the shell)")
    assert override_error("sample", ["out=~/x"]).endswith(  # quoted, '~' would be refused in turn
        "'~' is not expanded here: give an absolute path, or 'out=${oc.env:HOME}/x' (the single quotes for the shell)")
    assert added_key_error("bench", ["+paths.rot=/tmp/x"]).startswith("paths.rot: lsde-bench's config has no such key")
    assert added_key_error("bench", ["paths.root=/tmp/x"]) is None
    # never the key itself: callbacks.sampler.samplers is ${samplers}, the key is there
    assert "Did you mean" not in override_error("train", ["callbacks.sampler.samplers.ddim_50.steps=3"])
    # a key of one's own that an interpolation reads is not ignored, Hydra's own settings included
    assert added_key_error("bench", ["+paths.scratch=/x", "stats_cache=${paths.scratch}/c"]) is None
    assert added_key_error("bench", ["+paths.scratch=/x", "hydra.run.dir=${paths.scratch}/run"]) is None
    assert added_key_error("bench", ["++checkpoint=/x.ckpt", "data=toy2d"]) is None  # ++ on a null default sets it
    assert added_key_error("bench", ["-m", "name=a,b", "+sedes.count=16"]).startswith(  # a multirun's first job
        "sedes.count: lsde-bench's config has no such key")
    assert added_key_error("bench", ["+paths.scratch=/x", "stats_cache=${paths.scratchy}/c"]).startswith(
        "paths.scratch: lsde-bench's config has no such key")


def test_a_config_group_of_the_users_own_folder_is_not_taken_for_a_misspelling(tmp_path):
    """`+site=mine` from a folder named by hydra.searchpath adds a group option, not a value the app ignores."""
    from lightning_sde.cli.apps import added_key_error

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "mine.yaml").write_text("# @package _global_\ntrainer: {max_steps: 7}\n")
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "mine.yaml").write_text("a: 1\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path}]"
    assert added_key_error("train", [searchpath, "+site=mine"]) is None
    assert added_key_error("bench", [searchpath, "+node=mine"]) is None
    assert added_key_error("bench", [searchpath, "+nodes=3"]).startswith("nodes: lsde-bench's config has no such key")


def test_ctrl_c_before_the_app_starts_is_one_line_and_exit_130(monkeypatch, capsys):
    """Ctrl-C while the console script imported torch or composed the config printed a 40-90 line traceback."""
    from lightning_sde.cli.apps import run

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["lsde-compare"])
    with pytest.raises(SystemExit) as ended:
        run("compare", interrupted)
    assert ended.value.code == 130 and capsys.readouterr().err == "lsde-compare: interrupted (Ctrl-C)\n"


def test_a_sweep_over_other_values_under_an_earlier_sweeps_name_is_told_why_its_folders_clash(tmp_path):
    """Job n of a multirun writes <name>_n: a second sweep with other values was refused job by job with "give
    another name=", though a name had been given."""
    common = ("-m", "sampler=ddim", "seeds.count=4", "name=ext", f"paths.root={tmp_path}")
    assert _cli("lightning_sde.cli.sample", *common, "nfe=5,10").returncode == 0
    again = _cli("lightning_sde.cli.sample", *common, "nfe=10,20")
    assert again.returncode == 1 and "(job 0 of this multirun writes <name>_0: a sweep over other values than an " \
        "earlier sweep of this name needs its own name=)" in again.stderr, again.stderr[-3000:]


def test_a_launch_through_the_tests_app_server_is_what_a_fresh_python_m_gives(tmp_path):
    """helpers.launch.run_app (the integration tests' launches) against subprocess.run of a fresh interpreter: the
    same code, stdout and stderr under this minimal environment and the suite's own (lsde-sample; lsde-train, whose
    imports take twice as long, under the first); a launch interrupted while it waits (a timeout) leaves the next one
    its own answer."""
    for env, apps in ((ENV, ("sample", "train")), (dict(os.environ), ("sample",))):
        for args in [{"sample": ("lightning_sde.cli.sample", "checkpoint=/none.ckpt"),
                      "train": ("lightning_sde.cli.train", "--help")}[app] for app in apps]:
            forked = run_app(*args, env=env, cwd=tmp_path)
            fresh = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                                   timeout=300, check=False)
            assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    with pytest.raises(subprocess.TimeoutExpired):
        run_app("lightning_sde.cli.compare", "seeds.count=100000", "progress=false", f"output_dir={tmp_path}", env=ENV,
                timeout=2)
    proc = run_app("lightning_sde.cli.compare", "seeds.count=0", f"output_dir={tmp_path}", env=ENV)
    assert proc.returncode == 1 and "config seeds.count: must be an integer >= 1; got 0" in proc.stderr
