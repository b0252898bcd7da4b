"""Experiment tracking with W&B: online where this machine has credentials, otherwise offline files synced later."""

from __future__ import annotations

import netrc
import os


def wandb_configured() -> bool:
    """True when this machine can reach W&B with credentials: otherwise log offline and sync later."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_MODE") == "online" or os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
