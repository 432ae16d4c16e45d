import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from commands.cli import main
from tests.conftest import QUICK_TEACHER


def _args(data, run, overrides):
    args = ["teacher", "train", "--data", str(data), "--run-dir", str(run)]
    for o in overrides:
        args += ["--set", o]
    return args


def test_status_json_schema_and_eval(digits_master, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_args(digits_master, run, QUICK_TEACHER)) == 0
    capsys.readouterr()
    assert main(["status", "--run-dir", str(run), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)  # exactly one JSON object
    assert list(status) == ["iterations"]
    (row,) = status["iterations"]
    assert {k: row[k] for k in ("iteration", "role", "model", "state")} == {
        "iteration": 0,
        "role": "teacher",
        "model": "resnet10t",
        "state": "done",
    }
    assert isinstance(row["params"], int) and row["params"] > 1_000_000
    assert 0.0 <= row["val_accuracy"] <= 1.0 and 0.0 <= row["test_accuracy"] <= 1.0

    card = json.loads((run / "iter-000" / "model.json").read_text())
    for key in (
        "architecture",
        "classes",
        "input_size",
        "params",
        "val_accuracy",
        "test_accuracy",
        "per_class_accuracy",
        "loss_curve",
        "skipped_samples",
    ):
        assert key in card
    assert (
        card["input_size"] == [1, 16, 16] and len(card["loss_curve"]) == 2
    )  # QUICK_TEACHER's data.image_size
    assert yaml.safe_load((run / "config.yaml").read_text())["teacher"]["steps"] == 30
    assert not (run / "iter-000" / "checkpoints").exists()  # removed once the model is saved

    assert main(["eval", "--run-dir", str(run), "--iteration", "0", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["top1"] == pytest.approx(card["test_accuracy"]) and again["count"] == card["test_count"]
    assert main(["eval", "--run-dir", str(run), "--iteration", "0", "--split", "val", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(card["val_accuracy"])


MIXING = ["teacher.mixup_alpha=0.8", "teacher.cutmix_alpha=1.0"]


def test_cpu_runs_are_repeatable_with_and_without_mixing(digits_master, tmp_path):
    runs = {"a": [], "b": [], "mix-a": MIXING, "mix-b": MIXING}
    for name, extra in runs.items():
        assert main(_args(digits_master, tmp_path / name, QUICK_TEACHER + extra)) == 0
    w = {name: load_file(tmp_path / name / "iter-000" / "model.safetensors") for name in runs}
    assert all((w["a"][k] == w["b"][k]).all() for k in w["a"])
    assert all((w["mix-a"][k] == w["mix-b"][k]).all() for k in w["a"])
    assert any(not (w["a"][k] == w["mix-a"][k]).all() for k in w["a"])  # the mixing took effect
    config = yaml.safe_load((tmp_path / "mix-a" / "config.yaml").read_text())["teacher"]
    assert (config["mixup_alpha"], config["cutmix_alpha"]) == (0.8, 1.0)


RESUME = [
    "teacher.steps=90",
    "teacher.eval_every=30",
    "teacher.checkpoint_every=30",
    "teacher.warmup_steps=5",
    "teacher.batch_size=32",
]


@pytest.mark.integration
def test_kill_and_resume_matches_an_uninterrupted_run(digits_master, tmp_path):
    assert main(_args(digits_master, tmp_path / "straight", RESUME)) == 0

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "commands.cli", *_args(digits_master, run, RESUME)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "iter-000" / "checkpoints" / "step-00000030"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "iter-000" / "model.json").exists()
    assert main(["status", "--run-dir", str(run), "--json"]) == 0

    assert main(_args(digits_master, run, RESUME)) == 0
    straight = json.loads((tmp_path / "straight" / "iter-000" / "model.json").read_text())
    resumed = json.loads((run / "iter-000" / "model.json").read_text())
    assert resumed["resumed_from_step"] in (30, 60)
    assert abs(resumed["test_accuracy"] - straight["test_accuracy"]) <= 0.02
    assert abs(resumed["val_accuracy"] - straight["val_accuracy"]) <= 0.02
    assert [r["step"] for r in resumed["loss_curve"]] == [30, 60, 90]


@pytest.mark.slow
def test_teacher_reaches_90_percent_with_10_labels_per_class(tmp_path):
    from selftrain.data.digits import build_digits

    build_digits(tmp_path / "d10", labels_per_class=10, seed=0)
    assert (
        main(["teacher", "train", "--data", str(tmp_path / "d10"), "--run-dir", str(tmp_path / "run")]) == 0
    )
    card = json.loads((tmp_path / "run" / "iter-000" / "model.json").read_text())
    assert card["test_accuracy"] >= 0.90, card["test_accuracy"]


@pytest.mark.gpu
def test_teacher_trains_on_cuda_and_its_eval_decodes_there(digits_master, tmp_path, capsys):
    """The CUDA path end to end: bf16 autocast training, channels_last, eval on the GPU; a CPU
    re-evaluation of the saved weights agrees (bf16 moves a few borderline images at most).
    The default `data.num_workers: auto` feeds it through DataLoader workers there."""
    import torch

    from selftrain.data.workers import available_cpus, resolve_workers

    assert resolve_workers("auto", torch.device("cuda")) == min(8, available_cpus() - 1)
    run = tmp_path / "run"
    assert main([*_args(digits_master, run, QUICK_TEACHER), "--device", "cuda"]) == 0
    card = json.loads((run / "iter-000" / "model.json").read_text())
    assert card["device"] == "cuda" and card["steps"] == 30
    capsys.readouterr()
    assert main(["eval", "--run-dir", str(run), "--iteration", "0", "--device", "cpu", "--json"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert on_cpu["count"] == card["test_count"]
    assert abs(on_cpu["top1"] - card["test_accuracy"]) <= 0.02
