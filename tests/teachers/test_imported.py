"""`selftrain teacher import`: an existing model becomes iteration 0, evaluated and carded."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from commands.cli import main
from selftrain.models import build_model
from selftrain.runstore import RunStore


def test_imported_teacher_is_iteration_0_evaluated_and_carded(digits_master, tmp_path, capsys):
    torch.manual_seed(0)
    weights = build_model("resnet10t", num_classes=10, in_chans=1).state_dict()
    path = tmp_path / "mine.safetensors"
    save_file(weights, str(path))
    run = tmp_path / "run"
    base = ["teacher", "import", "--run-dir", str(run), "--weights", str(path)]

    assert main([*base, "--model", "resnet18", "--data", str(digits_master)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --weights {path}: does not fit resnet18")

    assert main([*base, "--model", "resnet10t", "--data", str(digits_master)]) == 0
    store = RunStore(run)
    loaded, card = store.load_weights(0)
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert (card["role"], card["architecture"], card["steps"]) == ("teacher", "resnet10t", 0)
    assert card["imported_from"] == str(path) and card["input_size"] == [1, 32, 32]
    assert card["val_count"] == 180 and card["test_count"] == 360
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(run), "--iteration", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == card["test_accuracy"]

    assert main([*base, "--model", "resnet10t"]) == 2  # the run has its teacher already
    assert "already has a teacher" in capsys.readouterr().err
