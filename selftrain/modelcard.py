"""The model card: the JSON a person or a later stage reads to know what a saved model is."""

from __future__ import annotations

import time
from typing import Any

import torch

from selftrain.data.dataset_info import Dataset
from selftrain.evaluate import EvalResult
from selftrain.models import count_flops, count_parameters


def build_card(
    *,
    iteration: int,
    role: str,
    architecture: str,
    model: torch.nn.Module,
    dataset: Dataset,
    image_size: int,
    val: EvalResult,
    test: EvalResult,
    history: list[dict[str, float]],
    best_step: int,
    steps: int,
    skipped_samples: int,
    seed: int,
    device: torch.device,
    world_size: int = 1,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`world_size`: processes that trained the model (torchrun ranks; 1 in-process)."""
    info = dataset.info
    return {
        "iteration": iteration,
        "role": role,
        "architecture": architecture,
        "num_classes": info.num_classes,
        "classes": info.classes,
        "in_chans": info.channels,
        "input_size": [info.channels, image_size, image_size],
        "params": count_parameters(model),
        "flops": count_flops(model, info.channels, image_size),
        "val_accuracy": val.top1,
        "test_accuracy": test.top1,
        "val_count": val.count,
        "test_count": test.count,
        "per_class_accuracy": {
            "val": val.as_dict(info.classes)["per_class"],
            "test": test.as_dict(info.classes)["per_class"],
        },
        "loss_curve": history,
        "best_step": best_step,
        "steps": steps,
        "skipped_samples": skipped_samples,
        "seed": seed,
        "device": device.type,
        "world_size": world_size,
        "created": time.time(),
        **(extra or {}),
    }
