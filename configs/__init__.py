"""lightning-sde's Hydra config tree. In a source checkout it lives at the top of the repository; the wheel ships it
as the package `lightning_sde.configs`, which is how every app finds it (`pkg://lightning_sde.configs`)."""
