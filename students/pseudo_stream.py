"""The student's unlabeled stream: unlabeled shards joined with their sidecar labels.

Images are read from the original unlabeled shards (never copied) and each selected image is
emitted as many times as the balanced selection says (Noisy Student's duplication of rare
classes), before the shuffle buffer, so copies are spread out and each copy gets its own noise.
Targets are dense vectors: the teacher's soft labels as stored, or (`hard`) one-hot vectors of the
teacher's argmax; the sidecars hold the soft labels either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from pseudolabel.sidecar import read_sidecar, sidecar_path
from selftrain.data.dataset_info import Dataset
from selftrain.data.stream import BudgetCache, SplitStream
from selftrain.errors import SelftrainError

CACHE_BYTES = 256 << 20  # targets kept in memory per stream (per DataLoader worker)


class PseudoLabeledStream(SplitStream):
    """Yields `(noised_image, target)` endlessly, resumable like every training stream."""

    def __init__(
        self,
        dataset: Dataset,
        transform,
        *,
        pseudo_dir: Path,
        copies: dict[str, int],
        hard: bool = False,
        **kwargs,
    ):
        super().__init__(dataset, "unlabeled", transform, repeat=True, shuffle=True, **kwargs)
        self.pseudo_dir = Path(pseudo_dir)
        self.copies = copies
        self.hard = hard
        self.epoch_size = sum(copies.values())
        if self.epoch_size == 0:
            raise SelftrainError(
                f"{self.pseudo_dir}: the selection keeps no image; lower pseudolabel.confidence_threshold"
            )
        self._sizes: list[int] | None = None
        self._targets_by_shard = BudgetCache(CACHE_BYTES)

    def _shard_sizes(self) -> list[int]:
        """Copies per shard: the epoch is split over readers by position among the copies."""
        if self._sizes is None:
            self._sizes = [sum(self.copies[k] for k in self._targets(i)) for i in range(len(self.entries))]
        return self._sizes

    def _targets(self, i: int) -> dict[str, torch.Tensor]:
        """Targets of shard i's selected images, read once per stream while they fit.

        A small unlabeled set is read many epochs over, and parsing a sidecar costs about as much
        per image as decoding the image; a large one is read about once, and caching it all
        would hold every label in memory, so past `CACHE_BYTES` sidecars are re-read per epoch.
        """
        cached = self._targets_by_shard.get(i)
        if cached is not None:
            return cached
        labels = read_sidecar(
            sidecar_path(self.pseudo_dir, Path(self.entries[i].path).name), self.dataset.info.num_classes
        )
        dense = labels.one_hot() if self.hard else labels.dense()
        targets = {k: torch.from_numpy(dense[j]) for j, k in enumerate(labels.keys) if self.copies.get(k, 0)}
        # The targets are views of `dense`: all of it stays in memory while they are cached.
        self._targets_by_shard.put(i, targets, dense.nbytes)
        return targets

    def _shard_samples(self, i: int, counting: bool) -> Iterator[dict]:
        targets = self._targets(i)
        if not targets:
            return  # nothing of this shard was selected: do not read its images
        for raw in super()._shard_samples(i, counting):
            target = targets.get(raw["__key__"])
            if target is not None:
                raw["__target__"] = target
                for _ in range(self.copies[raw["__key__"]]):
                    yield raw

    def _output(self, x: torch.Tensor, decoded, raw: dict):
        return x, raw["__target__"]
