"""Fixtures for pseudolabel tests: real digits shards and a run with an untrained teacher.

The teacher is a resnet10t with random conv features and a least-squares classifier, saved the way
`train_teacher` saves one (weights, card, manifest stage "train" done): good enough for filtering
and balancing to have something to do, and seconds instead of a training run on two cores. One
integration test trains a real teacher.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from selftrain import atomic
from selftrain.config import config_to_yaml
from selftrain.data.dataset_info import Dataset, load_dataset
from selftrain.data.digits import build_digits
from selftrain.data.stream import SplitStream, make_loader
from selftrain.models import build_model
from selftrain.runstore import RunStore
from selftrain.transforms import eval_transform

IMAGE_SIZE = 16
SAMPLES_PER_SHARD = 128  # 1,207 unlabeled digits -> 10 shards


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "data"
    build_digits(out, samples_per_shard=SAMPLES_PER_SHARD)
    return out


@pytest.fixture
def data_copy(digits_shards: Path, tmp_path: Path) -> Path:
    """A private copy of the digits data set, for tests that damage or edit it."""
    out = tmp_path / "data"
    shutil.copytree(digits_shards, out)
    return out


def _fit_head(model: torch.nn.Module, dataset: Dataset, logit_scale: float = 8.0) -> None:
    """Ridge-regress the classifier on random conv features of the labeled + val digits.

    A teacher in a second instead of a training run: about 70% accurate, with confidences spread
    over (0, 1), so filtering and balancing have real work to do.
    """
    model.eval()
    feats, labels = [], []
    with torch.no_grad():
        for split in ("labeled", "val"):
            stream = SplitStream(dataset, split, eval_transform(IMAGE_SIZE, dataset.info.channels))
            for x, y in make_loader(stream, 512, 0, torch.device("cpu")):
                feats.append(model.forward_head(model.forward_features(x), pre_logits=True))
                labels.append(y)
    x = torch.cat(feats).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    y = torch.nn.functional.one_hot(torch.cat(labels), dataset.info.num_classes).double()
    w = torch.linalg.solve(x.T @ x + 1e-2 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)
    head = model.get_classifier()
    head.weight.data = (logit_scale * w[:-1].T).float()
    head.bias.data = (logit_scale * w[-1]).float()


def _save_teacher(
    store: RunStore, dataset: Dataset, *, iteration: int = 0, seed: int = 0, num_classes: int | None = None
) -> dict:
    """Save a resnet10t (random features, fitted head) as iteration `iteration`'s trained model."""
    info = dataset.info
    num_classes = num_classes or info.num_classes
    torch.manual_seed(seed)
    model = build_model("resnet10t", num_classes=num_classes, in_chans=info.channels)
    if num_classes == info.num_classes:
        _fit_head(model, dataset)
    card = {
        "iteration": iteration,
        "role": "teacher",
        "architecture": "resnet10t",
        "num_classes": num_classes,
        "classes": [str(c) for c in range(num_classes)],
        "in_chans": info.channels,
        "input_size": [info.channels, IMAGE_SIZE, IMAGE_SIZE],
    }
    artifacts = store.save_model(iteration, model.state_dict(), card)
    store.mark_stage(iteration, "train", "done", role="teacher", model="resnet10t", artifacts=artifacts)
    return store.card(iteration)


def _set_pseudolabel_config(store: RunStore, **values) -> None:
    """Edit the run's `pseudolabel` config section in place."""
    cfg = store.config()
    cfg = cfg.model_copy(update={"pseudolabel": cfg.pseudolabel.model_copy(update=values)})
    atomic.write_text(store.config_path, config_to_yaml(cfg))


@pytest.fixture
def make_run(tmp_path: Path, digits_shards: Path) -> Callable[..., RunStore]:
    """`make_run(name="run", data=digits_shards, teacher=True)` -> a run directory."""

    def make(name: str = "run", data: Path | None = None, teacher: bool = True, **pseudolabel) -> RunStore:
        data = data or digits_shards
        store = RunStore(tmp_path / name)
        store.open(data, None, [f"data.image_size={IMAGE_SIZE}"])
        if teacher:
            _save_teacher(store, load_dataset(data))
        if pseudolabel:
            _set_pseudolabel_config(store, **pseudolabel)
        return store

    return make


@pytest.fixture
def run(make_run: Callable[..., RunStore]) -> RunStore:
    return make_run()


def _sidecar_files(pseudo: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(pseudo.glob("*.labels.*"))}


# Helpers as fixtures: test modules cannot import this conftest by name (tests/ has no packages).
@pytest.fixture
def save_teacher() -> Callable[..., dict]:
    """`save_teacher(store, dataset, iteration=0, seed=0, num_classes=None)` -> the saved card."""
    return _save_teacher


@pytest.fixture
def set_pseudolabel_config() -> Callable[..., None]:
    """`set_pseudolabel_config(store, mode="hard", ...)` edits the run's `pseudolabel` section."""
    return _set_pseudolabel_config


@pytest.fixture
def sidecar_files() -> Callable[[Path], dict[str, bytes]]:
    """`sidecar_files(pseudo_dir)` -> name -> bytes of every sidecar archive and record."""
    return _sidecar_files
