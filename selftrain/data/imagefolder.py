"""Import an ImageFolder tree (one subfolder per class) into shards.

Images keep their original encoded bytes when PIL can read them, the format is one WebDataset
decoders know, they are upright and no side exceeds `max_side`; anything else PIL reads is
re-encoded. Training decodes an image again each time it is drawn unless it fits the stream's
decoded-image cache: stored whole, 12-megapixel phone photos fed a student about 30 times slower
than the same photos at 512 pixels (`benchmarks/stored_size.py`), while the models train at 128
pixels or less (224 on a GPU, typically), so larger images are stored at `max_side` (aspect
kept). Camera photos often store their rotation as an EXIF tag that decoders ignore; those are
stored rotated upright, as a person sees them. Within `max_side` sizes are left alone: resizing
is the transforms' job, so the shards serve every model resolution.
"""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from selftrain import atomic
from selftrain.data.dataset_info import (
    DEFAULT_MAX_SIDE,
    INDEX_NAME,
    MIN_VAL_FOR_SELECTION,
    TRUTH_NAME,
    DatasetInfo,
    SplitInfo,
    save_dataset,
)
from selftrain.data.shards import IMAGE_EXTS, RawSample, write_split
from selftrain.errors import SelftrainError

log = logging.getLogger("selftrain.data")

# The share of the labels `--val-fraction auto` holds out, when that share reaches
# MIN_VAL_FOR_SELECTION images (1,000 labels and up).
AUTO_VAL_FRACTION = 0.1

MIN_MAX_SIDE = 32  # below the smallest size any recipe trains at
_EXIF_ORIENTATION = 0x0112


def _class_dirs(root: Path, flag: str) -> list[str]:
    if not root.is_dir():
        raise SelftrainError(f"{flag} {root}: folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise SelftrainError(
            f"{flag} {root}: expected one subfolder per class (ImageFolder layout), found none"
        )
    return classes


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _key(root: Path, path: Path, index: int) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", str(path.relative_to(root).with_suffix("")))
    return f"{index:07d}_{stem}"[:120]


def _read_image(path: Path, skip_corrupt: bool, max_side: int) -> tuple[bytes, str, Image.Image, list[str]] | None:
    """The bytes to store, their extension, the decoded image and what was changed, if anything."""
    data = path.read_bytes()
    try:
        img = Image.open(io.BytesIO(data))
        if max_side and img.format == "JPEG" and max(img.size) > max_side:
            # Decode a JPEG that will be downscaled at a reduced scale (1/2 to 1/8, never below
            # max_side): a camera photo decodes several times faster, and the file is still read whole.
            img.draft(img.mode, (max_side, max_side))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError):
        if skip_corrupt:
            log.warning("%s: not a readable image; skipped (--skip-corrupt)", path)
            return None
        raise SelftrainError(f"{path}: not an image PIL can read; remove it or pass --skip-corrupt") from None
    ext = path.suffix.lower().lstrip(".")
    ext = "jpg" if ext == "jpeg" else ext
    changes = []
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
        changes.append("rotated")
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        changes.append("downscaled")
    if changes or ext not in IMAGE_EXTS:
        data, ext = _encode(img, ext)
    return data, ext, img, changes


def _encode(img: Image.Image, ext: str) -> tuple[bytes, str]:
    """JPEG stays JPEG (quality 95: PNG would store a photo at several times the size); anything
    else becomes PNG, lossless. Modes neither format writes become what training decodes them to
    anyway: RGB for colour spaces (a print shop's CMYK JPEG), L for float or 32-bit grey."""
    if img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif img.mode in ("F", "I"):
        img = img.convert("L")
    buf = io.BytesIO()
    if ext == "jpg" and img.mode in ("RGB", "L"):
        img.save(buf, format="JPEG", quality=95)
        return buf.getvalue(), "jpg"
    img.save(buf, format="PNG")
    return buf.getvalue(), "png"


class _Collector:
    """Reads images once, remembering the geometry the index needs."""

    def __init__(self, skip_corrupt: bool, max_side: int):
        self.skip_corrupt = skip_corrupt
        self.max_side = max_side
        self.sizes: Counter[tuple[int, int]] = Counter()
        self.changed: Counter[str] = Counter()
        self.color = False
        self.skipped = 0

    def typical_size(self) -> tuple[int, int]:
        """The size most images share; photos of many sizes: the median height and width."""
        if not self.sizes:
            return (0, 0)
        size, count = self.sizes.most_common(1)[0]
        if count * 2 >= self.sizes.total():
            return size
        sizes = list(self.sizes.elements())
        return (int(np.median([h for h, _ in sizes])), int(np.median([w for _, w in sizes])))

    def samples(self, root: Path, items: list[tuple[Path, int | None]], bar: tqdm):
        for i, (path, label) in enumerate(items):
            got = _read_image(path, self.skip_corrupt, self.max_side)
            bar.update()
            if got is None:
                self.skipped += 1
                continue
            data, ext, img, changes = got
            self.changed.update(changes)
            self.sizes[(img.height, img.width)] += 1
            self.color |= img.mode not in ("L", "1", "I", "I;16", "F", "LA")
            yield RawSample(key=_key(root, path, i), image=data, ext=ext, label=label)


def _recording_truth(stream, root: Path, items, truth_of: dict[Path, int], truth: dict[str, int]):
    """Pass samples through unchanged, noting each one's report-only class by its key."""
    label_of_key = {_key(root, path, i): truth_of[path] for i, (path, _) in enumerate(items)}
    for sample in stream:
        truth[sample.key] = label_of_key[sample.key]
        yield sample


def auto_val_fraction(n_labeled: int) -> float:
    """AUTO_VAL_FRACTION when that many labels make a val split worth choosing by, else 0."""
    return AUTO_VAL_FRACTION if round(n_labeled * AUTO_VAL_FRACTION) >= MIN_VAL_FOR_SELECTION else 0.0


def import_imagefolder(
    *,
    labeled: Path,
    unlabeled: Path,
    test: Path,
    out: Path,
    val_fraction: float | None = None,
    seed: int = 0,
    samples_per_shard: int = 1000,
    skip_corrupt: bool = False,
    unlabeled_truth: bool = False,
    max_side: int = DEFAULT_MAX_SIDE,
) -> DatasetInfo:
    """Shards for labeled (minus a stratified val carve-out), val, test and unlabeled images.

    `val_fraction` None (auto) holds out AUTO_VAL_FRACTION of the labels only when that makes a val
    split big enough to choose checkpoints by (MIN_VAL_FOR_SELECTION images); below that every
    stage keeps its last weights anyway, so the labels train instead of sitting in a val split
    that decides nothing. 0 = no val split.

    Images with a side over `max_side` are stored downscaled to it (0: never), see the module's
    docstring; so are those an EXIF tag says to rotate, upright.

    With `unlabeled_truth`, --unlabeled is an ImageFolder tree whose class folders are known but
    must not be trained on (a benchmark's hidden labels): they go to `unlabeled_truth.json`, which
    only reports read (pseudo-label accuracy per iteration); the unlabeled shards stay label-free
    and byte-identical to an import without the flag.
    """
    out = Path(out)
    if (out / INDEX_NAME).exists():
        raise SelftrainError(
            f"{out / INDEX_NAME}: a data set is already there; choose another --out or delete it"
        )
    if max_side < 0 or 0 < max_side < MIN_MAX_SIDE:
        raise SelftrainError(f"--max-side: 0 (keep every original) or at least {MIN_MAX_SIDE} (got {max_side})")
    if val_fraction is not None and not 0 <= val_fraction < 1:
        raise SelftrainError(f"--val-fraction: must be at least 0 and below 1 (got {val_fraction})")
    classes = _class_dirs(labeled, "--labeled")
    test_classes = _class_dirs(test, "--test")
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise SelftrainError(
            f"--test {test}: classes {unknown} are not in --labeled {labeled}; rename or remove them"
        )
    if not unlabeled.is_dir():
        raise SelftrainError(f"--unlabeled {unlabeled}: folder not found")

    labeled_items = [(p, c) for c, name in enumerate(classes) for p in _files(labeled / name)]
    test_items = [(p, classes.index(name)) for name in test_classes for p in _files(test / name)]
    unlabeled_items: list[tuple[Path, int | None]] = [(p, None) for p in _files(unlabeled)]
    truth_of: dict[Path, int] = {}
    if unlabeled_truth:
        for name in _class_dirs(unlabeled, "--unlabeled"):
            if name not in classes:
                raise SelftrainError(
                    f"--unlabeled {unlabeled / name}: class {name!r} is not in --labeled {labeled}; "
                    "rename it, or drop --unlabeled-truth"
                )
            truth_of.update((p, classes.index(name)) for p in _files(unlabeled / name))
        stray = [p for p, _ in unlabeled_items if p not in truth_of]
        if stray:
            raise SelftrainError(
                f"--unlabeled {stray[0]}: with --unlabeled-truth every image must sit in a class "
                "folder; move it into one, or drop the flag"
            )

    if val_fraction is None:
        val_fraction = auto_val_fraction(len(labeled_items))
    # Stratified val carve-out: at least one image per class when the class has two or more.
    rng = np.random.default_rng(seed)
    train_items, val_items = [], []
    for c in range(len(classes)):
        members = [it for it in labeled_items if it[1] == c]
        if not members:
            raise SelftrainError(f"--labeled {labeled / classes[c]}: class folder has no files")
        order = rng.permutation(len(members))
        n_val = min(max(1, round(len(members) * val_fraction)), len(members) - 1) if val_fraction else 0
        val_items += [members[i] for i in order[:n_val]]
        train_items += [members[i] for i in order[n_val:]]

    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale_temporaries(out)  # a killed build's half-written shard; the rest is rewritten
    collector = _Collector(skip_corrupt, max_side)
    truth: dict[str, int] = {}
    splits: dict[str, SplitInfo] = {}
    parts = [
        ("labeled", labeled, train_items),
        ("val", labeled, val_items),
        ("test", test, test_items),
        ("unlabeled", unlabeled, unlabeled_items),
    ]
    # Thousands of camera photos take minutes to read and shrink: show it (on a terminal only).
    total = sum(len(items) for _, _, items in parts)
    with tqdm(total=total, unit="img", desc="import", disable=None, dynamic_ncols=True) as bar:
        for name, root, items in parts:
            counts: Counter[str] = Counter()
            stream = collector.samples(root, items, bar)
            if name == "unlabeled" and unlabeled_truth:
                stream = _recording_truth(stream, root, items, truth_of, truth)
            counted = (counts.update([classes[s.label]]) or s if s.label is not None else s for s in stream)
            shards = write_split(out, name, counted, samples_per_shard)
            splits[name] = SplitInfo(labeled=name != "unlabeled", shards=shards, counts=dict(counts))

    size = collector.typical_size()
    if unlabeled_truth:
        atomic.write_json(out / TRUTH_NAME, truth)
    info = DatasetInfo(
        name=out.name,
        classes=classes,
        image_size=size,
        channels=3 if collector.color else 1,
        splits=splits,
        unlabeled_truth=TRUTH_NAME if unlabeled_truth else None,
    )
    save_dataset(out, info)
    if collector.skipped:
        log.warning("skipped %d unreadable files (--skip-corrupt)", collector.skipped)
    if collector.changed["downscaled"]:
        log.info(
            "stored %d images with a side over %d pixels at %d (--max-side; 0 keeps the originals)",
            collector.changed["downscaled"],
            max_side,
            max_side,
        )
    if collector.changed["rotated"]:
        log.info("stored %d images upright, as their EXIF orientation says", collector.changed["rotated"])
    n_val = splits["val"].total
    if n_val == 0:
        log.info(
            "no val split: all %d labeled images train; stages keep their last weights and report no "
            "val accuracy (--val-fraction %g holds a share out anyway)",
            splits["labeled"].total,
            AUTO_VAL_FRACTION,
        )
    elif n_val < MIN_VAL_FOR_SELECTION:
        log.warning(
            "val has %d images (under %d): too few to choose between checkpoints, so runs keep each "
            "stage's last weights (selection: auto) and val accuracy is only indicative; "
            "--val-fraction 0 trains on these images instead",
            n_val,
            MIN_VAL_FOR_SELECTION,
        )
    return info
