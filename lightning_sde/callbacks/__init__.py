from lightning_sde.callbacks.preemption import Preemption
from lightning_sde.callbacks.progress import ProgressLog
from lightning_sde.callbacks.sampler import SamplerCallback

__all__ = ["Preemption", "ProgressLog", "SamplerCallback"]
