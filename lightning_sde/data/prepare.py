"""Fetch a dataset on a machine with internet access, for compute nodes that have none:

    python -m lightning_sde.data.prepare cifar10 --root /shared/data
    python -m lightning_sde.data.prepare mnist cifar10 --root /shared/data

then train with `data.root=/shared/data`. scikit-learn's digits ship with scikit-learn (nothing to fetch).
"""

from __future__ import annotations

import argparse
import sys

from lightning_sde.data.torchvision_sets import SPECS, fetch, is_available


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_sde.data.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="+", choices=sorted(SPECS), metavar="NAME",
                        help=f"dataset(s) to fetch: {', '.join(sorted(SPECS))}")
    parser.add_argument("--root", required=True, help="directory to download into (use the same as data.root)")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds (default 60)")
    args = parser.parse_args(argv)
    for name in args.names:
        if is_available(name, args.root):
            print(f"{name}: already present under {args.root}")
            continue
        try:
            path = fetch(name, args.root, timeout=args.timeout)
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"{name}: downloaded to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
