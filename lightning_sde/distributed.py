"""Multi-process CLIs (lsde-bench, lsde-likelihood) without a Trainer: Lightning Fabric starts the local
processes itself, or joins those srun / torchrun started; work is split by rank and gathered to rank 0."""

from __future__ import annotations

import torch


def launch(devices: int, num_nodes: int, device: torch.device):
    """None for one process; else a launched Fabric (DDP; gloo on CPU, NCCL on CUDA)."""
    if devices * num_nodes == 1:
        return None
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cuda" if device.type == "cuda" else "cpu", devices=devices, num_nodes=num_nodes,
                    strategy="ddp")
    fabric.launch()
    return fabric


def rank_world(fabric) -> tuple[int, int]:
    return (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)


def gather_to_zero(obj, fabric) -> list | None:
    """Every process's `obj`, in rank order, on rank 0 (None elsewhere); sizes may differ (no padding)."""
    if fabric is None:
        return [obj]
    out = [None] * fabric.world_size if fabric.global_rank == 0 else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out
