"""lightning-sde: score-based generative models in the SDE view, with samplers compared at equal NFE."""

__version__ = "0.1.0"

from pathlib import Path as _Path

CONFIG_DIR = str(_Path(__file__).resolve().parents[1] / "configs")  # the Hydra config tree (an editable install)
