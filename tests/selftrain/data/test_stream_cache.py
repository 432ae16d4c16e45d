"""Training streams decode each image once, yet keep verifying their shards every epoch."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pytest
import torch

from selftrain.data import shards
from selftrain.data.dataset_info import load_dataset
from selftrain.data.stream import SplitStream
from selftrain.errors import SelftrainError
from selftrain.transforms import eval_transform


def _stream(data: Path) -> SplitStream:
    dataset = load_dataset(data)
    return SplitStream(dataset, "labeled", eval_transform(8, 1), repeat=True, shuffle=True, seed=1)


def test_cached_epochs_yield_what_decoding_yields(digits_dir: Path, monkeypatch):
    decodes = []
    real = shards.decode_sample

    def counting(*args, **kwargs):
        decodes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("selftrain.data.stream.decode_sample", counting)
    stream = _stream(digits_dir)
    n = stream.epoch_size
    cached = list(islice(stream, 3 * n))
    assert len(decodes) == n  # three epochs, each image decoded once

    decodes.clear()
    monkeypatch.setattr("selftrain.data.stream.DECODE_CACHE_BYTES", 0)  # nothing fits: decode always
    uncached = list(islice(_stream(digits_dir), 3 * n))
    assert len(decodes) == 3 * n
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(cached, uncached, strict=True))


def test_a_shard_changed_after_the_first_epoch_still_fails(digits_dir: Path):
    stream = _stream(digits_dir)
    it = iter(stream)
    for _ in range(stream.epoch_size):  # epoch 0: read, verified, decoded into the cache
        next(it)
    shard = digits_dir / load_dataset(digits_dir).split("labeled").shards[0].path
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # tar padding: every sample still decodes, only the checksum differs
    shard.write_bytes(bytes(data))
    with pytest.raises(SelftrainError, match="sha256 differs"):
        for _ in range(stream.epoch_size):
            next(it)
