"""Confidence filter and class balancing of pseudo-labels (Noisy Student, Xie et al. 2020, §3).

Pure NumPy on three arrays (key, predicted class, confidence), as the reference implementation
(google-research/noisystudent, `filter_unlabel.py`) does it:

1. drop images whose confidence is below the threshold (kept: `conf >= threshold`, as
   `prob >= min_threshold` in the reference);
2. group the rest by predicted class;
3. a class with more than N images keeps its N most confident; a class with fewer gets N copies
   in all: every image floor(N / count) copies, and the N mod count remaining copies go one each
   to images drawn at random with the seed. The reference draws each image's fractional copy
   independently, so a class only gets N in expectation; drawing the remainder without
   replacement gives exactly N, which is what balancing is for. A class with no confident image
   stays empty (nothing to duplicate).

Default N (when not configured): the median of the per-class counts after the confidence filter,
over the classes that have any. The reference fixes N by hand for ImageNet-scale data; the median
is the data-derived choice that keeps the pseudo-labeled set about as large as the confident set
(about half the classes are thinned, half duplicated), is not dragged by one class the teacher
over-predicts (the mean would be), and duplicates the rarest classes less than the maximum would.

Results depend only on the set of (key, class, confidence) triples and the seed, not on the order
the shards were labeled in: ties in confidence are broken by key, and random draws see images in
that same canonical order with a generator seeded by (seed, class).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Selection:
    """Which images the student trains on, and how many copies of each."""

    index: np.ndarray  # int64 (m,): rows of the input arrays that were kept
    copies: np.ndarray  # int64 (m,): copies of each kept row, >= 1
    images_per_class: int  # N
    images_per_class_from: str  # "config" or "median"
    threshold: float
    seed: int
    predicted_counts: np.ndarray  # int64 (C,): images per predicted class, before the filter
    confident_counts: np.ndarray  # int64 (C,): after the confidence filter
    selected_counts: np.ndarray  # int64 (C,): copies per class after balancing (N or 0)
    kept_counts: np.ndarray  # int64 (C,): distinct images per class after balancing

    def copies_by_key(self, keys: Sequence[str]) -> dict[str, int]:
        """key -> copies, sorted by key (the selection manifest)."""
        pairs = sorted((str(keys[i]), int(c)) for i, c in zip(self.index, self.copies, strict=True))
        return dict(pairs)


def default_images_per_class(confident_counts: np.ndarray) -> int:
    """Median of the non-empty per-class counts after the filter (0 when no image passed)."""
    nonempty = confident_counts[confident_counts > 0]
    if nonempty.size == 0:
        return 0
    return max(1, int(np.round(np.median(nonempty))))


def keep_fraction_threshold(conf: np.ndarray, keep_fraction: float) -> float:
    """The confidence of the most confident `keep_fraction` of the images (0 when there are none)."""
    if not 0 < keep_fraction <= 1:
        raise ValueError("keep_fraction must be in (0, 1]")
    if not len(conf):
        return 0.0
    k = max(1, int(np.ceil(keep_fraction * len(conf))))
    return float(np.sort(conf)[::-1][k - 1])


def balance_class(
    conf: np.ndarray, keys: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One class's members -> (positions kept, copies of each), summing to exactly `n` copies."""
    count = len(conf)
    if count == 0 or n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((keys, -conf))  # most confident first; ties by key
    if count >= n:
        return order[:n], np.ones(n, np.int64)
    copies = np.full(count, n // count, dtype=np.int64)
    extra = rng.choice(count, size=n % count, replace=False)
    copies[extra] += 1
    return order, copies


def filter_and_balance(
    keys: Sequence[str] | np.ndarray,
    cls: np.ndarray,
    conf: np.ndarray,
    num_classes: int,
    threshold: float = 0.3,
    images_per_class: int | None = None,
    seed: int = 0,
    keep_fraction: float | None = None,
) -> Selection:
    """Filter by confidence, then give every non-empty predicted class exactly N copies.

    `keep_fraction` raises the threshold to the confidence of the most confident share of the
    images (ties at that confidence are all kept): a student is more confident than its teacher
    on the images it trained on, so a fixed threshold keeps more labels, and less accurate ones,
    every iteration; a fixed share keeps the most trustworthy labels of each labeler.
    """
    keys = np.asarray(keys, dtype=str)
    cls = np.asarray(cls, dtype=np.int64)
    conf = np.asarray(conf, dtype=np.float32)
    if not len(keys) == len(cls) == len(conf):
        raise ValueError("keys, cls and conf must have the same length")
    if len(cls) and (cls.min() < 0 or cls.max() >= num_classes):
        raise ValueError(f"class ids must be in 0..{num_classes - 1}")
    if keep_fraction is not None:
        threshold = max(float(threshold), keep_fraction_threshold(conf, keep_fraction))
    confident = conf >= threshold
    predicted_counts = np.bincount(cls, minlength=num_classes)
    confident_counts = np.bincount(cls[confident], minlength=num_classes)
    if images_per_class is None:
        n, source = default_images_per_class(confident_counts), "median"
    else:
        if images_per_class < 1:
            raise ValueError("images_per_class must be at least 1")
        n, source = int(images_per_class), "config"

    index_parts: list[np.ndarray] = []
    copy_parts: list[np.ndarray] = []
    selected = np.zeros(num_classes, np.int64)
    kept = np.zeros(num_classes, np.int64)
    passed = np.flatnonzero(confident)
    by_class = passed[np.argsort(cls[passed], kind="stable")]  # one sort, not C scans
    bounds = np.concatenate([[0], np.cumsum(confident_counts)])
    for c in range(num_classes):
        members = by_class[bounds[c] : bounds[c + 1]]
        rng = np.random.default_rng([seed, c])
        positions, copies = balance_class(conf[members], keys[members], n, rng)
        index_parts.append(members[positions])
        copy_parts.append(copies)
        selected[c], kept[c] = copies.sum(), len(positions)
    index = np.concatenate(index_parts) if index_parts else np.zeros(0, np.int64)
    copies = np.concatenate(copy_parts) if copy_parts else np.zeros(0, np.int64)
    return Selection(
        index=index.astype(np.int64),
        copies=copies,
        images_per_class=n,
        images_per_class_from=source,
        threshold=float(threshold),
        seed=seed,
        predicted_counts=predicted_counts.astype(np.int64),
        confident_counts=confident_counts.astype(np.int64),
        selected_counts=selected,
        kept_counts=kept,
    )
