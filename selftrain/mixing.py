"""Mixup and CutMix: each batch mixed with its own reverse, targets mixed alike.

With 25 labels per class a model sees every photo hundreds of times and memorises them; mixing
pairs of images (Zhang et al. 2018) or pasting a patch of one into another (Yun et al. 2019) makes
each step's inputs new. On the dev photos mixing the supervised teacher's batches raised it 2.1
points, but the mixed teacher is a less confident labeler and its students gained less, so both
recipes leave it off (docs/results.md, session 32). Mixing the Noisy Student *student's* batches
(the labeled part and the pseudo-labeled part each with its own reverse, so a labeled image is
never blended with a pseudo-label) is more noise on the student, where Noisy Student wants it.

Timm's `Mixup` does the same, but it draws from the process-global `np.random`, which Prefect's
threads also draw from (see `selftrain.augment_rng`); here every draw comes from a generator
seeded by (stage seed, step[, part]), so a run repeats bit for bit and a resumed stage mixes
exactly as the uninterrupted one would, with no generator state to checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
from timm.data.mixup import mixup_target


def _mix_images(
    x: torch.Tensor, rng: np.random.Generator, mixup_alpha: float, cutmix_alpha: float
) -> tuple[torch.Tensor, float]:
    """The batch mixed with its reverse and the weight of each image's own share.

    One operation per batch, like timm's default batch mode: CutMix or Mixup with even odds when
    both alphas are set. CutMix's weight is the pasted area actually kept after clipping the box
    to the image, so the target says how much of each image the input shows.
    """
    cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    alpha = cutmix_alpha if cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    other = x.flip(0)
    if cutmix:
        h, w = x.shape[-2:]
        side = np.sqrt(1.0 - lam)
        ch, cw = int(h * side), int(w * side)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
        return x, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return x * lam + other * (1.0 - lam), lam


def mix_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int,
    step: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    num_classes: int,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labeled images mixed, with their soft targets (label smoothing included)."""
    x, lam = _mix_images(x, np.random.default_rng([seed, step]), mixup_alpha, cutmix_alpha)
    return x, mixup_target(y, num_classes, lam=lam, smoothing=label_smoothing)


def mix_soft(
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    seed: int,
    step: int,
    part: int,
    mixup_alpha: float,
    cutmix_alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images mixed with their (n, classes) target distributions, e.g. pseudo-labels.

    `part` keeps the draws of two batches mixed in one step (labeled, pseudo-labeled) apart.
    """
    rng = np.random.default_rng([seed, step, part])
    x, lam = _mix_images(x, rng, mixup_alpha, cutmix_alpha)
    return x, lam * target + (1.0 - lam) * target.flip(0)
