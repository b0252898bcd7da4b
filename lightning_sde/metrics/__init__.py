from lightning_sde.metrics.mmd import mmd
from lightning_sde.metrics.sliced import sliced_wasserstein

__all__ = ["mmd", "sliced_wasserstein"]
