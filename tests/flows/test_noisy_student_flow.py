import json
import os
import signal
import subprocess
import sys
import time

import pytest

from selftrain.runstore import RunStore
from tests.flows.conftest import FLOW_CONFIG

pytestmark = pytest.mark.integration


def _mtime(path):
    return path.stat().st_mtime_ns


def _weights_sha256(run) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.glob("iter-*/model.safetensors"))
    }


@pytest.fixture(scope="module")
def first_run(prefect_api, digits_master, tmp_path_factory):
    """One flow run of FLOW_CONFIG (teacher + one student): its rows, and its weights' sha256 before
    any test adds to it."""
    from flows.noisy_student import noisy_student

    run = tmp_path_factory.mktemp("flow") / "run"
    rows = noisy_student(run_dir=str(run), data=str(digits_master), config=FLOW_CONFIG, iterations=1)
    return {"run": run, "rows": rows, "weights": _weights_sha256(run)}


def test_flow_trains_teacher_then_students_and_never_redoes_a_stage(first_run):
    from flows.noisy_student import noisy_student

    run, rows = first_run["run"], first_run["rows"]
    assert [(r["iteration"], r["role"], r["state"]) for r in rows] == [
        (0, "teacher", "done"),
        (1, "student", "done"),
    ]
    store = RunStore(run)
    assert store.manifest()["teacher_iteration"] == 1
    assert store.stage_state(0, "pseudolabel") == "done" and store.stage_state(1, "promote") == "done"
    assert (run / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    teacher_weights = run / "iter-000" / "model.safetensors"
    sidecars = sorted((run / "iter-000" / "pseudo").glob("*.labels.tar.gz"))
    stamps = [_mtime(teacher_weights), *map(_mtime, sidecars)]

    rows = noisy_student(run_dir=str(run), iterations=1)  # data and config come from the run directory
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert rows[2]["unlabeled_ratio"] == 5  # second entry of the schedule from iteration 2 on
    assert [_mtime(teacher_weights), *map(_mtime, sidecars)] == stamps

    # from_iteration=1 keeps 0 and 1, moves 2 aside, and trains a new 2
    rows = noisy_student(run_dir=str(run), iterations=1, from_iteration=1)
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    (branch,) = (run / "branches").iterdir()
    assert (branch / "iter-002" / "model.safetensors").exists()
    assert _mtime(teacher_weights) == stamps[0]


def test_bad_flow_parameters_are_refused(prefect_api, digits_master, tmp_path):
    from flows.noisy_student import noisy_student
    from selftrain.errors import SelftrainError

    with pytest.raises(SelftrainError, match="data: required"):
        noisy_student(run_dir=str(tmp_path / "new"))
    with pytest.raises(SelftrainError, match=r"student\.stepz: unknown key"):
        noisy_student(run_dir=str(tmp_path / "r"), data=str(digits_master), config={"student.stepz": 3})


def test_killed_flow_resumes_without_redoing_finished_stages(prefect_api, digits_master, tmp_path):
    run = tmp_path / "run"
    config = {**FLOW_CONFIG, "student.steps": 60, "student.checkpoint_every": 6, "student.eval_every": 30}
    cmd = [
        sys.executable,
        "-m",
        "commands.cli",
        "run",
        "noisy-student",
        "--data",
        str(digits_master),
        "--run-dir",
        str(run),
        "--iterations",
        "1",
    ]
    for k, v in config.items():
        cmd += ["--set", f"{k}={v}"]
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = run / "iter-001" / "checkpoints"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not any(ckpts.glob("step-*")):
        time.sleep(0.05)
    assert proc.poll() is None, "the flow ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    store = RunStore(run)
    assert store.stage_state(0, "train") == "done" and store.stage_state(1, "train") in (
        "running",
        "interrupted",
    )
    teacher = run / "iter-000" / "model.safetensors"
    stamps = {p: _mtime(p) for p in [teacher, *(run / "iter-000" / "pseudo").glob("*")]}

    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    assert {p: _mtime(p) for p in stamps} == stamps  # teacher and pseudo-labels not redone
    card = json.loads((run / "iter-001" / "model.json").read_text())
    assert card["resumed_from_step"] is not None and card["resumed_from_step"] >= 6
    assert store.stage_state(1, "promote") == "done"


def test_same_seed_same_weights_inside_the_flow(first_run, digits_master, tmp_path):
    """Two flow runs of one config train bit-identical models, teacher and student alike.

    Augmentation is reseeded per batch from the stream's seed and position, so the draws Prefect's
    threads and the labeling stage make from the process-global RNGs cannot shift it.
    """
    from flows.noisy_student import noisy_student

    first = first_run["weights"]
    noisy_student(run_dir=str(tmp_path / "b"), data=str(digits_master), config=FLOW_CONFIG, iterations=1)
    assert len(first) == 2 and _weights_sha256(tmp_path / "b") == first
    other = tmp_path / "seed1"  # and another seed trains another teacher (no student needed)
    noisy_student(
        run_dir=str(other), data=str(digits_master), config={**FLOW_CONFIG, "seed": 1}, iterations=0
    )
    assert _weights_sha256(other)["iter-000/model.safetensors"] != first["iter-000/model.safetensors"]
