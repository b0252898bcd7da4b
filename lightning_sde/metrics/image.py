"""FID / KID (torchmetrics) against a fixed reference set whose real side is computed once and cached on disk, the
Inception Score (torch-fidelity), which needs no reference, and precision / recall (metrics/prc.py) on KID's cached
reference features.

The cache holds each metric's own real-side states in one file per (reference, feature weights, metric), named by
the SHA-256 of the reference tensor and of the feature weights: `lsde-prepare --reference-stats` fills it on a
login node, `lsde-bench` reads it (default folder: $LSDE_CACHE/reference_stats, else
<$LSDE_OUTPUTS or outputs>/cache/reference_stats).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from lightning_sde.files import replace_atomically

log = logging.getLogger(__name__)
IMAGE_METRICS = ("fid", "kid", "is", "precision", "recall")
DEFAULT_IMAGE_METRICS = ("fid", "kid", "is")  # `auto`; precision / recall cost n_reference^2 distances: asked for
REFERENCE_METRICS = ("fid", "kid")  # scored against the reference's features (the cached real side)
PRC_METRICS = ("precision", "recall")  # read the reference's features from KID's cached real side
# The Inception Score's protocol (Salimans et al. 2016; torch-fidelity's and torchmetrics' default): the set shuffled
# with a fixed seed, split in 10, exp(mean KL(p(y|x) || p(y))) within each split, averaged over the splits. A split of
# one image always scores 1: two per split at least.
IS_SPLITS = 10
IS_LEAST = 2 * IS_SPLITS


def default_cache_dir() -> Path:
    """The apps' stats_cache (configs/paths: $LSDE_CACHE, else <$LSDE_OUTPUTS or outputs>/cache), reference_stats."""
    return Path(os.environ.get("LSDE_CACHE") or Path(os.environ.get("LSDE_OUTPUTS") or "outputs") / "cache") \
        / "reference_stats"


def check_stats_cache(key: str, cache_dir) -> None:
    """A statistics folder that can be read or made: not a file nor inside one, and, where it does not exist yet,
    one that can be made (its nearest existing folder writable); ValueError naming the config key. Nothing is made."""
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for folder in (path, *path.parents):
        if folder.is_file():
            what = "is a file" if folder == path else f"would be a folder inside the file {folder}"
            raise ValueError(f"config {key}: {path} {what}; give the folder of the FID/KID reference statistics")
    existing = next((folder for folder in (path, *path.parents) if folder.exists()), None)
    if existing is not None and existing != path and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"config {key}: {path} does not exist and cannot be made ({existing} is not writable); "
                         "give a writable folder, or one lsde-prepare --reference-stats filled")


def tensor_sha256(x: Tensor) -> str:
    return hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def unit(x: Tensor) -> Tensor:
    """Images in [-1, 1] -> [0, 1], what torchmetrics takes with normalize=True."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def check_kid_reference(n_reference: int) -> None:
    """KID averages an unbiased MMD over subsets of min(1000, n_reference / 2) images, which takes 2 or more: a subset
    of 1 is NaN."""
    if n_reference < 4:
        raise ValueError(f"KID needs a reference of at least 4 images (subsets of 2 or more); got {n_reference}")


def check_image_sample_count(metrics, n: int) -> None:
    """FID's covariance and KID's MMD of one image are undefined (torchmetrics fails, after the sampling): 2 or more;
    the Inception Score takes IS_LEAST or more (an empty split is NaN, a split of one image scores 1 whatever it is)."""
    used = [m.upper() for m in metrics if m in REFERENCE_METRICS]
    if used and n < 2:
        raise ValueError(f"{'/'.join(used)} needs at least 2 images (a covariance, a kernel mean); got {n}")
    if "is" in metrics and n < IS_LEAST:
        raise ValueError(f"IS needs at least {IS_LEAST} images (2 in each of its {IS_SPLITS} splits: a split of one "
                         f"image scores 1 whatever it is); got {n}")
    from lightning_sde.metrics.prc import NEIGHBOURHOOD

    if set(metrics) & set(PRC_METRICS) and n < NEIGHBOURHOOD + 1:
        raise ValueError(f"precision/recall need at least {NEIGHBOURHOOD + 1} images (each one's {NEIGHBOURHOOD} "
                         f"nearest neighbours); got {n}")


def inception_score(logits: Tensor) -> float:
    """torch-fidelity's Inception Score of a sample set from its class logits (n, classes): the mean over IS_SPLITS
    splits of the set, shuffled with torch-fidelity's fixed seed."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, isc_features_to_metric

    return float(isc_features_to_metric(logits.detach().cpu(), splits=IS_SPLITS)[KEY_METRIC_ISC_MEAN])


def new_image_metric(name: str, features, n_reference: int):
    """torchmetrics' FID or KID on the feature module `features`, fed [0, 1] images; the real side is kept on reset.
    It is computed in one process (rank 0 scores gathered samples), so it never synchronises across processes."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    if name == "fid":
        return FrechetInceptionDistance(feature=features, normalize=True, reset_real_features=False,
                                        sync_on_compute=False)
    if name == "kid":
        check_kid_reference(n_reference)
        return KernelInceptionDistance(feature=features, normalize=True, reset_real_features=False,
                                       subset_size=min(1000, n_reference // 2), sync_on_compute=False)
    raise ValueError(f"unknown image metric {name!r}; choose from {IMAGE_METRICS}")


def reference_image_metrics(reference: Tensor, metrics, feature_extractor: str, cache_dir=None, device="cpu",
                            batch_size: int = 500) -> tuple[dict, dict]:
    """({name: metric with its real side filled, from the cache when there}, protocol fields for result rows).

    `reference` holds images in [-1, 1]. Call `metric.reset()` then `update(unit(x), real=False)` per sample set:
    reset keeps the real side (reset_real_features=False)."""
    from lightning_sde.loading import file_sha256
    from lightning_sde.metrics.features import build_feature_extractor

    device = torch.device(device)
    features = build_feature_extractor(feature_extractor)
    feature_sha = file_sha256(features.weights_path)
    reference_sha = tensor_sha256(reference)
    # statistics computed before a change of how the features read their input are not reused
    key = hashlib.sha256((reference_sha + feature_sha + getattr(features, "cache_tag", "")).encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out, computed = {}, None
    for name in metrics:
        metric = new_image_metric(name, features, len(reference)).to(device)
        path = cache_dir / f"reference-{key}-{name}.pt"
        if path.exists():
            try:
                states = torch.load(path, map_location=device, weights_only=True)
                check_reference_states(metric, states, len(reference))
            except Exception as err:  # noqa: BLE001  (a weights-only load runs nothing: whatever it raises, refuse)
                reason = f": {err}" if isinstance(err, ValueError) else ""
                raise ValueError(f"{path}: not reference statistics this package wrote ({type(err).__name__}{reason});"
                                 " nothing in the file was run. Delete it to compute them again") from None
            for attr, value in states.items():
                setattr(metric, attr, value)
            log.info("%s reference statistics from %s", name, path)
        else:
            if computed is None:  # once for every metric: they share the feature network
                computed = network_features(metric.inception, reference, device, batch_size)
            with reading_features(metric):
                for i in range(0, len(computed), batch_size):
                    metric.update(computed[i : i + batch_size], real=True)
            states = {k: getattr(metric, k) for k in metric._defaults if k.startswith("real")}
            path.parent.mkdir(parents=True, exist_ok=True)
            cpu = {k: [t.cpu() for t in v] if isinstance(v, list) else v.cpu() for k, v in states.items()}
            replace_atomically(path, lambda tmp: torch.save(cpu, tmp))
            log.info("%s reference statistics of %d images written to %s", name, len(reference), path)
        out[name] = metric
    protocol = {"feature_extractor": feature_extractor, "feature_sha256": feature_sha,
                "reference_sha256": reference_sha, "reference_stats": key, "n_reference": len(reference)}
    return out, protocol


def check_reference_states(metric, states, n_reference: int) -> None:
    """The real side of `metric` as this package writes it, of `n_reference` images: every state, with the fresh
    metric's shape and dtype (KID: one (n, d) block per update), finite. Checked before any sampling: a NaN sum made
    torchmetrics' FID crash the process after the samples were drawn."""
    if not isinstance(states, dict):
        raise ValueError(f"a {type(states).__name__}, not a dict of states")
    expected = {k for k in metric._defaults if k.startswith("real")}
    if set(states) != expected:
        raise ValueError(f"states {sorted(states)}, not {sorted(expected)}")
    for name, value in states.items():
        fresh = getattr(metric, name)
        if isinstance(fresh, list):  # KID keeps the features: (n, d) blocks, one d
            ok = isinstance(value, list) and all(torch.is_tensor(b) and b.ndim == 2 and b.is_floating_point()
                                                 for b in value) and len({b.shape[1] for b in value}) == 1
        else:
            ok = torch.is_tensor(value) and value.shape == fresh.shape and value.dtype == fresh.dtype
        if not ok or not all(torch.isfinite(b).all() for b in (value if isinstance(value, list) else [value])):
            raise ValueError(f"{name} is not this metric's finite statistics")
    counted = (sum(len(b) for b in states["real_features"]) if "real_features" in states
               else int(states["real_features_num_samples"]))
    if counted != n_reference:
        raise ValueError(f"statistics of {counted} images, not of the {n_reference} reference images")


@contextmanager
def reading_features(metric):
    """The metric updated with features as they are (its feature network set aside; torchmetrics hands a custom
    feature module's input to it unchanged), so that one pass of the network serves FID and KID."""
    network = metric.inception
    metric.inception = torch.nn.Identity()
    try:
        yield metric
    finally:
        metric.inception = network


@torch.no_grad()
def network_features(network, x: Tensor, device, batch_size: int = 500) -> Tensor:
    """The feature network's output for images `x` in [-1, 1], in batches on `device`: (n, d) in its dtype."""
    return torch.cat([network(unit(x[i : i + batch_size].to(device))) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def network_outputs(network, x: Tensor, device, logits: bool, batch_size: int = 500) -> tuple[Tensor, Tensor | None]:
    """(features, class logits or None) of images `x` in [-1, 1]: with logits, both from one pass of the network
    (features_and_logits), so that IS beside FID / KID costs no second pass over the samples."""
    if not logits:
        return network_features(network, x, device, batch_size), None
    parts = [network.features_and_logits(unit(x[i : i + batch_size].to(device))) for i in range(0, len(x), batch_size)]
    return torch.cat([f for f, _ in parts]), torch.cat([c for _, c in parts])


def score_images(metric, features: Tensor, batch_size: int = 500) -> tuple[float, float]:
    """(value, subset sd) of one metric for a sample set, given its features (network_outputs), against the cached
    real side. KID's value is a mean over random subsets: its sd over them / sqrt(subsets) is the part of the value's
    noise that the bootstrap over whole sets does not see (0 for FID)."""
    metric.reset()
    with reading_features(metric):
        for i in range(0, len(features), batch_size):
            metric.update(features[i : i + batch_size].to(metric.device), real=False)
    subset_size = getattr(metric, "subset_size", None)  # KID: min(1000, n_reference / 2), and at most the samples
    if subset_size is not None and len(features) < 2:
        raise ValueError(f"KID needs at least 2 samples; got {len(features)}")
    try:
        if subset_size is not None:
            metric.subset_size = min(subset_size, len(features))
        with torch.random.fork_rng(devices=[]):  # KID draws random subsets: seeded, so shards and reruns agree
            torch.manual_seed(0)
            value = metric.compute()
    finally:
        if subset_size is not None:
            metric.subset_size = subset_size
    if not isinstance(value, tuple):
        return float(value), 0.0
    subset_sd = float(value[1]) / metric.subsets ** 0.5 if metric.subsets > 1 else 0.0
    return float(value[0]), subset_sd if math.isfinite(subset_sd) else 0.0


def fid_reference_moments(metric) -> tuple[Tensor, Tensor]:
    """(mean, covariance) of the reference features held by torchmetrics' FID, as its compute() forms them."""
    n = metric.real_features_num_samples
    mean = metric.real_features_sum.double() / n
    cov = (metric.real_features_cov_sum.double() - n * torch.outer(mean, mean)) / (n - 1)
    return mean, cov


def kid_reference_features(metric) -> Tensor:
    """The reference features held by torchmetrics' KID: (n_reference, d)."""
    feats = metric.real_features
    return torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
