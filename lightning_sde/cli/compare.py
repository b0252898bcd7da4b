"""Compare samplers on an exact Gaussian mixture: a table of NFE, time and distance to the data, and scatter plots.

    lsde-compare                                   # EM-1000, PC-1000, DDIM-50/100, dopri5, Heun-50 on 8 Gaussians
    lsde-compare sde=ve problem=swiss_roll n_samples=2000
    lsde-compare '~samplers.pc_1000' samplers.ddim_50.eta=1.0
"""

from __future__ import annotations

import csv
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lightning_sde import CONFIG_DIR
from lightning_sde.exact import build_mixture
from lightning_sde.metrics import mmd, sliced_wasserstein
from lightning_sde.plotting import scatter_grid, text_table
from lightning_sde.samplers import build_sampler, sample
from lightning_sde.sde import build_sde

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_from(cfg: DictConfig, key: str, builder):
    """builder(**cfg[key]) with any error reported against the config key, before any sampling starts."""
    params = OmegaConf.to_container(cfg, resolve=True)
    try:
        return builder(**params)
    except (ValueError, TypeError) as err:
        raise ValueError(f"config {key}: {err}") from None


def validate(cfg: DictConfig):
    if cfg.dtype not in DTYPES:
        raise ValueError(f"config dtype: {cfg.dtype!r} is not one of {sorted(DTYPES)}")
    if not (isinstance(cfg.n_samples, int) and cfg.n_samples >= 1):
        raise ValueError(f"config n_samples: must be an integer >= 1; got {cfg.n_samples!r}")
    if not cfg.samplers:
        raise ValueError("config samplers: empty; add one, e.g. +sampler@samplers.ddim_50=ddim")
    sde = build_from(cfg.sde, "sde", build_sde)
    mixture = build_from(cfg.problem, "problem", build_mixture)
    samplers = {label: build_from(sc, f"samplers.{label}", build_sampler) for label, sc in cfg.samplers.items()}
    return sde, mixture, samplers


def compare(cfg: DictConfig, out_dir: Path) -> list[dict]:
    sde, mixture, samplers = validate(cfg)
    dtype = DTYPES[cfg.dtype]
    seeds = range(cfg.first_seed, cfg.first_seed + cfg.n_samples)
    data = mixture.sample(cfg.n_samples, torch.Generator().manual_seed(10**9 + cfg.first_seed))
    exact = mixture.sample(cfg.n_samples, torch.Generator().manual_seed(2 * 10**9))  # a second exact set: the floor
    rows, panels = [], {"data": data}
    for label, sampler in samplers.items():
        x, info = sample(sampler, mixture.denoiser(sde), seeds, device=cfg.device, dtype=dtype, progress=cfg.progress)
        x = x.cpu()
        rows.append(
            {
                "sampler": label,
                "params": sampler.params(),
                "nfe": info["nfe"],
                "wall_s": round(info["wall_s"], 3),
                "samples_per_s": round(cfg.n_samples / info["wall_s"], 1),
                "mmd": round(mmd(x, data), 4),
                "sliced_w2": round(sliced_wasserstein(x, data), 4),
            }
        )
        panels[f"{label} (NFE {info['nfe']})"] = x
    floor = {"mmd": round(mmd(exact, data), 4), "sliced_w2": round(sliced_wasserstein(exact, data), 4)}
    rows.append({"sampler": "exact (noise floor)", "params": {}, "nfe": 0, "wall_s": 0.0, "samples_per_s": "", **floor})
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "comparison.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if mixture.dim == 2:
        scatter_grid(panels, out_dir / "samples.png")
    return rows


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="compare")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    rows = compare(cfg, out_dir)
    print(text_table(rows, ["sampler", "nfe", "wall_s", "samples_per_s", "mmd", "sliced_w2"]))
    print(f"\nwrote {out_dir / 'comparison.csv'}" + (f" and {out_dir / 'samples.png'}" if (out_dir / "samples.png").exists() else ""))


if __name__ == "__main__":
    main()
