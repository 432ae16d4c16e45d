"""Where training runs: CUDA with bf16 autocast when present, else the CPU; channels_last on both.

Convolutions in channels_last (NHWC) are the layout both backends are fastest in: tensor cores on
CUDA, oneDNN's vectorised kernels on the CPU. Measured on 2 CPU cores with resnet10t at 32x32:
inference 15-28% faster per image (max pooling alone took a quarter of the NCHW forward pass),
a training step at batch 120 10-15% faster, at batch 64 the same (docs/results.md, session 15).
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from selftrain.errors import SelftrainError


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SelftrainError(
            "device: cuda was requested but no CUDA GPU is visible; use --device cpu or auto"
        )
    if choice in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); full fp32 on the CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    return model.to(device=device, memory_format=torch.channels_last)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
