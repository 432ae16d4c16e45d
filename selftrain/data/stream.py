"""Streaming a split's shards as decoded, transformed samples for a DataLoader.

Training streams are endless and resumable: epoch `e` visits the shards in an order seeded by
(seed, e) and shuffles samples in a buffer seeded the same way, so the sample at any position is a
function of the seed alone and a resumed run skips to where it stopped instead of starting over.
Shards are split across ranks and DataLoader workers; when there are fewer shards than readers
(a few labeled images in one shard), samples are split by position instead, so no reader idles and
no sample is read twice within an epoch.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from itertools import chain

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from selftrain.data.dataset_info import Dataset
from selftrain.data.shards import SkipCounter, decode_sample, iter_shard
from selftrain.errors import CorruptSampleError, SelftrainError

log = logging.getLogger("selftrain.data")


def reader_slot() -> tuple[int, int]:
    """(this reader's index, number of readers) over distributed ranks x DataLoader workers."""
    rank, world, worker, workers = wds.utils.pytorch_worker_info()
    return rank * workers + worker, world * workers


class SplitStream(IterableDataset):
    """Yields `(image_tensor, label)` for labeled splits or `(image_tensor, key)` for unlabeled ones."""

    def __init__(
        self,
        dataset: Dataset,
        split: str,
        transform: Callable,
        *,
        repeat: bool = False,
        shuffle: bool = False,
        seed: int = 0,
        start_sample: int = 0,
        shuffle_buffer: int = 1000,
        verify_checksums: bool = True,
        skip_corrupt: bool = False,
        with_keys: bool = False,
        shards: list[int] | None = None,
    ):
        super().__init__()
        self.dataset = dataset
        self.split_name = split
        self.split = dataset.split(split)
        self.entries = [self.split.shards[i] for i in shards] if shards is not None else self.split.shards
        self.transform = transform
        self.repeat = repeat
        self.shuffle = shuffle
        self.seed = seed
        self.start_sample = start_sample
        self.shuffle_buffer = shuffle_buffer
        self.verify = verify_checksums
        self.skip_corrupt = skip_corrupt
        self.with_keys = with_keys
        self.skipped = SkipCounter()  # distinct bad samples: counted in the first epoch read only
        self.epoch_size = sum(e.samples for e in self.entries)

    def _raw_epoch(self, epoch: int, slot: int, slots: int, counting: bool) -> Iterator[dict]:
        order = list(range(len(self.entries)))
        if self.shuffle:
            random.Random(f"shards-{self.seed}-{epoch}").shuffle(order)
        by_shard = len(order) >= slots
        mine = order[slot::slots] if by_shard else order

        raw = chain.from_iterable(self._shard_samples(i, counting) for i in mine)
        if not by_shard and slots > 1:
            raw = (s for j, s in enumerate(raw) if j % slots == slot)
        if self.shuffle:
            rng = random.Random(f"samples-{self.seed}-{epoch}-{slot}")
            raw = wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=rng)(raw)
        return raw

    def _shard_samples(self, i: int, counting: bool) -> Iterator[dict]:
        """Raw samples of shard i; subclasses attach targets or repeat samples here, before shuffling."""
        e = self.entries[i]
        return iter_shard(
            self.dataset.shard_path(e),
            e,
            verify=self.verify,
            skip_corrupt=self.skip_corrupt,
            skipped=self.skipped if counting else None,
        )

    def _output(self, x: torch.Tensor, decoded, raw: dict):
        return (x, decoded.key) if self.with_keys else (x, decoded.label)

    def _decode(self, raw: dict, counting: bool):
        try:
            d = decode_sample(
                raw,
                channels=self.dataset.info.channels,
                num_classes=self.dataset.info.num_classes,
                labeled=self.split.labeled,
            )
        except CorruptSampleError as exc:
            if not self.skip_corrupt:
                raise SelftrainError(
                    f"{exc}; fix the sample or pass --skip-corrupt to skip such samples"
                ) from None
            if counting:  # every epoch meets the same bad samples: count and warn once
                log.warning("%s; skipped (--skip-corrupt)", exc)
                self.skipped.add()
            return None
        return self._output(self.transform(d.image), d, raw)

    def __iter__(self):
        slot, slots = reader_slot()
        if self.epoch_size == 0:
            return
        epoch, offset = divmod(self.start_sample, self.epoch_size) if self.repeat else (0, 0)
        skip = offset // slots
        first_epoch = epoch
        while True:
            produced = 0
            counting = epoch == first_epoch
            for j, raw in enumerate(self._raw_epoch(epoch, slot, slots, counting)):
                if j < skip:
                    continue
                item = self._decode(raw, counting)
                if item is not None:
                    produced += 1
                    yield item
            if not self.repeat or (produced == 0 and skip == 0):
                return
            epoch, skip = epoch + 1, 0


def make_loader(stream: SplitStream, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
