from lightning_sde.metrics.sliced import sliced_wasserstein

__all__ = ["sliced_wasserstein"]
