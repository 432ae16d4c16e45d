"""Helpers for tests that damage data sets on purpose."""

from __future__ import annotations

import io
import json
from pathlib import Path

import webdataset as wds

from selftrain.atomic import sha256_file


def rewrite_shard(dataset_dir: Path, split: str, edit, shard: int = 0) -> None:
    """Rewrite one shard through `edit(sample) -> sample`, keeping dataset.json consistent."""
    index_path = dataset_dir / "dataset.json"
    index = json.loads(index_path.read_text())
    entry = index["splits"][split]["shards"][shard]
    path = dataset_dir / entry["path"]
    samples = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    buf = io.BytesIO()
    with wds.TarWriter(buf, encoder=False) as sink:
        for i, s in enumerate(samples):
            s = edit(i, {k: v for k, v in s.items() if k != "__url__" and not k.startswith("__local")})
            sink.write(s)
    path.write_bytes(buf.getvalue())
    entry["sha256"] = sha256_file(path)
    index_path.write_text(json.dumps(index))


def edit_index(dataset_dir: Path, edit) -> None:
    path = dataset_dir / "dataset.json"
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))
