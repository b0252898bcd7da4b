from lightning_sde.callbacks.checkpoint_io import BestCheckpoint, LastCheckpoint
from lightning_sde.callbacks.ema import EMA
from lightning_sde.callbacks.lr_monitor import LearningRateMonitor
from lightning_sde.callbacks.preemption import Preemption
from lightning_sde.callbacks.progress import ProgressLog
from lightning_sde.callbacks.sampler import SamplerCallback
from lightning_sde.callbacks.wandb_sync import WandbOfflineSync

__all__ = ["EMA", "BestCheckpoint", "LastCheckpoint", "LearningRateMonitor", "Preemption", "ProgressLog",
           "SamplerCallback", "WandbOfflineSync"]
