"""lsde-figures: the SDE chapter's figures, from an exact mixture and/or a trained checkpoint (lightning_sde.plotting
.chapter draws them).

    lsde-figures                                         # VP on the 1-D mixture: every figure, into docs/figures
    lsde-figures sde=ve problem=eight_gaussians 'figures=[trajectories,interpolation]'
    lsde-figures checkpoint=outputs/train/X/checkpoints/last.ckpt 'figures=[interpolation]'   # e.g. digit strips

Each figure is written as PNG and PDF.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lightning_sde.cli.errors import fails_cleanly
from lightning_sde.cli.help import print_help_if_asked
from lightning_sde.configuration import CONFIG_PATH, build, overridden, plain
from lightning_sde.loading import load_denoiser
from lightning_sde.models.guidance import guided
from lightning_sde.models.pretrained import is_diffusers_spec
from lightning_sde.plotting.chapter import (
    FIGURES,
    interpolation_figure,
    save,
    schedules_figure,
    schematic_1d,
    schematic_2d,
    trajectories_figure,
)
from lightning_sde.sde import sde_from_config

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="figures")
@fails_cleanly("lsde-figures")
def run_app(cfg: DictConfig) -> None:
    figures = list(cfg.figures)
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise ValueError(f"config figures: unknown {unknown}; choose from {list(FIGURES)}")
    if len(cfg.interpolation.seeds) != 2 or cfg.interpolation.n < 2:
        raise ValueError("config interpolation: needs two seeds and n >= 2; "
                         f"got {OmegaConf.to_container(cfg.interpolation)}")
    bad_formats = sorted(set(cfg.formats) - {"png", "pdf", "svg"})
    if bad_formats:
        raise ValueError(f"config formats: unknown {bad_formats}; choose from png, pdf, svg")
    mixture = build(cfg.problem, "problem") if cfg.get("problem") is not None else None
    if cfg.checkpoint:
        if overridden("sde"):
            raise ValueError("config checkpoint/sde: both set; a checkpoint's figures use the SDE it was trained "
                             "with (sde=<name> goes with an exact problem)")
        denoiser = load_denoiser(cfg.checkpoint, map_location="cpu")
        if mixture is not None and (mixture.dim,) != tuple(denoiser.shape):
            mixture = None  # the exact density only where it is the model's data
        source = (cfg.checkpoint.rstrip("/").rsplit("/", 1)[-1] if is_diffusers_spec(cfg.checkpoint)
                  else Path(cfg.checkpoint).parent.parent.name)
        tag = f"{denoiser.sde.name}_{source}".replace("#", "_")
        if cfg.get("guidance") is not None:
            if denoiser.num_classes is None:
                raise ValueError("config guidance: the checkpoint is not class-conditional (model.net.num_classes)")
            label = cfg.label
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < denoiser.num_classes:
                raise ValueError(f"config label: must be a class in 0..{denoiser.num_classes - 1}; got {cfg.label!r}")
            denoiser = guided(denoiser, torch.tensor([cfg.label]), cfg.guidance)
            tag += f"_class{cfg.label}_w{float(cfg.guidance):g}"
    else:
        if mixture is None:
            raise ValueError("config problem: set a problem (e.g. problem=gaussians_1d) or a checkpoint")
        problem = cfg.problem._target_.rsplit(".", 1)[-1]
        if mixture.dim > 2:
            raise ValueError(f"config problem: figures need a 1-D or 2-D mixture; {problem!r} has dim {mixture.dim}")
        denoiser = mixture.denoiser(sde_from_config(plain(cfg.sde)))
        tag = f"{denoiser.sde.name}_{problem}"
    out = Path(cfg.out)
    written = []
    for name in figures:
        if name == "schematic":
            if mixture is None:
                log.warning("schematic needs the exact mixture: skipped")
                continue
            fig = (schematic_1d if mixture.dim == 1 else schematic_2d)(mixture, denoiser.sde, cfg.paths_per_figure,
                                                                        cfg.seed)
            written += save(fig, out, f"schematic_{tag}", cfg.formats)
        elif name == "trajectories":
            if len(denoiser.shape) != 1 or denoiser.shape[0] > 2:
                log.warning("trajectories are drawn for 1-D and 2-D data only: skipped")
                continue
            written += save(trajectories_figure(denoiser, mixture, cfg.paths_per_figure, cfg.seed), out,
                            f"trajectories_{tag}", cfg.formats)
        elif name == "schedules":
            written += save(schedules_figure(), out, "noise_schedules", cfg.formats)
        else:
            fig = interpolation_figure(denoiser, mixture, cfg.interpolation.seeds, cfg.interpolation.n)
            written += save(fig, out, f"interpolation_{tag}", cfg.formats)
    for path in written:
        print(path)


def main() -> None:
    if not print_help_if_asked("figures"):
        run_app()


if __name__ == "__main__":
    main()
