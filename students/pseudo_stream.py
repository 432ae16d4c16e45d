"""The student's unlabeled stream: unlabeled shards joined with their sidecar labels.

Images are read from the original unlabeled shards (never copied) and each selected image is
emitted as many times as the balanced selection says (Noisy Student's duplication of rare
classes), before the shuffle buffer, so copies are spread out and each copy gets its own noise.
Targets are the teacher's soft labels as dense probability vectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from pseudolabel.sidecar import read_sidecar, sidecar_path
from selftrain.data.dataset_info import Dataset
from selftrain.data.stream import SplitStream
from selftrain.errors import SelftrainError


class PseudoLabeledStream(SplitStream):
    """Yields `(noised_image, soft_target)` endlessly, resumable like every training stream."""

    def __init__(self, dataset: Dataset, transform, *, pseudo_dir: Path, copies: dict[str, int], **kwargs):
        super().__init__(dataset, "unlabeled", transform, repeat=True, shuffle=True, **kwargs)
        self.pseudo_dir = Path(pseudo_dir)
        self.copies = copies
        self.epoch_size = sum(copies.values())
        if self.epoch_size == 0:
            raise SelftrainError(
                f"{self.pseudo_dir}: the selection keeps no image; lower pseudolabel.confidence_threshold"
            )
        self._sizes: list[int] | None = None

    def _labels(self, i: int):
        return read_sidecar(
            sidecar_path(self.pseudo_dir, Path(self.entries[i].path).name), self.dataset.info.num_classes
        )

    def _shard_sizes(self) -> list[int]:
        """Copies per shard: the epoch is split over readers by position among the copies."""
        if self._sizes is None:
            self._sizes = [
                sum(self.copies.get(k, 0) for k in self._labels(i).keys) for i in range(len(self.entries))
            ]
        return self._sizes

    def _shard_samples(self, i: int, counting: bool) -> Iterator[dict]:
        labels = self._labels(i)
        if not any(self.copies.get(k, 0) for k in labels.keys):
            return  # nothing of this shard was selected: do not read its images
        targets = dict(zip(labels.keys, torch.from_numpy(labels.dense()), strict=True))
        for raw in super()._shard_samples(i, counting):
            n = self.copies.get(raw["__key__"], 0)
            if n:
                raw["__target__"] = targets[raw["__key__"]]
                for _ in range(n):
                    yield raw

    def _output(self, x: torch.Tensor, decoded, raw: dict):
        return x, raw["__target__"]
