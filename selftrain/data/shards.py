"""Reading and writing WebDataset shards, with the checks that make bad data fail loudly.

Writing: one tar per `samples_per_shard` samples, named `{split}-{000000}.tar`, written under a
temporary name and renamed, with its sha256 returned for `dataset.json`.

Reading: webdataset parses the tar stream; around it this module counts samples, hashes the bytes
as they stream past (no second read), and turns every failure into a one-line error naming the
shard, or, with `skip_corrupt`, into a warning and a count.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds
from PIL import Image, UnidentifiedImageError

from selftrain import atomic
from selftrain.data.dataset_info import ShardEntry
from selftrain.errors import CorruptSampleError, SelftrainError

log = logging.getLogger("selftrain.data")

_PIL_FORMATS = {  # image extension -> the PIL format that decodes it, in lookup order
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "webp": "WEBP",
    "bmp": "BMP",
    "gif": "GIF",
    "tif": "TIFF",
    "tiff": "TIFF",
    "ppm": "PPM",
    "pgm": "PPM",
}
IMAGE_EXTS = tuple(_PIL_FORMATS)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


@dataclass
class RawSample:
    key: str
    image: bytes
    ext: str
    label: int | None = None


def write_split(
    out_dir: Path, split: str, samples: Iterable[RawSample], samples_per_shard: int
) -> list[ShardEntry]:
    """Write `samples` into consecutive shards; return their index entries."""
    if samples_per_shard < 1:
        raise SelftrainError(f"--samples-per-shard: must be at least 1 (got {samples_per_shard})")
    entries: list[ShardEntry] = []
    batch: list[RawSample] = []

    def flush() -> None:
        name = shard_name(split, len(entries))
        with atomic.atomic_path(out_dir / name) as tmp:
            # An integer mtime: webdataset's default (time.time(), a float) makes tarfile add a
            # PAX header to every member, which doubles the headers a reader parses, and makes
            # the same data set differ byte for byte each time it is built.
            with wds.TarWriter(str(tmp), encoder=False, mtime=0) as sink:
                for s in batch:
                    record = {"__key__": s.key, s.ext: s.image}
                    if s.label is not None:
                        record["cls"] = str(s.label).encode()
                    sink.write(record)
        entries.append(ShardEntry(path=name, samples=len(batch), sha256=atomic.sha256_file(out_dir / name)))
        batch.clear()

    for sample in samples:
        if "." in sample.key:
            raise SelftrainError(
                f"sample key {sample.key!r}: keys must not contain dots (webdataset splits on them)"
            )
        batch.append(sample)
        if len(batch) == samples_per_shard:
            flush()
    if batch:
        flush()
    return entries


@dataclass
class SkipCounter:
    """Samples skipped under `skip_corrupt`, shared with DataLoader worker processes."""

    value: object = field(default_factory=lambda: multiprocessing.Value("q", 0))

    def add(self, n: int = 1) -> None:
        with self.value.get_lock():  # type: ignore[attr-defined]
            self.value.value += n  # type: ignore[attr-defined]

    @property
    def count(self) -> int:
        return int(self.value.value)  # type: ignore[attr-defined]


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes what passes through it, so checksums cost no second read."""

    def __init__(self, f):
        self._f = f
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = self._f.readinto(b)
        if n:
            self.digest.update(memoryview(b)[:n])
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


def iter_shard(
    path: Path,
    entry: ShardEntry,
    *,
    verify: bool = True,
    skip_corrupt: bool = False,
    skipped: SkipCounter | None = None,
) -> Iterator[dict]:
    """Yield the raw samples (key -> bytes) of one shard, checking count and checksum."""
    n = 0
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise SelftrainError(
            f"{path}: cannot open shard ({exc.strerror}); restore it or rebuild the data set"
        ) from None
    reader = _HashingReader(f)
    stream = io.BufferedReader(reader, buffer_size=1 << 16)
    failure: str | None = None
    try:
        files = wds.tariterators.tar_file_expander([{"url": str(path), "stream": stream}])
        for sample in wds.tariterators.group_by_keys(files):
            n += 1
            yield sample
        while stream.read(1 << 20):  # tar padding after the last member counts for the checksum
            pass
    except Exception as exc:  # tarfile/webdataset errors: truncated or garbage bytes
        failure = f"corrupt or truncated tar after {n} samples ({type(exc).__name__})"
    finally:
        stream.close()

    finish_shard(path, entry, n, reader.digest.hexdigest(), failure, verify=verify, skip_corrupt=skip_corrupt,
                 skipped=skipped)


def finish_shard(
    path: Path, entry: ShardEntry, n: int, digest: str, failure: str | None, *, verify: bool,
    skip_corrupt: bool, skipped: SkipCounter | None,
) -> None:
    """After a shard's last sample: check count and checksum; raise, or warn and count with skip_corrupt.

    Shared by every shard reader so they all fail with the same one-line errors.
    """
    if failure is None and n != entry.samples:
        failure = f"holds {n} samples but dataset.json says {entry.samples} (truncated or replaced)"
    if failure is None and verify and entry.sha256 and digest != entry.sha256:
        failure = "sha256 differs from dataset.json (file changed or corrupt)"
    if failure is None:
        return
    if not skip_corrupt:
        raise SelftrainError(f"{path}: {failure}; restore the shard, rebuild the data set, or pass --skip-corrupt")
    missing = max(entry.samples - n, 0)
    if skipped is not None:  # None: a later epoch over the same shard, already reported
        log.warning("%s: %s; skipping %d missing samples (--skip-corrupt)", path, failure, missing)
        skipped.add(missing)


@dataclass
class DecodedSample:
    key: str
    image: Image.Image
    label: int | None
    shard: str


def _open_image(data: bytes, ext: str) -> Image.Image:
    """Decode with the format the extension names first (PIL otherwise probes its plugins one by
    one, which for a small PNG costs as much as decoding it), then let PIL guess: a member named
    `.jpg` that holds a PNG still decodes."""
    hint = _PIL_FORMATS.get(ext)
    if hint is not None:
        try:
            image = Image.open(io.BytesIO(data), formats=(hint,))
            image.load()
            return image
        except (UnidentifiedImageError, OSError, ValueError):
            pass
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def decode_image(raw: dict, channels: int) -> Image.Image:
    """The sample's image in the data set's mode (L for 1 channel, else RGB).

    The labeler's per-image path: no label, no record around the image (a few microseconds per
    image next to a small PNG's decode). A sample without a readable image raises
    CorruptSampleError naming the shard, the key and the member.
    """
    for ext in IMAGE_EXTS:
        data = raw.get(ext)
        if data is not None:
            break
    else:
        url, key = raw.get("__url__", "?"), raw.get("__key__", "?")
        members = ", ".join(sorted(k for k in raw if not k.startswith("__")))
        raise CorruptSampleError(f"{url}: sample {key} has no image member (has: {members or 'nothing'})")
    try:
        image = _open_image(data, ext)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        url, key = raw.get("__url__", "?"), raw.get("__key__", "?")
        raise CorruptSampleError(f"{url}: sample {key}.{ext} is not a readable image ({exc})") from None
    mode = "L" if channels == 1 else "RGB"
    return image if image.mode == mode else image.convert(mode)


def decode_sample(raw: dict, *, channels: int, num_classes: int, labeled: bool) -> DecodedSample:
    """Bytes to a PIL image in the data set's mode, and the label checked against the classes."""
    image = decode_image(raw, channels)
    label = parse_label(raw, num_classes) if labeled else None
    url = raw.get("__url__", "?")
    shard = url.rsplit("/", 1)[-1]  # no Path per image
    return DecodedSample(key=raw.get("__key__", "?"), image=image, label=label, shard=shard)


def parse_label(raw: dict, num_classes: int) -> int:
    """The sample's `.cls`, checked against the data set's classes (CorruptSampleError if not)."""
    url = raw.get("__url__", "?")
    key = raw.get("__key__", "?")
    if "cls" not in raw:
        raise CorruptSampleError(f"{url}: sample {key} has no .cls label in a labeled split")
    text = raw["cls"].decode("utf-8", "replace").strip()
    try:
        label = int(text)
    except ValueError:
        raise CorruptSampleError(f"{url}: sample {key}.cls is {text!r}, not an integer label") from None
    if not 0 <= label < num_classes:
        raise CorruptSampleError(
            f"{url}: sample {key} has label {label} but the data set has {num_classes} classes "
            f"(0-{num_classes - 1}); fix the .cls or the classes in dataset.json"
        )
    return label


def skip_or_raise(exc: CorruptSampleError, skip_corrupt: bool, log: logging.Logger) -> None:
    """A corrupt sample: with --skip-corrupt a warning and the caller skips it; otherwise the
    one-line error naming the fix. Every reader (training, eval, labeling) says the same."""
    if not skip_corrupt:
        raise SelftrainError(f"{exc}; fix the sample or pass --skip-corrupt to skip such samples") from None
    log.warning("%s; skipped (--skip-corrupt)", exc)

