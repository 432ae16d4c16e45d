"""Confidence filter and class balancing on small hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from pseudolabel.balance import default_images_per_class, filter_and_balance


def _data(counts: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`counts[c]` images predicted as class c, confidences in (0.5, 1)."""
    rng = np.random.default_rng(seed)
    cls = np.repeat(np.arange(len(counts)), counts)
    keys = np.array([f"img_{i:05d}" for i in range(len(cls))])
    conf = rng.uniform(0.5, 1.0, len(cls)).astype(np.float32)
    return keys, cls, conf


def test_threshold_keeps_equal_and_drops_below():
    keys = np.array(["a", "b", "c", "d"])
    cls = np.array([0, 0, 1, 1])
    conf = np.array([0.3, 0.29999, 0.31, 0.1], dtype=np.float32)
    sel = filter_and_balance(keys, cls, conf, num_classes=2, threshold=0.3, images_per_class=1)
    assert sel.confident_counts.tolist() == [1, 1]  # 0.3 kept (>=), 0.29999 and 0.1 dropped
    assert sel.copies_by_key(keys) == {"a": 1, "c": 1}
    assert sel.predicted_counts.tolist() == [2, 2]


def test_threshold_zero_keeps_all_and_one_keeps_only_certain():
    keys, cls, conf = _data([5, 5])
    assert filter_and_balance(keys, cls, conf, 2, threshold=0.0).confident_counts.sum() == 10
    conf[0] = 1.0
    assert filter_and_balance(keys, cls, conf, 2, threshold=1.0).confident_counts.tolist() == [1, 0]


def test_every_nonempty_class_gets_exactly_n_copies():
    counts = [40, 7, 3, 0, 12]
    keys, cls, conf = _data(counts)
    sel = filter_and_balance(keys, cls, conf, num_classes=5, threshold=0.0, images_per_class=12, seed=3)
    assert sel.selected_counts.tolist() == [12, 12, 12, 0, 12]
    assert sel.kept_counts.tolist() == [12, 7, 3, 0, 12]
    copies = sel.copies_by_key(keys)
    per_class = {c: [copies[k] for k in keys[cls == c] if k in copies] for c in range(5)}
    assert sorted(per_class[1]) == [1, 1, 2, 2, 2, 2, 2]  # 12 = 7 * 1 + 5 images drawn for a 2nd copy
    assert sorted(per_class[2]) == [4, 4, 4]  # 12 = 3*4, no remainder
    assert per_class[3] == []
    assert per_class[4] == [1] * 12


def test_thinned_class_keeps_its_most_confident():
    keys, cls, conf = _data([30])
    sel = filter_and_balance(keys, cls, conf, num_classes=1, threshold=0.0, images_per_class=10)
    kept = set(sel.copies_by_key(keys))
    top = set(keys[np.argsort(-conf)[:10]])
    assert kept == top


def test_confidence_ties_are_broken_by_key():
    keys = np.array(["d", "c", "b", "a"])
    sel = filter_and_balance(keys, np.zeros(4, int), np.full(4, 0.9, np.float32), 1, images_per_class=2)
    assert sel.copies_by_key(keys) == {"a": 1, "b": 1}


def test_deterministic_under_seed_and_independent_of_order():
    keys, cls, conf = _data([50, 9, 4], seed=1)
    a = filter_and_balance(keys, cls, conf, 3, threshold=0.6, images_per_class=20, seed=7)
    b = filter_and_balance(keys, cls, conf, 3, threshold=0.6, images_per_class=20, seed=7)
    perm = np.random.default_rng(5).permutation(len(keys))
    c = filter_and_balance(keys[perm], cls[perm], conf[perm], 3, threshold=0.6, images_per_class=20, seed=7)
    assert a.copies_by_key(keys) == b.copies_by_key(keys) == c.copies_by_key(keys[perm])
    others = [
        filter_and_balance(keys, cls, conf, 3, 0.6, 20, seed=s).copies_by_key(keys) for s in range(8, 12)
    ]
    assert any(o != a.copies_by_key(keys) for o in others)  # the remainder copies do depend on the seed


def test_default_n_is_median_of_nonempty_filtered_counts():
    assert default_images_per_class(np.array([10, 0, 30, 20, 0])) == 20
    assert default_images_per_class(np.array([0, 0])) == 0
    keys, cls, conf = _data([10, 30, 20, 0])
    sel = filter_and_balance(keys, cls, conf, 4, threshold=0.0)
    assert (sel.images_per_class, sel.images_per_class_from) == (20, "median")
    assert sel.selected_counts.tolist() == [20, 20, 20, 0]


def test_keep_fraction_keeps_the_most_confident_share_above_the_threshold():
    """A student labels more images confidently than its teacher did: a fixed share keeps the
    same number of its most confident labels where a fixed threshold would keep more."""
    keys = np.array([f"k{i:03d}" for i in range(100)])
    cls = np.arange(100) % 2
    conf = np.linspace(0.01, 1.0, 100).astype(np.float32)
    sel = filter_and_balance(keys, cls, conf, 2, threshold=0.3, keep_fraction=0.25, images_per_class=100)
    assert sel.confident_counts.sum() == 25
    assert sel.threshold == pytest.approx(conf[75])
    assert set(np.asarray(keys)[sel.index]) == set(keys[75:])
    # The threshold still applies when it is the stricter of the two.
    assert (
        filter_and_balance(keys, cls, conf, 2, threshold=0.9, keep_fraction=0.5).confident_counts.sum() == 11
    )
    with pytest.raises(ValueError, match="keep_fraction"):
        filter_and_balance(keys, cls, conf, 2, keep_fraction=0.0)


def test_nothing_confident_selects_nothing():
    keys, cls, conf = _data([5, 5])
    sel = filter_and_balance(keys, cls, conf * 0.1, 2, threshold=0.3)
    assert sel.images_per_class == 0 and sel.copies.sum() == 0 and sel.copies_by_key(keys) == {}


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        filter_and_balance(["a"], np.array([0, 1]), np.array([0.5]), 2)
    with pytest.raises(ValueError, match="class ids"):
        filter_and_balance(["a"], np.array([2]), np.array([0.5]), 2)
