"""The frozen teacher: iteration K's saved model, un-noised, mapping images to class probabilities.

Noisy Student (Xie et al. 2020, Algorithm 1 step 2) labels with the teacher *not* noised: eval
mode (no dropout, no stochastic depth), no augmentation, inputs only resized to the teacher's
input size. Every check that can refuse the job (no trained model, wrong class count, wrong
channels) happens here, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from selftrain import atomic
from selftrain.data.dataset_info import Dataset
from selftrain.device import autocast, prepare_model
from selftrain.errors import SelftrainError
from selftrain.models import build_model
from selftrain.runstore import CARD, WEIGHTS, RunStore


@dataclass
class Teacher:
    model: torch.nn.Module
    iteration: int
    architecture: str
    num_classes: int
    in_chans: int
    image_size: int
    weights_sha256: str
    device: torch.device

    @torch.inference_mode()
    def probabilities(self, x: torch.Tensor, temperature: float = 1.0, hflip: bool = False) -> torch.Tensor:
        """softmax(logits / T) in float32 for a normalized batch already on the device.

        `hflip` averages the probabilities of each image and its mirror image: on the dev photos
        that labeled 0.3-1.5 points more of the unlabeled images right (8 of 9 teachers and
        students), for one more forward pass over a batch that labeling reads once.
        """
        with autocast(self.device):
            logits = self.model(torch.cat([x, x.flip(-1)]) if hflip else x)
        probs = torch.softmax(logits.float() / temperature, dim=1)
        return (probs[: len(x)] + probs[len(x) :]) / 2 if hflip else probs


def _first_untrained(store: RunStore, k: int) -> int:
    return next(j for j in range(k + 1) if store.stage_state(j, "train") != "done")


def load_teacher(store: RunStore, iteration: int, dataset: Dataset, device: torch.device) -> Teacher:
    """Iteration `iteration`'s model, frozen in eval mode on `device`, checked against `dataset`."""
    if store.stage_state(iteration, "train") != "done":
        first = _first_untrained(store, iteration)
        how = (
            f"`selftrain teacher train --data {store.data_dir()} --run-dir {store.root}`"
            if first == 0
            else f"the student of iteration {first}"
        )
        raise SelftrainError(
            f"{store.iter_dir(iteration) / WEIGHTS}: iteration {iteration} has no trained model to label with; "
            f"train iteration {first} first ({how})"
        )
    card = store.card(iteration)
    info = dataset.info
    if card["num_classes"] != info.num_classes:
        raise SelftrainError(
            f"{store.iter_dir(iteration) / CARD}: the model of iteration {iteration} predicts "
            f"{card['num_classes']} classes but {dataset.index_path} has {info.num_classes}; "
            "label with a model trained on this data set"
        )
    if card["in_chans"] != info.channels:
        raise SelftrainError(
            f"{store.iter_dir(iteration) / CARD}: the model of iteration {iteration} takes "
            f"{card['in_chans']}-channel images but {dataset.index_path} has {info.channels}; "
            "label with a model trained on this data set"
        )
    weights, card = store.load_weights(iteration)
    model = build_model(card["architecture"], num_classes=card["num_classes"], in_chans=card["in_chans"])
    model.load_state_dict(weights)
    model.eval().requires_grad_(False)
    sha = card.get("weights_sha256") or atomic.sha256_file(store.iter_dir(iteration) / WEIGHTS)
    return Teacher(
        model=prepare_model(model, device),
        iteration=iteration,
        architecture=card["architecture"],
        num_classes=card["num_classes"],
        in_chans=card["in_chans"],
        image_size=int(card["input_size"][-1]),
        weights_sha256=sha,
        device=device,
    )
