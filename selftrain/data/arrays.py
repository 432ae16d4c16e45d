"""Arrays of labeled images (an `.npz` such as the CIFAR-10 dev photos) as an ImageFolder tree.

`selftrain data import` is the path users' photos take, so experiments on array data sets go
through it too: this writes the tree it reads (labeled/, test/ and unlabeled/, one subfolder per
class, PNG files) and nothing else. The unlabeled folder keeps its class subfolders so that the
import can record them as report-only truth (`--unlabeled-truth`); training never sees them.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from selftrain.errors import SelftrainError


def load_npz_images(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`images` (N, H, W[, C]) uint8, `labels` (N,), `classes`; no pickled objects are loaded."""
    path = Path(path)
    if not path.is_file():
        raise SelftrainError(f"{path}: file not found; pass an .npz with images, labels and classes")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
            classes = [str(c) for c in npz["classes"]] if "classes" in npz else None
    except (KeyError, ValueError, OSError) as exc:
        raise SelftrainError(
            f"{path}: expected arrays images (N,H,W[,C] uint8), labels (N,) and classes ({exc})"
        ) from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise SelftrainError(f"{path}: images must be uint8 N,H,W[,C] with one label per image")
    if classes is None:
        classes = [str(c) for c in range(int(labels.max()) + 1)]
    return images, labels.astype(np.int64), classes


def split_per_class(
    labels: np.ndarray, labels_per_class: int, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Stratified, disjoint labeled / test / unlabeled indices (val is carved by the import)."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"labeled": [], "test": [], "unlabeled": []}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(members) * test_fraction)
        if len(members) - n_test <= labels_per_class:
            raise SelftrainError(
                f"labels_per_class {labels_per_class}: class {c} has only {len(members) - n_test} "
                "images outside test; choose a smaller number"
            )
        parts["test"] += members[:n_test].tolist()
        parts["labeled"] += members[n_test : n_test + labels_per_class].tolist()
        parts["unlabeled"] += members[n_test + labels_per_class :].tolist()
    return {k: np.sort(np.array(v, dtype=np.int64)) for k, v in parts.items()}


def evenly_per_class(idx: np.ndarray, labels: np.ndarray, fraction: float) -> np.ndarray:
    """About `fraction` of `idx`, spread evenly over each class's sorted members (the first kept).

    For learning curves over the unlabeled pool's size: the kept images of a smaller fraction
    that divides a larger one (1/4 and 1/2) are a subset of it, and the class mix stays the
    source's, so a curve measures how many unlabeled images there are, not which.
    """
    if not 0 < fraction <= 1:
        raise SelftrainError(f"unlabeled_fraction: must be in (0, 1] (got {fraction})")
    keep: list[np.ndarray] = []
    for c in np.unique(labels[idx]):
        members = np.sort(idx[labels[idx] == c])
        steps = np.floor(np.arange(-1, len(members)) * fraction)  # step -1 first: member 0 is kept
        keep.append(members[np.diff(steps) > 0])
    return np.sort(np.concatenate(keep)) if keep else idx


def write_imagefolder(
    images: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    out: str | Path,
    *,
    labels_per_class: int,
    test_fraction: float = 0.3,
    seed: int = 0,
    unlabeled_fraction: float = 1.0,
) -> dict[str, int]:
    """Write `out/{labeled,test,unlabeled}/<class>/<index>.png`; returns the count per split.

    `unlabeled_fraction` < 1 writes that share of the unlabeled split only (`evenly_per_class`);
    labeled and test stay exactly the full split's, so runs differ in the pool alone.
    """
    out = Path(out)
    parts = split_per_class(labels, labels_per_class, test_fraction, seed)
    if unlabeled_fraction != 1.0:
        parts["unlabeled"] = evenly_per_class(parts["unlabeled"], labels, unlabeled_fraction)
    for split, idx in parts.items():
        for i in idx:
            folder = out / split / classes[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(images[i]).save(buf, format="PNG")
            (folder / f"{i:06d}.png").write_bytes(buf.getvalue())
    return {k: len(v) for k, v in parts.items()}
