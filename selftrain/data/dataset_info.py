"""`dataset.json`: the index of a data set's shards.

It is what every stage reads first: the classes, the image geometry, and for each split the shard
files with their sample counts and sha256. A hand-written `dataset.json` that points at existing
WebDataset shards (images plus `.cls` labels) is used exactly like one written by `selftrain data`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from selftrain import atomic
from selftrain.config import validation_message
from selftrain.errors import SelftrainError

INDEX_NAME = "dataset.json"
TRUTH_NAME = "unlabeled_truth.json"  # report-only labels of the unlabeled split
# Below this many val images one image is a point or more of accuracy and the "best" of a dozen
# evaluations is mostly the luckiest (on the CIFAR-10 dev photos with 20 val images, val read
# 35-60% while test read 38-40%): stages then keep their last weights (selftrain/stage.py).
MIN_VAL_FOR_SELECTION = 100

# Longest side `data import` stores an image at by default (`--max-side`; selftrain/data/imagefolder.py):
# about twice the largest size a run trains at (224), so random crops and later, larger models still
# find detail. 0 keeps every original.
DEFAULT_MAX_SIDE = 512
LABELED_SPLITS = ("labeled", "val", "test")
# Splits a data set may leave empty: `data import --val-fraction 0` trains on every label, and
# stages then keep their last weights and report no val accuracy.
OPTIONAL_SPLITS = ("val",)


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Shard file, relative to the folder of dataset.json (or absolute).")
    samples: int = Field(ge=0, description="Samples in the shard.")
    sha256: str | None = Field(None, description="Checksum verified while streaming; null skips the check.")


class SplitInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labeled: bool = Field(description="Whether samples carry a `.cls` label.")
    shards: list[ShardEntry]
    counts: dict[str, int] = Field(
        default_factory=dict, description="Samples per class name (labeled splits)."
    )

    @property
    def total(self) -> int:
        return sum(s.samples for s in self.shards)


class DatasetInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    name: str = "dataset"
    classes: list[str] = Field(min_length=2, description="Class names; label id i is classes[i].")
    image_size: tuple[int, int] = Field(description="[height, width] of the stored images (or typical size).")
    channels: int = Field(description="1 (grayscale) or 3 (RGB): the models' in_chans.")
    splits: dict[str, SplitInfo]
    unlabeled_truth: str | None = Field(
        None, description="File with the true labels of the unlabeled split; only for reporting."
    )

    @model_validator(mode="after")
    def _check(self) -> DatasetInfo:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        for split in LABELED_SPLITS:
            if split not in self.splits:
                raise ValueError(f"splits.{split} is missing; a data set needs labeled, val and test splits")
            if not self.splits[split].labeled:
                raise ValueError(f"splits.{split} must be labeled")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class Dataset:
    """A `DatasetInfo` bound to the folder it was read from."""

    def __init__(self, root: Path, info: DatasetInfo):
        self.root = root
        self.info = info

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def shard_path(self, entry: ShardEntry) -> Path:
        p = Path(entry.path)
        return p if p.is_absolute() else self.root / p

    def split(self, name: str) -> SplitInfo:
        split = self.info.splits.get(name)
        if split is None:
            have = ", ".join(self.info.splits) or "none"
            raise SelftrainError(f"{self.index_path}: no split {name!r} (have: {have}); rebuild the data set")
        if split.total == 0:
            raise SelftrainError(
                f"{self.index_path}: split {name!r} has no samples; add samples or rebuild the data set"
            )
        return split

    def count(self, name: str) -> int:
        """Samples in a split; 0 where it is absent or empty (as val may be, see OPTIONAL_SPLITS)."""
        split = self.info.splits.get(name)
        return split.total if split is not None else 0

    def check_files(self, split_names: list[str]) -> None:
        """Fail before any work if a shard the stage needs is not there."""
        for name in split_names:
            if name in OPTIONAL_SPLITS and self.count(name) == 0:
                continue
            for entry in self.split(name).shards:
                if not self.shard_path(entry).is_file():
                    raise SelftrainError(
                        f"{self.shard_path(entry)}: shard listed in {self.index_path} does not exist; "
                        "restore it or rebuild the data set"
                    )

    def unlabeled_truth(self) -> dict[str, int] | None:
        if not self.info.unlabeled_truth:
            return None
        path = self.root / self.info.unlabeled_truth
        if not path.is_file():
            return None
        return {k: int(v) for k, v in json.loads(path.read_text()).items()}


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    path = root / INDEX_NAME
    if not path.is_file():
        raise SelftrainError(
            f"{path}: not found; build a data set with `selftrain data digits --out {root}` "
            "or `selftrain data import`"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SelftrainError(f"{path}: invalid JSON at line {exc.lineno}; fix or rebuild the file") from None
    try:
        info = DatasetInfo.model_validate(raw)
    except ValidationError as exc:
        raise SelftrainError(validation_message(exc, str(path)) + "; see README 'dataset.json'") from None
    return Dataset(root, info)


def save_dataset(root: Path, info: DatasetInfo) -> Path:
    path = root / INDEX_NAME
    atomic.write_json(path, info.model_dump(mode="json"))
    return path
