"""Labeling and eval with JPEGs decoded in batches (`data.decode: batched`) against the PIL path."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pseudolabel.label_shards import label_shards, pseudo_dir
from pseudolabel.sidecar import read_sidecar, sidecar_path
from selftrain import atomic
from selftrain.config import config_to_yaml
from selftrain.data.dataset_info import load_dataset
from selftrain.device import prepare_model
from selftrain.errors import SelftrainError
from selftrain.models import build_model
from selftrain.stage import evaluate_split
from tests.helpers import rewrite_shard

CPU = torch.device("cpu")


def _to_jpeg(i: int, sample: dict) -> dict:
    if "png" not in sample:
        return sample
    buf = io.BytesIO()
    Image.open(io.BytesIO(sample.pop("png"))).save(buf, format="JPEG", quality=95)
    return {**sample, "jpg": buf.getvalue()}


@pytest.fixture
def jpeg_data(data_copy):
    """The digits data set with every unlabeled and test image stored as JPEG (shard 1: half)."""
    dataset = load_dataset(data_copy)
    for split in ("unlabeled", "test"):
        for shard in range(len(dataset.split(split).shards)):
            edit = (
                _to_jpeg
                if (split, shard) != ("unlabeled", 1)
                else (lambda i, s: _to_jpeg(i, s) if i % 2 else s)
            )
            rewrite_shard(data_copy, split, edit, shard)
    return data_copy


def _set_decode(store, value: str, **data) -> None:
    cfg = store.config()
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"decode": value, **data})})
    atomic.write_text(store.config_path, config_to_yaml(cfg))


def _labels(store) -> dict[str, np.ndarray]:
    dataset = load_dataset(store.data_dir())
    out = pseudo_dir(store, 0)
    probs = {}
    for e in dataset.split("unlabeled").shards:
        part = read_sidecar(sidecar_path(out, e.path), dataset.info.num_classes)
        probs.update(zip(part.keys, part.prob.astype(np.float32), strict=True))
    return probs


def test_batched_labels_equal_pil_labels(make_run, jpeg_data):
    runs = {}
    for mode in ("pil", "batched"):
        store = make_run(name=mode, data=jpeg_data)
        _set_decode(store, mode)
        result = label_shards(store, load_dataset(jpeg_data), 0, None, store.config(), CPU)
        assert result.labeled_images == 1207
        runs[mode] = _labels(store)
    assert sorted(runs["pil"]) == sorted(runs["batched"])  # every key once, mixed shard included
    pil = np.stack([runs["pil"][k] for k in sorted(runs["pil"])])
    batched = np.stack([runs["batched"][k] for k in sorted(runs["pil"])])
    assert (pil.argmax(1) == batched.argmax(1)).mean() >= 0.99
    assert np.abs(pil - batched).max() < 0.05


def _teacher(store) -> tuple[torch.nn.Module, dict]:
    """Iteration 0's model on the CPU, and its card."""
    weights, card = store.load_weights(0)
    model = build_model(card["architecture"], num_classes=card["num_classes"], in_chans=card["in_chans"])
    model.load_state_dict(weights)
    return prepare_model(model, CPU), card


def test_batched_eval_equals_pil_eval(make_run, jpeg_data):
    store = make_run(data=jpeg_data)
    dataset = load_dataset(jpeg_data)
    model, card = _teacher(store)
    for split in ("test", "val"):  # test: JPEGs; val: PNGs, which the batched path decodes with PIL
        results = {}
        for mode in ("pil", "batched"):
            cfg = store.config()
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"decode": mode})})
            results[mode], skipped = evaluate_split(model, dataset, split, cfg, CPU, card["input_size"][-1])
            assert skipped == 0
        assert results["pil"].count == results["batched"].count == dataset.split(split).total
        assert abs(results["pil"].top1 - results["batched"].top1) <= 2 / results["pil"].count


def test_corrupt_jpeg_fails_naming_it_or_is_skipped(make_run, jpeg_data):
    def damage(i: int, sample: dict) -> dict:
        return {**sample, "jpg": sample["jpg"][:2] + b"\x00" * 64} if i == 3 else sample

    rewrite_shard(jpeg_data, "unlabeled", damage, 0)
    store = make_run(data=jpeg_data)
    _set_decode(store, "batched")
    dataset = load_dataset(jpeg_data)
    with pytest.raises(
        SelftrainError, match=r"unlabeled-000000\.tar: sample .* not a readable image.*--skip-corrupt"
    ):
        label_shards(store, dataset, 0, [0], store.config(), CPU)
    result = label_shards(store, dataset, 0, [0], store.config(), CPU, skip_corrupt=True)
    assert (
        result.shards[0].skipped == 1
        and result.shards[0].samples == dataset.split("unlabeled").shards[0].samples - 1
    )


@pytest.mark.gpu
def test_cuda_labels_match_cpu_labels(make_run, jpeg_data):
    """Labeling on CUDA (JPEGs decoded by nvJPEG, bf16 autocast) against the CPU's PIL path."""
    runs = {}
    for device, mode in ((CPU, "pil"), (torch.device("cuda"), "auto")):
        store = make_run(name=device.type, data=jpeg_data)
        _set_decode(store, mode)
        assert (
            label_shards(store, load_dataset(jpeg_data), 0, None, store.config(), device).labeled_images
            == 1207
        )
        runs[device.type] = _labels(store)
    keys = sorted(runs["cpu"])
    assert keys == sorted(runs["cuda"])
    cpu = np.stack([runs["cpu"][k] for k in keys])
    cuda = np.stack([runs["cuda"][k] for k in keys])
    assert (cpu.argmax(1) == cuda.argmax(1)).mean() >= 0.97
    assert np.abs(cpu - cuda).mean() < 0.02


@pytest.mark.parametrize("mode", ["pil", "batched"])
def test_eval_with_workers_sees_each_image_once(make_run, jpeg_data, mode):
    """`data.num_workers: auto` gives eval workers on a GPU: they must split the split, not repeat it."""
    store = make_run(data=jpeg_data)
    dataset = load_dataset(jpeg_data)
    model, card = _teacher(store)
    results = {}
    for workers in (0, 2):
        cfg = store.config()
        cfg = cfg.model_copy(
            update={"data": cfg.data.model_copy(update={"decode": mode, "num_workers": workers})}
        )
        results[workers], skipped = evaluate_split(model, dataset, "test", cfg, CPU, card["input_size"][-1])
        assert skipped == 0
    assert results[0].count == results[2].count == dataset.split("test").total
    assert results[0].top1 == results[2].top1 and results[0].per_class == results[2].per_class
