"""Label images with a trained model: one row per image, top-k classes by name with probabilities.

    selftrain predict --run-dir runs/demo --images photos/ --out predictions.jsonl
    selftrain predict --run-dir runs/demo --split test --out test.csv

Images stream through a DataLoader in batches and every row is written as soon as its batch is
done, so memory stays flat for any number of images; the output goes to a temporary file renamed
into place at the end (an interrupted run leaves no half file). Each image goes through exactly
the deterministic transform evaluation uses (`eval_transform` at the model card's input size), so
on a labeled split the predictions are those `selftrain eval` scores.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from selftrain import atomic
from selftrain.data.dataset_info import Dataset
from selftrain.data.shards import IMAGE_EXTS, SkipCounter, decode_sample
from selftrain.data.tar_reader import iter_shard_fast
from selftrain.device import autocast, to_device
from selftrain.errors import CorruptSampleError, SelftrainError
from selftrain.saved_model import SavedModel
from selftrain.transforms import eval_transform


@dataclass
class Item:
    """One image to predict: its tensor, or the reason it could not be read."""

    ident: str  # the file path, or the sample key
    image: torch.Tensor | None
    fields: dict[str, Any] = field(default_factory=dict)  # shard, true label (from a data set split)
    error: str | None = None


def image_files(root: Path) -> Iterator[Path]:
    """Image files under `root` (by extension), in a stable order, without listing them all first."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower().lstrip(".") in IMAGE_EXTS:
                yield Path(folder) / name


def _worker_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ImageFolderItems(IterableDataset):
    """Every image file under a folder (recursively), decoded in the model's color mode."""

    def __init__(self, root: Path, image_size: int, channels: int):
        super().__init__()
        self.root = root
        self.transform = eval_transform(image_size, channels)
        self.mode = "L" if channels == 1 else "RGB"

    def __iter__(self) -> Iterator[Item]:
        slot, slots = _worker_slot()
        for i, path in enumerate(image_files(self.root)):
            if i % slots == slot:
                yield self._item(path)

    def _item(self, path: Path) -> Item:
        try:
            with Image.open(path) as opened:
                opened.load()
                # Upright as a person sees it (a camera's EXIF rotation), as `data import` stores photos.
                image = ImageOps.exif_transpose(opened)
                image = image if image.mode == self.mode else image.convert(self.mode)
        except UnidentifiedImageError:
            return Item(str(path), None, error=f"{path}: not an image PIL can read")
        except (OSError, ValueError) as exc:  # truncated data, unreadable file
            return Item(
                str(path), None, error=f"{path}: unreadable image ({getattr(exc, 'strerror', None) or exc})"
            )
        return Item(str(path), self.transform(image))


class SplitItems(IterableDataset):
    """Every sample of one split of a data set, shard by shard, with its key (and label)."""

    def __init__(self, dataset: Dataset, split: str, image_size: int, *, verify: bool, skip_corrupt: bool):
        super().__init__()
        self.dataset = dataset
        self.split = dataset.split(split)
        self.transform = eval_transform(image_size, dataset.info.channels)
        self.verify = verify
        self.skip_corrupt = skip_corrupt
        self.skipped = SkipCounter()  # samples lost to a truncated or garbled shard (no key to report)

    def __iter__(self) -> Iterator[Item]:
        slot, slots = _worker_slot()
        info = self.dataset.info
        for entry in self.split.shards[slot::slots]:
            path = self.dataset.shard_path(entry)
            for raw in iter_shard_fast(
                path, entry, verify=self.verify, skip_corrupt=self.skip_corrupt, skipped=self.skipped
            ):
                fields: dict[str, Any] = {"shard": path.name}
                key = raw.get("__key__", "?")
                try:
                    d = decode_sample(
                        raw, channels=info.channels, num_classes=info.num_classes, labeled=self.split.labeled
                    )
                except CorruptSampleError as exc:
                    yield Item(key, None, fields, error=str(exc))
                    continue
                if d.label is not None:
                    fields["label"] = info.classes[d.label]
                yield Item(key, self.transform(d.image), fields)


def collate_items(items: list[Item]) -> tuple[torch.Tensor | None, list[Item]]:
    """Stack the readable images; the items (tensors dropped) keep the order for the rows."""
    images = [it.image for it in items if it.image is not None]
    for it in items:
        it.image = None
    return (torch.stack(images) if images else None), items


class RowWriter:
    """Rows to `.jsonl` (one object per line) or `.csv` (fixed columns), chosen by the extension."""

    def __init__(self, f, fmt: str, id_field: str, extra_fields: list[str], top_k: int):
        self.f, self.fmt, self.id_field, self.top_k = f, fmt, id_field, top_k
        if fmt == "csv":
            ranks = [c for r in range(1, top_k + 1) for c in (f"class_{r}", f"probability_{r}")]
            self.columns = [id_field, *extra_fields, "status", *ranks, "error"]
            self.csv = csv.DictWriter(f, fieldnames=self.columns)
            self.csv.writeheader()

    def write(self, item: Item, top: list[tuple[str, float]] | None) -> None:
        status = "ok" if top is not None else "skipped"
        if self.fmt == "jsonl":
            row: dict[str, Any] = {self.id_field: item.ident, **item.fields, "status": status}
            if top is not None:
                row["top_k"] = [{"class": c, "probability": p} for c, p in top]
            else:
                row["error"] = item.error
            self.f.write(json.dumps(row) + "\n")
            return
        row = {self.id_field: item.ident, **item.fields, "status": status, "error": item.error or ""}
        for r, (c, p) in enumerate(top or [], start=1):
            row[f"class_{r}"], row[f"probability_{r}"] = c, f"{p:.6g}"
        self.csv.writerow(row)


def output_format(out: Path) -> str:
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("jsonl", "csv"):
        raise SelftrainError(f"--out {out}: name a .jsonl or .csv file (the extension picks the format)")
    return fmt


def predict(
    saved: SavedModel,
    source: IterableDataset,
    out: Path,
    *,
    id_field: str,
    extra_fields: list[str],
    device: torch.device,
    top_k: int = 5,
    batch_size: int = 256,
    num_workers: int = 0,
    skip_corrupt: bool = False,
    total: int | None = None,
) -> dict[str, Any]:
    """Write one row per image of `source` to `out`; an unreadable image stops the run (one line)
    unless `skip_corrupt`, where its row is marked skipped with the reason."""
    fmt = output_format(out)
    k = min(top_k, len(saved.classes))
    loader = DataLoader(
        source,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate_items,
        pin_memory=device.type == "cuda",
    )
    classes = saved.classes
    counts = {"predicted": 0, "skipped": 0}
    started = time.perf_counter()
    with (
        atomic.atomic_path(out) as tmp,
        open(tmp, "w", newline="", encoding="utf-8") as f,
        tqdm(total=total, unit="img", desc="predict", disable=None, dynamic_ncols=True) as bar,
    ):
        writer = RowWriter(f, fmt, id_field, extra_fields, k)
        for images, items in loader:
            bad = next((it for it in items if it.error is not None), None)
            if bad is not None and not skip_corrupt:
                raise SelftrainError(f"{bad.error}; remove it or pass --skip-corrupt to mark it skipped")
            probs = top_p = top_i = None
            if images is not None:
                with torch.inference_mode(), autocast(device):
                    logits = saved.model(to_device(images, device))
                probs = torch.softmax(logits.float(), dim=1)
                top_p, top_i = (t.cpu().tolist() for t in probs.topk(k, dim=1))
            j = 0
            for it in items:
                if it.error is not None:
                    writer.write(it, None)
                    counts["skipped"] += 1
                    continue
                writer.write(it, [(classes[c], p) for c, p in zip(top_i[j], top_p[j], strict=True)])
                j += 1
                counts["predicted"] += 1
            bar.update(len(items))
        if not counts["predicted"] + counts["skipped"]:
            raise SelftrainError(
                f"{getattr(source, 'root', source)}: no images found (extensions: {', '.join(IMAGE_EXTS)})"
            )
    return {
        "out": str(out),
        "iteration": saved.iteration,
        "format": fmt,
        "top_k": k,
        **counts,
        "seconds": round(time.perf_counter() - started, 3),
    }
