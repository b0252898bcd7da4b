"""Reading what training wrote: checkpoints, and the Denoiser inside one."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_sde.models.denoiser import Denoiser


def read_checkpoint(path, map_location="cpu") -> dict:
    """A checkpoint's contents, with a clear error when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {str(path)!r}")
    return torch.load(path, map_location=map_location, weights_only=False)


def load_denoiser(path, map_location="cpu") -> Denoiser:
    """The (EMA) Denoiser of a ScoreModule checkpoint, in eval mode, rebuilt from the checkpoint alone."""
    from lightning_sde.module import ScoreModule

    module = ScoreModule.load_from_checkpoint(path, map_location=map_location, weights_only=False)
    return module.denoiser.eval()
