"""Streaming a split's shards as decoded, transformed samples for a DataLoader.

Training streams are endless and resumable: epoch `e` visits the shards in an order seeded by
(seed, e) and shuffles samples in a buffer seeded the same way, so the sample at any position is a
function of the seed alone and a resumed run skips to where it stopped instead of starting over.

Each epoch is split over readers (distributed ranks x DataLoader workers) by position in the
concatenation of the shards in that epoch's order (`epoch_plan`): with at least as many shards as
readers, reader s takes the contiguous positions [s*N/S, (s+1)*N/S), i.e. whole shards and at most
two partial ones, so a reader opens only about 1/S of the shards; with fewer shards (a few labeled
images in one shard), it takes every S-th position of a permutation drawn per epoch, so no reader
idles and each sees another share every epoch. Either way the readers are
disjoint, together cover the epoch exactly once, and hold N/S samples each, give or take one, so
they stay in step across epochs. A reader stops reading a shard after its last position in it, so
each shard is verified (count, sha256) once per epoch, by the reader that owns its last sample.
"""

from __future__ import annotations

import logging
import random
import zlib
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from itertools import chain

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from selftrain import augment_rng, distributed
from selftrain.data.dataset_info import Dataset
from selftrain.data.shards import SkipCounter, decode_sample
from selftrain.data.tar_reader import iter_shard_fast
from selftrain.data.workers import resolve_workers
from selftrain.errors import CorruptSampleError, SelftrainError

log = logging.getLogger("selftrain.data")

DECODE_CACHE_BYTES = 256 << 20  # decoded pixels an endless (training) stream keeps, per reader


class BudgetCache:
    """A dict that stops taking entries once their declared sizes reach `budget` bytes.

    For what an endless stream reads again every epoch: a small split fits and is kept whole; a
    large one fills the budget once and the rest is read again each time, as without a cache.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self._items: dict = {}

    def get(self, key):
        return self._items.get(key)

    def put(self, key, value, size: int) -> None:
        if self.used + size <= self.budget:
            self._items[key] = value
            self.used += size


def reader_info() -> tuple[int, int, int, int]:
    """(rank, world size, DataLoader worker, DataLoader workers) of the calling reader."""
    info = torch.utils.data.get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return distributed.rank(), distributed.world_size(), worker, workers


def reader_slot() -> tuple[int, int]:
    """(this reader's index, number of readers) over distributed ranks x DataLoader workers."""
    rank, world, worker, workers = reader_info()
    return rank * workers + worker, world * workers


def epoch_plan(
    sizes: list[int], order: list[int], slot: int, slots: int, seed: str | None = None
) -> list[tuple[int, Sequence[int]]]:
    """Reader `slot` of `slots`: (shard, its sorted in-shard positions) per shard it reads, in `order`.

    `sizes[i]` is shard i's samples per epoch. With at least `slots` non-empty shards: contiguous
    ranges of the concatenation. With fewer: every `slots`-th position of the concatenation after a
    permutation seeded by `seed` (the same on every reader), so that a reader's share changes from
    epoch to epoch: with one shard of 50 labeled images a fixed half per rank would show each
    rank's BatchNorm the same 25 images forever. A reader reads a shard up to its last position, so
    exactly one reader, the owner of the shard's last sample, reads it to the end and verifies it.
    """
    total = sum(sizes)
    contiguous = sum(1 for i in order if sizes[i] > 0) >= slots
    lo, hi = slot * total // slots, (slot + 1) * total // slots
    if not contiguous:
        positions = list(range(total))
        if seed is not None:
            random.Random(seed).shuffle(positions)
        owned = sorted(positions[slot::slots])
    plan: list[tuple[int, Sequence[int]]] = []
    start = 0
    for i in order:
        n = sizes[i]
        if contiguous:
            mine: Sequence[int] = range(max(lo - start, 0), max(min(hi - start, n), 0))
        else:
            mine = [p - start for p in owned[bisect_left(owned, start) : bisect_left(owned, start + n)]]
        if len(mine):
            plan.append((i, mine))
        start += n
    return plan


def consumed_by_reader(
    start_sample: int, batch_size: int | None, world: int, worker: int, workers: int
) -> int:
    """Samples one reader had delivered when the run had consumed `start_sample` samples in all.

    `start_sample` is global (steps x global batch), so it does not depend on the world size. Each
    rank takes `batch_size` per step, and its DataLoader takes batch k from worker k mod `workers`.
    Without a batch size the readers are assumed to have delivered equal shares.
    """
    if batch_size is None:
        return start_sample // (world * workers)
    steps = start_sample // (batch_size * world)
    batches = (steps - worker + workers - 1) // workers if steps > worker else 0
    return batches * batch_size


class SplitStream(IterableDataset):
    """Yields `(image_tensor, label)` for labeled splits or `(image_tensor, key)` for unlabeled ones.

    `start_sample` is the number of samples the whole run (all ranks) consumed before this stream
    starts; `batch_size` is the per-rank batch the DataLoader draws, which makes a resume at the
    same world size and worker count exact. After a change of either, the epoch in progress is
    finished with the new split from the same fraction of each reader's share (a few samples of
    that epoch may repeat or be missed); later epochs are exact.
    """

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
        batch_size: int | None = None,
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
        self.batch_size = batch_size
        self.skipped = SkipCounter()  # distinct bad samples: counted in the first epoch read only
        self._decoded_images = BudgetCache(DECODE_CACHE_BYTES)
        self.epoch_size = sum(e.samples for e in self.entries)

    def _shard_sizes(self) -> list[int]:
        """Samples per shard in one epoch (subclasses that repeat samples count the repeats)."""
        return [e.samples for e in self.entries]

    def reader_share(self, slot: int, slots: int) -> int:
        """Samples per epoch of reader `slot` of `slots` (the same in every epoch)."""
        sizes = self._shard_sizes()
        return sum(len(mine) for _, mine in epoch_plan(sizes, list(range(len(sizes))), slot, slots))

    def feeds(self, workers: int) -> bool:
        """Whether every reader (ranks x `workers`) of an endless stream gets samples each epoch."""
        slots = distributed.world_size() * max(workers, 1)
        return not (self.repeat and self.epoch_size and min(self.reader_share(s, slots) for s in range(slots)) == 0)

    def check_split(self, workers: int) -> None:
        """In the main process: refuse an endless stream that leaves some reader with nothing."""
        world = distributed.world_size()
        if not self.feeds(workers):
            raise SelftrainError(
                f"{self.split_name}: {self.epoch_size} samples cannot feed {world} processes x "
                f"{max(workers, 1)} DataLoader workers; lower distributed.nproc_per_node or data.num_workers"
            )

    def _raw_epoch(self, epoch: int, slot: int, slots: int, counting: bool) -> Iterator[dict]:
        order = list(range(len(self.entries)))
        if self.shuffle:
            random.Random(f"shards-{self.seed}-{epoch}").shuffle(order)
        plan = epoch_plan(
            self._shard_sizes(),
            order,
            slot,
            slots,
            f"positions-{self.seed}-{epoch}" if self.shuffle else None,
        )
        raw = chain.from_iterable(self._read_positions(i, mine, counting) for i, mine in plan)
        if self.shuffle:
            rng = random.Random(f"samples-{self.seed}-{epoch}-{slot}")
            raw = wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=rng)(raw)
        return raw

    def _read_positions(self, i: int, mine: Sequence[int], counting: bool) -> Iterator[dict]:
        stop = mine[-1] + 1
        wanted = mine if isinstance(mine, range) else set(mine)
        for j, raw in enumerate(self._shard_samples(i, counting)):
            if j >= stop:
                break  # the rest belongs to other readers; the last sample's owner verifies the shard
            if j in wanted:
                yield raw

    def _shard_samples(self, i: int, counting: bool) -> Iterator[dict]:
        """Raw samples of shard i; subclasses attach targets or repeat samples here, before shuffling."""
        e = self.entries[i]
        return iter_shard_fast(
            self.dataset.shard_path(e),
            e,
            verify=self.verify,
            skip_corrupt=self.skip_corrupt,
            skipped=self.skipped if counting else None,
        )

    def _output(self, x: torch.Tensor, decoded, raw: dict):
        return (x, decoded.key) if self.with_keys else (x, decoded.label)

    def _decoded(self, raw: dict):
        """The decoded sample, from the cache when this endless stream has decoded it before.

        Small data sets are read for hundreds of epochs and decoding is a large share of the
        per-image cost; the decoded images of a stream are kept up to `DECODE_CACHE_BYTES` (per
        reader), so a split that fits is decoded once, and a large one is decoded every epoch as
        before. Shards are still read and verified every epoch; only decoding is skipped.
        """
        cache_key = (raw.get("__url__"), raw.get("__key__")) if self.repeat else None
        d = self._decoded_images.get(cache_key) if cache_key else None
        if d is None:
            d = decode_sample(
                raw,
                channels=self.dataset.info.channels,
                num_classes=self.dataset.info.num_classes,
                labeled=self.split.labeled,
            )
            if cache_key:
                size = d.image.width * d.image.height * len(d.image.getbands())
                self._decoded_images.put(cache_key, d, size)
        return d

    def _decode(self, raw: dict, counting: bool):
        try:
            d = self._decoded(raw)
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

    def _seed_augmentation(self, slot: int, delivered: int) -> None:
        """Seed augmentation's generators (`selftrain.augment_rng`) at the start of each batch.

        Augmentation then depends only on the stream's seed and how many samples this reader had
        delivered, not on what ran before or beside it: a flow, a resumed run and a repeated run
        augment the same batch the same way. The key counts delivered samples across epochs, so
        every DataLoader batch starts with a reseed even when the split's size is not a multiple
        of the batch: two streams that share a thread's generators (a labeled and an unlabeled
        one, zipped) never draw from each other's state, which a resume could not replay. Once per
        batch, because reseeding costs ~10 us per generator.
        """
        augment_rng.seed(zlib.crc32(f"augment-{self.seed}-{slot}-{delivered}".encode()))

    def __iter__(self):
        rank, world, worker, workers = reader_info()
        if self.repeat and self.batch_size:
            # A resumed DataLoader asks worker 0 first; in the run it resumes, step T's batch came
            # from worker T mod workers. Rotating the roles makes the resumed batches the same.
            worker = (worker + self.start_sample // (self.batch_size * world)) % workers
        slot, slots = rank * workers + worker, world * workers
        share = self.reader_share(slot, slots) if self.epoch_size else 0
        if share == 0:
            return
        consumed = consumed_by_reader(self.start_sample, self.batch_size, world, worker, workers)
        epoch, skip = divmod(consumed, share) if self.repeat else (0, 0)
        first_epoch = epoch
        # Resumes start at a step, so at a batch boundary of this reader: the first sample
        # delivered is a batch's first and is reseeded, and nothing needs replaying.
        seeded = self.repeat and bool(self.batch_size)
        delivered = consumed
        while True:
            produced = 0
            counting = epoch == first_epoch
            for j, raw in enumerate(self._raw_epoch(epoch, slot, slots, counting)):
                if j < skip:
                    continue
                if seeded and delivered % self.batch_size == 0:
                    self._seed_augmentation(slot, delivered)  # again if this sample is skipped
                item = self._decode(raw, counting)
                if item is not None:
                    produced += 1
                    delivered += 1
                    yield item
            if not self.repeat or (produced == 0 and skip == 0):
                return
            epoch, skip = epoch + 1, 0


def make_loader(
    stream: SplitStream, batch_size: int, num_workers: int | str, device: torch.device
) -> DataLoader:
    """`batch_size` is per rank (a global batch divided by the world size); `num_workers` as in
    `data.num_workers`: `auto` gives a split too small to feed every worker fewer of them."""
    workers = resolve_workers(num_workers, device)
    if num_workers == "auto":
        while workers > 0 and not stream.feeds(workers):
            workers -= 1
    stream.check_split(workers)
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
