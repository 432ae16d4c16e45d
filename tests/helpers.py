"""Helpers for tests: data sets damaged on purpose, a saved teacher's outputs computed the plain way."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from selftrain.atomic import sha256_file
from selftrain.data.dataset_info import load_dataset
from selftrain.data.stream import SplitStream, make_loader
from selftrain.models import build_model
from selftrain.transforms import eval_transform

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """Import `benchmarks/NAME.py` as a module: the benchmarks are scripts, not a package."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def teacher_outputs(store, temperature: float = 1.0, mirror: bool = False) -> dict[str, np.ndarray]:
    """The teacher's softmax on every unlabeled image, computed the plain way (no pseudolabel code)."""
    dataset = load_dataset(store.data_dir())
    card = store.card(0)
    weights, _ = store.load_weights(0)
    model = build_model(card["architecture"], num_classes=card["num_classes"], in_chans=card["in_chans"])
    model.load_state_dict(weights)
    model.eval()
    stream = SplitStream(dataset, "unlabeled", eval_transform(card["input_size"][-1], 1), with_keys=True)
    out = {}
    with torch.inference_mode():
        for x, keys in make_loader(stream, 512, 0, torch.device("cpu")):
            p = torch.softmax(model(x.flip(-1) if mirror else x) / temperature, 1)
            out.update(zip(keys, p.numpy(), strict=True))
    return out
