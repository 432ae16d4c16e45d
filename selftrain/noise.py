"""The input noise: RandAugment (Cubuk et al. 2020), as Noisy Student uses it.

The student trains on it, and so do the supervised and the Meta Pseudo Labels teachers; it lives in
the shared layer so that `teachers/` and `students/` need not import each other.

timm's RandAugment works on PIL images; its fill colour (`img_mean`) must match the image mode,
a 3-tuple for RGB and a single value for grayscale (a tuple there makes PIL fail). Colour images
are augmented in RGB, so RandAugment's colour ops (Color, Solarize, Posterize, Equalize, ...) act
on all three channels, and the area a rotation or shear uncovers is filled with the mean colour of
natural photos (timm's ImageNet mean) rather than black, a border no real photo has. Dropout and
stochastic depth, the model noise, are set when the student is built.
"""

from __future__ import annotations

from PIL import Image
from timm.data import rand_augment_transform

from selftrain import augment_rng
from selftrain.config import AugmentConfig
from selftrain.transforms import Compose, to_tensor, weak_augment_ops


class RandAugmentPIL:
    """timm RandAugment at a fixed magnitude (with timm's magnitude noise, std 0.5); picklable.

    The ops are timm's; the draw of which ops to apply (uniform, with replacement, as timm's
    RandAugment draws them) is made here with Python's `random.choices`: timm's
    `np.random.choice` over a list of op objects cost 14-20 us per image, more than one op on a
    32x32 image, and the student augments 14-28 images per labeled one (docs/results.md, session 15).
    """

    def __init__(self, magnitude: int, num_ops: int, image_size: int, channels: int = 3):
        fill = 0 if channels == 1 else (124, 116, 104)
        hparams = {"translate_const": int(image_size * 0.45), "img_mean": fill}
        augment_rng.route_timm_randaugment()  # its draws come from the stream-seeded generators
        self.ra = rand_augment_transform(f"rand-m{magnitude}-n{num_ops}-mstd0.5", hparams)
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.mode != self.mode:
            img = img.convert(self.mode)
        for op in augment_rng.py().choices(self.ra.ops, k=self.ra.num_layers):
            img = op(img)
        return img


def noised_transform(
    image_size: int, channels: int, augment: AugmentConfig, magnitude: int, num_ops: int
) -> Compose:
    """Resize, the weak affine augmentation, then RandAugment at the iteration's magnitude."""
    ops = weak_augment_ops(image_size, augment)
    if magnitude > 0:
        ops.append(RandAugmentPIL(magnitude, num_ops, image_size, channels))
    return Compose([*ops, to_tensor])
