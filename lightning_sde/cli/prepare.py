"""lsde-prepare: everything a compute node without internet needs, fetched and computed once on a login node.

    lsde-prepare cifar10 --root /shared/data                  # the dataset (torchvision), train and test
    lsde-prepare --inception                                  # InceptionV3 FID weights into $TORCH_HOME
    lsde-prepare cifar10 --root /shared/data --inception --reference-stats 50000
                                                              # + FID/KID statistics of 50000 training images

    lsde-prepare image_folder --root /shared/my_images --inception --reference-stats 1000
                                                              # statistics of your own images (nothing to fetch)
    lsde-prepare image_folder --root /shared/my_images        # decode every image once: a bad file named now,
                                                              # not when its batch comes hours into training

then train with `data.root=/shared/data`, and run `lsde-bench ... feature_extractor=inception
reference_count=50000` with the same TORCH_HOME and LSDE_CACHE: it finds the statistics instead of recomputing
them. scikit-learn's digits ship with scikit-learn (nothing to fetch; `lsde-prepare digits --reference-stats 1000`
still caches their statistics under the shipped digits features).

The statistics' features (--features): digits for the 8x8 digits, inception for any other images; inception needs
the weights, so without --inception (and without them on disk) lsde-prepare stops before fetching anything.

    lsde-prepare diffusers google/ddpm-cifar10-32 [more hub ids]   # published models into the Hugging Face cache

then `lsde-bench checkpoint=diffusers:google/ddpm-cifar10-32 data=cifar10` on a compute node that shares the cache
(HF_HOME / HF_HUB_CACHE) reads it from there and never tries the network.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from dataclasses import dataclass

from lightning_sde.cli.errors import USER_ERRORS, error_text, print_error
from lightning_sde.configuration import config_root
from lightning_sde.downloads import SPECS  # torch and Lightning are imported after the arguments are read

PROG = "lsde-prepare"
DIGITS_SHAPE = (1, 8, 8)  # what the digits features take


def data_configs() -> list[str]:
    return sorted(p.stem for p in (config_root() / "data").glob("*.yaml"))


def data_config(name: str):
    from omegaconf import OmegaConf

    return OmegaConf.load(config_root() / "data" / f"{name}.yaml")


def data_kind(cfg) -> str:
    """"images" or "points": the datamodule class's `kind`, read without building it."""
    from hydra.utils import get_class

    return getattr(get_class(cfg._target_), "kind", "points")


def default_features(shape) -> str:
    """digits for 8x8 grayscale images (the digits data: the only input the digits features take), else inception."""
    return "digits" if tuple(shape) == DIGITS_SHAPE else "inception"


@dataclass
class StatsRequest:
    name: str
    datamodule: object
    features: str


def one_line(err: BaseException) -> str:
    return re.sub(r"\s*\n\s*", " ", error_text(err)).strip()


def check_reference_requests(parser: argparse.ArgumentParser, args) -> None:
    """Usage errors of --reference-stats, from the configs alone (nothing built, read or downloaded)."""
    for name in args.names:
        cfg = data_config(name)
        if data_kind(cfg) != "images":
            images = [n for n in data_configs() if data_kind(data_config(n)) == "images"]
            parser.error(f"--reference-stats: {name!r} is not an image dataset (FID/KID need images; image datasets: "
                         f"{', '.join(images)})")


def data_settings(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    """--data KEY=VALUE items read with Hydra's rules, as lsde-bench reads data.KEY=VALUE (`yes` and `010` are
    strings there, not YAML's true and 8): the statistics' data must be the bench's."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    settings = {}
    for item in items:
        try:
            (override,) = OverridesParser.create().parse_overrides([item])
        except OverrideParseException as err:
            parser.error(f"--data {item}: {str(err).splitlines()[0]}")
        settings[override.key_or_group] = override.value()
    return settings


def reference_requests(parser: argparse.ArgumentParser, args) -> list[StatsRequest]:
    """The datamodule (as `lsde-bench data=<name>` builds it, with the bench's defaults, so that it computes the same
    reference tensor and finds the statistics) and the feature extractor of each dataset; N, the features and the
    Inception weights checked. Builds only what reads no data files: the torchvision sets load theirs when set up."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from lightning_sde.metrics.features import INCEPTION_ENV, inception_weights_path

    requests = []
    for name in args.names:
        cfg = data_config(name)
        if "root" in cfg.keys() and args.root is not None:
            cfg.root = args.root
        for item in args.data:  # the data the bench will score against: its config's settings, as given there
            key, sep, _ = item.partition("=")
            if not sep or key not in cfg.keys() or key in ("_target_", "root"):
                parser.error(f"--data {item}: {name} has no setting {key!r} to give as KEY=VALUE; its settings: "
                             f"{[k for k in cfg.keys() if k not in ('_target_', 'root')]}")
        cfg.merge_with(data_settings(parser, args.data))
        try:
            datamodule = instantiate(cfg)
        except InstantiationException as err:  # Hydra's wrapper: report the datamodule's own complaint
            if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
                raise err.__cause__ from None
            raise
        shape = tuple(datamodule.shape)
        features = args.features or default_features(shape)
        try:
            from lightning_sde.metrics.features import check_features_take

            check_features_take(features, shape)
        except ValueError as err:
            parser.error(f"--features {features}: {name}: {err}")
        train_set = getattr(datamodule, "train_set", None)
        available = SPECS[name].train_size if name in SPECS else len(train_set) if train_set is not None else None
        if available is not None and args.reference_stats > available:
            parser.error(f"--reference-stats {args.reference_stats}: {name} has {available} training images; "
                         f"choose N <= {available}")
        requests.append(StatsRequest(name, datamodule, features))
    weights = inception_weights_path()
    names = [r.name for r in requests if r.features == "inception"]
    if names and not args.inception and not weights.is_file():
        raise FileNotFoundError(
            f"inception features for {', '.join(names)} need the InceptionV3 weights, not found at {str(weights)!r} "
            f"(${INCEPTION_ENV}, else $TORCH_HOME/hub/checkpoints): add --inception to fetch them first, or run "
            f"`{PROG} --inception` where there is internet with the same TORCH_HOME or ${INCEPTION_ENV}")
    return requests


def reference_stats(request: StatsRequest, n: int, cache_dir, device: str) -> dict:
    """FID/KID real-side statistics of `reference(n)` of the request's datamodule."""
    from lightning_sde.metrics.image import REFERENCE_METRICS, reference_image_metrics

    reference = request.datamodule.reference(n)
    _, protocol = reference_image_metrics(reference, REFERENCE_METRICS, request.features, cache_dir, device)
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
            print_error(f"{PROG} diffusers", one_line(err))
            return 1
        except Exception as err:  # noqa: BLE001  (network, authentication, a missing repo: say which, fail)
            print_error(f"{PROG} diffusers", f"{hub_id}: could not fetch ({type(err).__name__}: "
                        f"{one_line(err)[:300]})")
            return 1
        print(f"{hub_id}: in the cache at {path}; use checkpoint=diffusers:{hub_id}")
    return 0


def check_device(parser: argparse.ArgumentParser, device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError:
        parser.error(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)")
    if kind == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {device}: CUDA is not available on this machine")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["diffusers"]:
        return prepare_models(argv[1:])
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"dataset(s): {', '.join(data_configs())} (downloads: {', '.join(sorted(SPECS))}); "
                        "or `diffusers HUB_ID ...` for published models")
    parser.add_argument("--root", default=None, help="data directory (the same as data.root); needed to download, "
                        "and for image_folder's statistics")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="socket timeout in seconds for the dataset and Inception downloads (default 60; "
                        "`diffusers` fetches use the hub client's own, e.g. $HF_HUB_DOWNLOAD_TIMEOUT)")
    parser.add_argument("--inception", action="store_true",
                        help="fetch the InceptionV3 FID weights ($LSDE_INCEPTION_WEIGHTS, else "
                        "$TORCH_HOME/hub/checkpoints)")
    parser.add_argument("--reference-stats", type=int, default=None, metavar="N",
                        help="cache FID/KID statistics of N training images of each dataset "
                        "(lsde-bench reference_count)")
    parser.add_argument("--features", default=None,
                        help="feature extractor for the statistics (lsde-bench feature_extractor). Default: digits "
                        "for 8x8 grayscale images (the digits data, the only ones the digits features take), "
                        "inception for any other images; inception needs the weights (--inception fetches them, "
                        "before any dataset)")
    parser.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                        help="a data setting, as data.KEY=VALUE would give it to lsde-bench (e.g. --data image_size=8 "
                        "--data channels=1 for image_folder): the statistics are of that data; repeatable")
    parser.add_argument("--cache", default=None, help="statistics folder (default $LSDE_CACHE/reference_stats, else "
                        "<$LSDE_OUTPUTS or outputs>/cache/reference_stats: the bench's stats_cache)")
    parser.add_argument("--device", default="cpu", help="device for the feature network (e.g. cuda)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.data and args.reference_stats is None:
        parser.error("--data sets the data whose statistics --reference-stats N caches: give --reference-stats too")
    unknown = sorted(set(args.names) - set(data_configs()))
    if unknown:
        parser.error(f"unknown dataset(s) {unknown}; choose from {data_configs()}")
    if args.reference_stats is not None and not args.names:  # before "nothing to do": --inception would not do
        parser.error("--reference-stats N needs a dataset name (its training images' statistics)")
    if not (args.names or args.inception):
        parser.error("nothing to do: name a dataset and/or pass --inception")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        parser.error(f"--timeout must be a positive number of seconds; got {args.timeout:g}")
    if args.reference_stats is not None and (args.reference_stats < 1 or not args.names):
        parser.error("--reference-stats N needs N >= 1 and a dataset name")
    if args.features is not None and args.reference_stats is None:
        parser.error("--features chooses the features of --reference-stats N; pass that too")
    if args.features is not None:
        from lightning_sde.metrics.features import known_feature_extractor

        try:
            known_feature_extractor(args.features)
        except ValueError as err:
            parser.error(f"--features: {err}")
    downloads = [n for n in args.names if n in SPECS]
    if downloads and args.root is None:
        parser.error(f"--root is needed to download {downloads}")
    from omegaconf import OmegaConf

    for name in args.names:  # image_folder: nothing to check or cache without its folder
        cfg = data_config(name)
        if args.root is None and "root" in cfg.keys() and OmegaConf.is_missing(cfg, "root"):
            parser.error(f"{name} needs --root, the folder of its images (its data.root)")
    if args.reference_stats is not None:
        check_reference_requests(parser, args)
        check_device(parser, args.device)
    try:
        return run(parser, args, downloads)
    except (*USER_ERRORS, RuntimeError) as err:
        print_error(PROG, one_line(err))
        return 1


def run(parser: argparse.ArgumentParser, args, downloads: list[str]) -> int:
    from lightning_sde.data.image_folder import unreadable_images
    from lightning_sde.data.torchvision_sets import fetch, is_available
    from lightning_sde.tracking import quiet_and_logged

    quiet_and_logged()  # no library notices that are not about this work
    requests = reference_requests(parser, args) if args.reference_stats is not None else []
    if args.inception:
        from lightning_sde.metrics.features import fetch_inception

        print(f"inception weights: {fetch_inception(timeout=args.timeout)}")
    for name in downloads:
        if is_available(name, args.root):
            print(f"{name}: already present under {args.root}")
            continue
        path = fetch(name, args.root, timeout=args.timeout)
        print(f"{name}: downloaded to {path}")
    if args.reference_stats is None:
        for name in args.names:
            if name in downloads:
                continue
            if name == "image_folder":  # --root given (main)
                bad = unreadable_images(args.root)
                if bad:
                    raise ValueError(f"{len(bad)} unreadable image(s) under {args.root}, e.g. {bad[0]}" + (
                        "" if len(bad) == 1 else f"; all: {'; '.join(bad)}"[:4000]))
                print(f"{name}: every image under {args.root} decodes")
            elif data_kind(data_config(name)) == "images":
                print(f"{name}: nothing to fetch (no download); --reference-stats N caches the FID/KID statistics of "
                      "N of its training images")
            else:
                print(f"{name}: nothing to fetch (its points are generated in memory) and no statistics to cache "
                      "(FID/KID need images)")
    for request in requests:
        protocol = reference_stats(request, args.reference_stats, args.cache, args.device)
        print(f"{request.name}: {request.features} reference statistics of {protocol['n_reference']} images cached "
              f"(id {protocol['reference_stats']})")
    return 0


if __name__ == "__main__":
    from lightning_sde.cli import apps

    apps.prepare(main)
