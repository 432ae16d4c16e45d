"""The bundled default data set: scikit-learn's digits (1,797 real 8x8 scans, 10 classes).

Split stratified and disjoint into test, val, a few labeled images per class, and the rest as
unlabeled. The unlabeled shards carry no label; their true labels go to a separate file that only
reporting reads (pseudo-label accuracy), never training.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from selftrain import atomic
from selftrain.data.dataset_info import INDEX_NAME, TRUTH_NAME, DatasetInfo, SplitInfo, save_dataset
from selftrain.data.shards import RawSample, write_split
from selftrain.errors import SelftrainError



def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def split_indices(
    labels: np.ndarray, labels_per_class: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Stratified, disjoint index sets for test, val, labeled and unlabeled."""
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    val_share = val_fraction / (1 - test_fraction)
    rest, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=seed + 1)
    rng = np.random.default_rng(seed + 2)
    labeled = []
    for c in np.unique(labels):
        members = rest[labels[rest] == c]
        if len(members) <= labels_per_class:
            raise SelftrainError(
                f"--labels-per-class {labels_per_class}: class {c} has only {len(members)} images "
                "outside val/test; choose a smaller number"
            )
        labeled.extend(rng.choice(members, size=labels_per_class, replace=False))
    labeled = np.sort(np.array(labeled))
    unlabeled = np.setdiff1d(rest, labeled)
    return {"labeled": labeled, "unlabeled": unlabeled, "val": np.sort(val), "test": np.sort(test)}


def build_digits(
    out: Path,
    *,
    labels_per_class: int = 5,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    samples_per_shard: int = 256,
) -> DatasetInfo:
    out = Path(out)
    if (out / INDEX_NAME).exists():
        raise SelftrainError(
            f"{out / INDEX_NAME}: a data set is already there; choose another --out or delete it"
        )
    if labels_per_class < 1:
        raise SelftrainError(f"--labels-per-class: must be at least 1 (got {labels_per_class})")
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(out)  # a killed build's half-written shard; the rest is rewritten
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(int)
    classes = [str(c) for c in bunch.target_names]
    parts = split_indices(labels, labels_per_class, val_fraction, test_fraction, seed)

    splits: dict[str, SplitInfo] = {}
    for name, idx in parts.items():
        labeled = name != "unlabeled"
        samples = (
            RawSample(
                key=f"digits_{i:05d}",
                image=_png(images[i]),
                ext="png",
                label=int(labels[i]) if labeled else None,
            )
            for i in idx
        )
        shards = write_split(out, name, samples, samples_per_shard)
        counts = {classes[c]: int((labels[idx] == c).sum()) for c in range(len(classes))} if labeled else {}
        splits[name] = SplitInfo(labeled=labeled, shards=shards, counts=counts)

    truth = {f"digits_{i:05d}": int(labels[i]) for i in parts["unlabeled"]}
    atomic.write_json(out / TRUTH_NAME, truth)
    info = DatasetInfo(
        name="digits",
        classes=classes,
        image_size=(8, 8),
        channels=1,
        splits=splits,
        unlabeled_truth=TRUTH_NAME,
    )
    save_dataset(out, info)  # last: a half-built folder has no dataset.json
    return info
