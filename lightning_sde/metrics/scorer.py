"""The metric registry: one Scorer scores a sample set against a fixed reference set, for the sampler callback,
lsde-bench and lsde-compare alike.

  points   sliced_w2, mmd                   (any point cloud)
           loglik                           (exact mean log-likelihood: targets with an exact mixture only)
  images   fid, kid                         (torchmetrics on `feature_extractor` features; the reference side is
                                             computed once per reference set and feature weights, and cached)

It runs in one process (rank 0 after the samples are gathered): the image metrics never synchronise.
"""

from __future__ import annotations

from torch import Tensor

from lightning_sde.metrics.image import IMAGE_METRICS, reference_image_metrics, score_images, tensor_sha256
from lightning_sde.metrics.mmd import mmd
from lightning_sde.metrics.sliced import sliced_wasserstein

POINT_METRICS = ("sliced_w2", "mmd")
MIXTURE_METRICS = ("loglik",)
ALL_METRICS = POINT_METRICS + MIXTURE_METRICS + IMAGE_METRICS
LOWER_IS_BETTER = {"fid": True, "kid": True, "sliced_w2": True, "mmd": True, "loglik": False}


def allowed_metrics(kind: str, has_mixture: bool) -> tuple[str, ...]:
    if kind == "images":
        return IMAGE_METRICS
    return POINT_METRICS + (MIXTURE_METRICS if has_mixture else ())


def resolve_metrics(requested, kind: str, has_mixture: bool, key: str = "metrics") -> tuple[str, ...]:
    """`auto` (or None) -> every metric that fits the target; else the list, checked (ValueError naming `key`)."""
    allowed = allowed_metrics(kind, has_mixture)
    if requested in (None, "auto"):
        return allowed
    if isinstance(requested, str) or not requested:
        raise ValueError(f"config {key}: must be 'auto' or a non-empty list of {list(allowed)}; got {requested!r}")
    bad = [m for m in requested if m not in allowed]
    if bad:
        target = "exact mixture" if has_mixture else kind
        raise ValueError(f"config {key}: unknown or unusable metric(s) {bad} for a {target} target; allowed: "
                         f"{list(allowed)}")
    return tuple(requested)


class Scorer:
    """`scorer(x) -> {metric: value}` for samples x (n, *shape) against `reference`; `protocol` holds what a result
    row must record to be comparable (reference hash and size; feature extractor and its weights' hash)."""

    def __init__(self, reference: Tensor, metrics, mixture=None, feature_extractor: str = "digits", cache_dir=None,
                 device="cpu"):
        self.reference = reference.cpu()
        self.metrics = tuple(metrics)
        self.mixture = mixture
        self.protocol = {"reference_sha256": tensor_sha256(self.reference), "n_reference": len(self.reference)}
        self.image = {}
        image_metrics = [m for m in self.metrics if m in IMAGE_METRICS]
        if image_metrics:
            self.image, protocol = reference_image_metrics(self.reference, image_metrics, feature_extractor, cache_dir,
                                                           device)
            self.protocol.update(protocol)

    def __call__(self, x: Tensor) -> dict[str, float]:
        out = {}
        for name in self.metrics:
            if name == "sliced_w2":
                out[name] = sliced_wasserstein(x.float().cpu(), self.reference)
            elif name == "mmd":
                out[name] = mmd(x.float().cpu(), self.reference)
            elif name == "loglik":
                out[name] = float(self.mixture.log_prob(x.cpu().double()).mean())
            else:
                out[name] = score_images(self.image[name], x)
        return out


def nonfinite_values(metrics) -> dict[str, float]:
    """What a sample set with non-finite samples scores: NaN for every metric, never a number that looks real."""
    return {name: float("nan") for name in metrics}


__all__ = ["ALL_METRICS", "IMAGE_METRICS", "LOWER_IS_BETTER", "POINT_METRICS", "Scorer", "resolve_metrics"]
