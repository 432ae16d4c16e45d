"""The lean shard reader yields exactly what `iter_shard` yields and fails the same way."""

from __future__ import annotations

import gzip
import io
import random
import re
import tarfile
from pathlib import Path

import pytest

from selftrain.data.dataset_info import ShardEntry, load_dataset
from selftrain.data.shards import SkipCounter, iter_shard
from selftrain.data.tar_reader import _byte_sum, iter_shard_fast
from selftrain.errors import SelftrainError


def _both(path: Path, entry: ShardEntry, **kw) -> tuple[list[dict], list[dict]]:
    return list(iter_shard(path, entry, **kw)), list(iter_shard_fast(path, entry, **kw))


def _error(reader, path: Path, entry: ShardEntry) -> str:
    with pytest.raises(SelftrainError) as info:
        list(reader(path, entry))
    return re.sub(r"\(\w+(Error)?\)", "(...)", str(info.value))  # exception class names differ


def test_same_samples_on_real_shards(digits_master: Path):
    dataset = load_dataset(digits_master)
    for split in ("unlabeled", "labeled", "test"):
        for entry in dataset.split(split).shards:
            slow, fast = _both(dataset.shard_path(entry), entry)
            assert fast == slow and len(fast) == entry.samples


def _tar(path: Path, members: list[tuple[str, bytes | None]], fmt: int, compress: bool = False) -> ShardEntry:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raw = gzip.compress(buf.getvalue(), mtime=0) if compress else buf.getvalue()
    path.write_bytes(raw)
    return ShardEntry(path=str(path), samples=3, sha256=None)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("compress", [False, True])
def test_same_samples_on_tricky_archives(tmp_path: Path, fmt: int, compress: bool):
    long_key = "d" * 60 + "/" + "k" * 70 if fmt != tarfile.USTAR_FORMAT else "dir/" + "k" * 90
    members = [
        ("__meta__", b"skipped"),
        ("dir", None),
        ("a.png", b"A" * 700),
        ("a.CLS", b"1"),
        (f"{long_key}.png", b"B" * 1024),
        (f"{long_key}.seg.npy", b"C"),
        ("ünï.png", b"D"),
    ]
    entry = _tar(tmp_path / "t.tar", members, fmt, compress)
    slow, fast = _both(tmp_path / "t.tar", entry)
    assert fast == slow
    assert [s["__key__"] for s in fast] == ["a", long_key, "ünï"] and "cls" in fast[0]


def test_same_errors_on_damaged_shards(tmp_path: Path, digits_master: Path):
    dataset = load_dataset(digits_master)
    entry = dataset.split("unlabeled").shards[0]
    data = dataset.shard_path(entry).read_bytes()
    cases = {
        "truncated": data[:50_000],
        "garbage header": data[:40_960] + b"\x07" * 512 + data[41_472:],
        "sha256": data[:-1] + b"\x01",
        "short": data[:0],
    }
    for name, damaged in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.tar"
        path.write_bytes(damaged)
        slow, fast = _error(iter_shard, path, entry), _error(iter_shard_fast, path, entry)
        assert fast == slow, name
        assert str(path) in fast and "--skip-corrupt" in fast
    missing = tmp_path / "missing.tar"
    assert _error(iter_shard_fast, missing, entry) == _error(iter_shard, missing, entry)


def test_skip_corrupt_counts_the_same(tmp_path: Path, digits_master: Path):
    dataset = load_dataset(digits_master)
    entry = dataset.split("unlabeled").shards[0]
    path = tmp_path / "t.tar"
    path.write_bytes(dataset.shard_path(entry).read_bytes()[:50_000])
    counts = []
    for reader in (iter_shard, iter_shard_fast):
        skipped = SkipCounter()
        samples = list(reader(path, entry, skip_corrupt=True, skipped=skipped))
        counts.append((len(samples), skipped.count))
    assert counts[0] == counts[1] and counts[0][0] + counts[0][1] == entry.samples


@pytest.mark.parametrize("fill", [0, 1, 127, 255])
def test_header_checksum_sum_is_exact_at_the_extremes(fill: int):
    """The fast byte sum behind header validation must equal sum() even for all-0xFF blocks."""
    rng = random.Random(fill)
    blocks = [bytes([fill]) * 512, bytes(rng.randrange(256) for _ in range(512))]
    for block in blocks:
        assert _byte_sum(block) == sum(block)
