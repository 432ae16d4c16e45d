"""MPL end to end on digits: checkpoint/resume, the finetune's guarantee, and the status rows."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from commands.cli import main
from selftrain.data.dataset_info import load_dataset
from selftrain.runstore import RunStore
from tests.conftest import QUICK_TEACHER

QUICK_MPL = [
    "mpl.steps=16",
    "mpl.batch_size=4",
    "mpl.unlabeled_ratio=2",
    "mpl.warmup_steps=2",
    "mpl.student_wait_steps=4",
    "mpl.uda_warmup_steps=4",
    "mpl.eval_every=8",
    "mpl.checkpoint_every=4",
    "mpl.finetune.steps=8",
    "mpl.finetune.eval_every=4",
    "mpl.finetune.checkpoint_every=4",
    "mpl.finetune.warmup_steps=2",
    "mpl.finetune.batch_size=8",
]


@pytest.fixture(scope="module")
def mpl_run(digits_master, tmp_path_factory):
    from teachers.mpl_training import finetune_student, train_mpl
    from teachers.supervised import train_teacher

    root = tmp_path_factory.mktemp("mpl") / "run"
    store = RunStore(root)
    cfg = store.open(digits_master, None, [*QUICK_TEACHER, *QUICK_MPL])
    dataset, cpu = load_dataset(digits_master), torch.device("cpu")
    train_teacher(store, dataset, cfg, cpu)
    train_mpl(store, dataset, cfg, cpu)
    finetune_student(store, dataset, cfg, cpu)
    return root


def test_mpl_writes_teacher_student_and_finetuned_rows(mpl_run, capsys):
    assert main(["status", "--run-dir", str(mpl_run), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["iterations"]
    assert [(r["iteration"], r["role"], r["state"]) for r in rows] == [
        (0, "teacher", "done"),
        (1, "mpl-teacher", "done"),
        (2, "mpl-student", "done"),
        (3, "mpl-finetuned", "done"),
    ]
    student = RunStore(mpl_run).card(2)
    steps = [r for r in student["loss_curve"] if "feedback_h" in r]
    assert steps and all("reward" in r and "teacher_mpl" in r and "uda_mask" in r for r in steps)


def test_finetune_never_lowers_val_accuracy(mpl_run):
    card = RunStore(mpl_run).card(3)
    assert card["val_accuracy"] >= card["val_accuracy_before_finetune"]
    assert card["loss_curve"][0]["step"] == 0  # the starting weights were scored first


def test_mpl_stages_write_tensorboard_scalars(mpl_run):
    from selftrain.tblog import read_scalars, tb_dir

    joint = read_scalars(tb_dir(mpl_run, 2, "mpl-student"))
    for tag in ("train/teacher_mpl", "train/student_loss", "train/feedback_h", "lr/teacher", "lr/student"):
        assert len(joint[tag]) == 16, tag
    assert [s for s, _ in joint["val/accuracy"]] == [8, 16]
    student = RunStore(mpl_run).card(2)
    assert [v for _, v in joint["val/accuracy"]] == pytest.approx(
        [r["val_accuracy"] for r in student["loss_curve"]]
    )
    finetune = read_scalars(tb_dir(mpl_run, 3, "mpl-finetuned"))
    assert [s for s, _ in finetune["val/accuracy"]] == [0, 4, 8]  # the start is scored first
    assert len(finetune["train/loss"]) == 8 and len(finetune["throughput/samples_per_s"]) == 8


def test_mpl_teacher_recorded_done_is_not_redone_when_the_student_was_not(mpl_run, tmp_path):
    """A kill between the two records (the teacher's is written first): the rerun trains the
    student again but leaves the teacher's record and files as they were."""
    from teachers.mpl_training import STUDENT_IT, TEACHER_IT, train_mpl

    run = tmp_path / "run"
    shutil.copytree(mpl_run, run)
    store = RunStore(run)
    store.mark_stage(STUDENT_IT, "train", "interrupted")
    teacher_record = store.iteration(TEACHER_IT)["stages"]["train"]
    weights = store.iter_dir(TEACHER_IT) / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    train_mpl(store, load_dataset(store.data_dir()), store.config(), torch.device("cpu"))
    assert store.stage_state(STUDENT_IT, "train") == "done"
    assert store.iteration(TEACHER_IT)["stages"]["train"] == teacher_record
    assert weights.stat().st_mtime_ns == mtime


def test_mpl_student_can_start_from_the_supervised_teacher(mpl_run, tmp_path):
    """The photo recipe's MPL student starts as the supervised teacher: before its first update
    (one joint step, the student waiting) its saved weights are the teacher's, tensor for tensor."""
    from teachers.mpl_training import STUDENT_IT, train_mpl

    run = tmp_path / "run"
    shutil.copytree(mpl_run, run)
    store = RunStore(run)
    store.mark_stage(STUDENT_IT, "train", "interrupted")
    cfg = store.config()
    mpl = cfg.mpl.model_copy(
        update={"init_student_from_supervised": True, "steps": 1, "student_wait_steps": 1, "warmup_steps": 0}
    )
    train_mpl(store, load_dataset(store.data_dir()), cfg.model_copy(update={"mpl": mpl}), torch.device("cpu"))
    student, _ = store.load_weights(STUDENT_IT)
    supervised, _ = store.load_weights(0)
    assert student.keys() == supervised.keys()
    assert [k for k in supervised if not torch.equal(student[k], supervised[k])] == []


def test_which_labels_the_student_learns_is_decided_by_view_and_noise(mpl_run, tmp_path):
    """`mpl.pseudo_label_view` and `mpl.noised_pseudo_labels`: the same seed gives the same student
    twice, and labels drawn on the weak view instead of the strong one, or from the un-noised
    teacher instead of its training pass, each give another student (the options reach the step)."""
    from teachers.mpl_training import STUDENT_IT, train_mpl

    def student_after(name: str, **update) -> dict[str, torch.Tensor]:
        run = tmp_path / name
        shutil.copytree(mpl_run, run)
        store = RunStore(run)
        store.mark_stage(STUDENT_IT, "train", "interrupted")
        shutil.rmtree(store.iter_dir(STUDENT_IT) / "checkpoints", ignore_errors=True)
        cfg = store.config()
        mpl = cfg.mpl.model_copy(update={"steps": 4, "student_wait_steps": 0, "ema_decay": 0.0, **update})
        train_mpl(
            store, load_dataset(store.data_dir()), cfg.model_copy(update={"mpl": mpl}), torch.device("cpu")
        )
        return store.load_weights(STUDENT_IT)[0]

    noised = {"pseudo_label_view": "strong", "noised_pseudo_labels": True}
    strong, again = student_after("a", **noised), student_after("b", **noised)
    weak = student_after("c", **{**noised, "pseudo_label_view": "weak"})
    unnoised = student_after("d", **{**noised, "noised_pseudo_labels": False})
    assert all(torch.equal(strong[k], again[k]) for k in strong)
    assert any(not torch.equal(strong[k], weak[k]) for k in strong)
    assert any(not torch.equal(strong[k], unnoised[k]) for k in strong)


def _joint_stage_again(mpl_run: Path, run: Path, **update) -> RunStore:
    """A copy of `mpl_run` whose joint stage ran again for 6 steps, the student learning from the start."""
    from teachers.mpl_training import STUDENT_IT, TEACHER_IT, train_mpl

    shutil.copytree(mpl_run, run)
    store = RunStore(run)
    for it in (TEACHER_IT, STUDENT_IT):
        store.mark_stage(it, "train", "interrupted")
    shutil.rmtree(store.iter_dir(STUDENT_IT) / "checkpoints", ignore_errors=True)
    cfg = store.config()
    mpl = cfg.mpl.model_copy(update={"steps": 6, "student_wait_steps": 0, **update})
    train_mpl(store, load_dataset(store.data_dir()), cfg.model_copy(update={"mpl": mpl}), torch.device("cpu"))
    return store


def test_feedback_weight_zero_is_a_control_without_the_meta_signal(mpl_run, tmp_path):
    """`mpl.feedback_weight=0`: the teacher learns nothing from the student, so it ends exactly as
    in a run whose student never steps; at the default weight the student's feedback moves it."""
    from teachers.mpl_training import TEACHER_IT

    def teacher_after(name: str, **update) -> dict[str, torch.Tensor]:
        return _joint_stage_again(mpl_run, tmp_path / name, **update).load_weights(TEACHER_IT)[0]

    control = teacher_after("control", feedback_weight=0.0)
    no_student = teacher_after("no-student", feedback_weight=1.0, student_wait_steps=6)
    mpl = teacher_after("mpl", feedback_weight=1.0)
    assert [k for k in control if not torch.equal(control[k], no_student[k])] == []
    assert any(not torch.equal(control[k], mpl[k]) for k in control)


def test_mixed_student_batches_repeat_bit_for_bit_and_change_the_student(mpl_run, tmp_path):
    """`mpl.student_mixup_alpha` / `student_cutmix_alpha`: drawn per (seed, step), so two runs agree."""
    from teachers.mpl_training import STUDENT_IT

    mixing = {"student_mixup_alpha": 0.8, "student_cutmix_alpha": 1.0}
    weights = {
        name: _joint_stage_again(mpl_run, tmp_path / name, **update).load_weights(STUDENT_IT)[0]
        for name, update in {"mix-a": mixing, "mix-b": mixing, "plain": {}}.items()
    }
    assert all(torch.equal(weights["mix-a"][k], weights["mix-b"][k]) for k in weights["plain"])
    assert any(not torch.equal(weights["mix-a"][k], weights["plain"][k]) for k in weights["plain"])


@pytest.mark.integration
def test_killed_mpl_run_resumes_to_the_same_result(digits_master, tmp_path, prefect_api):
    run = tmp_path / "run"
    # The digits are 8x8: 16 pixels lose nothing and train about 3x faster than the recipe's 32.
    overrides = [*QUICK_TEACHER, *QUICK_MPL, "mpl.steps=40", "data.image_size=16"]
    straight = tmp_path / "straight"
    cmd = [
        sys.executable,
        "-m",
        "commands.cli",
        "run",
        "meta-pseudo-labels",
        "--data",
        str(digits_master),
        "--run-dir",
        str(run),
    ]
    for o in overrides:
        cmd += ["--set", o]
    # The session's Prefect server: three runs would otherwise start three temporary ones.
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    # The reference runs in a process of its own too: same threads and environment as the killed
    # run (in this pytest process, earlier tests may have changed torch's global state).
    reference_cmd = [str(straight) if c == str(run) else c for c in cmd]
    done = subprocess.run(reference_cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # Its own session, so the kill takes every process the run started.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    target = run / "iter-002" / "checkpoints" / "step-00000008"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not target.exists():
        time.sleep(0.05)
    assert proc.poll() is None, "MPL finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = json.loads(max((run / "iter-002" / "checkpoints").glob("step-*/state.json")).read_text())
    assert "baseline" in state["state"]["extra"]  # the reward baseline is checkpointed with the models

    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    card = RunStore(run).card(2)
    assert card["resumed_from_step"] >= 8
    assert [r["step"] for r in card["loss_curve"]] == list(range(8, 41, 8))
    assert RunStore(run).stage_state(3, "train") == "done"
    # Models, optimizers, RNG (not advanced again by the new DataLoader iterators), data position,
    # augmentation draws (reseeded per batch, whatever the other stream drew) and the reward
    # baseline are restored, so every step after the resume is the uninterrupted run's step.
    reference = RunStore(straight).card(2)
    assert len(card["loss_curve"]) == len(reference["loss_curve"])
    for got, want in zip(card["loss_curve"], reference["loss_curve"], strict=True):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert card["test_accuracy"] == reference["test_accuracy"]
    assert RunStore(run).card(1)["test_accuracy"] == RunStore(straight).card(1)["test_accuracy"]


@pytest.mark.slow
def test_short_budget_mpl_student_beats_the_supervised_baseline(digits_master, tmp_path):
    from teachers.mpl_training import finetune_student, train_mpl
    from teachers.supervised import train_teacher

    store = RunStore(tmp_path / "run")
    # 16x16 inputs halve the time; checked on seeds 0-2 (baseline 92.2/91.1/90.3%, finetuned
    # 96.1/94.7/96.4%).
    short = [
        "data.image_size=16",
        "teacher.steps=60",
        "teacher.eval_every=20",
        "teacher.warmup_steps=5",
        "mpl.steps=150",
        "mpl.eval_every=50",
        "mpl.student_wait_steps=20",
        "mpl.uda_warmup_steps=50",
        "mpl.finetune.steps=50",
    ]
    cfg = store.open(digits_master, None, short)
    dataset, cpu = load_dataset(digits_master), torch.device("cpu")
    baseline = train_teacher(store, dataset, cfg, cpu)
    train_mpl(store, dataset, cfg, cpu)
    finetuned = finetune_student(store, dataset, cfg, cpu)
    assert finetuned["test_accuracy"] > baseline["test_accuracy"], (
        baseline["test_accuracy"],
        finetuned["test_accuracy"],
    )
