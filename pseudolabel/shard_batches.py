"""Unlabeled shards as batches that never span two shards, for per-shard sidecars.

Each batch says which shard it came from, and the last batch of a shard says so (with the
shard's count of skipped samples), so the labeler can commit that shard's sidecar the moment its
last image is labeled: the unit of resumption is the shard. DataLoader workers take whole shards;
a shard's failure travels to the main process as data and is raised there with its one-line
message (a worker exception would arrive wrapped in a multi-line traceback).

The eval transform is split in two: the per-image part (deterministic resize to the teacher's
input size, PIL -> uint8 tensor) runs while decoding, the elementwise rest (to float, normalize)
runs once per batch on the device. The result is identical to `eval_transform` image by image,
with a quarter of the bytes to move between processes. While decoding, each resized image is kept
as its raw pixel bytes and a batch becomes one tensor in one step (`stack_pixels`), and images are
decoded without a per-sample record (`decode_image`): a tensor per image, their stack and the
record cost 26 us an image on the benchmark's 64x64 PNGs, twice the tar reading and hashing
(docs/results.md, 2026-12-02).

With `keep_jpeg` (batched decoding on the model's device, `selftrain.data.batch_decode`), JPEG
samples are not decoded here at all: their bytes travel in `ShardBatch.jpegs` and the labeler
decodes and resizes them in batches on the GPU. Other formats are decoded here as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from selftrain.data.batch_decode import jpeg_member
from selftrain.data.dataset_info import Dataset, ShardEntry
from selftrain.data.shards import SkipCounter, decode_image, skip_or_raise
from selftrain.data.tar_reader import iter_shard_fast
from selftrain.errors import CorruptSampleError, SelftrainError
from selftrain.transforms import Compose, Resize, normalize, pil_to_uint8

log = logging.getLogger("pseudolabel")


def split_eval_transform(image_size: int, channels: int) -> tuple[Callable, Callable]:
    """(per image: PIL -> uint8 tensor, per batch: uint8 batch -> model input) = `eval_transform`.

    The split is before the conversion to float: what follows is elementwise, so applying it to a
    stacked batch gives the same numbers as applying it to each image (tested).
    """
    return Compose([Resize(image_size), pil_to_uint8]), normalize


def stack_pixels(pixels: list[bytes], size: int, channels: int) -> torch.Tensor:
    """Raw pixel bytes of `size` x `size` L or RGB images -> one uint8 (n, C, size, size) tensor.

    Equal to stacking `pil_to_uint8` of each image (tested), in one join and at most one copy.
    """
    flat = np.frombuffer(bytearray().join(pixels), dtype=np.uint8)  # writable: the tensor owns it
    if channels == 1:
        return torch.from_numpy(flat.reshape(len(pixels), 1, size, size))
    rgb = flat.reshape(len(pixels), size, size, channels).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(rgb))


def yield_cpu_to_the_model(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: decode workers run at the lowest CPU priority.

    On a machine with few cores the teacher's forward pass already uses every core; workers at
    normal priority preempt its threads, which then stall each other at every parallel barrier
    (measured: slower than decoding in the main process). At nice 19 they take only the cores'
    idle time: gaps in the forward pass and, above all, the moments the model waits for input,
    when all workers decode in parallel. With a GPU, the cores are idle and nothing changes.
    """
    with contextlib.suppress(OSError):  # not permitted here: stay at normal priority
        os.nice(19)


@dataclass
class ShardBatch:
    """Images of one shard; `last` marks the shard's final batch (possibly empty)."""

    shard: int  # index into the split's shard list
    images: torch.Tensor  # uint8 (n, C, H, W)
    keys: list[str] = field(default_factory=list)
    last: bool = False
    skipped: int = 0  # samples of the shard skipped as corrupt; set on the last batch
    error: str | None = None  # the shard failed; raise this in the main process
    jpegs: list[bytes] = field(default_factory=list)  # undecoded JPEGs (keep_jpeg), after `images`
    jpeg_keys: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.keys) + len(self.jpegs)


class ShardBatches(IterableDataset):
    """Batches of decoded, resized, uint8 images, shard by shard, each worker on whole shards."""

    def __init__(
        self,
        dataset: Dataset,
        shards: list[tuple[int, ShardEntry]],
        image_size: int,
        batch_size: int,
        *,
        verify_checksums: bool = True,
        skip_corrupt: bool = False,
        keep_jpeg: bool = False,
    ):
        super().__init__()
        self.dataset = dataset
        self.shards = shards
        self.image_size = image_size
        self.batch_size = batch_size
        self.verify = verify_checksums
        self.skip_corrupt = skip_corrupt
        self.keep_jpeg = keep_jpeg

    def __iter__(self) -> Iterator[ShardBatch]:
        worker = get_worker_info()
        slot, slots = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for index, entry in self.shards[slot::slots]:
            yield from self._shard(index, entry)

    def _empty(self) -> torch.Tensor:
        return torch.zeros((0, self.dataset.info.channels, 1, 1), dtype=torch.uint8)

    def _shard(self, index: int, entry: ShardEntry) -> Iterator[ShardBatch]:
        info = self.dataset.info
        path = self.dataset.shard_path(entry)
        size, channels, resize = self.image_size, info.channels, Resize(self.image_size)
        skipped = SkipCounter()
        images: list[bytes] = []  # raw pixels of each resized image, in `keys` order
        keys: list[str] = []
        jpegs: list[bytes] = []
        jpeg_keys: list[str] = []

        def batch(last: bool = False) -> ShardBatch:
            stacked = stack_pixels(images, size, channels) if images else self._empty()
            return ShardBatch(index, stacked, keys, last=last, jpegs=jpegs, jpeg_keys=jpeg_keys)

        try:
            for raw in iter_shard_fast(
                path, entry, verify=self.verify, skip_corrupt=self.skip_corrupt, skipped=skipped
            ):
                data = jpeg_member(raw) if self.keep_jpeg else None
                if data is not None:
                    jpegs.append(data)
                    jpeg_keys.append(raw["__key__"])
                    if len(keys) + len(jpegs) == self.batch_size:
                        yield batch()
                        images, keys, jpegs, jpeg_keys = [], [], [], []
                    continue
                try:
                    image = decode_image(raw, channels)
                except CorruptSampleError as exc:
                    skip_or_raise(exc, self.skip_corrupt, log)
                    skipped.add()
                    continue
                images.append(resize(image).tobytes())
                keys.append(raw["__key__"])
                if len(keys) + len(jpegs) == self.batch_size:
                    yield batch()
                    images, keys, jpegs, jpeg_keys = [], [], [], []
        except SelftrainError as exc:
            yield ShardBatch(index, self._empty(), error=str(exc))
            return
        final = batch(last=True)
        final.skipped = skipped.count
        yield final
