"""Improved precision and recall: the values and every bootstrap replicate against torch-fidelity's own
computation on the (resampled) sets, and what they mean on sets whose answer is known (a dropped mode, a shift)."""

import pytest
import torch
from torch_fidelity.metric_prc import calculate_precision_recall_full

from helpers.scoring import noisy_digits, resampled, width_over_spread
from lightning_sde.metrics import bootstrap, prc


@pytest.fixture
def sets():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(60, 8, generator=gen) * 1.2 + 0.3, torch.randn(45, 8, generator=gen)


@pytest.mark.parametrize("block", [prc.BLOCK_ENTRIES, 100])  # whole matrices, and a block of one or two rows
def test_the_values_are_torch_fidelitys(sets, monkeypatch, block):
    monkeypatch.setattr(prc, "BLOCK_ENTRIES", block)
    fake, real = sets
    precision, recall, realistic = prc.precision_recall(fake, real)
    assert (precision, recall) == pytest.approx(calculate_precision_recall_full(fake, real, 3), abs=1e-7)
    assert realistic.shape == (60,) and float(realistic.float().mean()) == precision


def test_a_sample_on_a_balls_boundary_is_inside_as_in_torch_fidelity(sets):
    """Duplicates (a memorised image; quantized pixels): four copies of a reference point give it radius 0, and a
    sample at that point is inside its ball."""
    fake, real = sets
    real = torch.cat([real, real[:1].repeat(4, 1) + 7.0])
    fake = torch.cat([fake, real[-1:]])
    assert prc.precision_recall(fake, real)[:2] == pytest.approx(calculate_precision_recall_full(fake, real, 3),
                                                                 abs=1e-7)
    assert prc.precision_recall(fake, real)[2][-1]


@pytest.mark.parametrize("neighbours", [64, 4])  # every row's neighbours sorted, and rows sorted in full when short
def test_every_replicate_is_torch_fidelitys_precision_and_recall_of_its_resampled_set(sets, neighbours):
    fake, real = sets
    counts = torch.cat([torch.ones(1, 60, dtype=torch.float64), bootstrap.resample_counts(60, 6, seed=0)])
    truth = [calculate_precision_recall_full(resampled(fake, c), real, 3) for c in counts]
    recall = prc.recall_replicates(fake, real, counts, neighbours=neighbours)
    assert recall.tolist() == pytest.approx([r for _, r in truth], abs=1e-7)
    precision = bootstrap.mean_replicates(prc.precision_recall(fake, real)[2].double(), counts)
    assert precision.tolist() == pytest.approx([p for p, _ in truth], abs=1e-7)


def test_a_dropped_mode_costs_recall_not_precision_and_a_shift_costs_both():
    """Truth: the reference has two far-apart clusters. Samples of the same distribution score near 1 on both (k = 3
    balls of finite samples miss a few points); samples of one cluster are as realistic and cover at most the half of
    the reference in their cluster; samples far from both are neither."""
    gen = torch.Generator().manual_seed(1)
    cluster = lambda n, centre: torch.randn(n, 4, generator=gen) + centre  # noqa: E731
    real = torch.cat([cluster(300, 0.0), cluster(300, 50.0)])
    same_precision, same_recall, _ = prc.precision_recall(torch.cat([cluster(300, 0.0), cluster(300, 50.0)]), real)
    assert same_precision > 0.85 and same_recall > 0.85
    precision, recall, _ = prc.precision_recall(cluster(600, 0.0), real)
    assert precision == pytest.approx(same_precision, abs=0.05) and 0.8 * same_recall / 2 < recall <= 0.5
    assert prc.precision_recall(cluster(600, 25.0), real)[:2] == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least 4 points"):
        prc.knn_radii(real[:3])


@pytest.mark.parametrize("metric", ["precision", "recall"])
def test_an_interval_from_one_sample_set_is_as_wide_as_the_spread_over_independent_sets(tmp_path, metric):
    """The digits network's features of noisy digits, 300 a set against a fixed reference of 500 clean ones, 32 sets:
    widths measured 1.02-1.10x the spread for precision, 1.36-1.46x for recall (its replicates' duplicates shrink
    the samples' radii)."""
    from lightning_sde.metrics.scorer import Scorer

    scorer = Scorer(noisy_digits(500, 10**6, noise=0.0), (metric,), feature_extractor="digits", cache_dir=tmp_path)
    ratio, values, intervals = width_over_spread(scorer, metric, [noisy_digits(300, 100 + i) for i in range(32)])
    assert 0.5 < ratio < 2.0, (ratio, intervals)
    assert all(0 <= low <= value <= high <= 1 for (low, high), value in zip(intervals, values))


def test_the_scorer_reads_the_reference_features_kid_caches_and_precision_recall_are_asked_for(tmp_path):
    from lightning_sde.metrics.image import check_image_sample_count, network_features
    from lightning_sde.metrics.scorer import HIGHER_IS_BETTER, Scorer, resolve_metrics

    reference = noisy_digits(200, 1, noise=0.0)
    scorer = Scorer(reference, ("precision", "recall"), feature_extractor="digits", cache_dir=tmp_path)
    assert [p.name.rsplit("-", 1)[1] for p in tmp_path.glob("reference-*.pt")] == ["kid.pt"]
    x = noisy_digits(100, 2)
    values = scorer(x)
    network = scorer.image["kid"].inception
    truth = calculate_precision_recall_full(network_features(network, x, "cpu"),
                                            network_features(network, reference, "cpu"), 3)
    assert (values["precision"], values["recall"]) == pytest.approx(truth, abs=1e-7)
    noise = scorer(torch.rand(100, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1)
    assert noise["precision"] < values["precision"] - 0.3 and noise["recall"] < values["recall"] - 0.3
    assert "precision" not in resolve_metrics("auto", "images", False) and {"precision", "recall"} <= set(
        HIGHER_IS_BETTER)
    with pytest.raises(ValueError, match=r"^precision/recall need at least 4 images \(each one's 3 nearest "
                                         r"neighbours\); got 3$"):
        check_image_sample_count(["fid", "recall"], 3)


def test_the_scorers_intervals_are_of_torch_fidelitys_values_on_the_resampled_sets_within_0_and_1(tmp_path):
    """1500 digits against a reference of 100, half of them among the 1500 (a model that memorised some): recall
    near 1, and its interval, shifted by the replicates' bias, reaches past 1: clipped."""
    from sklearn.datasets import load_digits

    from lightning_sde.metrics.image import network_features
    from lightning_sde.metrics.scorer import Scorer

    pool = torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 8 - 1
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))
    reference, x = pool[order[1450:1550]], pool[order[:1500]]
    scorer = Scorer(reference, ("precision", "recall"), feature_extractor="digits", cache_dir=tmp_path)
    values, intervals = scorer(x), scorer.intervals(x, n_boot=50)
    network = scorer.image["kid"].inception
    fake, real = network_features(network, x, "cpu"), network_features(network, reference, "cpu")
    truth = torch.tensor([calculate_precision_recall_full(resampled(fake, c), real, 3)
                          for c in bootstrap.resample_counts(1500, 50, seed=0)], dtype=torch.float64)
    for i, metric in enumerate(("precision", "recall")):
        low, high = bootstrap.interval(values[metric], truth[:, i], 0.9)
        assert intervals[metric] == pytest.approx((max(low, 0.0), min(high, 1.0)), abs=1e-6)
    assert values["recall"] > 0.9 and intervals["recall"][1] == 1.0 and high > 1.0
