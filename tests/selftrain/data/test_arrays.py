"""An .npz of photos as the ImageFolder tree `data import` reads, and its pool-size subsets."""

from __future__ import annotations

import numpy as np
import pytest

from selftrain.data.arrays import evenly_per_class, write_imagefolder
from selftrain.errors import SelftrainError


def _photos(per_class: int = 20, classes: int = 3) -> tuple[np.ndarray, np.ndarray, list[str]]:
    labels = np.repeat(np.arange(classes), per_class)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(len(labels), 4, 4, 3), dtype=np.uint8)
    return images, labels, [f"c{c}" for c in range(classes)]


def _files(root, split: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / split).rglob("*.png"))}


def test_evenly_per_class_keeps_the_share_of_every_class_and_smaller_shares_nest():
    labels = np.repeat(np.arange(3), [10, 8, 7])
    idx = np.arange(len(labels))
    half, quarter = evenly_per_class(idx, labels, 0.5), evenly_per_class(idx, labels, 0.25)
    assert np.bincount(labels[half]).tolist() == [5, 4, 4]  # each class halved (rounded up)
    assert np.bincount(labels[quarter]).tolist() == [3, 2, 2]
    assert set(quarter) <= set(half)  # a curve's smaller pool is part of the larger one
    assert {0, 10, 18} <= set(quarter)  # every class's first member is kept
    assert evenly_per_class(idx, labels, 1.0).tolist() == idx.tolist()


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_evenly_per_class_rejects_a_share_outside_zero_to_one(fraction):
    with pytest.raises(SelftrainError, match=r"unlabeled_fraction: must be in \(0, 1\]"):
        evenly_per_class(np.arange(4), np.zeros(4, dtype=np.int64), fraction)


def test_a_smaller_unlabeled_pool_leaves_labeled_and_test_exactly_as_they_were(tmp_path):
    images, labels, classes = _photos()
    full = write_imagefolder(images, labels, classes, tmp_path / "full", labels_per_class=5)
    half = write_imagefolder(
        images, labels, classes, tmp_path / "half", labels_per_class=5, unlabeled_fraction=0.5
    )
    assert full == {"labeled": 15, "test": 18, "unlabeled": 27}
    assert half == {"labeled": 15, "test": 18, "unlabeled": 15}  # 9 per class -> 5 per class
    for split in ("labeled", "test"):
        assert _files(tmp_path / "half", split) == _files(tmp_path / "full", split)
    full_pool, half_pool = _files(tmp_path / "full", "unlabeled"), _files(tmp_path / "half", "unlabeled")
    assert len(half_pool) == 15 and half_pool.items() <= full_pool.items()


def test_fewer_labels_per_class_keep_the_test_split_and_a_subset_of_the_labels(tmp_path):
    """A curve over labels per class: every point scored on the same test images, and the labels
    a smaller point drops go to its unlabeled pool, so points differ in how many photos are labeled."""
    images, labels, classes = _photos()
    few = write_imagefolder(images, labels, classes, tmp_path / "few", labels_per_class=2)
    more = write_imagefolder(images, labels, classes, tmp_path / "more", labels_per_class=5)
    assert few == {"labeled": 6, "test": 18, "unlabeled": 36}
    assert more == {"labeled": 15, "test": 18, "unlabeled": 27}
    assert _files(tmp_path / "few", "test") == _files(tmp_path / "more", "test")
    few_labeled, more_labeled = _files(tmp_path / "few", "labeled"), _files(tmp_path / "more", "labeled")
    assert few_labeled.items() <= more_labeled.items()
    dropped = more_labeled.keys() - few_labeled.keys()
    assert {k.replace("labeled/", "unlabeled/", 1) for k in dropped} <= _files(
        tmp_path / "few", "unlabeled"
    ).keys()
