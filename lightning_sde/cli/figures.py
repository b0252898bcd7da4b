"""lsde-figures: the SDE chapter's figures, from an exact mixture and/or a trained checkpoint (lightning_sde.plotting
.chapter draws them).

    lsde-figures                                         # VP on the 1-D mixture: every figure, into outputs/figures
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

from lightning_sde.cli.errors import fails_cleanly, own_folder_per_job
from lightning_sde.cli.help import print_help_if_asked
from lightning_sde.configuration import CONFIG_PATH, build, check_class_has_guidance, checked, overridden, plain
from lightning_sde.errors import CheckpointError
from lightning_sde.exact import GaussianMixture
from lightning_sde.loading import load_denoiser, read_checkpoint
from lightning_sde.models.guidance import check_guidance, guided
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
from lightning_sde.targets import check_guidance_learned

log = logging.getLogger(__name__)


def is_count(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def check_values(cfg: DictConfig) -> None:
    """Every value named before anything is drawn (a bad one would fail mid-way, after some files were written)."""
    for key in ("figures", "formats"):  # a string would be read as a list of its letters
        if isinstance(cfg[key], str):
            raise ValueError(f"config {key}: must be a list, e.g. {key}=[{cfg[key]}]; got the string {cfg[key]!r}")
    figures = list(cfg.figures or [])
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown or not figures:
        raise ValueError(f"config figures: unknown {unknown}; choose from {list(FIGURES)}" if unknown else
                         f"config figures: empty; choose from {list(FIGURES)}")
    seeds = list(cfg.interpolation.seeds or [])
    if len(seeds) != 2 or not all(is_count(s, 0) for s in seeds) or not is_count(cfg.interpolation.n, 2):
        raise ValueError("config interpolation: needs two seeds (integers >= 0) and n >= 2; "
                         f"got {OmegaConf.to_container(cfg.interpolation)}")
    formats = list(cfg.formats or [])
    bad_formats = sorted(set(formats) - {"png", "pdf", "svg"})
    if bad_formats or not formats:
        raise ValueError(f"config formats: {f'unknown {bad_formats}' if bad_formats else 'empty'}; choose from png, "
                         "pdf, svg")
    for key, least in (("paths_per_figure", 1), ("seed", 0)):
        if not is_count(cfg[key], least):
            raise ValueError(f"config {key}: must be an integer >= {least}; got {cfg[key]!r}")
    guidance = cfg.get("guidance")
    if guidance is not None:
        check_guidance(guidance, "config guidance", " or null")
    if guidance is not None and not cfg.checkpoint:
        raise ValueError("config guidance: needs a class-conditional checkpoint (an exact problem has no classes)")
    check_class_has_guidance("label", cfg.label if overridden("label") else None, guidance, cycle=False)
    if cfg.checkpoint:  # a p_uncond=0 checkpoint's unconditional paths (guidance=null) are its untrained null label's
        try:
            check_guidance_learned(cfg, "checkpoint", [guidance],
                                   instead="draw it at guidance=0 (class `label`, label=<class>)")
        except (CheckpointError, FileNotFoundError):  # said where the checkpoint is loaded
            pass


def checkpoint_tag(path: Path) -> str:
    """A checkpoint's part of a figure's name: its run (outputs/train/<run>/checkpoints/last.ckpt), and the file's own
    name for any other than last.ckpt, so that two checkpoints of one run never write one file."""
    run = path.parent.parent.name if path.parent.name == "checkpoints" else path.parent.name
    return run if path.name == "last.ckpt" else f"{run}_{path.stem}"


def checkpoint_identity(checkpoint: str) -> str:
    """What a figure was drawn from, for its metadata and log: a checkpoint's path, step and content hash (last.ckpt is
    overwritten as training goes on), or a diffusers model's spec."""
    if is_diffusers_spec(checkpoint):
        return checkpoint
    from lightning_sde.loading import file_sha256

    path = Path(checkpoint).resolve()
    return f"{path} (step {read_checkpoint(path).get('global_step')}, sha256 {file_sha256(path)[:16]})"


def arguments(node) -> str:
    """A config node's values besides its _target_, as "(k=v, ...)"; "" where it has none."""
    values = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k != "_target_"}
    return f" ({', '.join(f'{k}={v}' for k, v in values.items())})" if values else ""


def trained_distribution(checkpoint: str) -> tuple[str | None, GaussianMixture | None]:
    """The checkpoint's training data by name and, where that is an exact mixture (toy data), the mixture with the
    data's parameters; (None, None) where the checkpoint does not say (diffusers, no data config)."""
    data = None if is_diffusers_spec(checkpoint) else read_checkpoint(checkpoint).get("data_config")
    if not isinstance(data, dict) or not isinstance(data.get("_target_"), str):
        return None, None
    if not data["_target_"].endswith("Toy2DDataModule"):
        return data["_target_"].rsplit(".", 1)[-1], None
    from lightning_sde.data.toy import data_mixture  # here: lightning_sde.data imports Lightning (seconds)

    return data_mixture(data)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="figures")
@fails_cleanly("lsde-figures")
def run_app(cfg: DictConfig) -> None:
    own_folder_per_job(cfg, name_key=None)  # two jobs' figures of one SDE class and problem had one file name
    check_values(cfg)
    figures = list(cfg.figures)
    mixture = build(cfg.problem, "problem") if cfg.get("problem") is not None else None
    if cfg.checkpoint:
        if overridden("sde"):
            raise ValueError("config checkpoint/sde: both set; a checkpoint's figures use the SDE it was trained "
                             "with (sde=<name> goes with an exact problem)")
        drawn_from = checked("checkpoint", checkpoint_identity, cfg.checkpoint)
        denoiser = checked("checkpoint", load_denoiser, cfg.checkpoint, map_location="cpu")
        trained_on, own = trained_distribution(cfg.checkpoint)
        # the figures would name another file than they drew
        if checked("checkpoint", checkpoint_identity, cfg.checkpoint) != drawn_from:
            raise ValueError(f"config checkpoint: {cfg.checkpoint} changed while it was read (a training run saving "
                             "it?); run again, or copy it first")
        if trained_on is not None:  # the exact density only where it is the model's data
            asked = cfg.problem._target_.rsplit(".", 1)[-1] if mixture is not None else None
            if overridden("problem") and asked != trained_on:
                raise ValueError(f"config problem: the checkpoint was trained on {trained_on}, not {asked}; leave "
                                 "problem out: its figures draw their own data's exact density"
                                 + ("" if own is not None else f" (none: {trained_on} has no closed form)"))
            mixture = own if own is not None and own.dim <= 2 else None  # the figures draw 1-D and 2-D densities
        elif mixture is not None and (mixture.dim,) != tuple(denoiser.shape):
            mixture = None
        source = (cfg.checkpoint.rstrip("/").rsplit("/", 1)[-1] if is_diffusers_spec(cfg.checkpoint)
                  else checkpoint_tag(Path(cfg.checkpoint)))
        tag = f"{denoiser.sde.name}_{source}".replace("#", "_")
        if cfg.get("guidance") is not None:
            if denoiser.num_classes is None:
                raise ValueError("config guidance: the checkpoint is not class-conditional (model.net.num_classes)")
            label = cfg.label
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < denoiser.num_classes:
                raise ValueError(f"config label: must be a class in 0..{denoiser.num_classes - 1}; got {cfg.label!r}")
            denoiser = checked("guidance", guided, denoiser, torch.tensor([cfg.label]), cfg.guidance)
            tag += f"_class{cfg.label}_w{float(cfg.guidance):g}"
    else:
        if mixture is None:
            raise ValueError("config problem: set a problem (e.g. problem=gaussians_1d) or a checkpoint")
        problem = cfg.problem._target_.rsplit(".", 1)[-1]
        if mixture.dim > 2:
            raise ValueError(f"config problem: figures need a 1-D or 2-D mixture; {problem!r} has dim {mixture.dim}")
        denoiser = mixture.denoiser(sde_from_config(plain(cfg.sde)))
        tag = f"{denoiser.sde.name}_{problem}"
        drawn_from = (f"the exact {problem}{arguments(cfg.problem)} under the {denoiser.sde.name} SDE"
                      f"{arguments(cfg.sde)}")
    log.info("drawing from %s", drawn_from)
    out = Path(cfg.out)
    written, skipped = [], []
    for name in figures:
        if name == "schematic":
            if mixture is None:
                skipped.append("schematic needs the exact mixture")
                log.warning("%s: skipped", skipped[-1])
                continue
            if mixture.dim == 1:  # the reverse paths: a checkpoint's own score
                fig = schematic_1d(mixture, denoiser.sde, cfg.paths_per_figure, cfg.seed,
                                   model=denoiser if cfg.checkpoint else None)
            else:
                fig = schematic_2d(mixture, denoiser.sde, cfg.paths_per_figure, cfg.seed)
            written += save(fig, out, f"schematic_{tag}", cfg.formats, drawn_from)
        elif name == "trajectories":
            if len(denoiser.shape) != 1 or denoiser.shape[0] > 2:
                skipped.append("trajectories are drawn for 1-D and 2-D data only")
                log.warning("%s: skipped", skipped[-1])
                continue
            written += save(trajectories_figure(denoiser, mixture, cfg.paths_per_figure, cfg.seed), out,
                            f"trajectories_{tag}", cfg.formats, drawn_from)
        elif name == "schedules":
            written += save(schedules_figure(denoiser.sde), out, "noise_schedules", cfg.formats, drawn_from)
        else:
            fig = interpolation_figure(denoiser, mixture, cfg.interpolation.seeds, cfg.interpolation.n)
            written += save(fig, out, f"interpolation_{tag}", cfg.formats, drawn_from)
    if not written:  # a script would take an exit 0 for the figures it asked for
        raise ValueError(f"config figures: none of {figures} can be drawn for this target: {'; '.join(skipped)}")
    for path in written:
        print(path)


def main() -> None:
    if not print_help_if_asked("figures"):
        run_app()


if __name__ == "__main__":
    from lightning_sde.cli import apps  # not `run`: a name the app may have

    apps.run("figures", main)
