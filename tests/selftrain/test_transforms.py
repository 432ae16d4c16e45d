"""The PIL-level transforms: what the teacher, the students and every evaluation see."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from selftrain import augment_rng
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


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_pil_to_uint8_is_torchvisions_pil_to_tensor(mode: str):
    """The bytes path for L and RGB (and numpy's for other modes) give torchvision's pixels, in a
    tensor that owns writable, contiguous memory (batches are stacked and normalized in place)."""
    rng = np.random.default_rng(1)
    shape = {"L": (7, 12), "RGB": (7, 12, 3), "RGBA": (7, 12, 4)}[mode]
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
    ours = pil_to_uint8(image)
    expected = v2.functional.pil_to_tensor(image).to(torch.uint8)
    assert ours.dtype == torch.uint8 and ours.is_contiguous() and torch.equal(ours, expected)
    ours += 1  # writable: no warning, no shared buffer


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


def test_affine_is_seeded_by_the_augmentation_generators_and_shrinks_large_images_first():
    image = _digit(8)
    augment = AugmentConfig(rotate_degrees=20, translate=0.2, scale_min=0.8, scale_max=1.2)
    transform = train_transform(32, 1, augment)
    augment_rng.seed(3)
    first = [transform(image) for _ in range(3)]
    augment_rng.seed(3)
    random.seed(99)  # the process-global generator plays no part
    again = [transform(image) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], first[1])
    assert RandomAffineResize(32, 10, 0.1, (0.9, 1.1))(_digit(100)).size == (32, 32)


def test_randaugment_is_not_moved_by_other_threads_drawing_global_random():
    """Prefect's background threads draw from `random`/`np.random` mid-batch; augmentation must not see it."""
    import threading

    from selftrain.noise import noised_transform

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    noisy = noised_transform(32, 3, AugmentConfig(hflip=True, pad_crop=0.125), magnitude=15, num_ops=3)

    def run(disturb: bool) -> list[torch.Tensor]:
        stop = threading.Event()

        def noise() -> None:
            while not stop.is_set():
                random.random(), np.random.random()

        thread = threading.Thread(target=noise)
        if disturb:
            thread.start()
        augment_rng.seed(7)
        out = []
        for _ in range(30):
            random.random(), np.random.choice(4)  # draws in this thread too, between images
            out.append(noisy(image))
        stop.set()
        if disturb:
            thread.join()
        return out

    quiet, busy = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(quiet, busy, strict=True))
    assert len({t.numpy().tobytes() for t in quiet}) > 20  # still random from image to image
