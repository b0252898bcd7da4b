"""lsde-prepare: everything a compute node without internet needs, fetched and computed once on a login node.

    lsde-prepare cifar10 --root /shared/data                  # the dataset (torchvision), train and test
    lsde-prepare --inception                                  # InceptionV3 FID weights into $TORCH_HOME
    lsde-prepare cifar10 --root /shared/data --inception --reference-stats 50000
                                                              # + FID/KID statistics of 50000 training images

then train with `data.root=/shared/data`, and run `lsde-bench ... feature_extractor=inception
reference_count=50000` with the same TORCH_HOME and LSDE_CACHE: it finds the statistics instead of recomputing
them. scikit-learn's digits ship with scikit-learn (nothing to fetch; `lsde-prepare digits --reference-stats 2000`
still caches their statistics under the shipped digits features).

    lsde-prepare diffusers google/ddpm-cifar10-32 [more hub ids]   # published models into the Hugging Face cache

then `lsde-bench checkpoint=diffusers:google/ddpm-cifar10-32 data=cifar10` on a compute node that shares the cache
(HF_HOME / HF_HUB_CACHE) reads it from there and never tries the network.
"""

from __future__ import annotations

import argparse
import logging
import sys

from lightning_sde.configuration import config_root
from lightning_sde.data.torchvision_sets import SPECS, fetch, is_available


def data_configs() -> list[str]:
    return sorted(p.stem for p in (config_root() / "data").glob("*.yaml"))


def reference_stats(name: str, root: str | None, n: int, features: str, cache_dir, device: str) -> dict:
    """FID/KID real-side statistics of `reference(n)` of the datamodule `configs/data/<name>.yaml` (with the
    bench's defaults, so `lsde-bench data=<name>` computes the same reference tensor and finds them)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lightning_sde.metrics.image import IMAGE_METRICS, reference_image_metrics

    cfg = OmegaConf.load(config_root() / "data" / f"{name}.yaml")
    if root is not None and "root" in cfg:
        cfg.root = root
    datamodule = instantiate(cfg)
    if getattr(datamodule, "kind", "points") != "images":
        raise ValueError(f"--reference-stats: {name!r} is not an image dataset (FID/KID need images)")
    _, protocol = reference_image_metrics(datamodule.reference(n), IMAGE_METRICS, features, cache_dir, device)
    return protocol


def prepare_models(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lsde-prepare diffusers",
                                     description="fetch diffusers models from the hub into the local cache")
    parser.add_argument("hub_ids", nargs="+", metavar="HUB_ID", help="e.g. google/ddpm-cifar10-32")
    args = parser.parse_args(argv)
    from lightning_sde.models.pretrained import PretrainedError, fetch

    for hub_id in args.hub_ids:
        try:
            path = fetch(hub_id)
        except PretrainedError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except Exception as err:  # noqa: BLE001  (network, authentication, a missing repo: say which, fail)
            print(f"error: {hub_id}: could not fetch ({type(err).__name__}: {str(err).strip()[:300]})",
                  file=sys.stderr)
            return 1
        print(f"{hub_id}: in the cache at {path}; use checkpoint=diffusers:{hub_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["diffusers"]:
        return prepare_models(argv[1:])
    parser = argparse.ArgumentParser(prog="lsde-prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"dataset(s): {', '.join(data_configs())} (downloads: {', '.join(sorted(SPECS))}); "
                        "or `diffusers HUB_ID ...` for published models")
    parser.add_argument("--root", default=None, help="data directory (the same as data.root); needed to download")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)")
    parser.add_argument("--inception", action="store_true",
                        help="fetch the InceptionV3 FID weights ($LSDE_INCEPTION_WEIGHTS, else "
                        "$TORCH_HOME/hub/checkpoints)")
    parser.add_argument("--reference-stats", type=int, default=None, metavar="N",
                        help="cache FID/KID statistics of N training images of each dataset "
                        "(lsde-bench reference_count)")
    parser.add_argument("--features", default=None, help="feature extractor for the statistics: inception (default "
                        "with --inception) or digits")
    parser.add_argument("--cache", default=None, help="statistics folder (default $LSDE_CACHE/reference_stats, else "
                        "outputs/cache/reference_stats: the bench's stats_cache)")
    parser.add_argument("--device", default="cpu", help="device for the feature network (e.g. cuda)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    unknown = sorted(set(args.names) - set(data_configs()))
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {data_configs()}")
    if not (args.names or args.inception):
        parser.error("nothing to do: name a dataset and/or pass --inception")
    if args.reference_stats is not None and (args.reference_stats < 1 or not args.names):
        parser.error("--reference-stats N needs N >= 1 and a dataset name")
    features = args.features or ("inception" if args.inception else "digits")
    downloads = [n for n in args.names if n in SPECS]
    if downloads and args.root is None:
        parser.error(f"--root is needed to download {downloads}")
    for name in downloads:
        if is_available(name, args.root):
            print(f"{name}: already present under {args.root}")
            continue
        try:
            path = fetch(name, args.root, timeout=args.timeout)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"{name}: downloaded to {path}")
    if args.inception:
        from lightning_sde.metrics.features import fetch_inception

        print(f"inception weights: {fetch_inception()}")
    if args.reference_stats is not None:
        for name in args.names:
            protocol = reference_stats(name, args.root, args.reference_stats, features, args.cache, args.device)
            print(f"{name}: {features} reference statistics of {protocol['n_reference']} images cached "
                  f"(id {protocol['reference_stats']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
