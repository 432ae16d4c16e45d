"""Resuming a channels_last model with a fused optimizer continues exactly where it stopped."""

from __future__ import annotations

import pytest
import timm
import torch

from selftrain.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from selftrain.config import TrainConfig
from selftrain.device import prepare_model, to_device
from selftrain.optim import build_optimizer


def _setup(seed: int = 0, layer_decay: float | None = None):
    torch.manual_seed(seed)
    model = prepare_model(timm.create_model("resnet10t", num_classes=4, in_chans=3), torch.device("cpu"))
    return model, build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-2, layer_decay=layer_decay))


def _step(model, opt, s: int) -> None:
    g = torch.Generator().manual_seed(100 + s)
    x = to_device(torch.randn(6, 3, 16, 16, generator=g), torch.device("cpu"))
    y = torch.randint(0, 4, (6,), generator=g)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("layer_decay", [None, 0.75], ids=["one-rate", "layer-decay"])
def test_resumed_steps_match_uninterrupted_ones_for_a_channels_last_model(tmp_path, layer_decay):
    """Also with layer-wise rates: each group's own rate comes back from the checkpoint."""
    straight, opt = _setup(layer_decay=layer_decay)
    assert straight.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    for s in range(4):
        _step(straight, opt, s)

    first, opt = _setup(layer_decay=layer_decay)
    for s in range(2):
        _step(first, opt, s)
    save_checkpoint(tmp_path, 2, modules={"m": first}, optimizers={"o": opt}, schedulers={}, state={})
    # different initial weights: everything must come from the checkpoint
    resumed, opt = _setup(seed=1, layer_decay=layer_decay)
    load_checkpoint(
        list_checkpoints(tmp_path)[-1], modules={"m": resumed}, optimizers={"o": opt}, schedulers={}
    )
    for s in range(2, 4):
        _step(resumed, opt, s)

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
