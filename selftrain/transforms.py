"""Image transforms: weak augmentation for supervised training, a deterministic one for eval.

Images stay at their stored size in the shards; resizing to `data.image_size` happens here, so one
data set serves models of several input resolutions (the student ladder grows the resolution).

The ops work on PIL images and call PIL directly. torchvision's v2 transform classes do the same pixel work but spend 20-50 us per image and op in
their dispatch machinery; for the small images semi-supervised recipes start from that is more
than the warp itself, and with 224 noised images per student step it costs as much as the model.
Random parameters come from Python generators (`selftrain.augment_rng`: per thread, seeded by
the stream once per batch), which costs a tenth of drawing them as torch tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from selftrain import augment_rng
from selftrain.config import AugmentConfig

MEAN, STD = 0.5, 0.5


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 tensor (C, H, W) that owns its memory.

    L and RGB images are read from `tobytes()` directly: numpy's array protocol goes through the
    same bytes plus a type probe, 4-8 us more per image, as much as the resize of a small photo.
    """
    w, h = image.size
    if image.mode == "L":
        return torch.from_numpy(np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(1, h, w).copy())
    if image.mode == "RGB":
        pixels = np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(h, w, 3)
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy())
    pixels = np.array(image, dtype=np.uint8)
    if pixels.ndim == 2:
        return torch.from_numpy(pixels).unsqueeze(0)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


# The model input is (x / 255 - MEAN) / STD, computed as x * SCALE - OFFSET in float32 by numpy
# (per image) and torch (per batch) alike, so both give the same bits (tested).
SCALE = np.float32(1.0 / (255.0 * STD))
OFFSET = np.float32(MEAN / STD)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (one image or a batch) -> the float model input in [-1, 1].

    Elementwise, so normalizing a stacked batch gives exactly the per-image numbers: pseudo-labeling
    stacks uint8 images and normalizes once per batch on the device.
    """
    return x.to(torch.float32).mul_(float(SCALE)).sub_(float(OFFSET))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> normalized float tensor (C, H, W), in numpy: half the cost of torch's small ops."""
    pixels = np.asarray(image, dtype=np.float32)  # a new array: the tensor owns writable memory
    pixels *= SCALE
    pixels -= OFFSET
    if pixels.ndim == 2:
        return torch.from_numpy(pixels).unsqueeze(0)
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


class Resize:
    """Bilinear resize to a square (PIL's bilinear always antialiases), as `v2.Resize` on PIL."""

    def __init__(self, size: int):
        self.size = (size, size)

    def __call__(self, image: Image.Image) -> Image.Image:
        if image.size == self.size:
            return image
        return image.resize(self.size, Image.Resampling.BILINEAR)


class RandomAffineResize:
    """Random rotation, shift and zoom *and* the resize to `size`, as one bilinear PIL warp.

    Resizing and then warping interpolates twice and costs two passes; one warp whose matrix
    includes the resize factor does both at once (parameters as `v2.RandomAffine` draws them:
    angle in +/- `degrees`, shift in +/- `translate` of the side, zoom in `scale`; the shift is
    not rounded to whole pixels). A stored image larger than `size` is first resized with PIL's
    antialiasing filter, because a warp that shrinks would alias.
    """

    def __init__(self, size: int, degrees: float, translate: float, scale: tuple[float, float]):
        self.size = size
        self.degrees = degrees
        self.translate = translate
        self.scale = scale
        self._shrink = Resize(size)

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if w > self.size or h > self.size:
            image = self._shrink(image)
            w, h = image.size
        angle = math.radians(augment_rng.py().uniform(-self.degrees, self.degrees))
        zoom = augment_rng.py().uniform(*self.scale)
        tx = augment_rng.py().uniform(-self.translate, self.translate) * self.size
        ty = augment_rng.py().uniform(-self.translate, self.translate) * self.size
        # Output pixel p maps back to the input at c_in + R(-angle) (p - c_out - t) / (zoom * k),
        # k = the resize factor per axis; PIL samples at pixel centres, so centres are side / 2.
        cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
        kx, ky = w / self.size, h / self.size
        a, b, d, e = cos * kx, sin * kx, -sin * ky, cos * ky
        ox, oy = self.size / 2 + tx, self.size / 2 + ty
        coeffs = (a, b, w / 2 - a * ox - b * oy, d, e, h / 2 - d * ox - e * oy)
        return image.transform(
            (self.size, self.size), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=0
        )


class RandomHorizontalFlip:
    def __call__(self, image: Image.Image) -> Image.Image:
        if augment_rng.py().random() < 0.5:
            return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image


class RandomPadCrop:
    """Reflect-pad by `pad` pixels and crop `size` at a random offset: the photo recipe's shift.

    Padding by reflection keeps the borders photo-like (a zero border is a cue no test image has),
    and the crop is a slice, so it costs far less than a warp. The image is resized to `size` first.
    """

    def __init__(self, size: int, pad_fraction: float):
        self.size = size
        self.pad = max(1, round(size * pad_fraction))
        self._resize = Resize(size)

    def __call__(self, image: Image.Image) -> Image.Image:
        pixels = np.asarray(self._resize(image))
        pad = ((self.pad, self.pad), (self.pad, self.pad)) + (((0, 0),) if pixels.ndim == 3 else ())
        padded = np.pad(pixels, pad, mode="reflect")
        rng = augment_rng.py()
        x, y = rng.randint(0, 2 * self.pad), rng.randint(0, 2 * self.pad)
        return Image.fromarray(np.ascontiguousarray(padded[y : y + self.size, x : x + self.size]))


class Compose:
    """Apply `ops` in order: a plain callable (v2.Compose is an nn.Module, whose call machinery
    costs a few microseconds per image), picklable for DataLoader workers."""

    def __init__(self, ops: list[Callable]):
        self.transforms = list(ops)

    def __call__(self, image):
        for op in self.transforms:
            image = op(image)
        return image

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def eval_transform(image_size: int, channels: int) -> Compose:
    """Deterministic: what the un-noised teacher and every evaluation see.

    `channels` is the data set's; decoding already converted every image to that mode, so the
    ops need not know it (the argument keeps every transform builder's signature the same).
    """
    return Compose([Resize(image_size), to_tensor])


def train_transform(image_size: int, channels: int, augment: AugmentConfig) -> Compose:
    """Weak augmentation for supervised training: resize, random affine, optional flip."""
    return Compose([*weak_augment_ops(image_size, augment), to_tensor])


def weak_augment_ops(image_size: int, augment: AugmentConfig) -> list[Callable]:
    """Resize with a random affine (one warp), or a plain resize when the affine is off; then a
    reflect-pad random crop and a flip where the config asks for them (the photo recipe)."""
    if augment.rotate_degrees or augment.translate or augment.scale_min != 1 or augment.scale_max != 1:
        scale = (augment.scale_min, augment.scale_max)
        ops: list[Callable] = [
            RandomAffineResize(image_size, augment.rotate_degrees, augment.translate, scale)
        ]
    else:
        ops = [Resize(image_size)]
    if augment.pad_crop:
        ops.append(RandomPadCrop(image_size, augment.pad_crop))
    if augment.hflip:
        ops.append(RandomHorizontalFlip())
    return ops
