"""Tiny random diffusers models with the structure of the published ones, saved as diffusers saves them.

No trained weights reach this machine; what the cross-checks need is the same network on both sides.
  ddpm_unet     google/ddpm-cifar10-32's layout (ResNet blocks, attention at the second resolution), 1 x 8 x 8
  ncsnpp_unet   score_sde's NCSN++ as diffusers converts it (skip blocks, Fourier noise-level embedding, output
                divided by sigma), 3 x 8 x 8 (the skip blocks are built for RGB)
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler, ScoreSdeVeScheduler, UNet2DModel


def ddpm_unet(seed: int = 0, channels: int = 1, out_channels: int | None = None) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=channels, out_channels=out_channels or channels,
        block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    ).eval()


def ncsnpp_unet(seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 32, 64), layers_per_block=1,
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D"),
        up_block_types=("SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"), time_embedding_type="fourier",
        norm_num_groups=8, flip_sin_to_cos=True, freq_shift=1, mid_block_scale_factor=2**0.5, norm_eps=1e-6,
        act_fn="silu", downsample_padding=1, center_input_sample=False,
    ).eval()


def save_pipeline(folder: Path, unet: UNet2DModel, scheduler) -> Path:
    """A pipeline folder as diffusers writes one: model_index.json, unet/, scheduler/."""
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    pipeline = "ScoreSdeVePipeline" if isinstance(scheduler, ScoreSdeVeScheduler) else "DDPMPipeline"
    (folder / "model_index.json").write_text(
        '{"_class_name": "%s", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "%s"]}'
        % (pipeline, type(scheduler).__name__))
    return folder


def ddpm_pipeline(folder: Path, seed: int = 0, **scheduler_config) -> Path:
    config = {"clip_sample": False, "set_alpha_to_one": False, **scheduler_config}
    return save_pipeline(folder, ddpm_unet(seed), DDIMScheduler(**config))


def ncsnpp_pipeline(folder: Path, seed: int = 0, **scheduler_config) -> Path:
    return save_pipeline(folder, ncsnpp_unet(seed), ScoreSdeVeScheduler(**scheduler_config))
