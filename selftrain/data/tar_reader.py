"""A lean WebDataset shard reader with the checks of `selftrain.data.shards.iter_shard`.

Same contract, same samples, same one-line errors (count, checksum, truncation, garbage), but the
tar headers are parsed with a few byte slices instead of `tarfile` + webdataset's generic
expander. Measured on 2 cores, per sample of shards with a PAX header per sample (as webdataset's
TarWriter writes them by default), sha256 included: about 45 us for `iter_shard`, 12 us here. Next to the teacher's forward pass (about 210 us per image for resnet10t at 32x32),
that is a fifth of the model's time spent reading tar headers, or a twentieth. Training streams
(`selftrain.data.stream`) and pseudo-labeling (`pseudolabel.shard_batches`) both read through it.

Supported: plain tar with ustar/GNU/PAX headers (PAX `path` and `size`, GNU long names), regular
files; other member types are skipped as webdataset skips them. Compressed shards (gzip, bzip2,
xz) go to `iter_shard` itself.
"""

from __future__ import annotations

import hashlib
import logging
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from selftrain.data.dataset_info import ShardEntry
from selftrain.data.shards import SkipCounter, finish_shard, iter_shard
from selftrain.errors import SelftrainError

log = logging.getLogger("selftrain.data")

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
REGULAR = (b"0", b"\0", b"7")
COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz magic
SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's default `skip_meta`
KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's `base_plus_ext`


class _Corrupt(Exception):
    pass


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for large values
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise _Corrupt("bad number in a tar header") from None


def _byte_sum(header: bytes) -> int:
    """sum(header) for a 512-byte block, in C: 1 us instead of 4, twice per sample.

    Adler-32's low half is 1 + the byte sum modulo 65521; over 256 bytes the sum is at most 65,280,
    so each half's sum is exact.
    """
    return (zlib.adler32(header[:256]) & 0xFFFF) + (zlib.adler32(header[256:]) & 0xFFFF) - 2


def _pax(data: bytes) -> dict[str, str]:
    """PAX extended header records: `LEN key=value\\n`, LEN counting the whole record."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        length = int(data[pos:space])
        if length <= 0:
            raise _Corrupt("bad PAX record")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


class _Reader:
    """Reads the file in order, hashing every byte (so checksums cost no second read)."""

    def __init__(self, f):
        self.f = f
        self.digest = hashlib.sha256()

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.digest.update(data)
        return data

    def exact(self, n: int) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise _Corrupt("unexpected end of file")
        return data


def _files(reader: _Reader, strict: bool = False) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file, in archive order; `strict`: a bad header is an error."""
    long_name: str | None = None
    pax_size: int | None = None
    first = True
    while True:
        header = reader.read(BLOCK)
        if first and not header:
            raise _Corrupt("empty file")
        if not header or header == ZERO_BLOCK:
            return  # end of archive (a clean end-of-file at a header boundary, as tarfile accepts)
        if len(header) < BLOCK:
            raise _Corrupt("unexpected end of file")
        try:
            valid = _number(header[148:156]) == _byte_sum(header) - sum(header[148:156]) + 256
        except _Corrupt:
            valid = False
        if not valid:
            if first or strict:
                raise _Corrupt("not a tar file" if first else "bad tar header")
            return  # as tarfile: a bad header after the first ends the archive (the count check fails)
        first = False
        size = pax_size if pax_size is not None else _number(header[124:136])
        kind = header[156:157]
        data = reader.exact(size)
        if kind not in REGULAR:
            reader.exact(-size % BLOCK)
        if kind == b"x":
            records = _pax(data)
            long_name = records.get("path", long_name)
            pax_size = int(records["size"]) if "size" in records else None
            continue
        if kind == b"L":
            long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if kind in (b"g", b"K"):
            continue
        name = long_name
        if name is None:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and prefix:
                name = prefix.decode("utf-8", "surrogateescape") + "/" + name
        long_name, pax_size = None, None
        if kind not in REGULAR:
            if kind == b"S":
                raise _Corrupt("sparse tar member")
            continue  # directories, links: webdataset skips them too
        yield name, data
        # The padding after the data is read after the member is handed on, as tarfile does: a
        # shard cut inside it still yields that member (and so completes the sample before it).
        reader.exact(-size % BLOCK)


def tar_files(f) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each regular file of the plain tar open as `f`; ValueError if it is damaged.

    Strict: a bad header anywhere is an error, where shard reading (like tarfile) takes it as the
    end of the archive and lets the sample count catch the loss. Archives read this way (sidecars)
    have no count to check.
    """
    try:
        yield from _files(_Reader(f), strict=True)
    except _Corrupt as exc:
        raise ValueError(str(exc)) from None


def _samples(reader: _Reader, url: str) -> Iterator[dict]:
    """Group files into samples by key, as webdataset's `group_by_keys` does."""
    sample: dict | None = None
    for name, data in _files(reader):
        if "/" not in name and name.startswith("__") and name.endswith("__"):
            continue
        if SKIP_META.match(name):
            continue
        match = KEY_EXT.match(name)
        if not match:
            continue
        key, ext = match.group(1), match.group(2).lower()
        if sample is None or key != sample["__key__"]:
            if sample is not None:
                yield sample
            sample = {"__key__": key, "__url__": url}
        if ext in sample:
            raise _Corrupt(f"duplicate file name {name}")
        sample[ext] = data
    if sample is not None:
        yield sample


def iter_shard_fast(
    path: Path,
    entry: ShardEntry,
    *,
    verify: bool = True,
    skip_corrupt: bool = False,
    skipped: SkipCounter | None = None,
) -> Iterator[dict]:
    """Yield the raw samples (key -> bytes) of one shard, checking count and checksum.

    Drop-in for `selftrain.data.shards.iter_shard`, with the same messages.
    """
    n = 0
    try:
        f = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed in finally
    except OSError as exc:
        raise SelftrainError(
            f"{path}: cannot open shard ({exc.strerror}); restore it or rebuild the data set"
        ) from None
    if f.peek(8)[:6].startswith(COMPRESSED):
        f.close()
        yield from iter_shard(path, entry, verify=verify, skip_corrupt=skip_corrupt, skipped=skipped)
        return
    reader = _Reader(f)
    failure: str | None = None
    try:
        for sample in _samples(reader, str(path)):
            n += 1
            yield sample
        while reader.read(1 << 20):  # tar padding after the last member counts for the checksum
            pass
    except (_Corrupt, ValueError, UnicodeError) as exc:
        failure = f"corrupt or truncated tar after {n} samples ({type(exc).__name__})"
    finally:
        f.close()

    finish_shard(
        path,
        entry,
        n,
        reader.digest.hexdigest(),
        failure,
        verify=verify,
        skip_corrupt=skip_corrupt,
        skipped=skipped,
    )
