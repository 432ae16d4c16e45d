"""`teacher.init_weights`: weights made here (no downloads), read without unpickling, fitted to a model."""

from __future__ import annotations

import argparse
import json
import logging

import pytest
import timm
import torch
from safetensors.torch import save_file

from commands.cli import main
from selftrain.errors import SelftrainError
from selftrain.models import build_model
from selftrain.pretrained import init_backbone, read_weights


def _imagenet_like_resnet10t() -> dict[str, torch.Tensor]:
    """What a user has on disk: resnet10t weights for RGB and 1000 classes."""
    torch.manual_seed(1)
    return timm.create_model("resnet10t", pretrained=False, num_classes=1000, in_chans=3).state_dict()


def test_backbone_loads_classifier_is_made_anew_and_first_conv_is_adapted(tmp_path):
    source = _imagenet_like_resnet10t()
    path = tmp_path / "rn10t.safetensors"
    save_file(source, str(path))
    model = build_model("resnet10t", num_classes=10, in_chans=1)
    fresh_fc = model.fc.weight.detach().clone()
    report = init_backbone(model, read_weights(path, "teacher.init_weights"), str(path), 10)
    assert "\n" not in report and "classifier made anew for 10 classes (2 tensors not used)" in report
    own = model.state_dict()
    assert model.fc.weight.shape == (10, 512) and torch.equal(model.fc.weight, fresh_fc)
    # RGB -> gray: timm's adaptation sums the first conv over its input channels.
    assert torch.allclose(own["conv1.0.weight"], source["conv1.0.weight"].sum(1, keepdim=True))
    backbone = [k for k in source if not k.startswith(("fc.", "conv1.0."))]
    assert all(torch.equal(own[k], source[k]) for k in backbone)
    n = len(source) - 2
    assert report.startswith(f"teacher.init_weights: {n} of {len(source)} tensors loaded")


def test_timm_training_checkpoint_is_read_with_weights_only(tmp_path):
    source = _imagenet_like_resnet10t()
    ckpt = tmp_path / "checkpoint.pth.tar"
    # timm's train.py layout: weights, an argparse Namespace of its arguments, the epoch.
    torch.save(
        {"state_dict": source, "args": argparse.Namespace(lr=0.1), "epoch": 3, "arch": "resnet10t"}, ckpt
    )
    got = read_weights(ckpt, "teacher.init_weights")
    assert got.keys() == source.keys() and all(torch.equal(got[k], source[k]) for k in got)

    ddp = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in source.items()}, ddp)
    assert read_weights(ddp, "teacher.init_weights").keys() == source.keys()


class _NotWeights:
    pass


def test_pickled_objects_are_refused_and_foreign_weights_fail_clearly(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "payload": _NotWeights()}, evil)
    with pytest.raises(SelftrainError, match="without unpickling"):
        read_weights(evil, "teacher.init_weights")
    other = tmp_path / "vit.safetensors"
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(SelftrainError, match="none of its 1 tensors fit"):
        init_backbone(
            build_model("resnet10t", num_classes=10, in_chans=1), read_weights(other, "x"), str(other), 10
        )


def test_teacher_trains_from_init_weights(digits_master, tmp_path, caplog):
    path = tmp_path / "rn10t.safetensors"
    save_file(_imagenet_like_resnet10t(), str(path))
    quick = ["teacher.steps=2", "teacher.warmup_steps=1", "teacher.eval_every=2", "teacher.batch_size=16"]
    args = ["teacher", "train", "--data", str(digits_master), "--run-dir", str(tmp_path / "run")]
    for o in [*quick, f"teacher.init_weights={path}", "tensorboard.enabled=false"]:
        args += ["--set", o]
    with caplog.at_level(logging.INFO, logger="selftrain.teacher"):
        assert main(args) == 0
    lines = [r.getMessage() for r in caplog.records if "teacher.init_weights" in r.getMessage()]
    assert len(lines) == 1 and "tensors loaded from" in lines[0]
    card = json.loads((tmp_path / "run" / "iter-000" / "model.json").read_text())
    assert card["init_weights"] == str(path) and len(card["init_weights_sha256"]) == 64
    assert not (tmp_path / "run" / "tb").exists()  # tensorboard.enabled=false


def test_missing_init_weights_file_is_one_line(digits_master, tmp_path, capsys):
    args = ["teacher", "train", "--data", str(digits_master), "--run-dir", str(tmp_path / "run")]
    assert main([*args, "--set", f"teacher.init_weights={tmp_path / 'nope.safetensors'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: teacher.init_weights {tmp_path / 'nope.safetensors'}: file not found"]
