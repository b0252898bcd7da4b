"""The lsde-* console scripts. `--help` is answered from the app's text (cli/help.py) before the app is imported,
so it takes a second, not the ~10 s that torch, Lightning and torchmetrics take to import; anything else runs the
app's `main`."""

from __future__ import annotations

import functools
import importlib

from lightning_sde.cli.help import print_help_if_asked


def run(app: str) -> None:
    if not print_help_if_asked(app):
        importlib.import_module(f"lightning_sde.cli.{app}").main()


train = functools.partial(run, "train")
bench = functools.partial(run, "bench")
compare = functools.partial(run, "compare")
likelihood = functools.partial(run, "likelihood")
figures = functools.partial(run, "figures")
