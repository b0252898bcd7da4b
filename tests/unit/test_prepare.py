"""lsde-prepare: every option checked before any download or computation, a user's mistake one line
(`lsde-prepare: error: ...`: argparse's exit status 2 for a bad option, 1 for what the work found), image_folder's
--root applied, the default features per dataset, and the Inception download bounded by --timeout. Nothing here
touches the network: downloads are replaced by functions that fail the test, the Inception URL by a closed port."""

import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image

import lightning_sde.cli.prepare as prepare
from lightning_sde.data import torchvision_sets
from lightning_sde.metrics import features
from lightning_sde.metrics import image as image_metrics


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No Inception weights (an empty TORCH_HOME), a private cache, and no dataset download allowed."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("LSDE_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("LSDE_CACHE", str(tmp_path / "cache"))
    downloads = []

    def no_fetch(name, root, timeout=None):
        downloads.append(name)
        raise AssertionError(f"lsde-prepare tried to download {name}")

    monkeypatch.setattr(torchvision_sets, "fetch", no_fetch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield downloads
    torch.set_num_threads(threads)


def write_images(folder, n, size=8):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def usage_error(argv, capsys) -> str:
    """argparse's error: SystemExit(2) and `lsde-prepare: error: ...` as the last line of stderr."""
    with pytest.raises(SystemExit) as info:
        prepare.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lsde-prepare: error: ") and "Traceback" not in err
    return last


def work_error(argv, capsys) -> str:
    """An error the work found: main returns 1 and stderr is one line `lsde-prepare: error: ...`."""
    assert prepare.main(argv) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lsde-prepare: error: "), err
    return lines[0]


def fake_statistics(monkeypatch):
    """reference_image_metrics recording what it was given (the Inception weights are not on this machine)."""
    calls = []

    def record(reference, metrics, feature_extractor, cache_dir=None, device="cpu", batch_size=500):
        calls.append((tuple(reference.shape), feature_extractor))
        return {}, {"n_reference": len(reference), "reference_stats": "0123456789abcdef"}

    monkeypatch.setattr(image_metrics, "reference_image_metrics", record)
    return calls


# --- 1. image_folder's --root --------------------------------------------------------------------------------------


def test_image_folder_reference_stats_use_the_root_given(tmp_path, monkeypatch, capsys):
    root = write_images(tmp_path / "imgs" / "cats", 6).parent
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")  # present (the statistics themselves are faked)
    monkeypatch.setenv("LSDE_INCEPTION_WEIGHTS", str(weights))
    calls = fake_statistics(monkeypatch)
    assert prepare.main(["image_folder", "--root", str(root), "--reference-stats", "3"]) == 0
    assert calls == [((3, 3, 32, 32), "inception")]  # the config's image_size 32, channels 3; RGB: inception
    assert "image_folder: inception reference statistics of 3 images cached" in capsys.readouterr().out


def test_image_folder_reference_stats_of_the_data_settings_the_bench_will_use(tmp_path, monkeypatch, capsys):
    """`--data image_size=8 --data channels=1`: the statistics of the data `lsde-bench data=image_folder
    data.image_size=8 data.channels=1` scores against (8x8 grayscale: the digits features take it)."""
    root = write_images(tmp_path / "imgs" / "cats", 6).parent
    calls = fake_statistics(monkeypatch)
    assert prepare.main(["image_folder", "--root", str(root), "--reference-stats", "3", "--data", "image_size=8",
                         "--data", "channels=1"]) == 0
    assert calls == [((3, 1, 8, 8), "digits")]
    assert "has no setting 'size'" in usage_error(["image_folder", "--root", str(root), "--reference-stats", "3",
                                                   "--data", "size=8"], capsys)
    assert "has no setting 'root'" in usage_error(["image_folder", "--root", str(root), "--reference-stats", "3",
                                                   "--data", "root=/elsewhere"], capsys)  # --root says it, once
    assert "give --reference-stats too" in usage_error(["digits", "--data", "n_val=10"], capsys)
    for argv in (["--reference-stats", "10"], ["--reference-stats", "10", "--inception"]):  # "pass --inception" misled
        assert usage_error(argv, capsys).endswith("--reference-stats N needs a dataset name (its training images' "
                                                  "statistics)")


def test_data_settings_are_read_as_the_bench_reads_its_overrides(capsys):
    """`--data dequantize=yes` is what `lsde-bench data.dequantize=yes` gives the datamodule (Hydra's rules: the
    string "yes", where YAML would read true; "010" stays a string, where YAML reads 8)."""
    import argparse

    from hydra import compose, initialize_config_module

    items = ["dequantize=yes", "image_size=010", "labels=[1,2]", "channels=1"]
    with initialize_config_module("lightning_sde.configs", version_base="1.3"):
        bench = compose("bench", overrides=["data=image_folder", "data.root=/x", *(f"data.{i}" for i in items)])
    given = prepare.data_settings(argparse.ArgumentParser(), items)
    assert given == {k: bench.data[k] for k in given} == {"dequantize": "yes", "image_size": "010", "labels": [1, 2],
                                                          "channels": 1}
    assert "--data image_size=[1: " in usage_error(["image_folder", "--root", "/x", "--reference-stats", "3", "--data",
                                                    "image_size=[1"], capsys)


def test_image_folder_without_root_is_a_usage_error(capsys):
    """With or without --reference-stats: alone, `lsde-prepare image_folder` exited 0 having checked no image."""
    for argv in (["image_folder", "--reference-stats", "3"], ["image_folder"], ["digits", "image_folder"]):
        assert "image_folder needs --root, the folder of its images" in usage_error(argv, capsys)


# --- 2. user errors: one line, before any work -----------------------------------------------------------------


def test_unknown_features_are_a_usage_error(tmp_path, offline, capsys):
    message = usage_error(["cifar10", "--root", str(tmp_path / "data"), "--reference-stats", "10",
                           "--features", "foo"], capsys)
    assert "--features: unknown feature extractor 'foo'; choose one of ['digits', 'inception']" in message
    assert offline == []


def test_features_without_reference_stats_are_a_usage_error(capsys):
    assert "--reference-stats" in usage_error(["digits", "--features", "digits"], capsys)


@pytest.mark.parametrize("argv", [["cifar10", "--reference-stats", "10"],  # the default for RGB: inception
                                  ["digits", "--reference-stats", "10", "--features", "inception"]])
def test_inception_features_without_the_weights_fail_before_any_download(tmp_path, offline, argv, capsys):
    argv = [*argv, "--root", str(tmp_path / "data")]
    message = work_error(argv, capsys)
    assert "lsde-prepare --inception" in message and "add --inception" in message
    assert str(features.inception_weights_path()) in message and str(tmp_path / "torch_home") in message
    assert offline == [] and not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("argv, available", [(["digits", "--reference-stats", "5000"], 1617),
                                             (["cifar10", "--reference-stats", "50001"], 50000),
                                             (["mnist", "--reference-stats", "60001"], 60000)])
def test_more_reference_images_than_the_dataset_has_is_a_usage_error(tmp_path, offline, argv, available, capsys):
    message = usage_error([*argv, "--root", str(tmp_path / "data"), "--inception"], capsys)
    assert f"has {available} training images" in message
    assert offline == [] and not (tmp_path / "torch_home").exists()  # neither the dataset nor Inception fetched


def test_more_reference_images_than_an_image_folder_has_is_a_usage_error(tmp_path, monkeypatch, capsys):
    root = write_images(tmp_path / "imgs", 5)  # 1 held out for validation: 4 training images
    monkeypatch.setenv("LSDE_INCEPTION_WEIGHTS", str(tmp_path / "inception.pth"))
    message = usage_error(["image_folder", "--root", str(root), "--reference-stats", "10"], capsys)
    assert "image_folder has 4 training images" in message
    calls = fake_statistics(monkeypatch)
    assert prepare.main(["image_folder", "--root", str(root), "--reference-stats", "4", "--features", "digits",
                         "--data", "image_size=8", "--data", "channels=1"]) == 0  # all of them: no error
    assert [shape[0] for shape, _ in calls] == [4]
    assert "--reference-stats N needs N >= 1" in usage_error(["image_folder", "--root", str(root),
                                                              "--reference-stats", "0"], capsys)


def test_reference_stats_of_points_are_a_usage_error(capsys):
    message = usage_error(["toy2d", "--reference-stats", "10"], capsys)
    assert "'toy2d' is not an image dataset" in message


def test_digits_features_on_other_images_are_a_usage_error(tmp_path, offline, capsys):
    message = usage_error(["mnist", "--root", str(tmp_path), "--reference-stats", "10", "--features", "digits"],
                          capsys)
    assert "--features digits: mnist: the digits features take 8x8 grayscale images" in message
    assert "(1, 28, 28)" in message
    assert offline == []


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_a_timeout_that_is_not_a_positive_number_is_a_usage_error(tmp_path, offline, value, capsys):
    message = usage_error(["cifar10", "--root", str(tmp_path), f"--timeout={value}"], capsys)
    assert "--timeout must be a positive number of seconds" in message
    assert offline == []


def test_a_device_torch_does_not_know_is_a_usage_error(capsys):
    assert "--device 'nodevice'" in usage_error(["digits", "--reference-stats", "10", "--device", "nodevice"], capsys)


def test_inception_offline_fails_fast_in_one_line_naming_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(features, "INCEPTION_URL", "http://127.0.0.1:9/weights.pth")  # a closed port: refused
    start = time.perf_counter()
    message = work_error(["--inception", "--timeout", "5"], capsys)
    assert time.perf_counter() - start < 10
    path = features.inception_weights_path()
    assert "could not download the InceptionV3 weights from http://127.0.0.1:9/weights.pth" in message
    assert str(path) in message and "lsde-prepare --inception" in message
    assert not path.exists()


@pytest.mark.parametrize("content", [b"PK\x03\x04 torn", b"print('a script')\n"])
def test_inception_weights_already_there_but_unreadable_are_named_not_reported_fetched(tmp_path, monkeypatch, capsys,
                                                                                        content):
    """A torn copy at the path made `--inception` print the path and exit 0, while the apps refusing it sent the user
    back to that same command."""
    path = tmp_path / "inception.pth"
    path.write_bytes(content)
    monkeypatch.setenv("LSDE_INCEPTION_WEIGHTS", str(path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded over a file"))
    message = work_error(["--inception"], capsys)
    assert f"InceptionV3 weights at '{path}' are not a state_dict of tensors" in message
    assert "Delete the file, then fetch them again with lsde-prepare --inception" in message
    assert path.read_bytes() == content


def test_inception_download_runs_under_the_timeout_given(tmp_path, monkeypatch, capsys):
    seen = []

    def download(url, dst, progress=True):
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError("timed out")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    before = socket.getdefaulttimeout()
    message = work_error(["--inception", "--timeout", "7"], capsys)
    assert seen == [7.0] and socket.getdefaulttimeout() == before
    assert "TimeoutError: timed out" in message


def test_a_failed_dataset_download_is_one_line(tmp_path, monkeypatch, capsys):
    from lightning_sde.data.torchvision_sets import missing_error

    def fail(name, root, timeout=None):
        raise missing_error(name, root, "downloading it failed (URLError: offline)")

    monkeypatch.setattr(torchvision_sets, "fetch", fail)
    message = work_error(["cifar10", "--root", str(tmp_path / "data")], capsys)
    assert "downloading it failed" in message and f"lsde-prepare cifar10 --root {(tmp_path / 'data').resolve()}" \
        in message


def test_what_the_datamodule_refuses_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LSDE_INCEPTION_WEIGHTS", str(tmp_path / "inception.pth"))
    message = work_error(["image_folder", "--root", str(tmp_path / "nowhere"), "--reference-stats", "3"], capsys)
    assert "does not exist" in message and str(tmp_path / "nowhere") in message


def test_digits_default_to_the_digits_features(tmp_path, capsys):
    """No --features and no Inception weights: the digits get the shipped digits features, as lsde-bench's digits
    experiment uses."""
    assert prepare.main(["digits", "--reference-stats", "40", "--cache", str(tmp_path / "stats")]) == 0
    assert "digits: digits reference statistics of 40 images cached" in capsys.readouterr().out
    assert len(list((tmp_path / "stats").glob("reference-*.pt"))) == 2


@pytest.mark.parametrize("name, says", [("digits", "--reference-stats N"), ("toy2d", "FID/KID need images")])
def test_a_dataset_with_nothing_to_fetch_says_so(name, says, offline, capsys):
    assert prepare.main([name]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"{name}: nothing to fetch") and says in out[0]
    assert offline == []


def test_image_folder_without_statistics_decodes_every_image_and_names_the_bad_ones(tmp_path, capsys):
    """Training meets an unreadable file only when its batch comes (hours in, on a large folder): lsde-prepare on the
    login node decodes each one first."""
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    assert prepare.main(["image_folder", "--root", str(tmp_path)]) == 0
    assert f"image_folder: every image under {tmp_path} decodes" in capsys.readouterr().out
    whole = (tmp_path / "img1.png").read_bytes()
    (tmp_path / "img1.png").write_bytes(whole[: len(whole) // 2])  # cut short, its header intact
    (tmp_path / "notes.png").write_text("not an image")
    assert prepare.main(["image_folder", "--root", str(tmp_path)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"lsde-prepare: error: 2 unreadable image(s) under {tmp_path}, e.g. ")
    assert "img1.png': not a readable image (PIL: image file is truncated" in line and "notes.png'" in line


def test_a_file_where_the_statistics_folder_belongs_is_one_line(tmp_path, capsys):
    """A FileExistsError was a traceback (only ValueError and FileNotFoundError were the user's)."""
    file = tmp_path / "text.ckpt"
    file.write_text("hi")
    line = work_error(["digits", "--reference-stats", "30", "--cache", str(file)], capsys)
    assert line == f"lsde-prepare: error: File exists: {file}"
