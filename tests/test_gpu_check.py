"""benchmarks/gpu_check.sh in its CPU mode: the one-command GPU check must not rot between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PHOTOS = next(
    (
        p
        for p in (REPO.parent / "shared" / "data", REPO / ".gpu" / "data")
        if (p / "cifar10-dev-2796.npz").exists()
    ),
    None,
)


@pytest.mark.integration
def test_gpu_check_cpu_mode_writes_every_figure(tmp_path):
    # WHEELS: never the GPU machine's cp312 wheels of a local .gpu/wheels; this interpreter has everything
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "OUT": str(tmp_path),
        "WHEELS": str(tmp_path / "no-wheels"),
    }
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--cpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == {"gpu_check.json", "gpu_check.log"}
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "cpu" and report["ok"] is True
    assert {"versions", "peak_gpu_mb", "seconds", "device"} <= set(report)
    parts = report["parts"]
    assert list(parts) == ["tests", "digits", "labeling", "photos", "train_student", "mpl"]

    tests = parts["tests"]
    assert tests["status"] == "ok" and tests["failed"] == 0 and tests["skipped"] >= 4  # no GPU here

    for name in ("digits", "photos") if PHOTOS is not None else ("digits",):
        run = parts[name]
        assert run["status"] == "ok", run
        for stage in ("teacher", "student"):
            assert run[stage]["device"] == "cpu" and 0 <= run[stage]["test_accuracy"] <= 1
        assert run["student"]["steps"] == 6 + 4  # the CPU sizes: 6 noised steps, a 4-step finetune
        assert run["pseudolabel"]["images_per_s"] > 0
    if PHOTOS is not None:
        assert parts["photos"]["imported"]["train"] == 50
        labeling = parts["labeling"]
        assert set(labeling) == {
            "status",
            "part_seconds",
            "peak_gpu_mb",
            "png32",
            "jpeg64_batched",
        }
        assert labeling["png32"]["decode"] == "auto" and labeling["jpeg64_batched"]["decode"] == "batched"
        for row in (labeling[k] for k in ("png32", "jpeg64_batched")):
            assert row["pipeline_images_per_s"] > 0 and row["model_images_per_s"] > 0 and row["ratio"] > 0
            assert row["chunks"] == 2  # the CPU sizes' label_chunks (the GPU's: 1)
            assert set(row["gap_us"]) == {"input_over_decode", "model_over_model_alone", "write", "other"}
        mpl = parts["mpl"]
        assert mpl["status"] == "ok" and mpl["recipe_steps"] == 6, mpl
        for run, steps in ((mpl["recipe"], 6), (mpl["scaled"], 12)):  # the CPU's 2x the joint steps
            assert run["joint"]["steps"] == steps and run["finetune"]["steps"] == 4
            assert run["joint"]["model"] == "resnet18t" and run["finetune"]["device"] == "cpu"
            assert run["teacher_test_accuracy"] == parts["photos"]["teacher"]["test_accuracy"]
            assert 0 <= run["finetune"]["test_accuracy"] <= 1
        assert mpl["scaled"]["scale"] == 2
    else:
        assert parts["photos"]["status"] == parts["labeling"]["status"] == parts["mpl"]["status"] == "skipped"

    student = parts["train_student"]["workers_0"]
    assert student["device"] == "cpu" and student["ratio"] > 0
    assert "train_student" in (tmp_path / "gpu_check.log").read_text()
