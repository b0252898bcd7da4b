"""lsde-bench: sample-quality-against-NFE sweeps, resumable and sharded; `lsde-bench report` redraws the views.

    lsde-bench                                                    # the default sweep on the exact 8 Gaussians
    lsde-bench name=toy checkpoint=outputs/train/X/checkpoints/last.ckpt data=toy2d
    lsde-bench 'nfe=[10,50]' seeds.count=300 shard.index=0 shard.count=2   # (SLURM arrays set the shard)
    lsde-bench ddp.devices=2                                      # each cell's seeds split over 2 processes
    lsde-bench report outputs/bench/default/results.jsonl [--out DIR] [--wandb] [--project P]

The whole sweep is validated before anything is sampled; each cell's rows are appended to `results` as soon as
it is done, and a rerun skips the cells already there. The views (PNG, markdown, CSV, W&B) come from the
results file alone: the sweep regenerates them at its end; with shards, run `report` after the last one.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lightning_sde.bench.dashboard import report_command
from lightning_sde.bench.report import report
from lightning_sde.bench.results import WANDB_RUN_KEY, Claim
from lightning_sde.bench.runner import run_sweep
from lightning_sde.cli.apps import one_line
from lightning_sde.cli.errors import USER_ERRORS, fail, fails_cleanly
from lightning_sde.cli.help import print_help_if_asked
from lightning_sde.configuration import CONFIG_PATH
from lightning_sde.errors import DashboardError
from lightning_sde.tracking import wandb_disabled

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    """A sweep, then its views (the shared body of lsde-bench and lsde-compare)."""
    summary = run_sweep(cfg)
    if summary["rank"] != 0:
        return
    try:
        views(cfg, summary)
    finally:
        summary["claim"].release()


def views(cfg: DictConfig, summary: dict) -> None:
    print(f"sweep: {summary['cells']} cells, {summary['shard_cells']} in shard {cfg.shard.index}/{cfg.shard.count}, "
          f"{summary['computed']} computed now; results: {cfg.results}")
    if cfg.shard.count > 1:
        # every shard redraws the plots and table (atomically); one W&B run is made once all shards are done
        if Path(cfg.results).is_file():
            report(cfg.results, preferred=summary["keys"])
        else:  # a shard with no cells, before any other shard wrote a row: nothing to draw, and nothing failed
            print(f"no rows in {cfg.results} yet: the other shards write them")
        command = (report_command(cfg.results, cfg.wandb.project) if cfg.wandb.enabled else
                   f"lsde-bench report {shlex.quote(str(cfg.results))}")
        print(f"after the last shard: {command}")
    else:
        try:
            report(cfg.results, use_wandb=cfg.wandb.enabled and not summary["wandb_failed"],
                   project=cfg.wandb.project, name=f"bench-{cfg.name}", run=summary["wandb_run"],
                   preferred=summary["keys"])
        except DashboardError as err:  # the sweep's results and views are written: its job succeeded
            log.warning("%s", err)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="bench")
@fails_cleanly("lsde-bench", goes_on=lambda cfg: "the same command goes on from it")
def sweep(cfg: DictConfig) -> None:
    run(cfg)


def report_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="lsde-bench report",
                                     description="views of a results file: PNG, markdown, CSV, W&B")
    parser.add_argument("results", help="the results .jsonl of a sweep")
    parser.add_argument("--out", default=None, help="output folder (default: next to the results file)")
    parser.add_argument("--wandb", action="store_true", help="also log a W&B run (offline unless W&B is configured)")
    parser.add_argument("--project", default="lightning-sde-bench")
    parser.add_argument("--name", default=None, help="W&B run name")
    args = parser.parse_args(argv)
    claim = None
    try:
        # a sweep logging the same W&B run is not done yet (WANDB_MODE=disabled: no run)
        if args.wandb and not wandb_disabled() and Path(args.results).is_file():
            claim = Claim(args.results, [WANDB_RUN_KEY])
        report(args.results, args.out, use_wandb=args.wandb, project=args.project, name=args.name)
    except (*USER_ERRORS, PermissionError) as err:
        fail(parser.prog, err)
    finally:
        if claim is not None:
            claim.release()


def cells_main(overrides: list[str]) -> None:
    """Print the number of cells the sweep with these overrides has (a checkpoint may not exist yet: a pipeline
    sizes the bench array before training ends; with `--existing`: it must, and is checked as the sweep checks
    it). Exit 1 with the config error, like the sweep itself."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from lightning_sde.bench.runner import count_cells
    from lightning_sde.cli.apps import added_key_error, subcommand_flags
    from lightning_sde.configuration import CONFIG_PACKAGE

    flags, overrides = subcommand_flags("lsde-bench cells", overrides, ("--existing",))
    existing = "--existing" in flags
    error = added_key_error("bench", overrides)  # +bogus=1: a key the sweep would ignore
    if error:
        fail("lsde-bench cells", error)
    try:
        with initialize_config_module(CONFIG_PACKAGE, version_base="1.3"):
            cfg = compose("bench", overrides=overrides, return_hydra_config=True)
        before = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(cfg)  # the command line, as the sweep reads it (checkpoint and sde=...)
        with open_dict(cfg):
            del cfg["hydra"]
        try:
            count = count_cells(cfg, existing)
        finally:
            HydraConfig.instance().cfg = before
        print(count)
    except (ValueError, HydraException, OmegaConfBaseException) as err:  # a bad override or value
        fail("lsde-bench cells", one_line(err))


def main() -> None:
    if print_help_if_asked("bench"):
        return
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        report_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "cells":
        cells_main(sys.argv[2:])
    else:
        sweep()


if __name__ == "__main__":
    from lightning_sde.cli import apps  # not `run`: a name the app may have

    apps.run("bench", main)
