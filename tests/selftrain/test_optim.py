"""Layer-wise learning-rate decay: a finetune moves a trained model's lower layers least."""

from __future__ import annotations

import pytest
import timm
import torch

from selftrain.config import TrainConfig, load_config
from selftrain.errors import SelftrainError
from selftrain.optim import build_optimizer, build_scheduler


def _rates(layer_decay: float | None) -> tuple[dict[str, float], torch.optim.Optimizer]:
    model = timm.create_model("resnet10t", num_classes=4, in_chans=3)
    cfg = TrainConfig(lr=1e-3, warmup_steps=2, steps=10, layer_decay=layer_decay)
    opt = build_optimizer(model, cfg)
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    return {name: rate[id(p)] for name, p in model.named_parameters()}, opt


def test_without_layer_decay_every_parameter_learns_at_lr():
    rates, _ = _rates(None)
    assert set(rates.values()) == {1e-3}


def test_layer_decay_slows_each_group_below_the_classifier():
    rates, opt = _rates(0.75)
    assert rates["fc.weight"] == pytest.approx(1e-3)  # the classifier learns at the configured rate
    stages = [rates["conv1.0.weight"]] + [rates[f"layer{i}.0.conv1.weight"] for i in range(1, 5)]
    assert stages == sorted(stages) and len(set(stages)) == len(stages)  # deeper learns faster
    assert stages[0] == pytest.approx(1e-3 * 0.75**5)  # the stem: five groups below the classifier
    # the warm-up/cosine schedule scales every group alike: the ratios hold through training
    before = [g["lr"] for g in opt.param_groups]
    scheduler = build_scheduler(opt, TrainConfig(lr=1e-3, warmup_steps=2, steps=10))
    for _ in range(5):
        opt.step()
        scheduler.step()
    after = [g["lr"] for g in opt.param_groups]
    factors = {round(a / b, 9) for a, b in zip(after, before, strict=True)}
    assert len(factors) == 1 and factors != {1.0}


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_layer_decay_outside_0_1_is_a_one_line_error(value):
    with pytest.raises(SelftrainError, match=r"mpl\.finetune\.layer_decay"):
        load_config(None, [f"mpl.finetune.layer_decay={value}"])


def test_photo_recipe_finetunes_mpl_with_layer_decay_and_digits_do_not():
    assert load_config(None, recipe="photos").mpl.finetune.layer_decay == 0.75
    digits = load_config(None, recipe="digits")
    assert digits.mpl.finetune.layer_decay is None and digits.student.finetune.layer_decay is None
