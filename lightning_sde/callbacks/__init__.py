from lightning_sde.callbacks.sampler import SamplerCallback

__all__ = ["SamplerCallback"]
