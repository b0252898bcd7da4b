"""The lsde-* console scripts. `--help` is answered from the app's text (cli/help.py) before the app is imported,
so it takes a second, not the ~10 s that torch, Lightning and torchmetrics take to import; anything else runs the
app's `main`."""

from __future__ import annotations

import importlib

from lightning_sde.cli.help import print_help_if_asked


def run(app: str) -> None:
    if not print_help_if_asked(app):
        importlib.import_module(f"lightning_sde.cli.{app}").main()


def train() -> None:
    run("train")


def bench() -> None:
    run("bench")


def compare() -> None:
    run("compare")


def likelihood() -> None:
    run("likelihood")


def figures() -> None:
    run("figures")
