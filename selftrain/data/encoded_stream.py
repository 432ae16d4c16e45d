"""A labeled split for evaluation with JPEGs decoded on the model's device.

    batches = device_eval_batches(dataset, "test", image_size=224, device=cuda, ...)
    evaluate(model, batches, num_classes, device)

The split is read as by `SplitStream` (same shard order, checks and one-line errors), but a JPEG
sample is passed on undecoded, as its bytes; each batch's JPEGs are then decoded and resized
together on the device (`selftrain.data.batch_decode`). Samples in other formats are decoded and
resized on the CPU as in the plain eval path, so a mixed split evaluates the same images.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from selftrain.data.batch_decode import decode_resize, jpeg_member
from selftrain.data.dataset_info import Dataset
from selftrain.data.shards import decode_sample, parse_label, skip_or_raise
from selftrain.data.stream import SplitStream
from selftrain.errors import CorruptSampleError, SelftrainError
from selftrain.transforms import Compose, Resize, normalize, pil_to_uint8

log = logging.getLogger("selftrain.data")


@dataclass
class EncodedImage:
    data: bytes
    key: str
    url: str


class EncodedSplitStream(SplitStream):
    """Yields (EncodedImage for a JPEG | resized uint8 tensor, label)."""

    def __init__(self, dataset: Dataset, split: str, image_size: int, **kwargs):
        super().__init__(dataset, split, Compose([Resize(image_size), pil_to_uint8]), **kwargs)

    def _decode(self, raw: dict, counting: bool):
        data = jpeg_member(raw)
        if data is None:
            return super()._decode(raw, counting)
        try:
            label = raw["__key__"] if self.with_keys else parse_label(raw, self.dataset.info.num_classes)
        except CorruptSampleError as exc:
            if not self.skip_corrupt:
                raise SelftrainError(f"{exc}; fix the sample or pass --skip-corrupt to skip such samples") from None
            if counting:
                log.warning("%s; skipped (--skip-corrupt)", exc)
                self.skipped.add()
            return None
        return EncodedImage(data, raw["__key__"], raw.get("__url__", "?")), label


def collate_encoded(samples: list[tuple]) -> tuple[list, torch.Tensor]:
    return [s[0] for s in samples], torch.tensor([s[1] for s in samples], dtype=torch.long)


def device_eval_batches(
    dataset: Dataset,
    split: str,
    *,
    image_size: int,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
    verify_checksums: bool = True,
    skip_corrupt: bool = False,
) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], EncodedSplitStream]:
    """(normalized images on `device`, labels) batches of a labeled split, and the stream (skips)."""
    info = dataset.info
    stream = EncodedSplitStream(
        dataset, split, image_size, verify_checksums=verify_checksums, skip_corrupt=skip_corrupt
    )
    loader = DataLoader(
        stream, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_encoded
    )

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for items, labels in loader:
            plain = [i for i, it in enumerate(items) if not isinstance(it, EncodedImage)]
            jpegs = [i for i, it in enumerate(items) if isinstance(it, EncodedImage)]

            def with_pil(j: int) -> torch.Tensor | None:
                it = items[jpegs[j]]
                raw = {"__key__": it.key, "__url__": it.url, "jpg": it.data}
                try:
                    sample = decode_sample(raw, channels=info.channels, num_classes=0, labeled=False)
                except CorruptSampleError as exc:
                    skip_or_raise(exc, skip_corrupt, log)
                    stream.skipped.add()
                    return None
                return stream.transform(sample.image)

            decoded, kept = decode_resize(
                [items[i].data for i in jpegs],
                size=image_size,
                channels=info.channels,
                device=device,
                fallback=with_pil,
            )
            parts = [decoded]
            order = [jpegs[k] for k in kept]
            if plain:
                parts.insert(0, torch.stack([items[i] for i in plain]).to(device))
                order = plain + order
            yield normalize(torch.cat(parts)), labels[order]

    return batches(), stream
