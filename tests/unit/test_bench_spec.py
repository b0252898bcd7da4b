"""lsde-bench in-process: the sweep spec and its validation (before any sampling), the results store under
concurrent appends, FID/KID reference statistics and their cache, lsde-prepare's requests."""

import math
import multiprocessing
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from lightning_sde.bench.results import ResultsStore
from lightning_sde.configuration import CONFIG_PACKAGE
from lightning_sde.metrics.scorer import Scorer

SMALL = ["~samplers", "+sampler@samplers.ddim=ddim", "+sampler@samplers.em=euler_maruyama", "nfe=[3,10,50]",
         "seeds.count=300", "batch_size=128", "progress=false"]


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


def _cfg(tmp_path, *overrides, app="bench"):
    """lsde-bench's config on SMALL, or lsde-compare's (app="compare": its own sampler set, on the 8 Gaussians)."""
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        return compose(app, overrides=[f"results={tmp_path}/r.jsonl",
                                       *(SMALL if app == "bench" else ["progress=false"]), *overrides])


BAD_BENCH = [
    (["samplers.ddim._target_=lightning_sde.samplers.DDDIM"], "config samplers.ddim: ImportError"),
    (["samplers.ddim.eta=2"], "config samplers.ddim: ValueError: ddim: eta must lie in [0, 1]; got 2"),
    (["nfe=[]"], "config nfe: is empty"),
    (["nfe=[10,0]"], "config nfe[1]: must be an integer >= 1; got 0"),
    (["nfe=[10,1000000000000]"], "config nfe[1]: must be at most 100000; got 1000000000000"),
    (["nfe=20"], "config nfe: must be a list, e.g. 'nfe=[20]' (quoted for the shell), or null; got 20"),
    (["nfe=abc"], "config nfe: must be a list, e.g. 'nfe=[<value>, ...]' (quoted"),  # not 'nfe=[abc]': fails too
    (["nfe=0"], "config nfe: must be an integer >= 1; got 0"),  # not advised to write 'nfe=[0]'
    (["+sampler@samplers.ode=ode", "tolerances=1e-3"], "config tolerances: must be a list"),
    (["+sampler@samplers.ode=ode", "tolerances=[1e-3,-1e-5]"], "config tolerances[1]: must be a number > 0"),
    (["+sampler@samplers.ode=ode", "tolerances=[2]"],
     "config tolerances[0]: samplers.ode: ode: rtol must be a number in (0, 1); got 2.0"),
    (["checkpoint=/nonexistent.ckpt", "data=toy2d"],
     "config checkpoint: no checkpoint file at '/nonexistent.ckpt'"),
    (["metrics=[sliced_w2,fidd]"], "config metrics: unknown or unusable metric(s) ['fidd'] for an exact mixture; "
                                   "allowed: ['sliced_w2', 'mmd', 'loglik']"),
    (["samplers.ddim.times=[1.0,0.5,0.001]", "samplers.ddim.steps=2"],
     "config samplers.ddim: ddim: explicit times fix the number of steps"),
    (["shard.index=2", "shard.count=2"], "config shard.index: must be an integer in [0, 2)"),
    (["problem._target_=lightning_sde.exact.nine_gaussians"], "config problem: ImportError"),
    (["ddp.devices=0"], "config ddp.devices: must be an integer >= 1; got 0"),
    (["reference_count=-5"], "config reference_count: must be an integer >= 1"),
    (["dtype=float16"], "config dtype: 'float16' is not one of"),
    (["metrics=1"], "config metrics: must be 'auto' or a non-empty list of"),  # 'int' object is not iterable
    (["labels=bogus"], "config labels: must be 'cycle' (seed i: class i mod num_classes) or a class index; got "
                       "'bogus'"),  # 'draws class bogus under guidance'
    (["name=null"], "config name: must be a name (it names the sweep's folder under the outputs root); got null"),
    (["guidance=[1.0]"], "config guidance: the target is not class-conditional"),
    (["+problem.labels=[0,1,0,1,0,1,0,1]", "guidance=[-1]"], "config guidance[0]: must be a number >= 0"),
    (["+problem.labels=[0,1,0,1,0,1,0,1]", "guidance=[1]", "labels=5"], "config labels: must be 'cycle' or a "
                                                                           "class in 0..1; got 5"),
    (["+problem.labels=[0,1,0,1,0,1,0,1]", "labels=1"], "config labels: labels=1 draws class 1 under guidance; set "
                                                          "guidance=[<w>, ...] too"),  # unguided rows of every class
    (["name=.."], "config name: may hold ASCII letters, digits and . _ - + @ = , only"),
    (["samplers.ddim.denoise=true", "samplers.em.denoise=true", "nfe=[1]"],  # the noise floor alone: exited 0
     "config nfe: [1] leaves no sampler a cell: each is below every sampler's least budget"),
]
# lsde-compare's own sampler set (configs/compare.yaml)
BAD_COMPARE = [
    (["samplers.ddim_50.steps=0"], "config samplers.ddim_50: ValueError: ddim: steps must be an integer >= 1"),
    (["samplers.ddim_50.steps=1000000000"],  # what nfe= refuses, through the sampler's own steps: an ETA of years
     "config samplers.ddim_50: ValueError: ddim: steps must be at most 100000; got 1000000000"),
    (["samplers.ode_dopri5.rtol=-1"],
     "config samplers.ode_dopri5: ValueError: ode: rtol must be a number in (0, 1)"),
    (["sde.eps=2.0"], "config sde: ValueError: SDE time range needs 0 < eps < T"),
    (["samplers.heun_50._target_=lightning_sde.samplers.Heunn"], "config samplers.heun_50: ImportError"),
    (["+samplers.heun_50.order=3"], "config samplers.heun_50: TypeError"),
    (["samplers.em_1000.grid=trailing"], "config samplers.em_1000: ValueError: euler_maruyama: the trailing "
                                         "grid needs start / steps > eps; got 1.0 / 1000 <= 0.001"),
    (["~samplers"], "config samplers: empty; pick a set"),  # the key deleted, not emptied
]


@pytest.mark.parametrize("app, overrides, message", [("bench", *case) for case in BAD_BENCH]
                         + [("compare", *case) for case in BAD_COMPARE])
def test_bad_spec_fails_fast_before_sampling(tmp_path, monkeypatch, app, overrides, message):
    from lightning_sde.bench import runner

    monkeypatch.setattr(runner, "generate", lambda *a, **k: pytest.fail("sampled before validating"))
    cfg = _cfg(tmp_path, *overrides, app=app)
    with pytest.raises(ValueError) as err:
        runner.run_sweep(cfg)
    assert message in str(err.value)
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "samples").exists()


def test_heun_skips_nfe_below_its_step_cost(tmp_path, caplog):
    from lightning_sde.bench.runner import prepare

    cells = prepare(_cfg(tmp_path, "+sampler@samplers.heun=heun", "nfe=[1,10,8,9]")).cells
    heun = [c for c in cells if c.label == "heun"]
    assert [(c.requested, c.params["steps"]) for c in heun] == [(10, 5), (8, 4)]  # NFE 1 < 2 a step: skipped
    assert "skipping heun at nfe=1" in caplog.text
    assert "skipping heun at nfe=9: it runs the same 4 steps as at nfe=8" in caplog.text  # not a second cell at 8
    assert [c.requested for c in cells if c.label == "ddim"] == [1, 10, 8, 9]


def test_fid_kid_on_digits_use_cached_reference_statistics(tmp_path):
    from lightning_sde.data import DigitsDataModule

    ref = DigitsDataModule().reference(300)
    first = Scorer(ref, ("fid", "kid"), feature_extractor="digits", cache_dir=tmp_path)
    noise = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    on_noise, on_data = first(noise), first(ref.clone())
    assert on_data["fid"] < 1e-3 and on_noise["fid"] > 10 and on_data["kid"] < 0.01 < on_noise["kid"]
    assert first.protocol["feature_extractor"] == "digits" and len(first.protocol["feature_sha256"]) == 64
    caches = sorted(tmp_path.glob("reference-*.pt"))
    assert [p.name.rsplit("-", 1)[1] for p in caches] == ["fid.pt", "kid.pt"]
    mtimes = [p.stat().st_mtime_ns for p in caches]
    again = Scorer(ref, ("fid", "kid"), feature_extractor="digits", cache_dir=tmp_path)  # from the cache
    assert again(noise) == on_noise and [p.stat().st_mtime_ns for p in caches] == mtimes
    # fewer samples than KID's subsets (150: half the reference): subsets of the samples' size, for this set only
    few = again(noise[:100])
    assert few["kid"] > 0.01 and again(noise) == on_noise
    with pytest.raises(ValueError, match="KID needs at least 2 samples; got 1"):
        Scorer(ref, ("kid",), feature_extractor="digits", cache_dir=tmp_path)(noise[:1])
    # a reference of 3: subsets of 1, whose unbiased MMD is NaN (a KID of nan, as if the sampler had diverged)
    with pytest.raises(ValueError, match="KID needs a reference of at least 4 images .*; got 3"):
        Scorer(ref[:3], ("kid",), feature_extractor="digits", cache_dir=tmp_path)
    assert math.isfinite(Scorer(ref[:4], ("kid",), feature_extractor="digits", cache_dir=tmp_path)(noise[:2])["kid"])


class _Marker:
    """Unpickling it writes a file: a crafted cache that must never be unpickled in full."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "ran"))


def test_a_crafted_or_foreign_reference_statistics_file_is_refused_naming_it_and_nothing_runs(tmp_path):
    from lightning_sde.data import DigitsDataModule

    ref = DigitsDataModule().reference(50)
    Scorer(ref, ("fid",), feature_extractor="digits", cache_dir=tmp_path)
    (cache,) = tmp_path.glob("reference-*-fid.pt")
    marker = tmp_path / "PWNED"
    for content in ({"real_features_sum": _Marker(marker)}, {"nosuch_state": torch.zeros(2)}, "text"):
        if content == "text":
            cache.write_text("not a tensor file")
        else:
            torch.save(content, cache)
        with pytest.raises(ValueError, match=f"{cache}: not reference statistics .* Delete it"):
            Scorer(ref, ("fid",), feature_extractor="digits", cache_dir=tmp_path)
    assert not marker.exists()


def test_reference_statistics_that_do_not_fit_are_refused_before_any_sampling(tmp_path):
    """A NaN sum (torchmetrics' FID then crashed the process), other shapes, a count that is not the reference's,
    KID blocks of mixed widths: each refused where the file is read, naming it; the genuine file reads."""
    from lightning_sde.data import DigitsDataModule

    ref = DigitsDataModule().reference(50)
    Scorer(ref, ("fid", "kid"), feature_extractor="digits", cache_dir=tmp_path)
    (fid,), (kid,) = tmp_path.glob("reference-*-fid.pt"), tmp_path.glob("reference-*-kid.pt")
    good_fid, good_kid = (torch.load(p, weights_only=True) for p in (fid, kid))
    nan_sum = {**good_fid, "real_features_sum": good_fid["real_features_sum"] * float("nan")}
    for path, content, reason in [
        (fid, nan_sum, "real_features_sum is not this metric's finite statistics"),
        (fid, {**good_fid, "real_features_cov_sum": torch.zeros(3, 3, dtype=torch.float64)}, "real_features_cov_sum"),
        (fid, {**good_fid, "real_features_num_samples": torch.tensor(1)}, "statistics of 1 images, not of the 50"),
        (fid, {k: v for k, v in good_fid.items() if k != "real_features_sum"}, "states .*, not "),
        (kid, {"real_features": [good_kid["real_features"][0], torch.zeros(2, 5)]}, "real_features is not"),
        (kid, {"real_features": [b[:10] for b in good_kid["real_features"]]}, "statistics of 10 images"),
    ]:
        torch.save(content, path)
        with pytest.raises(ValueError, match=f"{path}: not reference statistics this package wrote \\(ValueError: "
                                             f"{reason}.*Delete it"):
            Scorer(ref, ("fid", "kid"), feature_extractor="digits", cache_dir=tmp_path)
        torch.save(good_fid if path == fid else good_kid, path)
    Scorer(ref, ("fid", "kid"), feature_extractor="digits", cache_dir=tmp_path)


def test_lsde_prepare_caches_the_reference_statistics_the_bench_reads(tmp_path, caplog):
    from lightning_sde.cli.prepare import main as prepare_main
    from lightning_sde.data import DigitsDataModule

    assert prepare_main(["digits", "--reference-stats", "300", "--features", "digits", "--cache", str(tmp_path)]) == 0
    caches = sorted(tmp_path.glob("reference-*.pt"))
    assert len(caches) == 2
    mtimes = [p.stat().st_mtime_ns for p in caches]
    # the bench's reference for data=digits, seeds.count=300: the same tensor, so the same cache entries
    caplog.set_level("INFO")
    scorer = Scorer(DigitsDataModule().reference(300), ("fid", "kid"), feature_extractor="digits", cache_dir=tmp_path)
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
    from lightning_sde.cli.prepare import main as prepare_main

    try:
        prepare_main(argv)
    except SystemExit:
        pass
    except ValueError as err:
        assert message in str(err)
        return
    assert message in capsys.readouterr().err


def test_a_result_key_holds_everything_that_changes_its_numbers(tmp_path):
    """A rerun under other settings recomputes instead of reporting the old numbers: the dtype, the device kind,
    every sampler parameter, and for adaptive samplers (whose shared steps depend on the batch) the batch size and
    the number of processes."""
    from lightning_sde.bench.runner import prepare

    def keys(*overrides):
        cells = prepare(_cfg(tmp_path, "+sampler@samplers.ode=ode", "tolerances=[1e-3]", *overrides)).cells
        return {c.label + str(c.requested): c.key("mmd") for c in cells if c.grid != "exact"}

    base = keys()
    assert base.keys() == keys("dtype=float64").keys()
    assert not set(base.values()) & set(keys("dtype=float64").values()), "float64 must recompute every cell"
    assert not set(base.values()) & set(keys("device=cuda").values())
    eta = keys("samplers.ddim.eta=1.0")
    assert eta["ddim3"] != base["ddim3"] and eta["em3"] == base["em3"]  # a sampler's own parameters key its rows
    assert keys("+samplers.ddim.pilot_batch=4")["ddim3"] == base["ddim3"], "memory-only knobs key no rows"
    bigger = keys("batch_size=64")
    assert bigger["ode0.001"] != base["ode0.001"], "adaptive: the batch changes the samples"
    assert bigger["ddim3"] == base["ddim3"], "fixed-step samples do not depend on the batch (seed-addressed)"
    assert keys("ddp.devices=2")["ode0.001"] != base["ode0.001"]
    # a float parameter or SDE value given as an integer on the command line (Hydra reads `eta=0` as an int) is the
    # value the config file holds as a float: the same cells, the same target
    as_ints = keys("samplers.ddim.eta=0", "samplers.ode.first_step=1", "sde.beta_max=20")
    assert as_ints == keys("samplers.ode.first_step=1.0") != base
    assert keys("sde.beta_max=19") != base


def test_explicit_times_given_as_integers_key_the_rows_of_the_same_times_as_floats(tmp_path):
    """`samplers.ddim.times=[1,0.5,0.001]` on a command line holds the int 1: the same times as 1.0, one cell."""
    from lightning_sde.bench.runner import prepare

    def key(times):
        cells = prepare(_cfg(tmp_path, "nfe=null", "samplers.ddim.steps=2", f"samplers.ddim.times={times}")).cells
        return next(c.key("mmd") for c in cells if c.label == "ddim")

    assert key("[1,0.5,0.001]") == key("[1.0,0.5,0.001]") != key("[1.0,0.4,0.001]")


def test_non_finite_samples_are_reported_not_scored():
    from lightning_sde.bench.runner import score
    from lightning_sde.generation import Samples

    cell = prepare_cells()[1]
    x = torch.randn(10, 2)
    x[3, 1] = float("nan")
    samples = Samples(x, [5], 1.0, 0.0, 1)
    assert samples.n_nonfinite == 1
    assert score(lambda _: pytest.fail("scored"), cell, samples, x) == {m: None for m in cell.metrics}


def prepare_cells():
    from lightning_sde.bench.runner import prepare

    return prepare(_cfg(Path("/nonexistent"))).cells


def test_each_shard_has_its_own_output_folder(tmp_path):
    folders = {_cfg(tmp_path, f"shard.index={i}", "shard.count=2").output_dir for i in (0, 1)}
    assert len(folders) == 2 and all("shard" in f for f in folders)


def test_guidance_is_a_sweep_axis_with_an_honest_nfe(tmp_path):
    """guidance=[0, 2] on a labelled mixture: a cell per sampler x NFE x w (label <sampler>@w<w>), each with its own
    key; rows record w, the labels rule and the batch factor (2 when guided), at the sampler's NFE, and that a
    configured Gaussian start was left out (guided samplers start at T; the rows claimed a start that never ran)."""
    from lightning_sde.bench import runner
    from lightning_sde.bench.report import load

    cfg = _cfg(tmp_path, "+problem.labels=[0,1,2,3,4,5,6,7]", "guidance=[0,2]", "nfe=[5]", "seeds.count=64",
               "wandb.enabled=false", "~samplers.em", "++samplers.ddim.gaussian_start=0.3")
    runner.run_sweep(cfg)
    rows = [r for r in load(tmp_path / "r.jsonl") if r["metric"] == "sliced_w2" and r["sampler_name"] == "ddim"]
    assert {r["sampler"] for r in rows} == {"ddim@w0", "ddim@w2"}
    assert len({r["key"] for r in rows}) == 2
    by_w = {r["guidance"]: r for r in rows}
    assert by_w[0.0]["guidance_batch_factor"] == 1 and by_w[2.0]["guidance_batch_factor"] == 2
    assert all(r["nfe"] == 5 and r["labels"] == "cycle" for r in rows)
    assert all(r["params"]["gaussian_start"] == 0.3 and r["gaussian_start_left_out"] for r in rows)
    from lightning_sde.bench.dashboard import sweep_config

    config = sweep_config("s", load(tmp_path / "r.jsonl"))[0]  # W&B runs filter on the weights and the classes
    assert (config["guidance"], config["labels"]) == ([0.0, 2.0], "cycle")
    live = sweep_config("s", runner.planned_rows(runner.prepare(cfg).cells, {}, 64))[0]  # a live run's, before any row
    assert (live["guidance"], live["labels"]) == ([0.0, 2.0], "cycle")
    assert "guidance" not in sweep_config("s", [{k: v for k, v in r.items() if k not in ("guidance", "labels")}
                                                for r in rows])[0]
    assert by_w[2.0]["value"] != by_w[0.0]["value"]


def test_a_checkpoint_targets_id_changes_with_its_content_and_its_data_not_with_batching(tmp_path):
    """Rows of a results file are reused by key: a checkpoint rewritten at the same path and step (another run) or
    other reference data (data.name) must not match the old rows; the data's batch size changes nothing measured."""
    from lightning_sde.module import ScoreModule
    from lightning_sde.targets import target_kind

    net = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 2, "time_embed_dim": 8}
    sde = {"_target_": "lightning_sde.sde.VPSDE"}
    path = tmp_path / "last.ckpt"

    def save(seed):
        torch.manual_seed(seed)
        state = ScoreModule(net=net, sde=sde, shape=[2]).state_dict()
        torch.save({"state_dict": state, "hyper_parameters": {"net": net, "sde": sde, "shape": [2]},
                    "global_step": 100}, path)

    def target(*overrides):
        return target_kind(_cfg(tmp_path, f"checkpoint={path}", "data=toy2d", *overrides))[1]

    save(0)
    first = target()
    assert first.startswith(f"{path.resolve()}@step100#") and target("data.batch_size=7") == first
    assert target("data.name=swiss_roll") != first
    save(1)
    assert target() != first


def test_a_checkpoint_is_scored_only_against_the_data_and_under_the_sde_it_was_trained_on(tmp_path):
    """data.name=swiss_roll for an eight-Gaussians model would score it against other data; sde=ve beside a
    checkpoint would be ignored: both are refused before anything loads. How the data is read may differ."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from lightning_sde.configuration import LIKELIHOOD_FREE_KEYS
    from lightning_sde.module import ScoreModule
    from lightning_sde.targets import target_kind

    net = {"_target_": "lightning_sde.models.mlp.MLP", "dim": 2, "width": 16, "depth": 2, "time_embed_dim": 8}
    sde = {"_target_": "lightning_sde.sde.VPSDE"}
    data = OmegaConf.to_container(_cfg(tmp_path, "data=toy2d").data, resolve=True)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": ScoreModule(net=net, sde=sde, shape=[2]).state_dict(), "global_step": 100,
                "hyper_parameters": {"net": net, "sde": sde, "shape": [2]}, "data_config": data}, path)
    for free in ("data.batch_size=7", "data.n_train=500", "+data.seed=3"):  # how it is read, another split
        assert target_kind(_cfg(tmp_path, f"checkpoint={path}", "data=toy2d", free))[0] == "checkpoint"
    with pytest.raises(ValueError, match=r"^config data: the checkpoint .*last.ckpt was trained on other data "
                                         r"\(data.name: 'eight_gaussians' there, 'swiss_roll' here\); score it"):
        target_kind(_cfg(tmp_path, f"checkpoint={path}", "data=toy2d", "data.name=swiss_roll"))
    digits = OmegaConf.to_container(_cfg(tmp_path, "data=digits").data, resolve=True)
    torch.save({**torch.load(path, weights_only=True), "data_config": digits}, tmp_path / "digits.ckpt")
    # dequantisation moves the pixel levels a sample is scored against (a perfect model's FID doubled); a likelihood
    # may be measured on dequantised data (the bits/dim bound)
    dequantized = [f"checkpoint={tmp_path / 'digits.ckpt'}", "data=digits", "data.dequantize=true"]
    with pytest.raises(ValueError, match=r"trained on other data \(data.dequantize: False there, True here\)"):
        target_kind(_cfg(tmp_path, *dequantized))
    assert target_kind(_cfg(tmp_path, *dequantized), free_data_keys=LIKELIHOOD_FREE_KEYS)[0] == "checkpoint"
    overrides = [f"checkpoint={path}", "data=toy2d", "sde=ve"]
    with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
        HydraConfig.instance().set_config(compose("bench", overrides=overrides, return_hydra_config=True))
    try:
        with pytest.raises(ValueError, match="^config checkpoint/sde: both set"):
            target_kind(_cfg(tmp_path, *overrides))
    finally:
        HydraConfig.instance().cfg = None


def test_close_guidance_weights_get_labels_of_their_own(tmp_path):
    """1.0000001 and 1.0000002 were both 'ddim@w1': one curve, one row shown of the two."""
    from lightning_sde.bench.runner import prepare

    cells = prepare(_cfg(tmp_path, "+problem.labels=[0,1,2,3,4,5,6,7]", "guidance=[1.0000001,1.0000002,2]",
                         "nfe=[5]", "~samplers.em")).cells
    assert [c.label for c in cells if c.sampler == "ddim"] == ["ddim@w1.0000001", "ddim@w1.0000002", "ddim@w2"]
    cells = prepare(_cfg(tmp_path, "+problem.labels=[0,1,2,3,4,5,6,7]", "guidance=[0.333333333,2]", "nfe=[5]",
                         "~samplers.em")).cells  # no two alike: the labels as before (rows keyed by them)
    assert [c.label for c in cells if c.sampler == "ddim"] == ["ddim@w0.333333", "ddim@w2"]


def test_a_sweep_of_one_class_is_named_by_its_class_beside_the_classes_cycled():
    from lightning_sde.bench.results import protocol_labels

    rows = [{"target": t, "sampler": "ddim@w1", "seed_start": 0, "seed_count": 8, "problem": "eight_gaussians",
             "sde": "vp", "labels": labels} for t, labels in (("a", "cycle"), ("b", 3), ("b", None))]
    assert [protocol_labels(rows)(r) for r in rows] == ["ddim@w1 [eight_gaussians/vp]",
                                                        "ddim@w1 [eight_gaussians/vp class 3]",
                                                        "ddim@w1 [eight_gaussians/vp class 3]"]  # its noise floor's


def test_sweeps_of_one_target_with_their_own_reference_sets_or_features_are_named_by_them():
    """Shards run at two reference_count were told apart by a target hash alone (`eight_gaussians/vp #67fda6`)."""
    from lightning_sde.bench.results import protocol_labels

    base = "mixture:{}|sde:{}"
    targets = [base, base + "|reference_count=512", base + "|features=inception|reference_count=64",
               "q|reference_count=9"]
    rows = [{"target": t, "sampler": "ddim", "seed_start": 0, "seed_count": 8, "problem": "p", "sde": "vp"}
            for t in targets]
    rows[-1]["problem"] = "q"
    assert [protocol_labels(rows)(r) for r in rows] == ["ddim [p/vp]", "ddim [p/vp ref 512]",
                                                        "ddim [p/vp features inception ref 64]",
                                                        "ddim [q/vp]"]  # a name of its own: as before
    alike = [rows[1], {**rows[1], "target": base + "|reference_count=512|x"}]
    assert all(" ref 512 #" in protocol_labels(alike)(r) for r in alike)  # still alike: hashed besides


def test_a_users_sampler_edited_gets_new_cells_not_its_old_rows(tmp_path, monkeypatch):
    """Its rows were keyed by its config alone: after an edit of its step(), a rerun said '3 already in results'
    and printed the old numbers."""
    import importlib
    import sys

    from lightning_sde.bench.spec import user_source
    from lightning_sde.samplers import build_sampler

    module = tmp_path / "my_samplers.py"
    code = ("import dataclasses\nfrom lightning_sde.samplers.ddim import DDIM\n\n\n@dataclasses.dataclass\n"
            "class MyDDIM(DDIM):\n    name = 'my_ddim'\n\n    def step(self, *args):\n        return {}(*args)\n")
    module.write_text(code.format("super().step"))
    monkeypatch.syspath_prepend(str(tmp_path))
    first = user_source(importlib.import_module("my_samplers").MyDDIM(steps=4))
    module.write_text(code.format("2 * super().step"))
    edited = user_source(importlib.reload(sys.modules["my_samplers"]).MyDDIM(steps=4))
    assert len(first) == 16 and edited != first
    assert user_source(build_sampler("ddim", steps=4)) is None  # the package's own: git_commit says which
    from omegaconf import OmegaConf

    from lightning_sde.bench.spec import run_settings

    plain = OmegaConf.create({"device": "cpu", "dtype": "float32"})
    assert run_settings(plain, sys.modules["my_samplers"].MyDDIM(steps=4))["source_sha256"] == edited  # in the key
    assert "source_sha256" not in run_settings(plain, build_sampler("ddim", steps=4))
    # a standard-library mixin (its source is the interpreter's, not the user's) is not part of the hash
    module.write_text(code.format("2 * super().step").replace("(DDIM)", "(DDIM, contextlib.ContextDecorator)")
                      .replace("import dataclasses", "import contextlib\nimport dataclasses"))
    import hashlib
    import inspect

    mixed = importlib.reload(sys.modules["my_samplers"]).MyDDIM
    assert user_source(mixed(steps=4)) == hashlib.sha256(inspect.getsource(mixed).encode()).hexdigest()[:16]


def test_a_row_key_parses_into_the_fields_of_its_cell():
    import json

    from lightning_sde.bench.results import cell_key_of, key_fields, variant_of
    from lightning_sde.bench.spec import Cell

    cell = Cell("mixture:x", "ddim eta", "ddim", {"steps": 5, "eta": 1.0, "pilot_batch": 64}, "nfe", 5, 3, 128,
                ("sliced_w2",), {"dtype": "float64", "device": "cpu"})
    fields = key_fields(cell.key("sliced_w2"))
    assert fields == {"target": "mixture:x", "label": "ddim eta", "sampler": "ddim", "params": {"eta": 1.0, "steps": 5},
                      "grid": "nfe", "requested": 5, "seed_start": 3, "seed_count": 128, "metric": "sliced_w2",
                      "settings": {"dtype": "float64", "device": "cpu"}}
    assert cell_key_of(cell.key("sliced_w2")) == cell_key_of(cell.key("mode_error")) == cell.cell_key()
    assert variant_of({"key": cell.key("sliced_w2")}) == json.dumps(["ddim", {"eta": 1.0}, fields["settings"]],
                                                                     sort_keys=True)  # the budget is no variant
    older = json.dumps(list(fields.values())[:-1])  # a key written before run settings were part of it
    assert key_fields(older)["metric"] == "sliced_w2" and variant_of({"key": older}) == ""
    assert json.loads(cell_key_of(older))[8] is None
    for other in ("not json", "[1, 2]", '{"a": 1}', json.dumps(list(range(11)))):
        assert key_fields(other) is None and cell_key_of(other) == other and variant_of({"key": other}) == ""
