"""A run's saved model, rebuilt for inference: what `predict`, `export` and `eval` start from.

The model card says how to rebuild it (architecture, classes, channels, input size); the weights
are checked against the manifest's sha256 before they are loaded (`RunStore.load_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from selftrain.device import prepare_model
from selftrain.errors import SelftrainError
from selftrain.models import build_model
from selftrain.runstore import RunStore
from selftrain.transforms import MEAN, STD


@dataclass
class SavedModel:
    model: torch.nn.Module  # eval mode, gradients off, on the requested device
    card: dict[str, Any]
    iteration: int

    @property
    def classes(self) -> list[str]:
        return list(self.card["classes"])

    @property
    def in_chans(self) -> int:
        return int(self.card["in_chans"])

    @property
    def image_size(self) -> int:
        return int(self.card["input_size"][-1])


def default_iteration(store: RunStore) -> int:
    """The run's current teacher: the promoted model, else the latest trained iteration.

    Noisy Student promotes each student that finishes; a teacher-only run has iteration 0; a Meta
    Pseudo Labels run promotes nothing and ends with its finetuned student, the latest iteration.
    """
    manifest = store.manifest()
    done = store.iterations_done()
    if not done:
        raise SelftrainError(
            f"{store.root}: no trained model yet; train the teacher first: `selftrain teacher train`"
        )
    promoted = manifest.get("teacher_iteration")
    return int(promoted) if promoted is not None and int(promoted) in done else done[-1]


def load_saved_model(store: RunStore, iteration: int | None, device: torch.device) -> SavedModel:
    k = default_iteration(store) if iteration is None else iteration
    weights, card = store.load_weights(k)
    model = build_model(card["architecture"], num_classes=card["num_classes"], in_chans=card["in_chans"])
    model.load_state_dict(weights)
    model.eval().requires_grad_(False)
    return SavedModel(model=prepare_model(model, device), card=card, iteration=k)


def preprocessing(card: dict[str, Any]) -> dict[str, Any]:
    """What a caller must do to an image before the model sees it (`selftrain.transforms.eval_transform`)."""
    chans = int(card["in_chans"])
    size = int(card["input_size"][-1])
    return {
        "color_mode": "L" if chans == 1 else "RGB",
        "resize": [size, size],
        "resize_filter": "bilinear (PIL, antialiased); the image is stretched to a square, no crop",
        "layout": "NCHW float32",
        "input_size": [chans, size, size],
        "scale": "pixel / 255",
        "mean": [MEAN] * chans,
        "std": [STD] * chans,
        "formula": "(pixel / 255 - mean) / std",
        "output": "logits; softmax over the last axis gives the class probabilities",
        "classes": list(card["classes"]),
    }
