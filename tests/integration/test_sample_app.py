"""lsde-sample as a user runs it: samples written to disk that are the samplers' own (seed for seed, whatever the
batch, the processes or the runs that drew them), images as the PNGs an FID tool reads, a killed or extended run
going on from its chunks, and output of other settings or a diverged sampler refused."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.launch import run_app
from lightning_sde import load_denoiser
from lightning_sde.exact import eight_gaussians
from lightning_sde.generation import generate
from lightning_sde.module import ScoreModule
from lightning_sde.samplers import build_sampler
from lightning_sde.sde import VPSDE

ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
UNET = {"_target_": "lightning_sde.models.unet.UNet", "in_channels": 1, "image_size": 8, "channels": 8,
        "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [4]}
SDE = {"_target_": "lightning_sde.sde.VPSDE", "beta_min": 0.1, "beta_max": 20.0, "eps": 1e-3}


def lsde_sample(out: Path, *overrides, timeout=600, python_options=()):
    return run_app("lightning_sde.cli.sample", f"out={out}", "progress=false", f"output_dir={out.parent / 'hydra'}",
                   *overrides, env=ENV, timeout=timeout, python_options=python_options)


def written(out: Path) -> dict:
    with np.load(out / "samples.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def image_checkpoint(tmp_path: Path, **net) -> Path:
    """A small U-Net checkpoint on 1x8x8 images (untrained: its samples are what the sampler makes of it)."""
    torch.manual_seed(0)
    module = ScoreModule(net={**UNET, **net}, sde=SDE, shape=[1, 8, 8], sigma_data=0.5)
    path = tmp_path / "unet.ckpt"
    torch.save({"state_dict": module.state_dict(), "global_step": 7, "hyper_parameters": dict(module.hparams)}, path)
    return path


def test_the_samples_are_the_samplers_own_seed_for_seed_whatever_the_batches_and_processes(tmp_path):
    one = lsde_sample(tmp_path / "one", "sampler=dpmpp", "nfe=10", "seeds.start=5", "seeds.count=300",
                      "batch_size=128", python_options=("-X", "importtime"))
    assert one.returncode == 0, one.stderr[-3000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in one.stderr.splitlines() if line.startswith("import time:")}
    assert "lightning_sde.targets" in imported and not {"lightning", "torchmetrics"} & imported
    two = lsde_sample(tmp_path / "two", "sampler=dpmpp", "nfe=10", "seeds.start=5", "seeds.count=300",
                      "batch_size=50", "ddp.devices=2")
    assert two.returncode == 0, two.stderr[-3000:]
    sampler = build_sampler("dpmpp", steps=10)
    expected = generate(sampler, eight_gaussians().denoiser(VPSDE()), range(5, 305), 300, "cpu").x.numpy()
    for out in ("one", "two"):
        got = written(tmp_path / out)
        assert got["samples"].dtype == np.float32 and got["samples"].shape == (300, 2)
        np.testing.assert_array_equal(got["seeds"], np.arange(5, 305))
        np.testing.assert_allclose(got["samples"], expected, rtol=0, atol=1e-6)
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["nfe_mean"] == 10 and summary["settings"]["params"]["steps"] == 10
    assert (tmp_path / "one" / "preview.png").stat().st_size > 10_000
    assert "300 samples of the exact eight_gaussians with dpmpp at NFE 10" in one.stdout


def test_a_killed_or_extended_run_goes_on_from_its_chunks_and_other_settings_are_refused(tmp_path):
    out = tmp_path / "s"
    common = ["sampler=ddim", "nfe=8", "batch_size=100"]
    assert lsde_sample(out, *common, "seeds.count=300").returncode == 0
    first = written(out)
    (out / "chunks" / "seeds-100-199.npz").unlink()  # as if killed before that chunk was written
    (out / "chunks" / "seeds-200-299.npz").write_text("torn")  # a file that is not a chunk: drawn again
    proc = lsde_sample(out, *common, "seeds.count=500")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "100 of 500 seeds drawn by an earlier run" in proc.stdout and "not a chunk of samples" in proc.stdout
    more = written(out)
    np.testing.assert_array_equal(more["samples"][:300], first["samples"])
    assert more["samples"].shape == (500, 2)
    proc = lsde_sample(out, "sampler=ddim", "nfe=10", "batch_size=100", "seeds.count=300")
    assert proc.returncode == 1 and f"config out: {out} holds samples of other settings (params differ)" in \
        proc.stderr, proc.stderr[-2000:]
    np.testing.assert_array_equal(written(out)["samples"], more["samples"])  # left as it was
    (out / "settings.json").unlink()  # its record gone: each chunk still says what it was drawn under
    proc = lsde_sample(out, "sampler=ddim", "nfe=10", "batch_size=100", "seeds.count=300")
    assert proc.returncode == 1 and f"config out: {out} holds samples of other settings (its chunks say so" in \
        proc.stderr, proc.stderr[-2000:]  # they were drawn again over those of nfe=8
    np.testing.assert_array_equal(written(out)["samples"], more["samples"])
    proc = lsde_sample(out, *common, "seeds.count=500")  # the chunks' own settings: the folder is the run's
    assert proc.returncode == 0 and "500 of 500 seeds drawn by an earlier run" in proc.stdout, proc.stderr[-2000:]


def test_an_extension_by_other_code_is_said_and_the_summary_counts_each_code_versions_seeds(tmp_path):
    """Extended after an update, a folder's summary.json named the newest commit for all its seeds: the older ones,
    drawn by other code, were not reproducible from it."""
    out = tmp_path / "s"
    common = ["sampler=ddim", "nfe=8", "batch_size=100"]
    assert lsde_sample(out, *common, "seeds.count=200").returncode == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["drawn_by"] == {summary["git_commit"]: 200}
    with np.load(out / "chunks" / "seeds-0-99.npz", allow_pickle=False) as f:
        chunk = {k: f[k] for k in f.files}
    assert str(chunk["git_commit"]) == summary["git_commit"]
    np.savez(out / "chunks" / "seeds-0-99.npz", **{**chunk, "git_commit": np.str_("0123abc")})  # an older version's
    proc = lsde_sample(out, *common, "seeds.count=300")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"100 seeds of {out} were drawn by other code (0123abc: 100) than this run's" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["drawn_by"] == {"0123abc": 100, summary["git_commit"]: 200}


def test_an_adaptive_solvers_samples_do_not_depend_on_what_the_folder_held(tmp_path):
    """Its steps are shared by a batch: the chunks are planned from seeds.start whatever was drawn before (an extended
    run batched the missing seeds from the first missing one: seeds 200-249 moved by up to 2.2)."""
    common = ["sampler=ode", "tolerance=1e-2", "batch_size=100"]
    assert lsde_sample(tmp_path / "grown", *common, "seeds.count=250").returncode == 0
    assert lsde_sample(tmp_path / "grown", *common, "seeds.count=350").returncode == 0
    assert lsde_sample(tmp_path / "fresh", *common, "seeds.count=350").returncode == 0
    np.testing.assert_array_equal(written(tmp_path / "grown")["samples"], written(tmp_path / "fresh")["samples"])


def test_a_tuned_sampler_reports_its_one_pilot_and_what_it_chose(tmp_path):
    proc = lsde_sample(tmp_path / "r", "sampler=recommended", "nfe=10", "seeds.count=120", "batch_size=40")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    selection = summary["selection"]
    assert summary["setup_nfe"] == selection["pilot_nfe"] > 0  # once, not once per chunk (3 chunks)
    assert selection["choice"] in selection["pilot_rmse_by_choice"] and f"({selection['choice']}, chosen on its " \
        "pilot)" in proc.stdout
    again = lsde_sample(tmp_path / "r", "sampler=recommended", "nfe=10", "seeds.count=120", "batch_size=40")
    assert again.returncode == 0 and "120 of 120 seeds drawn by an earlier run" in again.stdout, again.stderr[-2000:]
    rerun = json.loads((tmp_path / "r" / "summary.json").read_text())  # nothing drawn, no pilot run: as recorded
    assert (rerun["selection"], rerun["setup_nfe"]) == (selection, summary["setup_nfe"])
    (tmp_path / "r" / "summary.json").unlink()  # killed after its last chunk: no summary said what was chosen
    again = lsde_sample(tmp_path / "r", "sampler=recommended", "nfe=10", "seeds.count=120", "batch_size=40")
    assert again.returncode == 0 and f"({selection['choice']}, chosen on its pilot)" in again.stdout
    rerun = json.loads((tmp_path / "r" / "summary.json").read_text())  # the seeded pilot again: the same choice
    assert (rerun["selection"]["choice"], rerun["setup_nfe"]) == (selection["choice"], summary["setup_nfe"])


def test_an_unreadable_settings_file_leaves_the_decision_to_the_chunks(tmp_path):
    """A torn settings.json was reported as 'other settings (device, dtype, ... differ)', whatever the command."""
    out = tmp_path / "s"
    common = ["sampler=ddim", "nfe=5", "batch_size=50", "seeds.count=100"]
    assert lsde_sample(out, *common).returncode == 0
    (out / "settings.json").write_text('{"broken": ')
    proc = lsde_sample(out, *common)
    assert proc.returncode == 0 and "settings.json cannot be read" in proc.stdout + proc.stderr, proc.stderr[-2000:]
    (out / "settings.json").write_text('{"broken": ')  # the run above wrote it again
    proc = lsde_sample(out, "sampler=ddim", "nfe=10", "batch_size=50", "seeds.count=100")
    assert proc.returncode == 1 and "other settings (its chunks say so; its settings.json is gone or unreadable)" \
        in proc.stderr, proc.stderr[-2000:]


def test_chunks_that_are_not_this_models_are_drawn_again_and_a_folder_named_like_one_is_refused(tmp_path):
    out = tmp_path / "c"
    common = ["sampler=ddim", "nfe=5", "batch_size=50", "seeds.count=100"]
    assert lsde_sample(out, *common).returncode == 0
    first = written(out)
    chunk = out / "chunks" / "seeds-0-49.npz"
    with np.load(chunk, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(chunk, **{**arrays, "samples": np.full((50, 3), 1e30, np.float64)})  # its settings, other samples
    proc = lsde_sample(out, *common)
    assert proc.returncode == 0 and "seeds-0-49.npz: not a chunk of samples" in proc.stdout, proc.stderr[-2000:]
    np.testing.assert_array_equal(written(out)["samples"], first["samples"])
    chunk.unlink()
    chunk.mkdir()
    proc = lsde_sample(out, *common)
    assert proc.returncode == 1 and f"config out: {chunk} is not a file but has a chunk's name" in proc.stderr


def test_a_guided_chunk_without_its_classes_is_drawn_again(tmp_path):
    out = tmp_path / "g"
    common = ["+problem.labels=[0,1,2,3,4,5,6,7]", "guidance=1", "sampler=ddim", "nfe=5", "batch_size=50",
              "seeds.count=100", "sampler.gaussian_start=0.3"]
    assert lsde_sample(out, *common).returncode == 0
    first = written(out)
    summary = json.loads((out / "summary.json").read_text())  # guided: started at T, as recorded (it said 0.3)
    assert summary["gaussian_start_left_out"] is True and summary["settings"]["params"]["gaussian_start"] == 0.3
    chunk = out / "chunks" / "seeds-0-49.npz"
    with np.load(chunk, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "labels"}
    np.savez(chunk, **arrays)  # a traceback in the rerun's summary before (a label None)
    proc = lsde_sample(out, *common)
    assert proc.returncode == 0 and "seeds-0-49.npz: not a chunk of samples (ValueError: no class for each of its 50 " \
        "seeds)" in proc.stdout, proc.stderr[-2000:]
    again = written(out)
    np.testing.assert_array_equal(again["samples"], first["samples"])
    np.testing.assert_array_equal(again["labels"], np.arange(100) % 8)


def test_a_folder_this_app_did_not_write_is_refused_and_left_as_it_was(tmp_path):
    """Its own PNGs were removed as 'PNGs of other seeds', and its files replaced."""
    out = tmp_path / "mine"
    (out / "images").mkdir(parents=True)
    photo = out / "images" / "my_photo.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(photo)
    proc = lsde_sample(out, "sampler=ddim", "nfe=5", "seeds.count=10")
    assert proc.returncode == 1 and f"config out: {out} holds files that lsde-sample did not write (images)" in \
        proc.stderr, proc.stderr[-2000:]
    assert sorted(p.name for p in out.rglob("*")) == ["images", "my_photo.png"]
    logs = tmp_path / "new" / "logs"  # Hydra's own folder inside out (made before the app runs) is not theirs
    proc = run_app("lightning_sde.cli.sample", f"out={tmp_path / 'new'}", "progress=false", f"output_dir={logs}",
                   "sampler=ddim", "nfe=5", "seeds.count=10", env=ENV)
    assert proc.returncode == 0 and logs.is_dir(), proc.stderr[-2000:]


def test_a_multirun_writes_one_folder_per_job_under_a_given_out(tmp_path):
    proc = run_app("lightning_sde.cli.sample", "-m", f"out={tmp_path / 's'}", "progress=false",
                   f"hydra.sweep.dir={tmp_path / 'multirun'}", "sampler=ddim", "nfe=5,8", "seeds.count=20", env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [json.loads((tmp_path / f"s_{job}" / "summary.json").read_text())["nfe_mean"] for job in (0, 1)] == [5, 8]


@pytest.mark.parametrize("overrides, message", [
    (["seeds=5"], "config seeds: must be {start: S, count: N} (seeds.start=S seeds.count=N); got 5"),
    (["name=.."], "config name: may hold ASCII letters, digits and . _ - + @ = , only"),
    (["name=''"], "config name: may hold ASCII letters, digits and . _ - + @ = , only"),
    (["name=null"], "config name: must be a name (it names the samples' folder under the outputs root); got null"),
    (["labels=5"], "config labels: labels=5 draws class 5 under guidance; set guidance=<w> too"),
    (["seeds.start=9223372036854775807"], "config seeds: seeds.start + seeds.count must be at most 2**32"),
    (["seeds.start=4294967295", "seeds.count=2"], "seed 2**32 would draw seed 0's sample"),
    (["nfe=100000000"], "config nfe: must be at most 100000"),
    (["labels=abc"], "config labels: must be 'cycle' (seed i: class i mod num_classes) or a class index; got 'abc'"),
    (["png=1"], "config png: must be true, false or auto"),
    (["device=mps"], "config device: 'mps' is not available here"),
    (["sampler=ode", "nfe=10"], "config nfe: ode is adaptive (it chooses its steps); give tolerance="),
    (["sampler=ddim", "tolerance=1e-3"], "config tolerance: ddim takes fixed steps; give nfe= instead"),
    (["sampler=ode", "tolerance=1e30"], "config tolerance: ValueError: ode: rtol must be a number in (0, 1)"),
    (["device=null"], "config device: must be a device's name (cpu, cuda, cuda:1); got None"),  # torch's signature
    (["sampler=heun", "nfe=1"], "config nfe: 1 is below the least budget of heun, 2 NFE (2 a step)"),
    (["sampler=unipc", "sampler.final_corrector=true", "sampler.denoise=true", "nfe=2"],  # two steps, one interval
     "config nfe: 2 is below the least budget of unipc, 3 NFE (1 a step, and 1 to denoise)"),
    (["guidance=2"], "config guidance: the model is not class-conditional"),
    (["png=maybe"], "config png: must be true, false or auto"),
    (["png=true"], "config png: an exact mixture's samples are points, which have no PNG"),  # none was written
    (["seeds.count=0"], "config seeds.count"),
])
def test_a_bad_setting_fails_before_anything_is_written(tmp_path, overrides, message):
    """In-process (lsde-sample's own start-up checks, seconds of imports less each); two of them as the command."""
    from hydra import compose, initialize_config_module

    from lightning_sde.cli.sample import run
    from lightning_sde.configuration import CONFIG_PACKAGE

    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        cfg = compose("sample", overrides=[f"out={tmp_path / 'bad'}", "progress=false", *overrides])
    with pytest.raises(ValueError, match=re.escape(message)):
        run(cfg)
    assert not (tmp_path / "bad").exists()
    if overrides in (["seeds=5"], ["sampler=ode", "tolerance=1e30"]):  # the first check and one in the sampler
        proc = lsde_sample(tmp_path / "bad", *overrides)
        assert proc.returncode == 1 and f"lsde-sample: error: {message}" in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
        assert not (tmp_path / "bad").exists()


def test_png_of_a_points_checkpoint_fails_before_any_sampling(tmp_path):
    """It sampled every seed, then warned that points have no PNG and exited 0."""
    module = ScoreModule(net={"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 8, "depth": 1}, sde=SDE,
                         shape=[2])
    torch.save({"state_dict": module.state_dict(), "global_step": 1, "hyper_parameters": dict(module.hparams)},
               tmp_path / "mlp.ckpt")
    proc = lsde_sample(tmp_path / "p", f"checkpoint={tmp_path / 'mlp.ckpt'}", "png=true", "sampler=ddim", "nfe=5",
                       "seeds.count=8")
    assert proc.returncode == 1 and "config png: the checkpoint's samples are points, which have no PNG" in \
        proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "p" / "samples.npz").exists() and not list((tmp_path / "p").rglob("seeds-*.npz"))


@pytest.mark.slow
def test_times_that_miss_t_fail_before_any_file_and_the_corrected_run_is_not_refused(tmp_path):
    """Checked when sampling started: a settings.json was written first, and refused the corrected rerun."""
    out, common = tmp_path / "t", ["sampler=ddim", "sampler.steps=2", "seeds.count=8"]
    proc = lsde_sample(out, *common, "sampler.times=[0.9,0.5,0.001]")
    assert proc.returncode == 1 and "ddim: times must run from the start time 1.0" in proc.stderr, proc.stderr[-2000:]
    assert not out.exists() or [p.name for p in out.iterdir()] == [".lock"]  # the lock's folder alone
    proc = lsde_sample(out, *common, "sampler.gaussian_start_kl=50")  # a start the data never reaches (after eps)
    assert proc.returncode == 1 and "config sampler: ValueError: gaussian_start_kl=50.0 is reached only after eps" \
        in proc.stderr, proc.stderr[-2000:]
    assert not out.exists() or [p.name for p in out.iterdir()] == [".lock"]
    assert lsde_sample(out, *common, "sampler.times=[1.0,0.5,0.001]").returncode == 0


def test_images_are_written_as_the_pngs_of_their_pixels_and_guided_ones_with_their_labels(tmp_path):
    ckpt = image_checkpoint(tmp_path, num_classes=3)
    out = tmp_path / "img"
    proc = lsde_sample(out, f"checkpoint={ckpt}", "sampler=ddim", "nfe=5", "seeds.count=20", "batch_size=8",
                       "guidance=1.5", "labels=cycle")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = written(out)
    assert got["samples"].dtype == np.uint8 and got["samples"].shape == (20, 8, 8, 1)
    np.testing.assert_array_equal(got["labels"], np.arange(20) % 3)
    x = generate(build_sampler("ddim", steps=5), load_denoiser(ckpt), range(20), 20, "cpu", guidance=1.5).x
    pixels = ((x.clamp(-1, 1) + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(got["samples"].astype(int) - pixels.astype(int)).max() <= 1  # rounding at a level's edge
    assert (got["samples"] == pixels).mean() > 0.99
    pngs = sorted((out / "images").glob("*.png"))
    assert [p.name for p in pngs] == [f"{s:06d}.png" for s in range(20)]
    for seed in (0, 13):
        np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / f"{seed:06d}.png")),
                                      got["samples"][seed][..., 0])
    proc = lsde_sample(out, f"checkpoint={ckpt}", "sampler=ddim", "nfe=5", "seeds.count=20", "batch_size=8",
                       "guidance=1.5", "labels=cycle", "png=false")
    assert proc.returncode == 0 and not list((out / "images").glob("*.png")), proc.stderr[-2000:]  # png=false: none
    # fewer seeds: the folder an FID tool reads holds exactly those
    proc = lsde_sample(out, f"checkpoint={ckpt}", "sampler=ddim", "nfe=5", "seeds.count=10", "batch_size=8",
                       "guidance=1.5", "labels=cycle")
    assert proc.returncode == 0 and len(list((out / "images").glob("*.png"))) == 10, proc.stderr[-2000:]
    assert "10 of 10 seeds drawn by an earlier run" in proc.stdout and "seeds drawn; ETA" not in proc.stdout
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(out / "images" / "my_photo.png")  # not a seed's: kept
    proc = lsde_sample(out, f"checkpoint={ckpt}", "sampler=ddim", "nfe=5", "seeds.count=10", "batch_size=8",
                       "guidance=1.5", "labels=cycle", "png=false")
    assert proc.returncode == 0 and [p.name for p in (out / "images").glob("*.png")] == ["my_photo.png"]


@pytest.mark.slow
@pytest.mark.parametrize("overrides, message", [
    (["sampler=ddim", "nfe=4"], "sampler: 8 of the 8 samples of seeds 0..7 are not finite (first: seed 0)"),
    # two processes stop together (the other rank waited in the next chunk's gather, then failed with a traceback)
    (["sampler=ddim", "nfe=4", "batch_size=2", "ddp.devices=2"],
     "sampler: 4 of the 4 samples of seeds 0..3 are not finite (first: seed 0)"),
    (["sampler=ode"], "sampler: ode: dopri5's step size underflowed"),  # a FloatingPointError's traceback before
])
def test_a_sampler_that_diverges_stops_with_an_error_and_writes_nothing_of_it(tmp_path, overrides, message):
    ckpt = image_checkpoint(tmp_path)
    content = torch.load(ckpt, weights_only=True)
    name = next(k for k, v in content["state_dict"].items() if v.is_floating_point() and v.ndim > 1)
    content["state_dict"][name][0] = 3e38  # finite (NaN weights are refused on loading), its outputs overflow
    torch.save(content, ckpt)
    proc = lsde_sample(tmp_path / "nan", f"checkpoint={ckpt}", "seeds.count=8", *overrides)
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "nan" / "samples.npz").exists() and not list((tmp_path / "nan").glob("chunks/*.npz"))


def test_ctrl_c_is_one_line_and_exit_130_and_the_rerun_goes_on_from_the_chunks_drawn(tmp_path):
    import signal
    import time

    out = tmp_path / "s"
    common = [sys.executable, "-m", "lightning_sde.cli.sample", f"out={out}", "progress=false",
              f"output_dir={tmp_path / 'hydra'}", "sampler=euler_maruyama", "nfe=1000", "batch_size=50"]
    proc = subprocess.Popen([*common, "seeds.count=100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not list((out / "chunks").glob("seeds-*.npz")) and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # as a terminal's Ctrl-C
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == \
        "lsde-sample: interrupted (Ctrl-C); what it wrote before stays on disk; the same command goes on from it", \
        err[-3000:]
    assert "Traceback" not in err
    drawn = len(list((out / "chunks").glob("seeds-*.npz")))
    rerun = subprocess.run([*common, f"seeds.count={50 * drawn}"], capture_output=True, text=True, env=ENV,
                           timeout=300)
    assert rerun.returncode == 0 and f"{50 * drawn} of {50 * drawn} seeds drawn by an earlier run" in rerun.stdout


def test_each_chunk_records_its_largest_batchs_nfe_under_ddp(tmp_path):
    """A chunk holds a batch of each process (seeds part[r::2]); its nfe is their mean and its nfe_max the largest,
    each batch's NFE as the library's own generate counts it alone."""
    proc = lsde_sample(tmp_path / "s", "sampler=ode", "tolerance=1e-2", "seeds.count=80", "batch_size=20",
                       "ddp.devices=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    den, sampler = eight_gaussians().denoiser(VPSDE()), build_sampler("ode", rtol=1e-2, atol=1e-2)
    batch_max = []
    for part in (list(range(0, 40)), list(range(40, 80))):
        per_rank = [generate(sampler, den, part[r::2], 20, "cpu").nfe_per_batch[0] for r in (0, 1)]
        assert per_rank[0] != per_rank[1]  # else a mean would pass for the largest
        with np.load(tmp_path / "s" / "chunks" / f"seeds-{part[0]}-{part[-1]}.npz", allow_pickle=False) as chunk:
            assert (float(chunk["nfe"]), float(chunk["nfe_max"])) == (np.mean(per_rank), max(per_rank))
        batch_max.append(max(per_rank))
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["nfe_max"] == max(batch_max)


def test_the_summarys_nfe_max_is_a_batchs_not_a_chunks_mean(tmp_path):
    """Under DDP a chunk holds a batch of every process and recorded their mean NFE: an adaptive solver's nfe_max
    (190) was no batch's (they took 181 to 199)."""
    from lightning_sde.cli.sample import Drawn, read_chunks, settings_text, still_to_draw

    settings = {"sampler": "ode", "guidance": None}
    chunk = {"seeds": np.arange(0, 4), "samples": np.zeros((4, 2), np.float32), "nfe": np.float64(190.0),
             "settings": np.str_(settings_text(settings))}
    np.savez(tmp_path / "seeds-0-3.npz", **chunk, nfe_max=np.float64(199.0))
    np.savez(tmp_path / "seeds-4-7.npz", **{**chunk, "seeds": np.arange(4, 8)})  # an older chunk: its mean only
    found = read_chunks(tmp_path, settings, (2,), np.float32)
    drawn = Drawn(range(8), (2,), np.float32, labelled=False)
    todo = still_to_draw(found, drawn, 4, batch_dependent=True)
    assert not todo and [(drawn.nfe[s], drawn.nfe_max[s]) for s in (0, 4)] == [(190.0, 199.0), (190.0, 190.0)]
    from omegaconf import OmegaConf

    from lightning_sde.cli.sample import finish

    (tmp_path / "out").mkdir()
    summary = finish(OmegaConf.create({"png": False, "checkpoint": None, "problem": {"_target_": "x.eight"}}),
                     tmp_path / "out", drawn, False, settings, 1.0, 0, 2, None)
    assert (summary["nfe_mean"], summary["nfe_max"]) == (190.0, 199.0)


def test_the_seeds_drawn_are_kept_in_seed_order_and_only_the_missing_ones_drawn():
    """What a folder holds, read into arrays (an object per seed took 525 bytes for a 2-D point): chunks overlapping
    the range, repeated seeds, seeds outside it; a batch-dependent sampler's counts only whole planned chunks."""
    from lightning_sde.cli.sample import Drawn, check_memory, still_to_draw

    def chunk(seeds, nfe=10.0):
        seeds = np.asarray(seeds, dtype=np.int64)
        return {"seeds": seeds, "samples": np.stack([seeds, -seeds], 1).astype(np.float32), "labels": seeds % 3,
                "nfe": nfe, "nfe_max": nfe + 1}

    found = [chunk([8, 9, 10, 11]), chunk([11, 12], 20.0), chunk([2, 3]), chunk([30, 31])]
    drawn = Drawn(range(10, 20), (2,), np.float32, labelled=True)
    todo = still_to_draw(found, drawn, 4, batch_dependent=False)
    assert drawn.count == 3 and drawn.filled.tolist() == [True, True, True] + [False] * 7
    assert [list(part) for part in todo] == [[13, 14, 15, 16], [17, 18, 19]]
    assert drawn.samples[:3, 0].tolist() == [10, 11, 12] and drawn.labels[:3].tolist() == [1, 2, 0]
    assert drawn.nfe[:3].tolist() == [10.0, 20.0, 20.0] and drawn.nfe_max[1] == 21.0  # the last chunk read wins
    drawn = Drawn(range(10, 20), (2,), np.float32, labelled=False)
    todo = still_to_draw([chunk([10, 11, 12, 13]), chunk([14, 15, 16]), chunk([14, 16, 15, 17]), chunk([18, 19])],
                         drawn, 4, batch_dependent=True)  # the plan: 10-13, 14-17, 18-19
    assert drawn.count == 6 and [list(part) for part in todo] == [[14, 15, 16, 17]]
    fresh = Drawn(range(5, 12), (2,), np.float32, labelled=False)
    assert [list(part) for part in still_to_draw([], fresh, 3, batch_dependent=False)] == [[5, 6, 7], [8, 9, 10], [11]]
    check_memory(10**6, (2,), 4)
    with pytest.raises(ValueError, match=r"^config seeds.count: 300000000000 samples of shape \(2,\) take 1.37e\+04 "
                                         r"GiB in memory until samples.npz is written, more than this machine's"):
        check_memory(3 * 10**11, (2,), 4)


def test_the_preview_title_names_a_guided_runs_weight_and_classes():
    """It read "ddim, NFE 50" at w = 0, 1 and 3 alike."""
    from lightning_sde.cli.sample import preview_title

    assert preview_title({"sampler": "ddim", "guidance": None}, 50) == "ddim, NFE 50"
    assert preview_title({"sampler": "ddim", "guidance": 1.5, "labels": 3}, 50) == "ddim, NFE 50, w = 1.5, class 3"
    assert preview_title({"sampler": "ddim", "guidance": 0, "labels": "cycle"}, 10) == "ddim, NFE 10, w = 0, " \
                                                                                        "classes cycled"


def test_a_moved_checkpoints_samples_and_likelihoods_go_on_and_another_checkpoint_is_refused(tmp_path):
    """A run rsynced to another machine: the same checkpoint (step and content) at another path went on as another
    target, refused as 'other settings' in its own samples' and likelihoods' folders."""
    import shutil

    first = image_checkpoint(tmp_path)
    moved = tmp_path / "elsewhere" / "unet.ckpt"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    out = tmp_path / "s"
    common = ["sampler=ddim", "nfe=4", "batch_size=8"]
    assert lsde_sample(out, f"checkpoint={first}", *common, "seeds.count=8").returncode == 0
    proc = lsde_sample(out, f"checkpoint={moved}", *common, "seeds.count=16")
    assert proc.returncode == 0 and "8 of 16 seeds drawn by an earlier run" in proc.stdout, proc.stderr[-2000:]
    torch.save({**torch.load(moved, weights_only=True), "global_step": 8}, moved)  # trained on: another target
    proc = lsde_sample(out, f"checkpoint={moved}", *common, "seeds.count=16")
    assert proc.returncode == 1 and "holds samples of other settings (target_id differ)" in proc.stderr
    likelihood = ["data=digits", "n=4", "batch_size=4", f"out={tmp_path / 'l'}", f"output_dir={tmp_path / 'hydra'}",
                  "ode.rtol=1e-2", "ode.atol=1e-2"]
    shutil.copy(first, moved)
    for checkpoint in (first, moved):
        proc = run_app("lightning_sde.cli.likelihood", *likelihood, f"checkpoint={checkpoint}", env=ENV)
        assert proc.returncode == 0, proc.stderr[-2000:]
