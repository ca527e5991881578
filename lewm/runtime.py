"""Where and how a run executes: device choice, torch.distributed set-up and global seeding. Shared by
training and the analysis stages, so neither imports the other."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    """`auto` → the local CUDA device if there is one, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA device is available")
    return device


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed when launched by torchrun; return (rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
