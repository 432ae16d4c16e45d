"""Sidecar shards: the teacher's labels for one unlabeled shard, keyed by the same `__key__`.

    RUN/iter-K/pseudo/
      unlabeled-000003.labels.tar.gz   one member per image: `{__key__}.label.npy`
      unlabeled-000003.labels.json     what made it and its sha256; written last = "complete"

Each member is a 0-d structured NumPy array (one record) with the fields of the label mode:

    soft   cls int32, conf float32, prob float16[C]        softmax(logits / T)
    hard   cls int32, conf float32                          the one-hot of `cls` is implied
    topk   cls int32, conf float32, idx int32[k], prob float16[k]   k most probable, descending

Why this shape: a tar header is 512 bytes and every member is padded to 512, so a plain tar with
`.npy` + `.cls` + `.conf` members costs over 1.5 KiB per image, more than a small PNG. One member
per image and gzip (headers and padding are mostly zeros) bring a 10-class soft label to about
40 bytes per image while keeping a WebDataset shard that any tar/WebDataset reader can open
(`wds.WebDataset(path).decode()` yields `{"__key__", "label.npy"}`). Archives are byte-for-byte
deterministic (mtime 0, no owner, gzip without name or time), so a shard labeled twice by the same
teacher gives the same file, and a resumed run equals an uninterrupted one.

Completeness: the `.labels.json` is written atomically after the archive is in place, and names
the archive's sha256, the source shard and the teacher weights. A shard killed midway has no JSON
(or a JSON whose sha256 does not match) and is labeled again, never taken as complete.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from selftrain import atomic
from selftrain.data.tar_reader import tar_files
from selftrain.errors import SelftrainError

FORMAT_VERSION = 1
SIDECAR_SUFFIX = ".labels.tar.gz"
META_SUFFIX = ".labels.json"
MEMBER_EXT = "label.npy"
GZIP_LEVEL = 6  # level 6 vs 1: about 15% smaller at a cost that is small next to the forward pass

LabelMode = Literal["soft", "hard", "topk"]


def sidecar_stem(shard_name: str) -> str:
    """`unlabeled-000003.tar` -> `unlabeled-000003` (the name the sidecar files share)."""
    name = Path(shard_name).name
    for ext in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def sidecar_path(pseudo_dir: Path, shard_name: str) -> Path:
    return pseudo_dir / f"{sidecar_stem(shard_name)}{SIDECAR_SUFFIX}"


def meta_path(pseudo_dir: Path, shard_name: str) -> Path:
    return pseudo_dir / f"{sidecar_stem(shard_name)}{META_SUFFIX}"


def record_dtype(mode: LabelMode, num_classes: int, top_k: int | None = None) -> np.dtype:
    """The structured dtype of one image's record in `mode`."""
    fields: list[tuple] = [("cls", "<i4"), ("conf", "<f4")]
    if mode == "soft":
        fields.append(("prob", "<f2", (num_classes,)))
    elif mode == "topk":
        if not top_k:
            raise ValueError("topk records need top_k")
        fields += [("idx", "<i4", (top_k,)), ("prob", "<f2", (top_k,))]
    elif mode != "hard":
        raise ValueError(f"unknown label mode {mode!r}")
    return np.dtype(fields)


def _npy_header(dtype: np.dtype) -> bytes:
    """The `.npy` header of a 0-d array of `dtype`: the same for every record, so built once."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((), dtype=dtype), allow_pickle=False)
    return buf.getvalue()[: -dtype.itemsize]


@dataclass
class ShardLabels:
    """A sidecar read back as arrays, row i for `keys[i]`."""

    mode: LabelMode
    num_classes: int
    keys: list[str]
    cls: np.ndarray  # int32 (n,)
    conf: np.ndarray  # float32 (n,)
    prob: np.ndarray | None = None  # float16 (n, C) soft, (n, k) topk
    idx: np.ndarray | None = None  # int32 (n, k) topk

    def __len__(self) -> int:
        return len(self.keys)

    def one_hot(self) -> np.ndarray:
        """(n, C) float32 one-hot vectors of the argmax `cls` (hard targets from any mode)."""
        out = np.zeros((len(self.keys), self.num_classes), dtype=np.float32)
        out[np.arange(len(self.keys)), self.cls] = 1.0
        return out

    def dense(self) -> np.ndarray:
        """(n, C) float32 targets: soft as stored, hard one-hot, topk's k entries renormalized.

        Top-k keeps the teacher's raw probabilities on disk (their sum is the mass the teacher put
        on those k classes); a training target must sum to 1, so here they are renormalized.
        """
        n, c = len(self.keys), self.num_classes
        if self.mode == "soft":
            assert self.prob is not None
            return self.prob.astype(np.float32)
        if self.mode == "hard":
            return self.one_hot()
        out = np.zeros((n, c), dtype=np.float32)
        assert self.prob is not None and self.idx is not None
        p = self.prob.astype(np.float32)
        np.put_along_axis(out, self.idx.astype(np.int64), p / p.sum(1, keepdims=True).clip(min=1e-12), axis=1)
        return out


_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar pads the archive to whole records of 20 blocks


def _header_template() -> tuple[bytearray, int]:
    """A ustar header for a regular file, mode 0644, owner 0, mtime 0; name and size left blank."""
    h = bytearray(_BLOCK)
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"00000000000\0"
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    return h, sum(h) - sum(b"00000000000\0")  # without the size field, which varies


_TEMPLATE, _TEMPLATE_SUM = _header_template()


def tar_member(name: str, data: bytes) -> bytes:
    """One tar member (header + data + padding), built directly: tarfile's own header code costs
    about as much per image as the teacher's forward pass does per several images.

    Names that do not fit a plain ustar header (over 100 bytes, non-ASCII) go through tarfile.
    """
    raw = name.encode("utf-8")
    pad = b"\0" * (-len(data) % _BLOCK)
    if len(raw) > 100 or not raw.isascii():
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        return info.tobuf(format=tarfile.PAX_FORMAT) + data + pad
    size = b"%011o\0" % len(data)
    h = _TEMPLATE.copy()
    h[0 : len(raw)] = raw
    h[124:136] = size
    h[148:156] = b"%06o\0 " % (_TEMPLATE_SUM + sum(raw) + sum(size))
    return bytes(h) + data + pad


def tar_members(names: list[str], prefix: bytes, records: np.ndarray) -> bytes:
    """`b"".join(tar_member(names[i], prefix + records[i].tobytes()))`, built as one array.

    Every member of a batch has the same size, so the headers differ only in the name and the
    checksum: numpy fills them all at once (a tenth of the per-member cost, which was a few
    percent of labeling). Names of unequal length or that need tarfile fall back per member.
    """
    raw = [name.encode("utf-8") for name in names]
    width = len(raw[0]) if raw else 0
    if not raw or width > 100 or any(len(r) != width or not r.isascii() for r in raw):
        size = records.dtype.itemsize
        data = records.tobytes()
        return b"".join(
            tar_member(name, prefix + data[i * size : (i + 1) * size]) for i, name in enumerate(names)
        )
    n, payload = len(raw), len(prefix) + records.dtype.itemsize
    out = np.zeros((n, _BLOCK + payload + (-payload % _BLOCK)), dtype=np.uint8)
    size_field = b"%011o\0" % payload
    out[:, :_BLOCK] = np.frombuffer(bytes(_TEMPLATE), dtype=np.uint8)
    out[:, 124:136] = np.frombuffer(size_field, dtype=np.uint8)
    out[:, :width] = np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(n, width)
    checksum = _TEMPLATE_SUM + sum(size_field) + out[:, :width].sum(axis=1, dtype=np.int64)
    octal = (checksum[:, None] >> np.arange(15, -1, -3)) & 7  # six octal digits, then NUL and space
    out[:, 148:154] = octal + ord("0")
    out[:, 154:156] = (0, ord(" "))
    out[:, _BLOCK : _BLOCK + len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    out[:, _BLOCK + len(prefix) : _BLOCK + payload] = records.view(np.uint8).reshape(n, -1)
    return out.tobytes()


class SidecarWriter:
    """Streams records into a deterministic `.tar.gz`; memory does not grow with the shard.

    Write into a temporary path (`selftrain.atomic.atomic_path`) and rename after `close()`.
    Compression runs on a thread of its own, one batch behind: zlib releases the GIL, so on a CPU
    it takes the core left idle while the labeler decodes the next batch (gzip at level 6 was 5 us
    per image, a few percent of labeling). A failed write (a full disk) is raised by the next
    `write` or by `close`.
    """

    def __init__(self, path: Path, mode: LabelMode, num_classes: int, top_k: int | None = None):
        self.mode = mode
        self.dtype = record_dtype(mode, num_classes, top_k)
        self._header = _npy_header(self.dtype)
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._gz = gzip.GzipFile(
            filename="", fileobj=self._file, mode="wb", compresslevel=GZIP_LEVEL, mtime=0
        )
        self._written = 0
        self.count = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sidecar-gzip")
        self._pending: Future | None = None

    def _compress(self, chunk: bytes) -> None:
        """Hand `chunk` to the compressor after the previous one is written (at most one queued)."""
        self._drain()
        self._pending = self._pool.submit(self._gz.write, chunk)

    def _drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def write(
        self,
        keys: list[str],
        cls: np.ndarray,
        conf: np.ndarray,
        prob: np.ndarray | None = None,
        idx: np.ndarray | None = None,
    ) -> None:
        """Append one batch: `cls`/`conf` (n,), `prob` (n, C) or (n, k), `idx` (n, k)."""
        records = np.zeros(len(keys), dtype=self.dtype)
        records["cls"] = cls
        records["conf"] = conf
        if self.mode != "hard":
            records["prob"] = prob
        if self.mode == "topk":
            records["idx"] = idx
        chunk = tar_members([f"{key}.{MEMBER_EXT}" for key in keys], self._header, records)
        self._compress(chunk)
        self._written += len(chunk)
        self.count += len(keys)

    def close(self) -> None:
        try:
            self._drain()
            end = 2 * _BLOCK
            self._gz.write(b"\0" * (end + (-(self._written + end) % _RECORD)))
            self._gz.close()
        finally:
            self._pool.shutdown(wait=True)
            self._file.close()

    def __enter__(self) -> SidecarWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _records(members: Iterator[tuple[str, bytes]]) -> tuple[list[str], np.ndarray | None]:
    """Keys and records of a sidecar's `.label.npy` members, as one structured array.

    Every member is the same `.npy` header followed by one record, so only the first is parsed
    by `np.load` (never with pickle); the rest are checked against its header and sliced, which
    makes reading a shard's labels a small fraction of reading its images.
    """
    keys: list[str] = []
    bodies: list[bytes] = []
    header, dtype = b"", None
    for name, payload in members:
        key, _, ext = Path(name).name.partition(".")
        if ext != MEMBER_EXT:
            continue
        if dtype is None or not (payload.startswith(header) and len(payload) == len(header) + dtype.itemsize):
            record = np.load(io.BytesIO(payload), allow_pickle=False)
            if dtype is not None and record.dtype != dtype:
                raise ValueError(f"{name}: record type differs from the first record's")
            if dtype is None:
                dtype, header = record.dtype, payload[: len(payload) - record.dtype.itemsize]
            payload = header + record.tobytes()
        bodies.append(payload[len(header) :])
        keys.append(key)
    if dtype is None:
        return keys, None
    return keys, np.frombuffer(b"".join(bodies), dtype=dtype)


def read_sidecar(path: Path, num_classes: int, mode: LabelMode = "soft") -> ShardLabels:
    """Read a sidecar archive back into arrays (one shard's labels: small).

    The mode is read from the records; `mode` only shapes the result of an empty sidecar.
    """
    try:
        with gzip.open(path, "rb") as gz:
            data = gz.read()
        keys, arr = _records(tar_files(io.BytesIO(data)))
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise SelftrainError(
            f"{path}: unreadable sidecar ({type(exc).__name__}); delete it and run `selftrain pseudolabel` again"
        ) from None
    if arr is None:
        width = num_classes if mode == "soft" else 0
        return ShardLabels(
            mode=mode,
            num_classes=num_classes,
            keys=[],
            cls=np.zeros(0, np.int32),
            conf=np.zeros(0, np.float32),
            prob=None if mode == "hard" else np.zeros((0, width), np.float16),
            idx=np.zeros((0, 0), np.int32) if mode == "topk" else None,
        )
    names = arr.dtype.names or ()
    mode: LabelMode = "topk" if "idx" in names else "soft" if "prob" in names else "hard"
    return ShardLabels(
        mode=mode,
        num_classes=num_classes,
        keys=keys,
        cls=arr["cls"].astype(np.int32),
        conf=arr["conf"].astype(np.float32),
        prob=arr["prob"].copy() if "prob" in names else None,
        idx=arr["idx"].copy() if "idx" in names else None,
    )


def read_meta(path: Path) -> dict[str, Any] | None:
    """The completeness record, or None where it is missing or unreadable (= not complete)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def incomplete_reason(
    pseudo_dir: Path, shard_name: str, expected: dict[str, Any], *, allow_skipped: bool = False
) -> str | None:
    """None if the sidecar of `shard_name` is complete and made as `expected` says; else why not.

    `expected` holds the fields that determine the labels (source shard and checksum, teacher
    weights sha256, mode, temperature, top_k, classes, input size); every one must match. A sidecar
    that skipped corrupt samples is a finished record of what could be read (`allow_skipped`, for
    the selection) but is not reused by labeling: the shard may have been restored since, and
    without --skip-corrupt it must fail loudly again.
    """
    meta = read_meta(meta_path(pseudo_dir, shard_name))
    if meta is None:
        return "no completeness record"
    if meta.get("format_version") != FORMAT_VERSION:
        return "older sidecar format"
    for field, value in expected.items():
        if meta.get(field) != value:
            return f"{field} differs"
    if meta.get("skipped", 0) and not allow_skipped:
        return "samples were skipped"
    tar = sidecar_path(pseudo_dir, shard_name)
    if not tar.is_file() or atomic.sha256_file(tar) != meta.get("sidecar_sha256"):
        return "archive missing or changed"
    return None
