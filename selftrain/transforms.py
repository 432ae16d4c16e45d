"""Image transforms: weak augmentation for supervised training, a deterministic one for eval.

Images stay at their stored size in the shards; resizing to `data.image_size` happens here, so one
data set serves models of several input resolutions (the student ladder grows the resolution).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from selftrain.config import AugmentConfig

MEAN, STD = 0.5, 0.5


def to_tensor_ops(channels: int) -> list:
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize([MEAN] * channels, [STD] * channels),
    ]


def eval_transform(image_size: int, channels: int) -> v2.Compose:
    """Deterministic: what the un-noised teacher and every evaluation see."""
    return v2.Compose([v2.Resize((image_size, image_size), antialias=True), *to_tensor_ops(channels)])


def train_transform(image_size: int, channels: int, augment: AugmentConfig) -> v2.Compose:
    """Weak augmentation for supervised training: resize, random affine, optional flip."""
    return v2.Compose([*weak_augment_ops(image_size, augment), *to_tensor_ops(channels)])


def weak_augment_ops(image_size: int, augment: AugmentConfig) -> list:
    ops: list = [v2.Resize((image_size, image_size), antialias=True)]
    if augment.rotate_degrees or augment.translate or augment.scale_min != 1 or augment.scale_max != 1:
        ops.append(
            v2.RandomAffine(
                degrees=augment.rotate_degrees,
                translate=(augment.translate, augment.translate),
                scale=(augment.scale_min, augment.scale_max),
            )
        )
    if augment.hflip:
        ops.append(v2.RandomHorizontalFlip())
    return ops
