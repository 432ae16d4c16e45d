"""Sidecar archives: round trip in every mode, WebDataset-readable, deterministic, completeness."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from pseudolabel.sidecar import (
    FORMAT_VERSION,
    SidecarWriter,
    incomplete_reason,
    meta_path,
    read_sidecar,
    record_dtype,
    sidecar_path,
    sidecar_stem,
    tar_member,
    tar_members,
)
from selftrain import atomic
from selftrain.errors import SelftrainError

C = 10


def _probs(n: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 2, (n, C))
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def _write(path: Path, mode: str, n: int = 50, k: int = 3) -> tuple[list[str], np.ndarray]:
    p = _probs(n)
    keys = [f"key_{i:04d}" for i in range(n)]
    with SidecarWriter(path, mode, C, k if mode == "topk" else None) as w:
        for s in range(0, n, 16):  # several batches
            q = p[s : s + 16]
            fields = {"cls": q.argmax(1), "conf": q.max(1)}
            if mode == "soft":
                fields["prob"] = q.astype(np.float16)
            if mode == "topk":
                idx = np.argsort(-q, axis=1)[:, :k]
                fields["idx"] = idx
                fields["prob"] = np.take_along_axis(q, idx, 1).astype(np.float16)
            w.write(keys[s : s + 16], **fields)
    return keys, p


@pytest.mark.parametrize("mode", ["soft", "hard", "topk"])
def test_round_trip(tmp_path: Path, mode: str):
    keys, p = _write(tmp_path / "s.labels.tar.gz", mode)
    labels = read_sidecar(tmp_path / "s.labels.tar.gz", C)
    assert labels.mode == mode and labels.keys == keys
    np.testing.assert_array_equal(labels.cls, p.argmax(1))
    np.testing.assert_array_equal(labels.conf, p.max(1))  # float32, exact
    dense = labels.dense()
    assert dense.shape == (50, C)
    np.testing.assert_allclose(dense.sum(1), 1.0, atol=2e-3)
    if mode == "soft":
        assert labels.prob.dtype == np.float16
        np.testing.assert_array_equal(labels.prob, p.astype(np.float16))
    if mode == "hard":
        assert labels.prob is None
        np.testing.assert_array_equal(dense, np.eye(C, dtype=np.float32)[p.argmax(1)])
    if mode == "topk":
        np.testing.assert_array_equal(labels.idx[:, 0], p.argmax(1))
        top = np.sort(p, 1)[:, ::-1][:, :3]
        np.testing.assert_allclose(labels.prob.astype(np.float32), top, atol=1e-3)
        assert (np.count_nonzero(dense, axis=1) == 3).all()  # renormalized over the k kept classes


def test_webdataset_reads_records_keyed_like_the_source(tmp_path: Path):
    path = tmp_path / "s.labels.tar.gz"
    keys, p = _write(path, "soft")
    samples = list(wds.WebDataset(str(path), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == keys
    rec = samples[3]["label.npy"]
    assert int(rec["cls"]) == p[3].argmax()
    np.testing.assert_array_equal(rec["prob"], p[3].astype(np.float16))


def test_archives_are_byte_for_byte_deterministic(tmp_path: Path):
    _write(tmp_path / "a.tar.gz", "soft")
    _write(tmp_path / "b.tar.gz", "soft")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()


def test_long_and_non_ascii_keys_round_trip(tmp_path: Path):
    keys = ["k" * 150, "clé_ünïcode", "short"]
    path = tmp_path / "s.labels.tar.gz"
    with SidecarWriter(path, "hard", C) as w:
        w.write(keys, cls=np.array([1, 2, 3]), conf=np.array([0.5, 0.6, 0.7]))
    labels = read_sidecar(path, C)
    assert labels.keys == keys and labels.cls.tolist() == [1, 2, 3]
    assert [s["__key__"] for s in wds.WebDataset(str(path), shardshuffle=False)] == keys


@pytest.mark.parametrize("mode", ["soft", "hard", "topk"])
def test_batched_members_are_the_bytes_of_member_by_member(mode: str):
    """The array-built batch of members must equal tar_member's, byte for byte, whatever the
    names (equal, unequal, too long for ustar, non-ASCII): sidecars stay readable everywhere."""
    dtype = record_dtype(mode, C, 3 if mode == "topk" else None)
    prefix = bytes(range(128))  # any fixed bytes before each record (the .npy header)
    records = np.zeros(40, dtype=dtype)
    records["cls"] = np.arange(40) % C
    records["conf"] = np.linspace(0, 1, 40)
    for names in (
        [f"synth_{i:07d}.label.npy" for i in range(40)],
        [f"k{i}.label.npy" for i in range(40)],
        ["x" * 120 + ".label.npy"] + [f"a{i:02d}.label.npy" for i in range(39)],
        [f"bild_é{i:02d}.label.npy" for i in range(40)],
    ):
        one_by_one = b"".join(tar_member(n, prefix + records[i].tobytes()) for i, n in enumerate(names))
        assert tar_members(names, prefix, records) == one_by_one, names[0]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_failed_write_is_raised_not_lost():
    """Compression runs on its own thread: a full disk must still reach the caller."""
    p = _probs(2000)
    with pytest.raises(OSError), SidecarWriter(Path("/dev/full"), "soft", C) as w:
        for s in range(0, 2000, 256):
            q = p[s : s + 256]
            w.write(
                [f"key_{i:05d}" for i in range(s, s + len(q))], q.argmax(1), q.max(1), q.astype(np.float16)
            )


def test_labels_are_small(tmp_path: Path):
    """gzip makes tar's 512-byte headers and padding nearly free: ~40 bytes for 10 classes."""
    path = tmp_path / "s.labels.tar.gz"
    _write(path, "soft", n=1000)
    assert path.stat().st_size / 1000 < 64


def test_unreadable_sidecar_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "bad.labels.tar.gz"
    path.write_bytes(b"not a gzip file")
    with pytest.raises(SelftrainError, match=r"bad\.labels\.tar\.gz: unreadable sidecar"):
        read_sidecar(path, C)


def test_damaged_sidecars_are_clear_errors(tmp_path: Path):
    good = tmp_path / "s.labels.tar.gz"
    _write(good, "soft", n=50)
    raw = gzip.decompress(good.read_bytes())
    cases = {
        "cut": good.read_bytes()[:-40],  # the gzip stream ends early
        "garbage": gzip.compress(raw[:1024] + b"\x07" * 512 + raw[1536:], mtime=0),  # a bad tar header
        "record": gzip.compress(raw[:512] + b"\x93NUMPY garbage" + raw[526:], mtime=0),  # a bad .npy
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.labels.tar.gz"
        path.write_bytes(data)
        with pytest.raises(SelftrainError, match=rf"{name}\.labels\.tar\.gz: unreadable sidecar"):
            read_sidecar(path, C)


def test_names_follow_the_source_shard(tmp_path: Path):
    assert sidecar_stem("unlabeled-000003.tar") == "unlabeled-000003"
    assert sidecar_path(tmp_path, "x/unlabeled-000003.tar").name == "unlabeled-000003.labels.tar.gz"
    assert meta_path(tmp_path, "unlabeled-000003.tar").name == "unlabeled-000003.labels.json"


def test_completeness_needs_a_matching_record_and_archive(tmp_path: Path):
    shard = "unlabeled-000000.tar"
    tar = sidecar_path(tmp_path, shard)
    _write(tar, "soft")
    expected = {"source_shard": shard, "teacher_weights_sha256": "abc", "mode": "soft", "temperature": 1.0}
    assert incomplete_reason(tmp_path, shard, expected) == "no completeness record"
    meta = {
        "format_version": FORMAT_VERSION,
        **expected,
        "skipped": 0,
        "sidecar_sha256": atomic.sha256_file(tar),
    }
    meta_path(tmp_path, shard).write_text(json.dumps(meta))
    assert incomplete_reason(tmp_path, shard, expected) is None
    assert incomplete_reason(tmp_path, shard, {**expected, "teacher_weights_sha256": "def"}) == (
        "teacher_weights_sha256 differs"
    )
    assert incomplete_reason(tmp_path, shard, {**expected, "temperature": 2.0}) == "temperature differs"
    meta_path(tmp_path, shard).write_text(json.dumps({**meta, "skipped": 2}))
    assert incomplete_reason(tmp_path, shard, expected) == "samples were skipped"
    assert incomplete_reason(tmp_path, shard, expected, allow_skipped=True) is None
    meta_path(tmp_path, shard).write_text(json.dumps(meta))
    tar.write_bytes(tar.read_bytes()[:-10])  # truncated after the record was written
    assert incomplete_reason(tmp_path, shard, expected) == "archive missing or changed"
    meta_path(tmp_path, shard).write_text("{")  # half-written record (not possible with atomic writes)
    assert incomplete_reason(tmp_path, shard, expected) == "no completeness record"
