"""The digits feature network as torchmetrics' FID/KID `feature=`: it separates real digits from noise, its
weights are the committed ones, and the Inception extractor fails fast and clearly offline."""

import json
import os
import time

import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lightning_sde.data.digits import digits_to_unit_range, load_digits_levels
from lightning_sde.loading import file_sha256
from lightning_sde.metrics.features import (
    DIGITS_WEIGHTS,
    DigitsCNN,
    DigitsFeatures,
    build_feature_extractor,
    inception_weights_path,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small matrices: one thread is faster, and on a loaded shared CPU two threads can be 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    levels, labels = load_digits_levels()
    return digits_to_unit_range(levels), labels  # [-1, 1]


@pytest.fixture(scope="module")
def halves(digits):
    images, _ = digits
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    return images[order[:898]], images[order[898:1796]]


def unit(x):
    return (x + 1) / 2  # what the SamplerCallback feeds the metrics (normalize=True)


def fid(features, real, fake):
    metric = FrechetInceptionDistance(feature=features, normalize=True)
    metric.update(unit(real), real=True)
    metric.update(unit(fake), real=False)
    return metric.compute().item()


def test_weights_match_the_sidecar_and_load_safely():
    sidecar = json.loads(DIGITS_WEIGHTS.with_suffix(".json").read_text())
    assert file_sha256(DIGITS_WEIGHTS) == sidecar["sha256"]
    assert DIGITS_WEIGHTS.stat().st_size < 1_000_000 and sidecar["bytes"] == DIGITS_WEIGHTS.stat().st_size
    assert sidecar["test_accuracy"] > 0.95 and "train_digits_features" in sidecar["command"]
    state = torch.load(DIGITS_WEIGHTS, map_location="cpu", weights_only=True)
    DigitsCNN().load_state_dict(state)


def test_classifier_behind_the_features_recognises_digits(digits):
    images, labels = digits
    net = DigitsFeatures().net
    with torch.no_grad():
        acc = (net(images).argmax(1) == labels).float().mean().item()
    assert acc > 0.97


def test_feature_module_interface(digits):
    images, _ = digits
    x = images[:64]
    features = build_feature_extractor("digits")
    assert features.num_features == 128 and not features.training
    features.train()
    assert not features.training  # dropout never switches on
    f = features(unit(x))
    assert f.shape == (64, 128) and f.dtype == torch.float32 and not f.requires_grad
    assert torch.equal(f, features(unit(x)))
    symmetric = DigitsFeatures(input_range="symmetric")
    assert torch.allclose(symmetric(x), f, atol=1e-5)
    as_bytes = (unit(x) * 255).round().to(torch.uint8)
    assert torch.allclose(features(as_bytes), f, atol=0.05 * f.abs().max().item())
    assert torch.allclose(features(unit(x).double()), f, atol=1e-5)  # float64 samples are accepted
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\); got \(4, 1, 28, 28\)"):
        features(torch.rand(4, 1, 28, 28))
    with pytest.raises(ValueError, match="input_range"):
        DigitsFeatures(input_range="0-255")
    with pytest.raises(FileNotFoundError, match="lightning_sde.metrics.train_digits_features"):
        DigitsFeatures(weights_path="/nonexistent/w.pt")
    with pytest.raises(ValueError, match="unknown feature extractor 'clip'.*digits.*inception"):
        build_feature_extractor("clip")


def test_fid_separates_real_digits_from_noise(digits, halves):
    a, b = halves
    features = DigitsFeatures()
    real_vs_real = fid(features, a, b)
    noise = 2 * torch.rand(a.shape, generator=torch.Generator().manual_seed(2)) - 1
    real_vs_noise = fid(features, a, noise)
    # Gaussian blobs: smooth, digit-sized, but not digits
    grid = torch.linspace(-1, 1, 8)
    centre = 0.6 * (2 * torch.rand(len(a), 2, generator=torch.Generator().manual_seed(3)) - 1)
    r2 = (grid[None, None, :] - centre[:, 0, None, None]) ** 2 + (grid[None, :, None] - centre[:, 1, None, None]) ** 2
    blobs = (2 * torch.exp(-r2 / 0.3) - 1)[:, None]
    real_vs_blobs = fid(features, a, blobs)
    print(f"FID real/real {real_vs_real:.3f}  real/noise {real_vs_noise:.1f}  real/blobs {real_vs_blobs:.1f}")
    assert 0 <= real_vs_real < 3
    assert real_vs_noise > 10 * real_vs_real and real_vs_blobs > 10 * real_vs_real
    # a slightly perturbed copy is closer than noise: the distance is graded, not a yes/no detector
    shifted = torch.roll(b, shifts=1, dims=-1)
    assert real_vs_real < fid(features, a, shifted) < real_vs_noise


def test_kid_separates_real_digits_from_noise(halves):
    a, b = halves
    noise = 2 * torch.rand(a.shape, generator=torch.Generator().manual_seed(2)) - 1

    def kid(fake):
        metric = KernelInceptionDistance(feature=DigitsFeatures(), normalize=True, subset_size=400, subsets=20)
        metric.update(unit(a), real=True)
        metric.update(unit(fake), real=False)
        return metric.compute()[0].item()

    real_vs_real, real_vs_noise = kid(b), kid(noise)
    print(f"KID real/real {real_vs_real:.4f}  real/noise {real_vs_noise:.3f}")
    assert abs(real_vs_real) < 0.05 and real_vs_noise > 10 * max(abs(real_vs_real), 1e-3)


def test_inception_without_weights_fails_fast_and_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("LSDE_INCEPTION_WEIGHTS", raising=False)
    expected = inception_weights_path()
    assert str(expected).startswith(str(tmp_path / "torch_home"))
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        build_feature_extractor("inception")
    assert time.perf_counter() - start < 2  # no network attempt
    message = str(info.value)
    assert str(expected) in message and "TORCH_HOME" in message and "LSDE_INCEPTION_WEIGHTS" in message
    assert "lsde-prepare --inception" in message
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_feature_extractor("inception", weights_path=tmp_path / "nowhere.pth")


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (str(self.path),))


def test_inception_weights_that_are_not_plain_tensors_are_refused_before_torch_fidelity_unpickles_them(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "crafted.pth"
    torch.save({"conv.weight": _Marker(marker)}, path)
    with pytest.raises(ValueError, match=f"InceptionV3 weights at '{path}' are not a state_dict of tensors"):
        build_feature_extractor("inception", weights_path=path)
    assert not marker.exists()


def test_inception_weights_of_another_network_are_refused_naming_the_file(tmp_path):
    """A state_dict of other tensors passed the check and failed at the first evaluation: a 20 KB traceback."""
    from lightning_sde.metrics.features import INCEPTION_SHAPES

    path = tmp_path / "other.pth"
    torch.save({"a": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match=f"^'{path}' holds no InceptionV3 weights .*'Conv2d_1a_3x3.conv.weight' is "
                                         "missing.*lsde-prepare --inception$"):
        build_feature_extractor("inception", weights_path=path)
    torch.save({k: torch.zeros(shape) for k, shape in INCEPTION_SHAPES.items()}, path)  # the checked ones only
    with pytest.raises(ValueError, match=f"^'{path}' holds no InceptionV3 weights .*Missing key.*lsde-prepare"):
        build_feature_extractor("inception", weights_path=path)


def test_inception_wrapper_with_stand_in_weights(tmp_path, monkeypatch):
    """The glue around torch-fidelity's InceptionV3 (float [0, 1] or uint8 in, grayscale to RGB, num_features),
    checked with randomly initialised weights of the right architecture: the real ones cannot be fetched here."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    with monkeypatch.context() as patch:  # build the architecture without loading any weights
        patch.setattr(torch, "load", lambda *args, **kwargs: None)
        patch.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        stand_in = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    for module in stand_in.modules():  # features that vary with the input (the default init nearly does not)
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.reset_parameters()
    state = stand_in.state_dict()
    path = tmp_path / "stand_in_inception.pth"
    torch.save(state, path)
    monkeypatch.setenv("LSDE_INCEPTION_WEIGHTS", str(path))
    features = build_feature_extractor("inception")
    assert features.num_features == 2048 and features.weights_path == str(path) and not features.training
    x = torch.rand(2, 1, 8, 8)
    out = features(x)
    assert out.shape == (2, 2048) and torch.isfinite(out).all()
    as_rgb_bytes = (x * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)
    assert torch.equal(features(as_rgb_bytes), out)  # floats are quantised to the nearest level
    # torch-fidelity's extractor (the original FID's TensorFlow-1 resize to 299), on the same weights: torchmetrics'
    # default antialiased resize moved the features (and a FID on digits from 0.4748 to 0.4726)
    fidelity = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                               feature_extractor_weights_path=str(path))
    with torch.no_grad():
        torch.testing.assert_close(out, fidelity.eval()(as_rgb_bytes)[0], rtol=1e-5, atol=1e-5)
    metric = FrechetInceptionDistance(feature=features, normalize=True)
    metric.update(torch.rand(2, 3, 16, 16), real=True)
    assert metric.real_features_num_samples == 2
    # the Inception Score's logits: torch-fidelity's logits_unbiased of the same weights
    logits = build_feature_extractor("inception", output="logits")
    assert logits.num_features == 1008
    fidelity_logits = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["logits_unbiased"],
                                                      feature_extractor_weights_path=str(path))
    with torch.no_grad():
        torch.testing.assert_close(logits(x), fidelity_logits.eval()(as_rgb_bytes)[0], rtol=1e-5, atol=1e-5)
        both = features.features_and_logits(x)  # one forward, for IS beside FID
        torch.testing.assert_close(both, (out, logits(x)), rtol=1e-5, atol=1e-5)
        assert features.net.features_list == ["2048"]  # the features alone stop at pool3 again


def test_inception_features_when_the_weights_are_present():
    """The online twin of the test above: runs only where the weights were fetched beforehand."""
    if not inception_weights_path().is_file():
        pytest.skip(f"InceptionV3 weights not on this machine ({inception_weights_path()}); offline twin runs instead")
    features = build_feature_extractor("inception")
    x = torch.rand(2, 1, 8, 8)
    out = features(x)
    assert out.shape == (2, 2048) and features.num_features == 2048
    metric = FrechetInceptionDistance(feature=features, normalize=True)
    metric.update(torch.rand(4, 3, 32, 32), real=True)


def test_every_pixel_level_survives_the_trip_to_the_inception_input():
    """Pixel k of a dataset, scaled to [-1, 1] (ImageBatch) and to [0, 1] for the metric (unit), reaches Inception as
    k: truncating instead of rounding gave k - 1 for 63 of the 256 levels."""
    from lightning_sde.data.base import ImageBatch
    from lightning_sde.metrics.features import to_uint8
    from lightning_sde.metrics.image import unit

    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_uint8(unit(ImageBatch(256)(levels))), levels)


def test_reference_statistics_are_not_reused_after_the_features_read_their_input_differently(tmp_path, monkeypatch):
    from lightning_sde.metrics.features import DigitsFeatures
    from lightning_sde.metrics.image import reference_image_metrics

    reference = digits_to_unit_range(load_digits_levels()[0][:64])
    _, before = reference_image_metrics(reference, ["fid"], "digits", cache_dir=tmp_path)
    monkeypatch.setattr(DigitsFeatures, "cache_tag", "another-quantization", raising=False)
    _, after = reference_image_metrics(reference, ["fid"], "digits", cache_dir=tmp_path)
    assert before["reference_stats"] != after["reference_stats"] and len(list(tmp_path.glob("reference-*"))) == 2
    import lightning_sde.loading

    monkeypatch.setattr(lightning_sde.loading, "file_sha256", lambda path: "0" * 64)  # other weights, same name
    _, other_weights = reference_image_metrics(reference, ["fid"], "digits", cache_dir=tmp_path)
    assert other_weights["reference_stats"] != after["reference_stats"]
    assert len(list(tmp_path.glob("reference-*"))) == 3


def test_the_inception_score_is_the_number_of_classes_used_when_each_sample_is_certain_and_one_when_all_agree():
    """IS = exp(E KL(p(y|x) || p(y))): certain predictions spread evenly over k classes give k (each split's class
    frequencies near 1/k: 3000 samples, splits of 300); one class for every sample, or the same uncertain prediction
    for each, give 1."""
    from lightning_sde.metrics.image import inception_score

    for k in (3, 7):
        certain = torch.full((3000, 10), -40.0)
        certain[torch.arange(3000), torch.arange(3000) % k] = 40.0  # classes 0..k-1 in turn
        assert inception_score(certain) == pytest.approx(k, rel=0.02)
    assert inception_score(certain[:, [0, 3, 4]] * 0 + torch.tensor([40.0, 0, 0])) == pytest.approx(1.0)
    assert inception_score(torch.randn(1, 10).expand(50, 10)) == pytest.approx(1.0)


def test_the_inception_score_reads_the_digits_classifiers_logits(digits, halves, tmp_path):
    """The scorer's IS is torch-fidelity's of the classifier's logits (its 10 classes, dropout off): near 10 on real
    digits, the classes balanced and recognised; far lower on noise; and IS is higher-is-better."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    from lightning_sde.metrics.scorer import Scorer, direction

    a, b = halves
    logits = build_feature_extractor("digits", output="logits")
    assert logits.num_features == 10 and not logits.training
    with torch.no_grad():
        torch.testing.assert_close(logits(unit(b)), DigitsFeatures().net.eval()(b), rtol=1e-5, atol=1e-5)
    scorer = Scorer(a, ["is"], feature_extractor="digits", cache_dir=tmp_path)
    real = scorer(b)["is"]
    with torch.no_grad():
        assert real == pytest.approx(isc_features_to_metric(logits(unit(b)), splits=10)["inception_score_mean"])
    noise = scorer(2 * torch.rand(b.shape, generator=torch.Generator().manual_seed(2)) - 1)["is"]
    print(f"IS real {real:.2f}  noise {noise:.2f}")
    assert 8.5 < real <= 10 and noise < real - 3
    assert direction("is") == "higher is better" and scorer.protocol["feature_extractor"] == "digits"
    with pytest.raises(ValueError, match="output must be one of"):
        DigitsFeatures(output="probabilities")


def test_an_inception_score_interval_is_of_its_own_replicates_from_one_pass_of_the_classifier(halves, tmp_path,
                                                                                               monkeypatch):
    from lightning_sde.metrics import bootstrap
    from lightning_sde.metrics.image import IS_SPLITS, check_image_sample_count
    from lightning_sde.metrics.scorer import INTERVAL_LEVEL, Scorer

    a, b = halves
    seen = count_network_images(monkeypatch)
    scorer = Scorer(a, ["is"], feature_extractor="digits", cache_dir=tmp_path)
    seen.clear()
    x = b[:60]
    values = scorer(x)
    interval = scorer.intervals(x, values, n_boot=50)["is"]
    assert sum(seen) == 60  # the logits of the value and of its interval: one pass
    with torch.no_grad():
        logits = build_feature_extractor("digits", output="logits")(unit(x))
    reps = bootstrap.inception_score_replicates(logits, bootstrap.resample_counts(60, 50, seed=0), IS_SPLITS)
    assert interval == pytest.approx(bootstrap.interval(values["is"], reps, INTERVAL_LEVEL), rel=1e-6)
    for n in (1, 19):  # 10-19: splits of one image, which score 1 whatever the image
        with pytest.raises(ValueError, match=rf"^IS needs at least 20 images \(2 in each of its 10 splits: a split of "
                                             rf"one image scores 1 whatever it is\); got {n}$"):
            check_image_sample_count(["is"], n)
    check_image_sample_count(["is"], 20)
    with pytest.raises(ValueError, match="InceptionFeatures: output must be one of"):  # before any weights are read
        build_feature_extractor("inception", output="probabilities", weights_path="/nonexistent.pth")


def count_network_images(monkeypatch) -> list[int]:
    """The sizes of the batches the digits network's body (its one nn.Sequential) runs on, whichever way it is
    called."""
    seen = []
    forward = torch.nn.Sequential.forward
    monkeypatch.setattr(torch.nn.Sequential, "forward", lambda self, x: (seen.append(len(x)), forward(self, x))[1])
    return seen


def test_the_scorer_passes_each_image_set_through_the_feature_network_once(halves, tmp_path, monkeypatch):
    """FID, KID and their bootstrap intervals each ran the network over the samples (three passes: 150,000 Inception
    images for a 50,000-sample cell), and FID and KID each over the reference; IS took a second pass for its
    logits. One pass each now (IS's logits come with the features), and the values are torchmetrics' and
    torch-fidelity's own on the images."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    from lightning_sde.metrics.scorer import Scorer

    a, b = halves
    seen = count_network_images(monkeypatch)
    scorer = Scorer(a, ["fid", "kid", "is"], feature_extractor="digits", cache_dir=tmp_path)
    assert sum(seen) == len(a)
    seen.clear()
    values = scorer(b)
    scorer.intervals(b, values, n_boot=20)
    assert sum(seen) == len(b)
    with torch.no_grad():
        logits = build_feature_extractor("digits", output="logits")(unit(b))
    assert values["is"] == pytest.approx(isc_features_to_metric(logits, splits=10)["inception_score_mean"], rel=1e-6)
    direct_fid = fid(DigitsFeatures(), a, b)
    kid = KernelInceptionDistance(feature=DigitsFeatures(), normalize=True, subset_size=min(1000, len(a) // 2))
    kid.update(unit(a), real=True)
    kid.update(unit(b), real=False)
    torch.manual_seed(0)  # the scorer's KID draws its subsets from seed 0
    assert values["fid"] == pytest.approx(direct_fid, rel=1e-6)
    assert values["kid"] == pytest.approx(kid.compute()[0].item(), rel=1e-6)


def test_images_reach_the_feature_networks_in_their_range():
    from lightning_sde.metrics.features import _to_symmetric, to_uint8
    from lightning_sde.metrics.image import unit as to_unit

    levels = torch.tensor([0, 51, 255], dtype=torch.uint8)
    assert _to_symmetric(levels, "unit", torch.float64).tolist() == pytest.approx([-1.0, 51 / 127.5 - 1, 1.0])
    assert to_uint8(torch.tensor([-0.1, 0.5, 1.2])).tolist() == [0, 128, 255]  # clipped, never wrapped around
    assert to_unit(torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.5])).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]


@pytest.mark.slow
def test_retraining_the_digits_features_writes_unit_scaled_features_or_nothing(tmp_path, monkeypatch):
    import sys

    from lightning_sde.metrics import train_digits_features as script

    threads = torch.get_num_threads()
    try:
        monkeypatch.setattr(sys, "argv", ["x", "--epochs", "1", "--out", str(tmp_path / "bad"), "--min-accuracy", "1"])
        with pytest.raises(SystemExit, match=r"test accuracy 0\.\d+ is below 1.0: nothing written"):
            script.main()
        assert not (tmp_path / "bad").exists()
        with monkeypatch.context() as patched:  # the default bar, 0.95, on the test digits' accuracy (not training's)
            patched.setattr(sys, "argv", ["x", "--epochs", "1", "--out", str(tmp_path / "bar")])
            patched.setattr(script, "train", lambda *args: None)
            accuracies = iter([0.99, 0.9499])  # training's, then test's
            patched.setattr(script, "accuracy", lambda *args: next(accuracies))
            with pytest.raises(SystemExit, match=r"test accuracy 0\.9499 is below 0.95: nothing written"):
                script.main()
        assert not (tmp_path / "bar").exists()
        monkeypatch.setattr(sys, "argv", ["x", "--epochs", "1", "--out", str(tmp_path), "--min-accuracy", "0.5"])
        script.main()
    finally:
        torch.set_num_threads(threads)
    record = json.loads((tmp_path / "digits_features.json").read_text())
    assert record["sha256"] == file_sha256(tmp_path / "digits_features.pt") and 0.5 <= record["test_accuracy"] < 0.95
    levels, labels = load_digits_levels()
    train_index, _ = script.stratified_split(labels, 0.2, torch.Generator().manual_seed(0))
    features = DigitsFeatures(tmp_path / "digits_features.pt", input_range="symmetric")
    with torch.no_grad():
        mean_square = features(digits_to_unit_range(levels)[train_index]).pow(2).mean()
    assert float(mean_square) == pytest.approx(1.0, rel=1e-4)  # features of unit mean square on the training digits
