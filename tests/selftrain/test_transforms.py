"""The PIL-level transforms: what the teacher, the students and every evaluation see."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from selftrain.config import AugmentConfig
from selftrain.transforms import (
    RandomAffineResize,
    Resize,
    eval_transform,
    normalize,
    pil_to_uint8,
    to_tensor,
    train_transform,
)


def _digit(size: int = 8, mode: str = "L") -> Image.Image:
    rng = np.random.default_rng(0)
    shape = (size, size) if mode == "L" else (size, size, 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_eval_transform_equals_torchvision(mode: str):
    """Same numbers as the v2 pipeline it replaces: Resize + ToImage + ToDtype + Normalize."""
    channels = 1 if mode == "L" else 3
    reference = v2.Compose(
        [
            v2.Resize((16, 16), antialias=True),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * channels, [0.5] * channels),
        ]
    )
    for image in (_digit(8, mode), _digit(40, mode)):
        ours = eval_transform(16, channels)(image)
        assert ours.shape == (channels, 16, 16) and ours.dtype == torch.float32
        assert torch.allclose(ours, reference(image), atol=1e-6)


def test_per_image_and_per_batch_normalization_agree_bit_for_bit():
    images = [_digit(12), _digit(12).rotate(90)]
    batch = normalize(torch.stack([pil_to_uint8(im) for im in images]))
    assert torch.equal(batch, torch.stack([to_tensor(im) for im in images]))


def test_affine_without_motion_is_a_resize():
    image = _digit(8)
    still = RandomAffineResize(32, degrees=0, translate=0, scale=(1, 1))(image)
    plain = np.asarray(Resize(32)(image), dtype=np.int16)
    assert still.size == (32, 32)
    # Same geometry; only the interpolation differs (a warp blends the border with the fill).
    assert np.abs(np.asarray(still, dtype=np.int16) - plain)[4:-4, 4:-4].mean() < 8


def test_affine_is_random_seeded_by_python_random_and_shrinks_large_images_first():
    image = _digit(8)
    augment = AugmentConfig(rotate_degrees=20, translate=0.2, scale_min=0.8, scale_max=1.2)
    transform = train_transform(32, 1, augment)
    random.seed(3)
    first = [transform(image) for _ in range(3)]
    random.seed(3)
    again = [transform(image) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # checkpoints restore it
    assert not torch.equal(first[0], first[1])
    assert RandomAffineResize(32, 10, 0.1, (0.9, 1.1))(_digit(100)).size == (32, 32)
