"""Bootstrap replicates against the metric recomputed on each resampled set by the metric's own code (ours or
torchmetrics'): the weighted shortcuts must equal a new pass over the resampled samples."""

import math

import pytest
import torch
from torchmetrics.image.fid import _compute_fid
from torchmetrics.image.kid import poly_mmd

from helpers.scoring import noisy_digits, resampled, width_over_spread
from lightning_sde.metrics import bootstrap
from lightning_sde.metrics.mmd import mmd
from lightning_sde.metrics.sliced import sliced_wasserstein


@pytest.fixture
def sets():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(60, 3, generator=gen) * 1.3 + 0.2, torch.randn(60, 3, generator=gen)


def test_counts_sum_to_n_and_the_seed_fixes_them():
    counts = bootstrap.resample_counts(50, 7, seed=1)
    assert counts.shape == (7, 50) and (counts.sum(1) == 50).all()
    assert torch.equal(counts, bootstrap.resample_counts(50, 7, seed=1))
    assert not torch.equal(counts, bootstrap.resample_counts(50, 7, seed=2))
    with pytest.raises(ValueError, match="n >= 2"):
        bootstrap.resample_counts(1, 7)


@pytest.mark.parametrize("n_ref", [60, 45])  # equal sizes (sorted projections) and unequal (quantile levels)
def test_sliced_w2_replicates_equal_the_metric_of_each_resampled_set(sets, n_ref):
    x, y = sets
    y = y[:n_ref]
    counts = bootstrap.resample_counts(len(x), 5, seed=0)
    reps = bootstrap.sliced_w2_replicates(x, y, counts, n_projections=32, seed=4, block_elements=60 * 32 * 2)
    truth = [sliced_wasserstein(resampled(x, c), y, n_projections=32, seed=4) for c in counts]
    assert reps.tolist() == pytest.approx(truth, rel=1e-9)


def test_mmd_replicates_equal_the_metric_of_each_resampled_set(sets):
    x, y = sets
    counts = bootstrap.resample_counts(len(x), 5, seed=0)
    reps = bootstrap.mmd_replicates(x, y, counts, rows=16)
    assert reps.tolist() == pytest.approx([mmd(resampled(x, c), y) for c in counts], rel=1e-9)


def test_mmd_in_blocks_is_the_whole_kernel_matrices_mmd_and_a_scorer_reuses_its_references_term(sets, monkeypatch):
    """A 60 000-point reference asked cdist for 29 GB at once (a traceback); the blocks hold a few rows each."""
    import importlib

    from lightning_sde.metrics.scorer import Scorer

    mmd_module = importlib.import_module("lightning_sde.metrics.mmd")

    x, y = sets
    x64, y64 = x.double(), y.double()

    def mean_kernel(a, b):
        return sum(torch.exp(-torch.cdist(a, b).pow(2) / (2 * h**2)).mean() for h in (0.1, 0.3, 1.0, 3.0))

    whole = float((mean_kernel(x64, x64) + mean_kernel(y64, y64) - 2 * mean_kernel(x64, y64)).sqrt())
    monkeypatch.setattr(mmd_module, "BLOCK_ENTRIES", 7 * max(len(x), len(y)))  # 7 rows a block
    assert mmd(x, y) == pytest.approx(whole, rel=1e-12)
    scorer = Scorer(y, ("mmd",))
    assert scorer(x)["mmd"] == pytest.approx(whole, rel=1e-12) and scorer._kyy is not None
    scorer._kyy = 0.0  # the cached term is the one used
    assert scorer(x)["mmd"] != pytest.approx(whole, rel=1e-3)


def test_mean_replicates_are_the_means_of_the_resampled_values():
    values = torch.arange(10.0) ** 2
    counts = bootstrap.resample_counts(10, 4, seed=0)
    assert bootstrap.mean_replicates(values, counts).tolist() == pytest.approx(
        [float(resampled(values, c).double().mean()) for c in counts])


@pytest.mark.parametrize("n", [12, 40])  # fewer samples than feature dimensions, and more
def test_fid_replicates_equal_torchmetrics_fid_of_each_resampled_set(n):
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(80, 16, generator=gen, dtype=torch.float64)
    fake = torch.randn(n, 16, generator=gen, dtype=torch.float64) * 1.2 + 0.3
    mean_real, cov_real = real.mean(0), torch.cov(real.T)
    counts = bootstrap.resample_counts(n, 4, seed=0)
    reps = bootstrap.fid_replicates(fake, mean_real, cov_real, counts)
    truth = [float(_compute_fid(mean_real, cov_real, resampled(fake, c).mean(0), torch.cov(resampled(fake, c).T)))
             for c in counts]
    assert reps.tolist() == pytest.approx(truth, rel=1e-6)


def test_kid_replicates_equal_torchmetrics_unbiased_mmd_of_each_resampled_set_up_to_a_constant():
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(25, 8, generator=gen, dtype=torch.float64)  # torchmetrics pairs subsets of equal size
    fake = torch.randn(25, 8, generator=gen, dtype=torch.float64) + 0.5
    counts = bootstrap.resample_counts(25, 4, seed=0)
    reps = bootstrap.kid_replicates(fake, real, counts, degree=3, gamma=None, coef=1.0, rows=7)
    truth = torch.tensor([float(poly_mmd(real, resampled(fake, c), degree=3, gamma=None, coef=1.0)) for c in counts])
    offset = truth - reps  # the reference-reference term, the same for every replicate
    assert offset.tolist() == pytest.approx([float(offset[0])] * 4, rel=1e-6)  # c^2 for c: off by ~0.3


@pytest.mark.parametrize("n", [10, 37, 200])  # splits of one sample each, uneven splits, even ones
def test_inception_score_replicates_equal_torch_fidelitys_score_of_each_resampled_set(n):
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(n, 7, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * 3
    counts = torch.cat([torch.ones(1, n, dtype=torch.float64), bootstrap.resample_counts(n, 4, seed=0)])
    reps = bootstrap.inception_score_replicates(logits, counts, splits=10, block_elements=20)  # 2 rows a block
    truth = [isc_features_to_metric(resampled(logits, c), splits=10)["inception_score_mean"] for c in counts]
    assert reps.tolist() == pytest.approx(truth, rel=1e-9)  # the first: the set itself, as torch-fidelity shuffles it


def test_interval_is_shifted_by_the_bootstrap_bias_and_clipped_when_asked():
    reps = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # median 3
    low, high = bootstrap.interval(0.5, reps, level=0.5)  # quartiles 2 and 4
    assert (low, high) == pytest.approx((-0.5, 1.5))
    # a noise of the value itself (sd 1 / 0.6745: its central 50% is +-1) widens each side in quadrature
    low, high = bootstrap.interval(0.5, reps, level=0.5, value_sd=1 / 0.6744897501960817)
    assert (low, high) == pytest.approx((0.5 - 2**0.5, 0.5 + 2**0.5))
    assert bootstrap.interval(0.5, reps, level=0.5, nonnegative=True) == pytest.approx((0.0, 1.5))
    with pytest.raises(ValueError, match="level"):
        bootstrap.interval(0.5, reps, level=1.0)


@pytest.mark.parametrize("metric", ["sliced_w2", "mmd", "loglik"])
def test_an_interval_from_one_sample_set_is_as_wide_as_the_spread_over_independent_sets(metric):
    """Truth: exact samples of the 8 Gaussians. The 90% bootstrap interval of one 300-sample set against the 5-95%
    range of the metric over 32 independent sets (fixed reference): widths agree within a factor of 2 (the median of
    6 sets' widths, 100 resamples each; 32 sets pin the 5-95% range to ~+-30%)."""
    from lightning_sde.exact import eight_gaussians
    from lightning_sde.metrics.scorer import Scorer

    mixture = eight_gaussians()
    scorer = Scorer(mixture.sample(600, torch.Generator().manual_seed(0)), (metric,), mixture)
    sets = [mixture.sample(300, torch.Generator().manual_seed(100 + i)) for i in range(32)]
    ratio, _, intervals = width_over_spread(scorer, metric, sets)
    assert 0.5 < ratio < 2.0, (ratio, intervals)


def test_a_kid_interval_against_a_small_reference_is_as_wide_as_the_spread_over_independent_sets(tmp_path):
    """KID's value averages random subsets of min(1000, n_reference / 2) rows: with a reference of 20 its subsets'
    noise is most of the value's, and the whole-set bootstrap alone gave an interval 0.57x the spread over
    independent sets (the check above, for KID: 600 noisy digits against a fixed reference of 20)."""
    from lightning_sde.metrics.scorer import Scorer

    scorer = Scorer(noisy_digits(20, 10**6), ("kid",), feature_extractor="digits", cache_dir=tmp_path)
    sets = [noisy_digits(600, 100 + i) for i in range(32)]
    ratio, values, intervals = width_over_spread(scorer, "kid", sets)
    assert 0.8 < ratio < 2.0, (ratio, intervals)  # measured 1.10
    scorer(sets[2])  # values of sets[1] computed before another set was scored: its own subsets' noise
    assert scorer.intervals(sets[1], {"kid": float(values[1])}, n_boot=100) == scorer.intervals(sets[1], n_boot=100)


def test_an_inception_score_interval_is_as_wide_as_the_spread_over_independent_sets(tmp_path):
    """The check above for IS (the digits classifier's), on noisy digits drawn from scikit-learn's set: 300 per set,
    32 sets; widths measured 1.03-1.25x the spread at 100-600 samples."""
    from lightning_sde.metrics.scorer import Scorer

    scorer = Scorer(noisy_digits(20, 10**6), ("is",), feature_extractor="digits", cache_dir=tmp_path)
    ratio, _, intervals = width_over_spread(scorer, "is", [noisy_digits(300, 100 + i) for i in range(32)])
    assert 0.5 < ratio < 2.0, (ratio, intervals)


def test_a_diverging_samplers_finite_samples_beyond_float32_are_scored_not_nan():
    """pc at snr 2 ends at |x| ~ 1e61 in float64: finite (n_nonfinite 0), but the point metrics cast to float32
    first, so sliced W2 and MMD were NaN and the row read `nan [nan, nan]`. Scored in float64, they are finite and
    enormous (sliced W2 ~ the samples' scale), the table prints them in exponent form, and samples float32 holds are
    scored exactly as before."""
    from lightning_sde.bench.report import with_interval
    from lightning_sde.metrics.scorer import Scorer

    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(300, 2, generator=gen)
    scorer = Scorer(reference, ("sliced_w2", "mmd"))
    far = torch.randn(200, 2, generator=gen, dtype=torch.float64) * 1e61
    values = scorer(far)
    # no kernel reaches across 1e61: MMD^2 = k_xx (the diagonal: 4 bandwidths / 200, less what cdist's expansion
    # loses at this scale) + k_yy
    assert 1e60 < values["sliced_w2"] < 1e62
    assert values["mmd"] == pytest.approx(math.sqrt(4 / 200 + scorer.reference_kernel_mean()), abs=0.01)
    low, high = scorer.intervals(far, values, n_boot=50)["sliced_w2"]
    assert 1e60 < low <= values["sliced_w2"] <= high < 1e62
    cell = with_interval({"value": values["sliced_w2"], "ci_low": low, "ci_high": high})
    assert len(cell) < 40 and ("e+61" in cell or "e+60" in cell), cell
    near = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    assert scorer(near) == scorer(near.float())  # what float32 holds: float32's values, whatever the sample dtype


def test_sliced_w2_of_unequal_sets_is_the_exact_distance_of_their_quantile_functions():
    """1-D {0, 1} against {0, .5, 1}: the quantile functions differ by 1/2 on [1/3, 2/3): W2 = sqrt(1/12)."""
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5], [1.0]])
    assert sliced_wasserstein(x, y) == pytest.approx(math.sqrt(1 / 12), rel=1e-12)
    assert sliced_wasserstein(y, x) == pytest.approx(math.sqrt(1 / 12), rel=1e-12)


def test_sliced_w2_of_a_shifted_set_is_the_shift_projected_on_unit_directions():
    """y = x + m: every projection's W2 is |theta . m| exactly, and over unit directions in d dimensions
    E (theta . m)^2 = |m|^2 / d."""
    from lightning_sde.metrics.sliced import directions

    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    m = torch.tensor([3.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    value = sliced_wasserstein(x, x + m)
    assert value == pytest.approx(float((directions(4).T @ m).pow(2).mean().sqrt()), rel=1e-9)
    assert value == pytest.approx(float(m.norm()) / 2, rel=0.1)


def test_the_log_likelihood_metric_is_the_mean_log_density_per_sample():
    from lightning_sde.exact import eight_gaussians
    from lightning_sde.metrics.scorer import Scorer

    mixture = eight_gaussians()
    x = mixture.sample(400, torch.Generator().manual_seed(0))
    value = Scorer(x, ("loglik",), mixture=mixture)(x)["loglik"]
    assert value == pytest.approx(float(mixture.log_prob(x.double()).mean()), rel=1e-12)
    assert -4 < value < -1  # nats per 2-D sample


def test_fids_reference_covariance_is_the_unbiased_one_of_its_features(tmp_path):
    from sklearn.datasets import load_digits

    from lightning_sde.metrics.image import fid_reference_moments, network_features
    from lightning_sde.metrics.scorer import Scorer

    reference = torch.tensor(load_digits().images[:40], dtype=torch.float32)[:, None] / 8 - 1
    metric = Scorer(reference, ("fid",), feature_extractor="digits", cache_dir=tmp_path).image["fid"]
    features = network_features(metric.inception, reference, "cpu").double()
    mean, cov = fid_reference_moments(metric)
    torch.testing.assert_close(mean, features.mean(0))
    torch.testing.assert_close(cov, torch.cov(features.T), rtol=1e-6, atol=1e-9)


def test_a_tie_never_replaces_the_best():
    from lightning_sde.metrics.scorer import ranks_above

    assert ranks_above("fid", 4.9, 5.0) and not ranks_above("fid", 5.0, 5.0) and ranks_above("fid", 5.0, None)
    assert ranks_above("is", 5.1, 5.0) and not ranks_above("is", 4.9, 5.0) and not ranks_above("is", 5.0, 5.0)
