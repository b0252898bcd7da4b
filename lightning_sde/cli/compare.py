"""lsde-compare: the samplers at their own settings on an exact mixture (no training), scored against exact data.

    lsde-compare                                   # EM-1000, PC-1000, DDIM-50/100, dopri5, Heun-50 on 8 Gaussians
    lsde-compare sde=ve problem=swiss_roll seeds.count=2000
    lsde-compare '~samplers.pc_1000' samplers.ddim_50.eta=1.0

It is lsde-bench with configs/compare.yaml (every sampler as configured, the exact-sample noise floor as a row):
a table of NFE, time and distances to the data, and `results.*` and `samples.png` (points of 2 or more
coordinates, or images: 1-D samples have no scatter) in its output folder.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lightning_sde.cli.bench import run
from lightning_sde.cli.errors import fails_cleanly, multirun_job
from lightning_sde.cli.help import print_help_if_asked
from lightning_sde.configuration import CONFIG_PATH, overridden


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="compare")
@fails_cleanly("lsde-compare", goes_on=lambda cfg: f"lsde-compare ... output_dir={cfg.output_dir} goes on from it")
def run_app(cfg: DictConfig) -> None:
    job = multirun_job()
    if job is not None and not overridden("results"):  # one folder per job: each its own results and views
        cfg.output_dir = f"{cfg.output_dir}_{job[1]}"
    run(cfg)


def main() -> None:
    if not print_help_if_asked("compare"):
        run_app()


if __name__ == "__main__":
    from lightning_sde.cli import apps  # not `run`: a name the app may have

    apps.run("compare", main)
