"""The student's input noise: RandAugment (Cubuk et al. 2020), as Noisy Student uses it.

timm's RandAugment works on RGB PIL images (its fill colour is a 3-tuple), so grayscale images
take a round trip through RGB; the ops are channel-wise or geometric, so nothing is lost.
Dropout and stochastic depth, the model noise, are set when the student is built.
"""

from __future__ import annotations

from PIL import Image
from timm.data import rand_augment_transform
from torchvision.transforms import v2

from selftrain.config import AugmentConfig
from selftrain.transforms import to_tensor_ops, weak_augment_ops


class RandAugmentPIL:
    """timm RandAugment for any PIL mode; a module-level class so DataLoader workers can pickle it."""

    def __init__(self, magnitude: int, num_ops: int, image_size: int):
        hparams = {"translate_const": int(image_size * 0.45), "img_mean": (0, 0, 0)}
        self.ra = rand_augment_transform(f"rand-m{magnitude}-n{num_ops}-mstd0.5", hparams)

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode == "RGB":
            return self.ra(img)
        return self.ra(img.convert("RGB")).convert(img.mode)


def noised_transform(
    image_size: int, channels: int, augment: AugmentConfig, magnitude: int, num_ops: int
) -> v2.Compose:
    """Resize, the weak affine augmentation, then RandAugment at the iteration's magnitude."""
    ops = weak_augment_ops(image_size, augment)
    if magnitude > 0:
        ops.append(RandAugmentPIL(magnitude, num_ops, image_size))
    return v2.Compose([*ops, *to_tensor_ops(channels)])
