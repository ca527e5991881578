"""Where and how a run executes: device choice, torch.distributed set-up and global seeding. Shared by
training and the analysis stages, so neither imports the other."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as dist

from lewm.config import PRECISIONS


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
    if device.type == "cuda" and device.index is None:  # `cuda`: this process's GPU under torchrun
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
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


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 pays on `device`: a CUDA device with bf16, or a CPU with AMX tiles. AVX512-BF16 alone
    is not enough: on a 2-core AMD EPYC with it (no AMX) a bf16 CEM solve measured 1.57 s against 1.55 s in
    fp32 (bench/suite.py), so it would change results by rounding for no gain; elsewhere bf16 is emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return bool(torch.cpu._is_amx_tile_supported())


def resolve_precision(device: torch.device, precision: str) -> str:
    """`auto` → `bf16` where the device computes it natively (`native_bf16`), else `fp32`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of `precision` (after `resolve_precision`) on `device`: bf16 matmuls with fp32
    weights and reductions, or plain fp32 (disabled)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
