"""The metric registry: one Scorer scores a sample set against a fixed reference set, for the sampler callback,
lsde-bench and lsde-compare alike.

  points   sliced_w2, mmd                   (any point cloud)
           loglik                           (exact mean log-likelihood: targets with an exact mixture only)
  images   fid, kid                         (torchmetrics on `feature_extractor` features; the reference side is
                                             computed once per reference set and feature weights, and cached)
           is                               (torch-fidelity's Inception Score from the same network's class
                                             logits; no reference; higher is better)
           precision, recall                (Kynkaanniemi et al.'s, on the same features: metrics/prc.py; asked
                                             for, not in `auto`; higher is better)

It runs in one process (rank 0 after the samples are gathered): the image metrics never synchronise.
`Scorer.intervals` adds a bootstrap interval to each value (metrics/bootstrap.py: the generated samples resampled
with replacement, the reference fixed).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_sde.metrics import bootstrap
from lightning_sde.metrics.image import (
    DEFAULT_IMAGE_METRICS,
    IMAGE_METRICS,
    IS_SPLITS,
    PRC_METRICS,
    REFERENCE_METRICS,
    fid_reference_moments,
    inception_score,
    kid_reference_features,
    network_outputs,
    reference_image_metrics,
    score_images,
    tensor_sha256,
)
from lightning_sde.metrics.mmd import kernel_row_means, mmd
from lightning_sde.metrics.prc import knn_radii, precision_recall, recall_replicates
from lightning_sde.metrics.sliced import sliced_wasserstein

POINT_METRICS = ("sliced_w2", "mmd")
MIXTURE_METRICS = ("loglik",)
ALL_METRICS = POINT_METRICS + MIXTURE_METRICS + IMAGE_METRICS
# Every metric ranks lower as better but these. Closest to exact samples' value is best: a sampler that concentrates
# its samples in the modes scores a mean log-likelihood above exact samples', so "higher" would reward it.
CLOSEST_TO_EXACT = ("loglik",)
HIGHER_IS_BETTER = ("is", "precision", "recall")
IN_UNIT_INTERVAL = ("precision", "recall")  # shares: their intervals are clipped to [0, 1]
INTERVAL_LEVEL = 0.9  # the bootstrap intervals result rows carry (ci_low, ci_high)
N_BOOT = 200  # replicates: ~0.5 s for FID + KID of 500 digits, ~2 s for sliced W2 + MMD of 2000 points (1 CPU core)


def direction(metric: str) -> str:
    """How `metric` ranks sample sets, in words: 'lower is better', 'higher is better' or 'closest to exact
    samples' is best'."""
    if metric in CLOSEST_TO_EXACT:
        return "closest to exact samples' is best"
    return "higher is better" if metric in HIGHER_IS_BETTER else "lower is better"


def ranks_above(metric: str, value: float, other: float | None, exact: float | None = None) -> bool:
    """Whether `value` ranks above `other` (None: no value yet) for `metric`. A CLOSEST_TO_EXACT metric ranks by the
    distance to `exact`, the value of exact samples, and without it ranks nothing (False)."""
    if metric in CLOSEST_TO_EXACT:
        return exact is not None and (other is None or abs(value - exact) < abs(other - exact))
    return other is None or (value > other if metric in HIGHER_IS_BETTER else value < other)


def allowed_metrics(kind: str, has_mixture: bool) -> tuple[str, ...]:
    if kind == "images":
        return IMAGE_METRICS
    return POINT_METRICS + (MIXTURE_METRICS if has_mixture else ())


def resolve_metrics(requested, kind: str, has_mixture: bool, key: str = "metrics") -> tuple[str, ...]:
    """`auto` (or None) -> every metric that fits the target but precision / recall; else the list, checked
    (ValueError naming `key`)."""
    allowed = allowed_metrics(kind, has_mixture)
    if requested in (None, "auto"):
        return DEFAULT_IMAGE_METRICS if kind == "images" else allowed
    if isinstance(requested, str) or not isinstance(requested, Sequence) or not requested:
        raise ValueError(f"config {key}: must be 'auto' or a non-empty list of {list(allowed)}; got {requested!r}")
    bad = [m for m in requested if m not in allowed]
    if bad:
        target = "an exact mixture" if has_mixture else kind  # points / images
        raise ValueError(f"config {key}: unknown or unusable metric(s) {bad} for {target}; allowed: {list(allowed)}")
    repeated = sorted({m for m in requested if list(requested).count(m) > 1})
    if repeated:  # one row per cell and metric
        raise ValueError(f"config {key}: {repeated} given more than once; name each metric once")
    return tuple(requested)


def points(x: Tensor) -> Tensor:
    """Samples as the point metrics score them: in float32 on the CPU, or in float64 where float32 cannot hold them
    (a diverging sampler's finite 1e61 became inf, and its sliced W2 and MMD NaN, beside n_nonfinite 0)."""
    x32 = x.float().cpu()
    return x32 if torch.isfinite(x32).all() else x.double().cpu()


class Scorer:
    """`scorer(x) -> {metric: value}` for samples x (n, *shape) against `reference`; `protocol` holds what a result
    row must record to be comparable (reference hash and size; feature extractor and its weights' hash)."""

    def __init__(self, reference: Tensor, metrics, mixture=None, feature_extractor: str = "digits", cache_dir=None,
                 device="cpu"):
        self.reference = reference.cpu()
        self.metrics = tuple(metrics)
        self.mixture = mixture
        self.protocol = {"reference_sha256": tensor_sha256(self.reference), "n_reference": len(self.reference)}
        self.image, self.network, self._kyy, self._subset_sd = {}, None, None, (None, {})
        self._real_radii = None
        self._outputs = {}  # "network" / "prc" -> (x, what it is for x): the last set's
        if set(self.metrics) & set(IMAGE_METRICS):
            with_reference = [m for m in REFERENCE_METRICS
                              if m in self.metrics or m == "kid" and set(self.metrics) & set(PRC_METRICS)]
            self.image, protocol = reference_image_metrics(self.reference, with_reference, feature_extractor,
                                                           cache_dir, device)
            self.protocol.update(protocol)
            if self.image:  # FID's and KID's network gives IS its logits in the same pass
                self.network = next(iter(self.image.values())).inception
            else:
                from lightning_sde.metrics.features import build_feature_extractor

                self.network = build_feature_extractor(feature_extractor).to(device)

    def __call__(self, x: Tensor) -> dict[str, float]:
        out, subset_sd = {}, {}
        for name in self.metrics:
            if name == "sliced_w2":
                out[name] = sliced_wasserstein(points(x), self.reference)
            elif name == "mmd":
                out[name] = mmd(points(x), self.reference, kyy=self.reference_kernel_mean())
            elif name == "loglik":
                out[name] = float(self.mixture.log_prob(x.cpu().double()).mean())
            elif name == "is":
                out[name] = inception_score(self.logits(x))
            elif name in PRC_METRICS:
                out[name] = self.precision_recall(x)[PRC_METRICS.index(name)]
            else:
                out[name], subset_sd[name] = score_images(self.image[name], self.features(x))
        self._subset_sd = (x, subset_sd)  # for intervals(x, values): KID's subsets' own noise
        return out

    def reference_kernel_mean(self) -> float:
        """The reference's mean MMD kernel value against itself: computed once, for every set scored (O(n^2) on a
        large reference)."""
        if self._kyy is None:
            y = self.reference.reshape(len(self.reference), -1).double()
            self._kyy = float(kernel_row_means(y, y).mean())
        return self._kyy

    def features(self, x: Tensor) -> Tensor:
        """The image metrics' features of x: one pass of the feature network for every image metric and interval
        (the last sample set's are kept until the next one comes)."""
        return self._network_outputs(x)[0]

    def logits(self, x: Tensor) -> Tensor:
        """The class logits of x (the Inception Score's), from the same pass as its features."""
        return self._network_outputs(x)[1]

    def _network_outputs(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        device = next(self.network.parameters()).device
        return self._output("network", x, lambda: network_outputs(self.network, x, device, logits="is" in self.metrics))

    def reference_features(self) -> Tensor:
        """The reference's features, as KID's cached real side holds them."""
        return kid_reference_features(self.image["kid"])

    def precision_recall(self, x: Tensor) -> tuple[float, float, Tensor]:
        """(precision, recall, which samples lie in the reference's manifold) of x; the reference's k-NN radii are
        computed once."""
        if self._real_radii is None:
            self._real_radii = knn_radii(self.reference_features())
        return self._output("prc", x, lambda: precision_recall(self.features(x), self.reference_features(),
                                                                self._real_radii))

    def _output(self, kind: str, x: Tensor, compute) -> Tensor:
        if kind not in self._outputs or self._outputs[kind][0] is not x:
            self._outputs.pop(kind, None)  # one set's in memory at a time
            self._outputs[kind] = (x, compute())
        return self._outputs[kind][1]

    def intervals(self, x: Tensor, values: dict | None = None, n_boot: int = N_BOOT, level: float = INTERVAL_LEVEL,
                  seed: int = 0) -> dict[str, tuple[float, float]]:
        """{metric: (low, high)}: a `level` bootstrap interval around each value of `self(x)` (pass `values` when
        already computed), from n_boot resamplings of x with replacement against the fixed reference; the same
        seed gives the same intervals."""
        values = self(x) if values is None else values
        counts = bootstrap.resample_counts(len(x), n_boot, seed)
        out = {}
        for name in self.metrics:
            if name == "sliced_w2":
                reps = bootstrap.sliced_w2_replicates(points(x), self.reference, counts)
            elif name == "mmd":
                reps = bootstrap.mmd_replicates(points(x), self.reference, counts,
                                                kyy=self.reference_kernel_mean())
            elif name == "loglik":
                reps = bootstrap.mean_replicates(self.mixture.log_prob(x.cpu().double()), counts)
            elif name == "is":
                reps = bootstrap.inception_score_replicates(self.logits(x), counts, IS_SPLITS)
            elif name == "precision":  # the reference fixed, each sample's share is its own
                reps = bootstrap.mean_replicates(self.precision_recall(x)[2].double(), counts)
            elif name == "recall":
                reps = recall_replicates(self.features(x), self.reference_features(), counts)
            else:
                metric, features = self.image[name], self.features(x).double()
                if name == "fid":
                    reps = bootstrap.fid_replicates(features, *fid_reference_moments(metric), counts)
                else:
                    reps = bootstrap.kid_replicates(features, kid_reference_features(metric), counts, metric.degree,
                                                    metric.gamma, metric.coef)
                if name == "kid" and self._subset_sd[0] is not x:  # values of x from elsewhere: the subsets' sd
                    self._subset_sd = (x, {name: score_images(metric, self.features(x))[1]})
            out[name] = bootstrap.interval(values[name], reps, level, nonnegative=name in bootstrap.NONNEGATIVE,
                                           value_sd=self._subset_sd[1].get(name, 0.0) if name == "kid" else 0.0)
            if name in IN_UNIT_INTERVAL:
                out[name] = (max(out[name][0], 0.0), min(out[name][1], 1.0))
        return out


class Scores(dict):
    """{metric: value} with `intervals` {metric: (low, high)} at `level` (empty, level None: not computed)."""

    def __init__(self, values=(), intervals: dict | None = None, level: float | None = None):
        super().__init__(values)
        self.intervals = dict(intervals or {})
        self.level = level if self.intervals else None


def nonfinite_values(metrics) -> dict[str, float]:
    """What a sample set with non-finite samples scores: NaN for every metric, never a number that looks real."""
    return {name: float("nan") for name in metrics}


__all__ = ["ALL_METRICS", "CLOSEST_TO_EXACT", "HIGHER_IS_BETTER", "IMAGE_METRICS", "INTERVAL_LEVEL", "POINT_METRICS",
           "Scorer", "Scores", "direction", "ranks_above", "resolve_metrics"]
